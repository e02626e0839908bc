#!/usr/bin/env bash
# `make roster FILE=roster.csv [DRY_RUN=1]`: import the course roster into the running lab, without
# a hub restart. The whole file is checked first; a file with any problem changes nothing, and
# each problem is printed as FILE:LINE: field: message. Prints what changed.
# Uses the lab-admin token from .env (LAB_ENV_FILE names another); LAB_URL overrides where the
# lab is reached (default http://127.0.0.1:$LAB_HTTP_PORT).
set -euo pipefail
trap 'echo "[roster] ERROR: unexpected failure at $0 line $LINENO (exit $?)" >&2' ERR
cd "$(dirname "$0")/.."
die() { echo "[roster] $*" >&2; exit 1; }
file="${1:-${FILE:-}}"
[ -n "$file" ] || die "usage: make roster FILE=path/to/roster.csv [DRY_RUN=1]"
[ -f "$file" ] || die "$file: no such file"
env_file="${LAB_ENV_FILE:-.env}"
[ -f "$env_file" ] && { set -a; . "$env_file"; set +a; }
[ -n "${LAB_ADMIN_API_TOKEN:-}" ] || die "LAB_ADMIN_API_TOKEN is empty in $env_file (make up creates one)"
url="${LAB_URL:-http://127.0.0.1:${LAB_HTTP_PORT:-8000}}"
# The proxy routes each service by its own host name (roster--service.<the lab's host>).
host="roster--service.$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlparse(sys.argv[1]).hostname)' \
  "${LAB_PUBLIC_URL:-http://localhost:8000}")"
dry="${DRY_RUN:-0}"
name=$(basename "$file")
out=$(mktemp); trap 'rm -f "$out"' EXIT
code=$(curl -sS -o "$out" -w '%{http_code}' -X POST \
  -H "Authorization: token $LAB_ADMIN_API_TOKEN" -H "Content-Type: text/csv" -H "Host: $host" \
  --data-binary "@$file" \
  "$url/services/roster/api/import?filename=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$name")&dry_run=$dry") \
  || die "the lab does not answer at $url (is it running? make up)"
python3 - "$out" "$code" "$file" <<'PY' || exit 1
import json, sys
path, code, file = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    data = json.load(open(path))
except ValueError:
    print(f"[roster] the lab answered {code}: {open(path).read()[:500]}", file=sys.stderr)
    sys.exit(1)
if code == "400":
    print(f"[roster] {file} refused, nothing changed:", file=sys.stderr)
    for problem in data["problems"]:
        print(f"  {problem}", file=sys.stderr)
    sys.exit(1)
if code != "200":
    print(f"[roster] the lab answered {code}: {data}", file=sys.stderr)
    sys.exit(1)
verb = "checked (dry run, nothing changed)" if data["dry_run"] else "imported"
print(f"[roster] {file} {verb}: {data['people']} people, read as {data['encoding']}")
print(data["summary"])
sync = data.get("sync")
if sync and sync.get("servers_stopped"):
    print(f"servers stopped: {', '.join(sync['servers_stopped'])}")
PY
