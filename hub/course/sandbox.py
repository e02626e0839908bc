"""Run one notebook in a throw-away sandbox container from the course image.

The course service calls ``run_notebook`` for every notebook it grades (scheduled grading,
``make autograde``, the formgrader's buttons all end here). The container gets:

- no network at all (``network_mode: none``), no volumes, a read-only root file system, and
  size-limited tmpfs for ``/tmp`` and the home folder;
- CPU, memory (swap included) and process-count limits, all capabilities dropped and
  ``no-new-privileges``;
- a wall-time limit, after which it is killed.

The notebook goes in on stdin and comes back on stdout (``images/course/lab-sandbox-exec``), so
the container never sees another submission, the gradebook or any file of the host. A fresh
secret goes in on stdin with the notebook; the result counts only when its frame carries that
secret and the executor exited 0, so a notebook that prints a frame of its own and then stops
the executor gets nothing (the executor's docstring says why the kernel cannot learn it). Whatever
goes wrong (a kill at the wall time, a dead kernel, an unreadable result) the caller gets a
notebook whose code cells carry an error naming the reason, so the tests score 0 and the reason
is in the gradebook's output and in the log.

On a swarm (``swarm.enabled``) a sandbox is a Swarm service placed on a worker like a student's
server (``SwarmSandboxes``), with the same limits, and no network: Swarm has no ``none`` network
for a service, so nodeguard (``hub.nodeguard``) deletes the interface of the node's bridge that
the task gets, and the executor reads no notebook while it sees one. Nothing can
be written to a service's stdin, so the notebook and the secret go in as a Swarm secret that only
root may read: the executor starts as root with only the capabilities to change user, forks the
kernel as the student user, reads the secret, and becomes the student user itself. The result
comes back through the service's log. The manager needs no course image for grading.

Ours because nbgrader has no sandbox: its executor runs student code in its own process.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import logging
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import docker
import nbformat
from docker.types import LogConfig

from hub.settings import size_bytes

log = logging.getLogger("sandbox")

MARKER = b"==MLOPS-LAB-SANDBOX-RESULT=="
EXEC = "/usr/local/bin/lab-sandbox-exec"


@dataclass(frozen=True)
class Limits:
    cpus: float = 1.0
    mem: str = "1g"
    pids: int = 128
    wall_seconds: int = 600
    cell_timeout: int = 300
    tmpfs: str = "256m"

    def describe(self) -> str:
        return f"{self.cpus:g} CPU, {self.mem} memory, {self.pids} processes, {self.wall_seconds} s"


def limits_from(settings: dict) -> Limits:
    """A sandbox's limits from lab.yaml's grading section."""
    return Limits(cpus=float(settings.get("cpus", 1.0)), mem=str(settings.get("mem_limit", "1G")),
                  pids=int(settings.get("pids_limit", 128)), wall_seconds=int(settings.get("wall_seconds", 900)),
                  cell_timeout=int(settings.get("cell_timeout", 300)))


@dataclass
class Result:
    notebook: nbformat.NotebookNode
    reason: str
    seconds: float
    timing: dict = field(default_factory=dict)  # seconds: container_start, kernel_wait, execute, sandbox


def error_output(ename: str, evalue: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("error", ename=ename, evalue=evalue,
                                  traceback=[f"\x1b[0;31m{ename}\x1b[0m: {evalue}"])


def failed(nb: nbformat.NotebookNode, reason: str) -> nbformat.NotebookNode:
    """The notebook with every code cell failed for ``reason`` (so every test scores 0)."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [error_output("SandboxError", reason)]
    return nb


def _send_stdin(container, payload: bytes) -> None:
    sock = container.attach_socket(params={"stdin": 1, "stream": 1})
    raw = getattr(sock, "_sock", sock)
    try:
        raw.sendall(payload)
        try:
            raw.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    finally:
        raw.close()


def parse_output(stdout: bytes, secret: str, whole: bool = False) -> dict | None:
    """The result frame that carries this run's ``secret``, or None. Frames without it (or with
    another) are what the notebook printed, and are ignored. ``whole``: the frame's body is all
    that follows the head, line breaks dropped (a log relayed by Swarm may split a long line)."""
    if not secret:
        raise ValueError("a sandbox run needs a secret")
    head = MARKER + secret.encode() + b"\n"
    at = stdout.rfind(head)
    if at < 0:
        return None
    rest = stdout[at + len(head):]
    body = b"".join(rest.split()) if whole else rest.split(b"\n", 1)[0].strip()
    try:
        data = json.loads(base64.b64decode(body, validate=True).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, binascii.Error):
        return None
    return data if isinstance(data, dict) and "notebook" in data else None


