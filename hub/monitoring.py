"""The lab's monitoring: Prometheus's configuration (written by the hub) and the container exporter.

Prometheus (images/prometheus, Debian's package, compose profile ``monitoring``) scrapes two
things every ``monitoring.scrape_seconds``:

- **The hub's own ``/hub/metrics``**: logins, server starts and their durations, running servers,
  request times. JupyterHub asks for a token with ``read:metrics``; the hub makes one (kept across
  restarts) for the ``prometheus`` service, whose only right that is, and writes it with the
  configuration on the ``monitor-config`` volume that only the hub and Prometheus mount.
- **This module's exporter** (``python3 -m hub.monitoring``, the compose service ``metrics``): CPU
  and memory of every container of this lab, labelled with the student, the profile and the role
  (student server, grading sandbox, hub, proxy, ...), and on GPU hosts which GPU each student holds
  and how busy it is.

Ours because no exporter of the Jupyter ecosystem knows students: cAdvisor (not in Debian, no
registry here) labels containers by ID, and the hub's metrics have no per-student resource use.
The exporter reads the containers' cgroup files from the host (cgroup v1 or v2, the ``cgroupfs``
or ``systemd`` driver's paths) rather than Docker's stats API, which costs the engine a request per
container per scrape, so that watching a class of several hundred costs the Docker engine two
list calls per scrape; the stats API is the fallback where no cgroup file is found.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

FOLDER = Path(os.environ.get("LAB_MONITOR_DIR", "/run/lab-monitor"))
TOKEN_FILE = "metrics-token"
EXPORTER_PORT = 9101
PROMETHEUS_URL = "http://prometheus:9090"


# --- the hub's side: Prometheus's configuration ------------------------------------------------

def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def exporter_service_name(instance: str) -> str:
    """On a swarm: the exporter's global service, one task per node."""
    return f"{instance}-metrics"


def prometheus_config(scrape_seconds: int, hub: str = "hub:8081", exporter: str = f"metrics:{EXPORTER_PORT}",
                      token_file: str = f"/run/lab-monitor/{TOKEN_FILE}", swarm_service: str = "") -> str:
    """prometheus.yml: the hub's metrics (with the token) and the container exporter. On a swarm
    (``swarm_service``), every node's exporter, found by Swarm's DNS (``tasks.<service>``, one
    address per task), so a node that joins is scraped at the next lookup."""
    every = f"{scrape_seconds}s"
    timeout = f"{max(3, min(scrape_seconds - 1, 10))}s"
    if swarm_service:
        exporters = f"""    dns_sd_configs:
      - names: ["tasks.{swarm_service}"]
        type: A
        port: {EXPORTER_PORT}
        refresh_interval: {every}"""
    else:
        exporters = f"""    static_configs:
      - targets: ["{exporter}"]"""
    return f"""# Written by the hub at each start (hub/monitoring.py) from lab.yaml's monitoring section.
global:
  scrape_interval: {every}
  scrape_timeout: {timeout}
  evaluation_interval: {every}
scrape_configs:
  - job_name: hub
    metrics_path: /hub/metrics
    authorization:
      type: Bearer
      credentials_file: {token_file}
    static_configs:
      - targets: ["{hub}"]
  - job_name: containers
{exporters}
  - job_name: prometheus
    static_configs:
      - targets: ["localhost:9090"]
"""


def write_prometheus_config(scrape_seconds: int, retention: str, folder: Path = FOLDER, swarm_service: str = "") -> str:
    """For the hub: the metrics token (made once, kept), prometheus.yml and the retention, written
    atomically; returns the token. The token may only read the hub's metrics, and the files are
    readable by Prometheus's own user (not root) in its container."""
    folder.mkdir(parents=True, exist_ok=True)
    token_path = folder / TOKEN_FILE
    token = token_path.read_text().strip() if token_path.is_file() else ""
    if not token:
        token = secrets.token_hex(32)
    _write(token_path, token, 0o644)
    conf = folder / "prometheus.yml"
    before = conf.read_text() if conf.is_file() else None
    _write(conf, prometheus_config(scrape_seconds, swarm_service=swarm_service), 0o644)
    _write(folder / "retention", retention, 0o644)
    if before is not None and before != conf.read_text():
        reload_prometheus()
    return token


