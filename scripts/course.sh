#!/usr/bin/env bash
# The instructor's grading commands against the running lab (the calendar does the same on its
# own; these are for doing it by hand, or again):
#   scripts/course.sh release ASSIGNMENT [--force]   generate from source, set the due date, release
#   scripts/course.sh collect ASSIGNMENT             copy every student's latest submission in
#   scripts/course.sh autograde ASSIGNMENT [--workers N] [--force] [--collect]
#                                                     sandboxed, N at once, with a progress bar;
#                                                     rerun after an interruption: it resumes
#   scripts/course.sh feedback ASSIGNMENT            generate and release feedback
#   scripts/course.sh grades [FILE]                  the grades CSV (stdout, or FILE)
# All but `grades` run as the hub's unprivileged grader user (python -m hub.course.grading).
set -euo pipefail
trap 'echo "[course] ERROR: unexpected failure at $0 line $LINENO (exit $?)" >&2' ERR
cd "$(dirname "$0")/.."
die() { echo "[course] $*" >&2; exit 1; }
[ -f .env ] && { set -a; . ./.env; set +a; }
export LAB_IMAGE_TAG="${LAB_IMAGE_TAG:-$(cat VERSION)}"
[ $# -ge 1 ] || die "usage: scripts/course.sh release|collect|autograde|feedback ASSIGNMENT [options] | grades [FILE]"
docker compose ps --status running --services 2>/dev/null | grep -qx hub \
  || die "the lab is not running (make up)"
tty=(-T); [ -t 0 ] && [ -t 1 ] && tty=()
cmd="$1"; shift
case "$cmd" in
  release|collect|autograde|feedback)
    [ $# -ge 1 ] && [ -n "$1" ] || die "usage: make $cmd A=ASSIGNMENT"
    exec docker compose exec "${tty[@]}" -u grader -w /srv/course/state/home hub python -m hub.course.grading "$cmd" "$@" ;;
  grades)
    out="${1:-}"
    if [ -n "$out" ]; then
      docker compose exec -T hub python -m hub.course.grading grades > "$out"
      echo "[course] grades written to $out ($(($(wc -l < "$out") - 1)) students)" >&2
    else
      exec docker compose exec -T hub python -m hub.course.grading grades
    fi ;;
  *) die "unknown command '$cmd' (release, collect, autograde, feedback, grades)" ;;
esac