def start_sandbox(image: str, limits: Limits, labels: dict | None = None,
                  client: docker.DockerClient | None = None):
    """Create and start a sandbox container; its executor starts the kernel and waits for a
    notebook on stdin (``run_in``)."""
    client = client or docker.from_env(timeout=120)
    container = client.containers.create(
        image, [EXEC], name=f"mlops-lab-sandbox-{uuid.uuid4().hex[:12]}", entrypoint=[], stdin_open=True,
        detach=False,  # detach=False: StdinOnce, so closing stdin after the notebook ends the input
        network_mode="none", read_only=True, user="1000:1000", working_dir="/home/jovyan",
        environment={"HOME": "/home/jovyan", "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg"},
        tmpfs={"/tmp": f"size={limits.tmpfs},mode=1777", "/home/jovyan": f"size={limits.tmpfs},uid=1000,gid=1000"},
        nano_cpus=int(limits.cpus * 1e9), mem_limit=limits.mem, memswap_limit=limits.mem, pids_limit=limits.pids,
        cap_drop=["ALL"], security_opt=["no-new-privileges:true"], ipc_mode="private",
        log_config=LogConfig(type="json-file", config={"max-size": "64m", "max-file": "1"}),
        labels={"mlops-lab.role": "autograde-sandbox", **(labels or {})},
    )
    try:
        container.start()
    except Exception:
        remove(container)
        raise
    return container


def remove(container) -> None:
    try:
        container.remove(force=True)
    except docker.errors.APIError:
        pass


def run_in(container, nb: nbformat.NotebookNode, limits: Limits, label: str = "") -> Result:
    """Give ``nb`` to a started sandbox, wait for its result, remove the container. Never raises
    for what the notebook does. The wall time counts from when the notebook is sent."""
    secret = secrets.token_hex(32)
    payload = json.dumps({"notebook": nb, "cell_timeout": limits.cell_timeout, "limits": limits.describe(),
                          "secret": secret}).encode("utf-8")
    started = time.monotonic()
    reason = ""
    data = None
    try:
        _send_stdin(container, payload)
        sent = time.monotonic()
        try:
            status = container.wait(timeout=limits.wall_seconds)
        except Exception:  # requests' ReadTimeout: past the wall time
            container.kill()
            status = None
            reason = f"stopped after the {limits.wall_seconds} s wall-time limit ({limits.describe()})"
        code = (status or {}).get("StatusCode")
        if not reason:
            data = parse_output(container.logs(stdout=True, stderr=False), secret)
            if data is not None and code != 0:
                # A frame with the secret but the executor did not finish cleanly: not a result.
                data = None
                reason = f"the sandbox's executor did not finish (exit {code}); its result is not used"
        if data is None and not reason:
            container.reload()  # only now: was it the memory limit?
            if container.attrs.get("State", {}).get("OOMKilled"):
                reason = f"killed at the memory limit ({limits.describe()})"
            else:
                tail = container.logs(stdout=False, stderr=True, tail=5).decode("utf-8", "replace").strip()
                reason = f"the sandbox gave no result (exit {code}): {tail[-400:]}"
    except docker.errors.DockerException as exc:
        reason = reason or f"the sandbox could not be run: {exc}"[:400]
    finally:
        remove(container)
    seconds = round(time.monotonic() - started, 3)
    return _result(nb, data, reason, seconds, label or container.name, sent)


def run_notebook(nb: nbformat.NotebookNode, image: str, limits: Limits, label: str = "",
                 labels: dict | None = None, client: docker.DockerClient | None = None) -> Result:
    """Execute ``nb`` in a sandbox started for it; never raises for what the notebook does."""
    return _run(lambda: start_sandbox(image, limits, labels, client), nb, limits, label)