def reload_prometheus(url: str = PROMETHEUS_URL) -> bool:
    """Ask a running Prometheus to read its changed configuration (a new scrape interval); a
    Prometheus not running reads it when it starts. A new retention needs its restart."""
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(f"{url}/-/reload", method="POST", data=b""), timeout=3)
        return True
    except OSError:
        return False


# --- the exporter: containers' CPU and memory from their cgroups --------------------------------

@dataclass
class Usage:
    cpu_seconds: float
    memory_bytes: int
    memory_limit: int | None = None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat(path: Path) -> dict[str, int]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


NO_LIMIT = 1 << 60  # cgroup v1 shows "no limit" as a page-rounded 2**63-1


class Cgroups:
    """Where a container's cgroup lives on this host, for the drivers Docker uses."""

    def __init__(self, root: Path):
        self.root = root
        self.v2 = (root / "cgroup.controllers").exists()

    def usage(self, cid: str) -> Usage | None:
        return self._v2(cid) if self.v2 else self._v1(cid)

    def _v2(self, cid: str) -> Usage | None:
        for d in (self.root / "system.slice" / f"docker-{cid}.scope", self.root / "docker" / cid):
            cpu = _stat(d / "cpu.stat").get("usage_usec")
            mem = _read_int(d / "memory.current")
            if cpu is None or mem is None:
                continue
            # As `docker stats` shows it: without the page cache the kernel may take back.
            mem -= _stat(d / "memory.stat").get("inactive_file", 0)
            limit = _read_int(d / "memory.max")
            return Usage(cpu / 1e6, max(mem, 0), limit)
        return None

    def _v1(self, cid: str) -> Usage | None:
        for sub in (Path("docker") / cid, Path("system.slice") / f"docker-{cid}.scope"):
            cpu = _read_int(self.root / "cpuacct" / sub / "cpuacct.usage")
            mem = _read_int(self.root / "memory" / sub / "memory.usage_in_bytes")
            if cpu is None or mem is None:
                continue
            mem -= _stat(self.root / "memory" / sub / "memory.stat").get("total_inactive_file", 0)
            limit = _read_int(self.root / "memory" / sub / "memory.limit_in_bytes")
            return Usage(cpu / 1e9, max(mem, 0), limit if limit is not None and limit < NO_LIMIT else None)
        return None


def usage_from_stats(stats: dict) -> Usage | None:
    """The same figures from Docker's stats API (``one-shot``), where no cgroup file was found."""
    try:
        cpu = stats["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9
        memory = stats["memory_stats"]
        used = memory["usage"] - (memory.get("stats") or {}).get("inactive_file",
                                                                  (memory.get("stats") or {}).get("total_inactive_file", 0))
        return Usage(cpu, max(int(used), 0), memory.get("limit"))
    except (KeyError, TypeError):
        return None


# --- GPUs: which student holds which, and how busy it is ----------------------------------------

GPU_QUERY = "index,uuid,utilization.gpu,memory.used,memory.total"


def parse_nvidia_smi(text: str) -> list[dict]:
    """``nvidia-smi --query-gpu=index,uuid,utilization.gpu,memory.used,memory.total
    --format=csv,noheader,nounits``: one dict per GPU. Figures shown as ``[N/A]`` (MIG mode shows
    no utilization for the whole GPU) are left out rather than made zero."""
    gpus = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) != 5:
            continue
        index, uuid, util, used, total = (cell.strip() for cell in row)
        gpu = {"index": index, "uuid": uuid}
        for key, value, scale in (("utilization", util, 0.01), ("memory_used", used, 1 << 20),
                                  ("memory_total", total, 1 << 20)):
            try:
                gpu[key] = float(value) * scale
            except ValueError:
                pass
        gpus.append(gpu)
    return gpus


