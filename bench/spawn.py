#!/usr/bin/env python3
"""Spawn benchmark: N students at once through the hub's REST API, against the floor.

    bench/spawn.py [-n 10] [--url http://127.0.0.1:8000] [--token ...] [--image mlops-lab/course:TAG]

1. Lab: creates N users (bench-<run>-<i>), POSTs all their servers at once, and times each
   from the POST until the hub reports the server ready (its JupyterLab answers via the proxy).
2. Floor, in the same run: N plain `docker run -d` of the same image at the same concurrency
   (JupyterLab alone, no hub), each timed until its /api/status answers.
Prints p50 and p95 of both and their ratio. Removes every user, container and volume it made.
The URL and token default to the running lab's .env (LAB_PUBLIC_URL, LAB_ADMIN_API_TOKEN).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import secrets
import statistics
import subprocess
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def read_env() -> dict[str, str]:
    env = {}
    path = ROOT / ".env"
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip()
    return env


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout.strip()


def bench_lab(url: str, token: str, n: int, instance: str, timeout: float) -> list[float]:
    s = requests.Session()
    s.headers["Authorization"] = f"token {token}"
    run = uuid.uuid4().hex[:6]
    names = [f"bench-{run}-{i:02d}" for i in range(n)]
    for name in names:
        r = s.post(f"{url}/hub/api/users/{name}", timeout=30)
        r.raise_for_status()

    def one(name: str) -> float:
        t0 = time.perf_counter()
        r = s.post(f"{url}/hub/api/users/{name}/server", timeout=timeout)
        if r.status_code not in (201, 202):
            raise RuntimeError(f"{name}: {r.status_code} {r.text}")
        while time.perf_counter() - t0 < timeout:
            server = s.get(f"{url}/hub/api/users/{name}", timeout=30).json().get("servers", {}).get("")
            if server is None:
                raise RuntimeError(f"{name}: server stopped while starting")
            if server.get("ready"):
                return time.perf_counter() - t0
            time.sleep(0.2)
        raise RuntimeError(f"{name}: not ready after {timeout}s")

    try:
        with cf.ThreadPoolExecutor(n) as pool:
            return list(pool.map(one, names))
    finally:
        for name in names:
            s.delete(f"{url}/hub/api/users/{name}/server", timeout=120)
        for name in names:
            for _ in range(120):
                if not s.get(f"{url}/hub/api/users/{name}", timeout=30).json().get("servers"):
                    break
                time.sleep(1)
            s.delete(f"{url}/hub/api/users/{name}", timeout=30)
            subprocess.run(["docker", "volume", "rm", "-f", f"{instance}-home-{name}"], capture_output=True)


def bench_floor(image: str, network: str, n: int, timeout: float) -> list[float]:
    token = secrets.token_hex(16)
    run = uuid.uuid4().hex[:6]

    def one(i: int) -> float:
        name = f"bench-floor-{run}-{i:02d}"
        t0 = time.perf_counter()
        docker("run", "-d", "--rm", "--name", name, "--network", network, "--entrypoint", "jupyter", image,
               "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", f"--IdentityProvider.token={token}")
        try:
            ip = ""
            while time.perf_counter() - t0 < timeout:
                if not ip:
                    nets = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", name))
                    ip = (nets.get(network) or {}).get("IPAddress", "")
                if ip:
                    try:
                        if requests.get(f"http://{ip}:8888/api/status", headers={"Authorization": f"token {token}"},
                                        timeout=2).ok:
                            return time.perf_counter() - t0
                    except requests.RequestException:
                        pass
                time.sleep(0.2)
            raise RuntimeError(f"{name}: no answer after {timeout}s")
        finally:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)

    with cf.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def main() -> None:
    env = read_env()
    tag = env.get("LAB_IMAGE_TAG") or (ROOT / "VERSION").read_text().strip()
    instance = env.get("LAB_INSTANCE", "mlops-lab")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=10, help="students spawned at once (default 10)")
    p.add_argument("--url", default=os.environ.get("LAB_URL") or f"http://127.0.0.1:{env.get('LAB_HTTP_PORT', '8000')}")
    p.add_argument("--token", default=os.environ.get("LAB_ADMIN_API_TOKEN") or env.get("LAB_ADMIN_API_TOKEN"))
    p.add_argument("--image", default=f"mlops-lab/course:{tag}")
    p.add_argument("--network", default=env.get("LAB_NETWORK") or instance)
    p.add_argument("--instance", default=instance)
    p.add_argument("--timeout", type=float, default=300)
    a = p.parse_args()
    if not a.token:
        p.error("no admin token: set LAB_ADMIN_API_TOKEN in .env (make up creates one) or pass --token")

    print(f"spawn benchmark: n={a.n} image={a.image} hub={a.url} cores={os.cpu_count()}", flush=True)
    floor = bench_floor(a.image, a.network, a.n, a.timeout)
    lab = bench_lab(a.url, a.token, a.n, a.instance, a.timeout)
    rows = [("floor: docker run, JupyterLab alone", floor), ("lab: REST API spawn to ready", lab)]
    for label, values in rows:
        print(f"{label:40s} p50 {percentile(values, 50):6.2f} s   p95 {percentile(values, 95):6.2f} s"
              f"   max {max(values):6.2f} s")
    print(f"ratio lab/floor: p50 {percentile(lab, 50) / percentile(floor, 50):.2f}x   "
          f"p95 {percentile(lab, 95) / percentile(floor, 95):.2f}x")


if __name__ == "__main__":
    main()