def _result(nb: nbformat.NotebookNode, data: dict | None, reason: str, seconds: float, label: str,
            sent: float | None = None) -> Result:
    """The Result of a sandbox run from its frame (``data``), or the failed notebook with ``reason``."""
    if reason or data is None:
        reason = reason or "the sandbox gave no result"
        log.warning("sandbox %s: %s", label, reason)
        return Result(failed(nb, reason), reason, seconds)
    out = nbformat.from_dict(data["notebook"])
    if data.get("reason"):
        log.warning("sandbox %s: %s", label, data["reason"])
    reported = data.get("timing") if isinstance(data.get("timing"), dict) else {}
    timing = {"sandbox": seconds}
    try:  # what the executor says is only used for the breakdown, never for the result
        if sent is not None:
            timing["kernel_wait"] = round(max(0.0, float(reported["kernel_ready_at"]) - sent), 3)
        else:
            timing["kernel_start"] = round(float(reported["kernel_start"]), 3)
        timing["execute"] = round(float(reported["execute"]), 3)
    except (KeyError, TypeError, ValueError):
        pass
    return Result(out, data.get("reason", ""), seconds, timing)


def _run(get_container, nb: nbformat.NotebookNode, limits: Limits, label: str) -> Result:
    """Get a started sandbox (timed: the wait for a container), then run ``nb`` in it."""
    started = time.monotonic()
    try:
        container = get_container()
    except docker.errors.DockerException as exc:
        reason = f"the sandbox could not be started: {exc}"[:400]
        log.warning("sandbox %s: %s", label, reason)
        return Result(failed(nb, reason), reason, round(time.monotonic() - started, 3))
    waited = round(time.monotonic() - started, 3)
    result = run_in(container, nb, limits, label)
    result.timing["container_start"] = waited
    return result


class WarmPool:
    """Sandboxes started ahead of need: ``take()`` hands out a started container (its kernel
    already up, or coming up) and starts the next one in the background, so a notebook does not
    wait for a container and a kernel to start. Each container still serves one notebook and is
    removed after it. The pool fills on the first ``take()`` and empties after ``idle_seconds``
    without one, so an idle lab holds no kernels."""

    def __init__(self, image: str, limits: Limits, size: int, instance: str, idle_seconds: float = 120.0):
        self.image, self.limits, self.size, self.instance = image, limits, max(0, size), instance
        self.labels = {"mlops-lab.instance": instance, "mlops-lab.grading": "warm"}
        self.idle_seconds = idle_seconds
        self._ready: list = []
        self._starting = 0
        self._lock = threading.Condition()
        self._last_take = 0.0
        self._closed = False
        self._reaper = threading.Thread(target=self._reap, daemon=True, name="sandbox-pool-reaper")
        self._reaper.start()

    def take(self):
        """A started sandbox: a warm one if there is one, else one started now."""
        with self._lock:
            self._last_take = time.monotonic()
            container = self._ready.pop(0) if self._ready else None
            self._fill_locked()
        return container if container is not None else start_sandbox(self.image, self.limits, self.labels)

    def run(self, nb: nbformat.NotebookNode, label: str = "") -> Result:
        return _run(self.take, nb, self.limits, label)

    def _fill_locked(self) -> None:
        while not self._closed and len(self._ready) + self._starting < self.size:
            self._starting += 1
            threading.Thread(target=self._start_one, daemon=True, name="sandbox-pool-start").start()

    def _start_one(self) -> None:
        container = None
        try:
            container = start_sandbox(self.image, self.limits, self.labels)
        except docker.errors.DockerException as exc:
            log.warning("a warm sandbox could not be started: %s", exc)
        with self._lock:
            self._starting -= 1
            if container is not None:
                if self._closed:
                    threading.Thread(target=remove, args=(container,), daemon=True).start()
                else:
                    self._ready.append(container)
            self._lock.notify_all()

    def _reap(self) -> None:
        while True:
            time.sleep(min(10.0, self.idle_seconds / 2))
            with self._lock:
                if self._closed:
                    return
                idle = time.monotonic() - self._last_take > self.idle_seconds
                drop, self._ready = (self._ready, []) if idle else ([], self._ready)
            for container in drop:
                remove(container)

    def describe(self) -> str:
        return f"{self.size} started ahead of need"

    def remove_left(self) -> int:
        """Sandboxes of this lab that a runner before this one left (killed, or the hub
        restarted): nobody will read their results."""
        client = docker.from_env(timeout=60)
        left = client.containers.list(all=True, filters={"label": ["mlops-lab.role=autograde-sandbox",
                                                                   f"mlops-lab.instance={self.instance}"]})
        for container in left:
            remove(container)
        return len(left)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            drop, self._ready = self._ready, []
        for container in drop:
            remove(container)


