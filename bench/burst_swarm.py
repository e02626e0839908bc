#!/usr/bin/env python3
"""The 9:00 burst against the lab on a swarm: bench/burst.py --mini, on three Docker engines.

    bench/burst_swarm.py [-n 300] [--window 300] [--no-floor] [--warm]     (make bench-burst-swarm)

Builds the swarm the swarm tests use (tests/swarm/conftest.py: a manager and two workers, each a
Docker engine in a container on this machine, homes on a shared folder), loads the minimal server
(images/mini) onto the nodes, starts the lab on the manager with compose as `make up` does, its
students' servers swapped for the minimal one (LAB_SERVER_IMAGE), and runs bench/burst.py against
it: the students log in through the DTU provider, spawn, open their server and get a cell's echo.
Its figures are the same as on one host; the floor is plain Swarm services of the same image, each
until its task runs on a worker. The swarm is removed afterwards, whatever the outcome.

On one machine the three engines share its cores, so these figures are what Swarm and the lab's
swarm mode add, not what separate servers would give.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import TAG  # noqa: E402
from tests.swarm.conftest import INSTANCE, container, make_swarm, remove_swarm, start_lab  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=300, help="students (default 300)")
    p.add_argument("--window", type=float, default=300, help="seconds over which they arrive (default 300)")
    p.add_argument("--no-floor", action="store_true", help="skip the plain Swarm services floor")
    p.add_argument("--warm", action="store_true", help="the warm service starts the students' servers first "
                   "(burst.py --warm; the lab gets warm.enabled and a budget for every student)")
    a = p.parse_args()
    subprocess.run(["bash", "scripts/build-images.sh", "--if-missing", "mini"], cwd=ROOT, check=True)
    mini = f"mlops-lab/mini:{TAG}"
    workdir = Path(tempfile.mkdtemp(prefix="burst-swarm-"))
    print(f"burst-swarm: a manager and two workers (engines in containers), then {a.n} students", flush=True)
    try:
        swarm = make_swarm(workdir)
        # The workers run it; the manager's hub reads its command from it (the course image's is named
        # in the hub's configuration, so the manager needs no course image).
        for node in ("mgr", "a", "b"):
            subprocess.run(f"docker save {mini} | docker exec -i {container(node)} docker load -q", shell=True,
                           check=True, capture_output=True)
        warm = f"warm:\n  enabled: true\n  memory_budget: {a.n + 10}G\n" if a.warm else ""  # 1G a server
        lab = start_lab(swarm, (f"LAB_SERVER_IMAGE={mini}",), warm)
        cmd = [sys.executable, "-u", str(ROOT / "bench" / "burst.py"), "--mini", "--swarm", "--keep",
               "-n", str(a.n), "--window", str(a.window), "--url", lab.url, "--idp", lab.idp_url,
               "--token", lab.token, "--instance", INSTANCE, "--network", INSTANCE,
               "--docker", f"docker exec {container('mgr')} docker", *(["--no-floor"] if a.no_floor else []),
               *(["--warm"] if a.warm else [])]
        code = subprocess.run(cmd, cwd=ROOT).returncode
        # The hub's log says where each start spent its time ("Server of ...: service made in ...").
        logs = ROOT / "bench" / "results" / time.strftime("burst-swarm-%Y%m%d-%H%M%S")
        logs.mkdir(parents=True, exist_ok=True)
        (logs / "compose.log").write_text(lab.compose("logs", "--no-color", "--timestamps", check=False).stdout)
        for node in ("a", "b"):  # each worker's nodeguard (`docker service logs` can hang on a busy swarm)
            guard = subprocess.run(f"docker exec {container(node)} sh -c 'for c in $(docker ps -aq --filter "
                                   f"label=com.docker.swarm.service.name={INSTANCE}-nodeguard); do "
                                   "echo \"== $c\"; docker logs --timestamps $c 2>&1; done'",
                                   shell=True, capture_output=True, text=True, timeout=120)
            (logs / f"nodeguard-{node}.log").write_text(guard.stdout + guard.stderr)
        print(f"burst-swarm: the lab's logs are in {logs.relative_to(ROOT)}", flush=True)
        return code
    finally:
        print("burst-swarm: removing the swarm", flush=True)
        remove_swarm()


if __name__ == "__main__":
    sys.exit(main())
