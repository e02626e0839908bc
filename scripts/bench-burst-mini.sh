#!/usr/bin/env bash
# `make bench-burst-mini [N=300] [WINDOW=300] [WARM=1]`: bench/burst.py --mini against the lab with its
# students' servers swapped for images/mini (LAB_SERVER_IMAGE), then the lab put back as `make up`
# leaves it, whatever the bench's outcome.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .env ] || { echo "[bench] ERROR: no .env: run make up first" >&2; exit 1; }
tag=$(set -a; . ./.env; echo "${LAB_IMAGE_TAG:-$(cat VERSION)}")
bash scripts/build-images.sh --if-missing mini
echo "[bench] restarting the hub with students' servers from mlops-lab/mini:$tag" >&2
LAB_SERVER_IMAGE="mlops-lab/mini:$tag" bash scripts/up.sh >/dev/null
rc=0
.venv/bin/python -u bench/burst.py --mini -n "${1:-300}" --window "${2:-300}" "${@:3}" || rc=$?
echo "[bench] putting the lab back (the course image for students' servers)" >&2
bash scripts/up.sh >/dev/null
exit "$rc"
