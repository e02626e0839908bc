#!/bin/sh
# Wait (bounded) for the configuration the hub writes, then run Prometheus in the foreground with
# the retention it names. docker stop shuts it down cleanly.
set -eu
conf=/run/lab-monitor/prometheus.yml
flags=/run/lab-monitor/retention
i=0
until [ -s "$conf" ] && [ -s "$flags" ]; do
  i=$((i + 1))
  if [ "$i" -gt 300 ]; then
    echo "lab-prometheus: no $conf after 300 s: the hub writes it when it starts (is the hub running, with the monitor-config volume?)" >&2
    exit 2
  fi
  sleep 1
done
retention=$(cat "$flags")
case "$retention" in *[!0-9hdw]*|"") echo "lab-prometheus: $flags: '$retention' is not a duration like 30d" >&2; exit 2 ;; esac
echo "lab-prometheus: configuration from the hub, keeping figures for $retention"
exec /usr/bin/prometheus --config.file="$conf" --storage.tsdb.path=/var/lib/prometheus/metrics2 \
  --storage.tsdb.retention.time="$retention" --web.listen-address=0.0.0.0:9090 \
  --web.enable-lifecycle --log.level=warn
