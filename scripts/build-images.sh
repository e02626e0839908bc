#!/usr/bin/env bash
# Build the lab's images (hub, demo identity provider, course; the bench's minimal server) with the classic builder.
#   scripts/build-images.sh [--if-missing] [hub|idp|course|mini|postgres|prometheus ...]
#   (postgres: the bundled hub database server; prometheus: monitoring; mini: only for bench/burst.py --mini)
# Settings come from the environment (see .env.example):
#   LAB_IMAGE_TAG        tag for all three images (default: the VERSION file)
#   LAB_TORCH_VARIANT    cuda | cpu | auto (auto: cuda where nvidia-smi sees a GPU, else cpu)
#   LAB_WHEELHOUSE       a folder of wheels for pip --find-links; default /opt/wheels if present; "none" for none
#   LAB_EXTRA_CA_BUNDLE  a PEM bundle to trust during builds and in the images; default: the host's
#                        /etc/ssl/certs/ca-certificates.crt; "none" for none
set -euo pipefail
trap 'echo "[build-images] ERROR: unexpected failure at $0 line $LINENO (exit $?)" >&2' ERR
cd "$(dirname "$0")/.."
[ -f .env ] && set -a && . ./.env && set +a

say() { printf '[build] %s\n' "$*" >&2; }
die() { printf '[build] ERROR: %s\n' "$*" >&2; exit 1; }

TAG="${LAB_IMAGE_TAG:-$(cat VERSION)}"
BASE_IMAGE="${LAB_BASE_IMAGE:-debian:bookworm-slim}"
variant="${LAB_TORCH_VARIANT:-auto}"
if [ "$variant" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then variant=cuda; else variant=cpu; fi
fi
case "$variant" in cuda|cpu) ;; *) die "LAB_TORCH_VARIANT must be cuda, cpu or auto, not '$variant'";; esac

only_missing=0
images=()
for a in "$@"; do
  case "$a" in
    --if-missing) only_missing=1 ;;
    hub|idp|course|mini|postgres|prometheus) images+=("$a") ;;
    *) die "unknown argument '$a' (expected --if-missing, hub, idp, course, mini, postgres or prometheus)" ;;
  esac
done
[ ${#images[@]} -gt 0 ] || images=(hub idp course)  # postgres: when asked (LAB_HUB_DB_URL); mini: bench only

prepare_ca() {
  rm -rf .build && mkdir -p .build/ca .build/wheelhouse
  local ca="${LAB_EXTRA_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
  if [ "$ca" != none ]; then
    [ -f "$ca" ] || die "LAB_EXTRA_CA_BUNDLE=$ca: no such file"
    grep -q 'BEGIN CERTIFICATE' "$ca" || die "LAB_EXTRA_CA_BUNDLE=$ca: not a PEM bundle (no BEGIN CERTIFICATE line)"
    cp "$ca" .build/ca/extra-ca.crt
  fi
}

# Every image's build gets the wheelhouse; the torch, CUDA and triton wheels (gigabytes) go
# into the course image's build context only.
prepare_wheelhouse() {
  rm -rf .build/wheelhouse && mkdir -p .build/wheelhouse
  local wh="${LAB_WHEELHOUSE:-}"
  if [ -z "$wh" ] && [ -d /opt/wheels ]; then wh=/opt/wheels; fi
  [ -n "$wh" ] && [ "$wh" != none ] || return 0
  [ -d "$wh" ] || die "LAB_WHEELHOUSE=$wh: no such folder"
  local skip='^$'
  [ "$1" = course ] || skip='^(torch|nvidia_|triton)-'
  find "$wh" -maxdepth 1 -name '*.whl' -printf '%f\n' | { grep -Ev "$skip" || true; } | while read -r f; do
    ln "$wh/$f" .build/wheelhouse/ 2>/dev/null || cp "$wh/$f" .build/wheelhouse/
  done
  say "wheelhouse for $1: $wh ($(ls .build/wheelhouse | wc -l) wheels)"
}

built=0
for img in "${images[@]}"; do
  ref="mlops-lab/$img:$TAG"
  if [ "$only_missing" = 1 ] && docker image inspect "$ref" >/dev/null 2>&1; then
    continue
  fi
  [ "$built" = 1 ] || prepare_ca
  built=1
  prepare_wheelhouse "$img"
  args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  [ "$img" = course ] && args+=(--build-arg "TORCH_VARIANT=$variant")
  if [ "$img" = course ]; then say "building $ref (torch: $variant)"; else say "building $ref"; fi
  log=".build-$img.log"
  if ! DOCKER_BUILDKIT=0 docker build "${args[@]}" -f "images/$img/Dockerfile" -t "$ref" . >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "building $ref failed (full log: $log)"
  fi
  rm -f "$log"
done
[ "$built" = 0 ] || rm -rf .build
