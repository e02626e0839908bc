#!/usr/bin/env bash
# `make test`: the whole suite on this host, set-up included.
#   scripts/test.sh          set up, unit tests, build images, integration and browser tests
#   scripts/test.sh unit     set up the test environment and run the unit tests only
#   scripts/test.sh setup    only set up the test environment (.venv, Chromium)
#   scripts/test.sh gpu      on a GPU host: the real-GPU checks of tests/gpu (skipped elsewhere)
#   scripts/test.sh ansible  the Ansible playbook's lint, converge, idempotence and restore tests
#   scripts/test.sh swarm    the lab on a three-node Docker Swarm of engine containers (tests/swarm)
set -euo pipefail
trap 'echo "[test] ERROR: unexpected failure at $0 line $LINENO (exit $?)" >&2' ERR
cd "$(dirname "$0")/.."
step="${1:-all}"

say() { printf '[test] %s\n' "$*" >&2; }

apt_install() {
  if [ ! -f /var/lib/apt/periodic/lab-updated ] || [ -z "$(find /var/lib/apt/periodic/lab-updated -mmin -60 2>/dev/null)" ]; then
    apt-get update -qq
    mkdir -p /var/lib/apt/periodic && touch /var/lib/apt/periodic/lab-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

setup() {
  local missing=()
  command -v python3 >/dev/null || missing+=(python3)
  python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  command -v curl >/dev/null || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
  local stamp=.venv/.requirements.sha
  local want
  want=$(cat tests/requirements.txt images/hub/requirements.txt pyproject.toml | sha256sum | cut -c1-16)
  if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "creating the test environment (.venv)"
    rm -rf .venv
    python3 -m venv .venv
    # (grep drops pip's notes about index folders of this host's pip config that do not exist)
    .venv/bin/pip install -q -r tests/requirements.txt 2> >(grep -v "^WARNING: Location 'file:" >&2)
    .venv/bin/pip install -q --no-deps -e . 2> >(grep -v "^WARNING: Location 'file:" >&2)
    echo "$want" > "$stamp"
  fi
}

# The Ansible runner has its own environment: ansible-lint's pins must not move the hub's.
setup_ansible() {
  local stamp=.venv-ansible/.requirements.sha
  local want
  want=$(sha256sum tests/ansible/requirements.txt | cut -c1-16)
  if [ ! -x .venv-ansible/bin/ansible-playbook ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "creating the Ansible environment (.venv-ansible)"
    rm -rf .venv-ansible
    python3 -m venv .venv-ansible
    .venv-ansible/bin/pip install -q -r tests/ansible/requirements.txt 2> >(grep -v "^WARNING: Location 'file:" >&2)
    echo "$want" > "$stamp"
  fi
}

setup
[ "$step" = setup ] && exit 0

say "unit tests"
.venv/bin/python -m pytest tests/unit -q -p no:cacheprovider || exit $?
[ "$step" = unit ] && exit 0

say "engine, base image and the lab's images"
bash scripts/bootstrap.sh all
bash scripts/build-images.sh
bash scripts/build-images.sh postgres prometheus  # the test lab's hub database (and the gradebook test's), its monitoring

if [ "$step" = gpu ]; then
  say "real-GPU checks (tests/gpu)"
  exec .venv/bin/python -m pytest tests/gpu -q -rs -p no:cacheprovider
fi

if [ "$step" = swarm ]; then
  say "the lab on a three-node swarm (tests/swarm): a manager and two workers, Docker engines in containers"
  exec .venv/bin/python -m pytest tests/swarm -q -rs -p no:cacheprovider
fi

setup_ansible
mkdir -p tests/artifacts .build
rm -f tests/artifacts/ansible-converge.log
if [ "$step" = ansible ]; then
  say "Ansible playbook: lint, converge against a target container, idempotence, backup and restore"
  exec .venv/bin/python -m pytest tests/ansible -q -rs -p no:cacheprovider
fi

# The course's assignments (nbgrader autograde of each solution, release and gamed answer in the
# course image) need no lab: they run beside the lab's tests, one grading container at a time.
say "course assignments: autograded in the background, log in tests/artifacts/course-assignments.log"
LAB_TEST_GRADING_WORKERS=1 .venv/bin/python -m pytest tests/integration/test_course_assignments.py -q -rs \
  -p no:cacheprovider > tests/artifacts/course-assignments.log 2>&1 &
assignments=$!
say "integration, browser and security tests (against a separate lab instance, mlops-lab-test), then the Ansible playbook's"
lab_status=0
.venv/bin/python -m pytest tests/integration tests/browser tests/security tests/ansible -q -rs -p no:cacheprovider --durations=25 \
  --deselect tests/integration/test_course_assignments.py || lab_status=$?
assignments_status=0
wait "$assignments" || assignments_status=$?
say "course assignments (exit $assignments_status):"
cat tests/artifacts/course-assignments.log
# After the test lab is gone: the swarm's three engines and the lab on them need the machine to themselves.
say "the lab on a three-node swarm (tests/swarm): a manager and two workers, Docker engines in containers"
swarm_status=0
.venv/bin/python -m pytest tests/swarm -q -rs -p no:cacheprovider --durations=10 || swarm_status=$?
if [ "$lab_status" -ne 0 ] || [ "$assignments_status" -ne 0 ] || [ "$swarm_status" -ne 0 ]; then
  exit 1
fi