def read_gpus() -> list[dict]:
    """This host's GPUs as nvidia-smi shows them; [] where there is no nvidia-smi or it fails."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(out)


def gpu_holders(allocations: dict[str, str], gpus: list[dict]) -> list[tuple[str, str, dict | None]]:
    """(user, device as the allocator names it, that GPU's figures or None) for each allocation.
    The allocator names a device by index, ``GPU-`` UUID or ``MIG-`` UUID (lab.yaml's
    ``gpus.devices``); a MIG slice has no figures of its own in nvidia-smi's GPU query."""
    by_key = {}
    for gpu in gpus:
        by_key[gpu["index"]] = gpu
        by_key[gpu["uuid"]] = gpu
    return [(user, device, by_key.get(device)) for user, device in sorted(allocations.items())]


# --- the collector --------------------------------------------------------------------------------

class LabCollector:
    """prometheus_client collector: one reading of every container of the lab per scrape."""

    def __init__(self, instance: str, cgroups: Cgroups, client=None, gpus=read_gpus, node: str = ""):
        import docker

        self.instance = instance
        self.node = node  # on a swarm, the node this exporter reads (each node has its own)
        self.cgroups = cgroups
        self.client = client or docker.from_env(timeout=10)
        self.gpus = gpus
        self.fallbacks = 0

    def containers(self) -> list:
        seen, out = set(), []
        for label in (f"mlops-lab.instance={self.instance}", f"com.docker.compose.project={self.instance}"):
            for c in self.client.containers.list(filters={"label": label}, sparse=True):
                if c.id not in seen:
                    seen.add(c.id)
                    out.append(c)
        return out

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        started = time.monotonic()
        names = ["name", "role", "user", "profile", "node"]
        cpu = CounterMetricFamily("lab_container_cpu_seconds", "CPU time a container of the lab has used", labels=names)
        mem = GaugeMetricFamily("lab_container_memory_bytes",
                                "Memory a container uses, without the page cache the kernel may take back",
                                labels=names)
        limit = GaugeMetricFamily("lab_container_memory_limit_bytes", "A container's memory limit", labels=names)
        count = GaugeMetricFamily("lab_containers", "Running containers of the lab, by role", labels=["role", "node"])
        held = GaugeMetricFamily("lab_gpu_allocated", "1 for each GPU (or MIG slice) a student's server holds",
                                 labels=["user", "device", "profile", "node"])
        util = GaugeMetricFamily("lab_gpu_utilization_ratio", "How busy a GPU is (0-1), with who holds it",
                                 labels=["device", "user", "node"])
        gmem = GaugeMetricFamily("lab_gpu_memory_used_bytes", "GPU memory in use, with who holds the GPU",
                                 labels=["device", "user", "node"])
        roles: dict[str, int] = {}
        allocations, profiles = {}, {}
        for c in self.containers():
            labels = c.attrs.get("Labels") or {}  # a sparse listing: what the list call gave
            role = labels.get("mlops-lab.role") or labels.get("com.docker.compose.service") or "other"
            user = labels.get("mlops-lab.user", "")
            profile = labels.get("mlops-lab.profile", "")
            roles[role] = roles.get(role, 0) + 1
            if labels.get("mlops-lab.gpu") and user:
                allocations[user] = labels["mlops-lab.gpu"]
                profiles[user] = profile
            usage = self.cgroups.usage(c.id)
            if usage is None:
                self.fallbacks += 1
                try:
                    usage = usage_from_stats(self.client.api.stats(c.id, stream=False, one_shot=True))
                except Exception:  # the container stopped meanwhile, or the engine is busy
                    usage = None
            if usage is None:
                continue
            name = (c.attrs.get("Names") or [c.id[:12]])[0].lstrip("/")
            values = [name, role, user, profile, self.node]
            cpu.add_metric(values, usage.cpu_seconds)
            mem.add_metric(values, usage.memory_bytes)
            if usage.memory_limit:
                limit.add_metric(values, usage.memory_limit)
        for role, n in sorted(roles.items()):
            count.add_metric([role, self.node], n)
        gpus = self.gpus() if allocations else []
        for user, device, figures in gpu_holders(allocations, gpus):
            held.add_metric([user, device, profiles.get(user, ""), self.node], 1)
            if figures and "utilization" in figures:
                util.add_metric([device, user, self.node], figures["utilization"])
            if figures and "memory_used" in figures:
                gmem.add_metric([device, user, self.node], figures["memory_used"])
        took = GaugeMetricFamily("lab_exporter_scrape_seconds", "How long this reading took")
        took.add_metric([], time.monotonic() - started)
        fallbacks = CounterMetricFamily("lab_exporter_stats_api_calls", "Readings that needed Docker's stats API")
        fallbacks.add_metric([], self.fallbacks)
        yield from (cpu, mem, limit, count, held, util, gmem, took, fallbacks)


# --- on a swarm: the exporter on every node -------------------------------------------------------

def service_spec(instance: str, image: str, network: str) -> dict:
    """The global exporter service (docker-py ``create_service`` arguments): on each node, that
    node's containers of the lab, read as the compose service reads one host's. It joins the lab's
    network, where Prometheus finds every task by DNS; nodeguard lets no student's server reach it.
    NVIDIA's runtime, the default on the lab's GPU nodes, gives it nvidia-smi (utility only)."""
    import docker.types

    from .swarm import health_check

    container = docker.types.ContainerSpec(
        image, command=["python3", "-m", "hub.monitoring"],
        env={"LAB_INSTANCE": instance, "LAB_NODE": "{{.Node.Hostname}}",
             "NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "utility"},
        mounts=[docker.types.Mount("/var/run/docker.sock", "/var/run/docker.sock", type="bind"),
                docker.types.Mount("/host/cgroup", "/sys/fs/cgroup", type="bind", read_only=True)],
        labels={"mlops-lab.instance": instance, "mlops-lab.role": "metrics"},
        healthcheck=health_check(["python3", "-c", "import socket; "
                                  f"socket.create_connection(('127.0.0.1', {EXPORTER_PORT}), 2).close()"]),
    )
    task = docker.types.TaskTemplate(container, networks=[{"Target": network}],
                                     restart_policy=docker.types.RestartPolicy(condition="any", delay=2_000_000_000))
    return {"task_template": task, "mode": docker.types.ServiceMode("global"),
            "name": exporter_service_name(instance),
            "endpoint_spec": docker.types.EndpointSpec(mode="dnsrr"),
            "labels": {"mlops-lab.instance": instance, "mlops-lab.role": "metrics"}}


def main() -> None:
    from prometheus_client import CollectorRegistry, start_http_server

    instance = os.environ.get("LAB_INSTANCE", "mlops-lab")
    root = Path(os.environ.get("LAB_HOST_CGROUP", "/host/cgroup"))
    if not root.is_dir():
        sys.exit(f"[metrics] no host cgroup folder at {root}: mount /sys/fs/cgroup there read-only "
                 "(docker-compose.yml does)")
    cgroups = Cgroups(root)
    registry = CollectorRegistry(auto_describe=False)
    node = os.environ.get("LAB_NODE", "")
    registry.register(LabCollector(instance, cgroups, node=node))
    start_http_server(EXPORTER_PORT, addr="0.0.0.0", registry=registry)
    print(f"[metrics] containers of {instance}{' on node ' + node if node else ''} "
          f"(cgroup {'v2' if cgroups.v2 else 'v1'} at {root}), on :{EXPORTER_PORT}/metrics", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


if __name__ == "__main__":
    main()
