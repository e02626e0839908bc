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

Ours because nbgrader has no sandbox: its executor runs student code in its own process.
"""

from __future__ import annotations

import base64
import binascii
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


def parse_output(stdout: bytes, secret: str) -> dict | None:
    """The result frame that carries this run's ``secret``, or None. Frames without it (or with
    another) are what the notebook printed, and are ignored."""
    if not secret:
        raise ValueError("a sandbox run needs a secret")
    head = MARKER + secret.encode() + b"\n"
    at = stdout.rfind(head)
    if at < 0:
        return None
    body = stdout[at + len(head):].split(b"\n", 1)[0]
    try:
        data = json.loads(base64.b64decode(body.strip(), validate=True).decode("utf-8"))
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
    if reason:
        log.warning("sandbox %s: %s", label or container.name, reason)
        return Result(failed(nb, reason), reason, seconds)
    out = nbformat.from_dict(data["notebook"])
    if data.get("reason"):
        log.warning("sandbox %s: %s", label or container.name, data["reason"])
    reported = data.get("timing") if isinstance(data.get("timing"), dict) else {}
    timing = {"sandbox": seconds}
    try:  # what the executor says is only used for the breakdown, never for the result
        timing["kernel_wait"] = round(max(0.0, float(reported["kernel_ready_at"]) - sent), 3)
        timing["execute"] = round(float(reported["execute"]), 3)
    except (KeyError, TypeError, ValueError):
        pass
    return Result(out, data.get("reason", ""), seconds, timing)


def run_notebook(nb: nbformat.NotebookNode, image: str, limits: Limits, label: str = "",
                 labels: dict | None = None, client: docker.DockerClient | None = None) -> Result:
    """Execute ``nb`` in a sandbox started for it; never raises for what the notebook does."""
    return _run(lambda: start_sandbox(image, limits, labels, client), nb, limits, label)


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

    def __init__(self, image: str, limits: Limits, size: int, labels: dict | None = None,
                 idle_seconds: float = 120.0):
        self.image, self.limits, self.size, self.labels = image, limits, max(0, size), labels or {}
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

    def close(self) -> None:
        with self._lock:
            self._closed = True
            drop, self._ready = self._ready, []
        for container in drop:
            remove(container)