# -- on a swarm ----------------------------------------------------------------------------------

SECRET_LIMIT = 500 * 1024  # Swarm's limit on a secret's size
INPUT = "/run/secrets/lab-sandbox-input"
TERMINAL = {"complete", "failed", "rejected", "shutdown", "orphaned", "remove"}


class SwarmSandboxes:
    """Sandboxes as Swarm services on the workers: one service per notebook, removed after it.
    The same limits as on one host (CPU, memory, processes, wall time, read-only root, tmpfs, no
    capability but changing user, which the executor gives up before it reads the notebook's
    result), placed by Swarm with ``placement`` and a reservation of the sandbox's CPU and memory,
    so a busy node is not given more. A sandbox that no node starts in ``start_seconds`` fails
    with Swarm's reason."""

    def __init__(self, image: str, limits: Limits, instance: str, placement: list[str],
                 client: docker.DockerClient | None = None, start_seconds: float = 300.0):
        self.image, self.limits, self.instance, self.placement = image, limits, instance, list(placement)
        # version "auto": the engine's own API version (no-new-privileges needs 1.46)
        self.client = client or docker.from_env(version="auto", timeout=120)
        self.start_seconds = start_seconds
        self._nodes: dict[str, str] = {}

    def labels(self) -> dict:
        return {"mlops-lab.role": "autograde-sandbox", "mlops-lab.instance": self.instance}

    def node_name(self, node_id: str) -> str:
        if node_id not in self._nodes:
            try:
                self._nodes[node_id] = self.client.api.inspect_node(node_id)["Description"]["Hostname"]
            except (docker.errors.APIError, KeyError):
                return node_id[:12]
        return self._nodes[node_id]

    def task_template(self, secret_id: str, secret_name: str) -> dict:
        lim = self.limits
        tmpfs = size_bytes(lim.tmpfs)
        spec = docker.types.ContainerSpec(
            self.image, command=[EXEC, "--input", INPUT], user="0:0", workdir="/home/jovyan",
            env={"HOME": "/home/jovyan", "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg"},
            labels=self.labels(), read_only=True, cap_drop=["ALL"], cap_add=["CAP_SETUID", "CAP_SETGID"],
            mounts=[docker.types.Mount("/tmp", None, type="tmpfs", tmpfs_size=tmpfs, tmpfs_mode=0o1777),
                    docker.types.Mount("/home/jovyan", None, type="tmpfs", tmpfs_size=tmpfs, tmpfs_mode=0o1777)],
            secrets=[docker.types.SecretReference(secret_id, secret_name, filename=INPUT.rsplit("/", 1)[1],
                                                  uid="0", gid="0", mode=0o400)])
        mem = size_bytes(lim.mem)
        resources = docker.types.Resources(cpu_limit=int(lim.cpus * 1e9), mem_limit=mem,
                                           cpu_reservation=int(lim.cpus * 1e9), mem_reservation=mem)
        template = docker.types.TaskTemplate(
            spec, resources=resources, restart_policy=docker.types.RestartPolicy(condition="none"),
            placement=docker.types.Placement(constraints=self.placement),
            # No network named: Swarm has no "none" for services, so the task gets the node's
            # bridge, and nodeguard deletes its interface before the executor reads the notebook.
            log_driver=docker.types.DriverConfig("json-file", {"max-size": "64m", "max-file": "1"}))
        template["ContainerSpec"]["Privileges"] = {"NoNewPrivileges": True}  # (API 1.46+; older engines ignore it)
        template["Resources"]["Limits"]["Pids"] = lim.pids  # docker-py has no Pids; the API (1.41+) does
        return template

    def run(self, nb: nbformat.NotebookNode, label: str = "") -> Result:
        started = time.monotonic()
        secret = secrets.token_hex(32)
        payload = gzip.compress(json.dumps({"notebook": nb, "cell_timeout": self.limits.cell_timeout,
                                            "limits": self.limits.describe(), "secret": secret}).encode("utf-8"))
        if len(payload) > SECRET_LIMIT:
            return _result(nb, None, f"the notebook is too large for a sandbox on the swarm ({len(payload) // 1024} KiB "
                           f"compressed; Swarm takes {SECRET_LIMIT // 1024} KiB)", 0.0, label)
        name = f"{self.instance}-sandbox-{uuid.uuid4().hex[:12]}"
        api = self.client.api
        service_id = secret_id = None
        data, reason, timing = None, "", {}
        try:
            secret_id = api.create_secret(name, payload, labels=self.labels())["ID"]
            service_id = api.create_service(self.task_template(secret_id, name), name=name, labels=self.labels())["ID"]
            data, reason, timing = self._wait(service_id, secret, label)
        except docker.errors.DockerException as exc:
            reason = reason or f"the sandbox could not be run on the swarm: {exc}"[:400]
        finally:
            self.remove(service_id, secret_id)
        result = _result(nb, data, reason, round(time.monotonic() - started, 3), label)
        result.timing.update(timing)
        return result

    def _task(self, service_id: str) -> dict | None:
        tasks = self.client.api.tasks(filters={"service": service_id})
        return max(tasks, key=lambda t: t.get("CreatedAt", "")) if tasks else None

    def _wait(self, service_id: str, secret: str, label: str) -> tuple[dict | None, str, dict]:
        created = time.monotonic()
        running_since = None
        task = None
        while True:
            task = self._task(service_id) or {}
            state = task.get("Status", {}).get("State", "")
            if running_since is None and state in {"running"} | TERMINAL:
                running_since = time.monotonic()
            if state in TERMINAL:
                break
            now = time.monotonic()
            if running_since is None and now - created > self.start_seconds:
                why = task.get("Status", {}).get("Err") or task.get("Status", {}).get("Message") or state
                return None, f"no node of the swarm started the sandbox in {self.start_seconds:g} s: {why}", {}
            if running_since is not None and now - running_since > self.limits.wall_seconds:
                return None, (f"stopped after the {self.limits.wall_seconds} s wall-time limit "
                              f"({self.limits.describe()})"), {}
            time.sleep(0.25)
        node = self.node_name(task.get("NodeID", "")) if task.get("NodeID") else "no node"
        status = task.get("Status", {})
        code = status.get("ContainerStatus", {}).get("ExitCode")
        timing = {"container_start": round(running_since - created, 3)}
        log.info("sandbox %s ran on %s: %s (exit %s)", label, node, status.get("State"), code)
        if status.get("State") != "complete" or code != 0:
            why = status.get("Err") or status.get("Message") or status.get("State")
            hint = f" (exit 137: killed, at the memory limit or the process limit: {self.limits.describe()})" \
                if code == 137 else ""
            try:
                tail = self.client.api.service_logs(service_id, stdout=False, stderr=True, follow=False, tail=3)
                tail = (tail if isinstance(tail, bytes) else b"".join(tail)).decode("utf-8", "replace").strip()
            except docker.errors.APIError:
                tail = ""
            return None, f"the sandbox on {node} gave no result: {why}{hint} {tail[-300:]}".strip()[:500], timing
        logs = self.client.api.service_logs(service_id, stdout=True, stderr=False, follow=False)
        stdout = logs if isinstance(logs, bytes) else b"".join(logs)
        data = parse_output(stdout, secret, whole=True)
        if data is None:
            return None, f"the sandbox on {node} finished, but its log holds no result", timing
        return data, "", timing

    def remove(self, service_id: str | None, secret_id: str | None) -> None:
        api = self.client.api
        if service_id:
            try:
                api.remove_service(service_id)
            except docker.errors.APIError:
                pass
        if secret_id:
            for _ in range(20):  # Swarm frees a secret once no service refers to it
                try:
                    api.remove_secret(secret_id)
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError:
                    time.sleep(0.5)

    def describe(self) -> str:
        return f"as Swarm services ({', '.join(self.placement) or 'any node'})"

    def remove_left(self) -> int:
        """Sandbox services and secrets of this lab that an earlier runner left."""
        api = self.client.api
        labels = [f"{k}={v}" for k, v in self.labels().items()]
        services = api.services(filters={"label": labels})
        for service in services:
            self.remove(service["ID"], None)
        for secret in api.secrets(filters={"label": labels}):
            self.remove(None, secret["ID"])
        return len(services)

    def close(self) -> None:
        pass

