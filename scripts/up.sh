#!/usr/bin/env bash
# `make up`: set up what is missing, check the settings, start the lab, print how to log in.
set -euo pipefail
trap 'echo "[up] ERROR: unexpected failure at $0 line $LINENO (exit $?)" >&2' ERR
cd "$(dirname "$0")/.."

say() { printf '[up] %s\n' "$*" >&2; }
die() { printf '[up] ERROR: %s\n' "$*" >&2; exit 1; }

bash scripts/bootstrap.sh all

if [ ! -f .env ]; then
  token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  sed "s/^LAB_ADMIN_API_TOKEN=.*/LAB_ADMIN_API_TOKEN=$token/" .env.example > .env
  chmod 600 .env
  say "created .env (with a fresh LAB_ADMIN_API_TOKEN)"
fi
if [ ! -f lab.yaml ]; then
  cp lab.example.yaml lab.yaml
  say "created lab.yaml from lab.example.yaml"
fi
set -a; . ./.env; set +a
if [ "${LAB_HUB_DB_URL:-}" = postgres ]; then
  # The bundled PostgreSQL server for the hub's database, with a password made here, once.
  LAB_HUB_DB_URL="postgresql://hub:$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')@hubdb/jupyterhub"
  sed -i "/^LAB_HUB_DB_URL=/d" .env
  echo "LAB_HUB_DB_URL=$LAB_HUB_DB_URL" >> .env
  say "LAB_HUB_DB_URL=postgres: the hub's database is the bundled PostgreSQL server (its URL, with a fresh password, is now in .env)"
fi
export LAB_IMAGE_TAG="${LAB_IMAGE_TAG:-$(cat VERSION)}"
tag="$LAB_IMAGE_TAG"

bash scripts/build-images.sh
bundled_db=0
case "${LAB_HUB_DB_URL:-}" in *@hubdb/*|*@hubdb:*) bundled_db=1 ;; esac
[ "$bundled_db" = 1 ] && bash scripts/build-images.sh postgres

# Check the settings with the hub's own code before starting anything; learn whether it is a demo
# and whether monitoring is on.
read -r provider monitoring gpus < <(docker run --rm --network none \
  -v "$PWD/lab.yaml:/srv/lab/lab.yaml:ro" --env-file .env \
  "mlops-lab/hub:$tag" python3 -c '
from hub.settings import load_settings_or_exit
s = load_settings_or_exit("settings")
print("demo" if s.demo else "live", "on" if s.get("monitoring.enabled") else "off", len(s.get("gpus.devices")))
' 2> >(sed 's#/srv/lab/lab.yaml#lab.yaml#g' >&2)) || true
[ -n "${provider:-}" ] || die "fix lab.yaml or .env as said above, then run make up again"
[ "$monitoring" = on ] && bash scripts/build-images.sh --if-missing prometheus
# A GPU host: the metrics exporter reads the GPUs too (docker-compose.gpu.yml).
if [ "$monitoring" = on ] && [ "${gpus:-0}" -gt 0 ] && [ -z "${COMPOSE_FILE:-}" ]; then
  export COMPOSE_FILE=docker-compose.yml:docker-compose.gpu.yml
fi

profiles=()
[ "$provider" = demo ] && profiles=(--profile demo)
[ "$bundled_db" = 1 ] && profiles+=(--profile postgres)
[ "$monitoring" = on ] && profiles+=(--profile monitoring)
docker compose "${profiles[@]}" up -d --remove-orphans

port="${LAB_HTTP_PORT:-8000}"
for _ in $(seq 1 90); do
  guard=$(docker compose ps --format '{{.Health}}' netguard 2>/dev/null || true)
  if curl -fsS "http://127.0.0.1:$port/hub/health" >/dev/null 2>&1 && [ "$guard" = healthy ]; then
    url="${LAB_PUBLIC_URL:-http://localhost:$port}"
    echo
    echo "The lab is running at $url"
    if [ "$provider" = demo ]; then
      echo "Demo mode (auth.demo: true in lab.yaml; see README.md, 'Demo mode'): the DTU and GitHub"
      echo "buttons lead to bundled demo providers, and the demo roster (hub/demo-roster.csv) is loaded:"
      echo "  students s230001 s230002 s230003, TA tahe, instructor teacher; GitHub ada-lovelace is s230001."
      echo "Import your own roster with: make roster FILE=roster.csv"
    else
      echo "Open the URL and sign in through your identity provider."
    fi
    echo "Stop with: make down (every volume is kept)"
    exit 0
  fi
  sleep 2
done
docker compose logs --tail 40 hub netguard >&2 || true
die "the hub did not answer on port $port, or netguard (the students' firewall) was not healthy, within 180 s (their last log lines are above)"
