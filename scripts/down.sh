#!/usr/bin/env bash
# `make down`: stop the lab and every student server of it. Every volume (hub state, homes) is kept.
set -euo pipefail
trap 'echo "[down] ERROR: unexpected failure at $0 line $LINENO (exit $?)" >&2' ERR
cd "$(dirname "$0")/.."
[ -f .env ] && { set -a; . ./.env; set +a; }
instance="${LAB_INSTANCE:-mlops-lab}"
export LAB_IMAGE_TAG="${LAB_IMAGE_TAG:-$(cat VERSION)}"
if ! docker info >/dev/null 2>&1; then
  echo "[down] no Docker engine answers: nothing is running" >&2
  exit 0
fi
# Students' servers first: the lab's network cannot be removed while they are on it.
ids=$(docker ps -aq --filter "label=mlops-lab.instance=$instance")
if [ -n "$ids" ]; then
  docker rm -f $ids >/dev/null
  echo "[down] stopped $(echo "$ids" | wc -w) student server(s); their homes are kept"
fi
if ! docker compose --profile demo --profile postgres --profile monitoring down 2>/tmp/lab-down.$$; then
  cat /tmp/lab-down.$$ >&2
  # After a day of many student containers Docker can keep a stale endpoint on the network (no
  # container behind it): everything is stopped, only the network stays, and `make up` reuses it.
  if grep -q "has active endpoints" /tmp/lab-down.$$ && [ -z "$(docker compose --profile demo --profile postgres --profile monitoring ps -q)" ]; then
    echo "[down] the lab is stopped; Docker kept its network (a stale endpoint, an engine issue); make up" \
         "reuses it, and restarting the Docker engine removes it" >&2
  else
    rm -f /tmp/lab-down.$$
    exit 1
  fi
fi
rm -f /tmp/lab-down.$$
