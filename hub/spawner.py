"""The lab's DockerSpawner: one container per student from the pinned course image.

DockerSpawner does the container work (named home volume, limits, removal on stop,
``allowed_images``). This subclass adds one thing it lacks: when a student's container exits
while starting, JupyterHub 6.1 answers a bare 500 (``InvalidStateError: Exception is not set``)
because nothing fails the spawn until the HTTP wait times out. ``start`` here keeps watching
the container until its server port answers; if the container exits first, it collects the
container's last log lines, logs them for the operator, removes the container and fails the
spawn with a message that shows them to the student.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import html
import inspect
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import docker
import docker.types
from dockerspawner import DockerSpawner
from jupyterhub import orm
from tornado import web
from traitlets import Bool, Dict, Int, List, Unicode, default

from .gpu import Allocator, Device, NoDeviceConfigured, NoDeviceFree
from .netguard import heartbeat_problem
from .profiles import Profile, render_form
from .settings import USERNAME_RE, Settings

LOG_TAIL_LINES = 15
# The hub's username pattern (see hub.config); such names are already valid Docker names.
DOCKER_SAFE_USERNAME = USERNAME_RE


def docker_name(username: str) -> str:
    """Name Docker objects after the user as is (``mlops-lab-home-s230001``).

    DockerSpawner's default escaping turns every '-' into '-2d' so that arbitrary names cannot
    collide; the hub only admits names that are valid Docker names already, so leaving them
    unchanged is collision-free and keeps volume names readable for operators and backups.
    Anything else still gets DockerSpawner's escaping.
    """
    if DOCKER_SAFE_USERNAME.fullmatch(username):
        return username
    return DockerSpawner._escape(username)


def running_gpu_containers(client, instance: str) -> dict[str, tuple[str, str]]:
    """user -> (device id, profile) for every running GPU container of this lab (docker APIClient)."""
    running = {}
    for c in client.containers(filters={"label": [f"mlops-lab.instance={instance}", "mlops-lab.gpu"]}):
        labels = c.get("Labels") or {}
        if labels.get("mlops-lab.user"):
            running[labels["mlops-lab.user"]] = (labels["mlops-lab.gpu"], labels.get("mlops-lab.profile", ""))
    return running


def _say(message: str) -> None:
    print(message, flush=True)  # the hub's stdout is a pipe: unflushed, the line came late or not at all


def reconcile_gpu_allocations(settings, state_path: str, log=_say) -> dict | None:
    """At hub start, before any spawn: match stored GPU allocations with the containers that run."""
    devices = [Device.from_setting(d) for d in settings.get("gpus.devices")]
    client = docker.APIClient(version="auto")
    if settings.get("swarm.enabled"):
        # The swarm's nodes declare the GPUs (hub/swarm.py); students' servers are services.
        from .swarm import node_gpus, running_gpu_services

        devices = node_gpus(client.nodes(), settings.get("gpus.devices"), settings.get("swarm.placement"))
        running = running_gpu_services(client, settings.instance)
    elif not devices:
        return None
    else:
        running = running_gpu_containers(client, settings.instance)
    changes = Allocator(devices, state_path).reconcile(running)
    log(f"[mlops-lab] GPU allocations reconciled with running containers: {changes}")
    return changes


class ContainerExited(web.HTTPError):
    """A student's container exited before its server answered."""

    def __init__(self, container: str, exit_code: int | None, log_tail: str):
        self.container = container
        self.exit_code = exit_code
        self.log_tail = log_tail
        message = (
            f"Your server's container ({container}) stopped while starting"
            f" (exit code {exit_code}). Its last log lines:\n{log_tail or '(no output)'}"
        )
        super().__init__(500, message, reason="Server failed to start")
        # JupyterHub shows these to the user on its error and progress pages.
        self.jupyterhub_message = message
        self.jupyterhub_html_message = (
            f"<p>Your server's container stopped while starting (exit code {exit_code})."
            f" Its last log lines:</p><pre>{html.escape(log_tail or '(no output)')}</pre>"
            "<p>Try again. If it fails again, tell the course staff and quote these lines.</p>"
        )

    def __str__(self) -> str:
        return self.log_message


class StartQueue:
    """Servers start a few at a time; the others wait in line, in arrival order.

    JupyterHub's own ``concurrent_spawn_limit`` refuses the students over the limit ("Too many users
    trying to log in right now"), which at 9:00 is a good part of a class (bench/burst.py: 42 of
    100 refused). A server's start is mostly CPU (JupyterLab importing itself), so starting more at
    once only makes each slower. Ours because JupyterHub has no queue: students wait here, see
    their place in line on the spawn page, and the wait does not count against the start timeout
    (it runs in the pre-spawn hook, before JupyterHub times ``start()``).
    """

    def __init__(self, size: int):
        self.size = size
        self.starting: set[str] = set()
        self.waiting: collections.deque[tuple[str, asyncio.Future]] = collections.deque()

    async def enter(self, name: str) -> None:
        if len(self.starting) < self.size and not self.waiting:
            self.starting.add(name)
            return
        turn = asyncio.get_running_loop().create_future()
        self.waiting.append((name, turn))
        try:
            await turn
        except BaseException:
            self.waiting = collections.deque(w for w in self.waiting if w[1] is not turn)
            self.leave(name)
            raise

    def leave(self, name: str) -> None:
        self.starting.discard(name)
        while self.waiting and len(self.starting) < self.size:
            waiting_name, turn = self.waiting.popleft()
            if not turn.done():
                self.starting.add(waiting_name)
                turn.set_result(None)

    def ahead_of(self, name: str) -> int | None:
        """How many wait before ``name``; None when ``name`` is not waiting."""
        for i, (waiting_name, _) in enumerate(self.waiting):
            if waiting_name == name:
                return i
        return None


class DockerCalls:
    """How long DockerSpawner's Docker API calls wait for its worker thread, and how long they take.

    DockerSpawner sends every call (creating, starting, inspecting and polling every student's
    container) through one executor, by default a single thread: at 9:00 that line may be what
    everyone waits in. Nothing in DockerSpawner measures it, so the spawner times each call here
    and logs a summary each minute in which there were calls (bench/burst.py prints the worst)."""

    EVERY = 60.0

    def __init__(self):
        self.calls: list[tuple[str, float, float]] = []  # (method, waited, took)
        self.since = time.monotonic()
        self.lock = threading.Lock()  # recorded from every Docker thread

    def record(self, method: str, waited: float, took: float, log=None) -> None:
        line = None
        with self.lock:
            self.calls.append((method, waited, took))
            if time.monotonic() - self.since >= self.EVERY:
                line = self.summary()
                self.calls, self.since = [], time.monotonic()
        if line and log:
            log.info(line)

    def summary(self) -> str:
        def ms(values: list[float], q: float) -> str:
            ordered = sorted(values)
            return f"{1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.0f}"
        waited = [c[1] for c in self.calls]
        took = [c[2] for c in self.calls]
        kinds = collections.Counter(c[0] for c in self.calls).most_common(4)
        return (f"Docker calls in the last {time.monotonic() - self.since:.0f} s: {len(self.calls)} "
                f"({', '.join(f'{k} {n}' for k, n in kinds)}); waited for a thread p50 {ms(waited, 0.5)} "
                f"p95 {ms(waited, 0.95)} max {ms(waited, 1.0)} ms; took p50 {ms(took, 0.5)} p95 {ms(took, 0.95)} "
                f"max {ms(took, 1.0)} ms")


class CourseSpawner(DockerSpawner):
    """DockerSpawner with the lab's defaults and start-up failure reporting."""

    docker_threads = Int(
        1,
        config=True,
        help="Threads that make Docker API calls (DockerSpawner: one for all students).",
    )

    _docker_calls = DockerCalls()

    @property
    def executor(self):
        cls = CourseSpawner
        if cls._executor is None:
            cls._executor = ThreadPoolExecutor(max(1, self.docker_threads), thread_name_prefix="docker")
        return cls._executor

    def docker(self, method, *args, **kwargs):
        """DockerSpawner's call, timed: in line for a thread, then the call itself (DockerCalls)."""
        queued = time.perf_counter()

        def call():
            started = time.perf_counter()
            try:
                return self._docker(method, *args, **kwargs)
            finally:
                self._docker_calls.record(method, started - queued, time.perf_counter() - started, self.log)

        return asyncio.wrap_future(self.executor.submit(call))

    lab_instance = Unicode(
        "mlops-lab",
        config=True,
        help="Name of the lab instance; labels containers so the lab's tools can find them.",
    )

    log_tail_lines = Int(
        LOG_TAIL_LINES,
        config=True,
        help="How many of a failed container's last log lines to show the student and log.",
    )

    lab_profiles = List(
        Dict(),
        config=True,
        help="The server profiles (hub.profiles.Profile fields), in the order the form shows them.",
    )

    gpu_devices = List(
        Dict(),
        config=True,
        help="GPU devices to allocate: dicts with id, mode (exclusive | shared | mig) and max_users.",
    )

    gpu_state_path = Unicode(
        str(Settings.gpu_state),
        config=True,
        help="SQLite file of GPU allocations and usage (on the hub's state volume).",
    )

    starts_at_once = Int(
        0,
        config=True,
        help="Servers started at a time; the others wait in line (StartQueue). 0: two per CPU core, at least 4.",
    )

    _start_queue: StartQueue | None = None

    def start_queue(self) -> StartQueue:
        if CourseSpawner._start_queue is None:
            CourseSpawner._start_queue = StartQueue(self.starts_at_once or max(4, 2 * (os.cpu_count() or 1)))
        return CourseSpawner._start_queue

    async def run_pre_spawn_hook(self):
        # Before JupyterHub times start(): the wait in line is not a slow start.
        result = super().run_pre_spawn_hook()
        if inspect.isawaitable(result):
            await result
        queue = self.start_queue()
        if len(queue.starting) >= queue.size or queue.waiting:
            self.log.info("%s waits to start: %d in line, %d starting", self.user.name, len(queue.waiting),
                          len(queue.starting))
        await queue.enter(self.user.name)

    async def progress(self):
        queue = self.start_queue()
        while (ahead := queue.ahead_of(self.user.name)) is not None:
            place = "you are next" if ahead == 0 else f"{ahead} ahead of you"
            yield {"progress": 5, "message": f"Many servers are starting: waiting for your turn, {place} "
                                             f"({queue.size} start at a time)"}
            await asyncio.sleep(2)
        yield {"progress": 30, "message": "Starting your server"}

    require_netguard = Bool(
        False,
        config=True,
        help="Start no student server unless this lab's netguard (the firewall that isolates them) "
             "is running and healthy. On whenever network.isolate is: isolation must fail closed.",
    )

    _allocators: dict = {}

    async def check_netguard(self) -> None:
        """Refuse to start while the firewall is not in force: a server started then would reach
        other students, the host and the internet. Reads netguard's heartbeat (a file on a shared
        volume) and asks nothing of Docker, so a busy engine cannot close the gate."""
        problem = heartbeat_problem(self.network_name)
        if problem:
            self.log.error("Not starting %s's server: netguard, the lab's firewall, is %s", self.user.name, problem)
            raise web.HTTPError(
                503,
                "Servers cannot start right now: the lab's network firewall is not running. "
                "The operator has been told; please try again in a few minutes.",
            )

    # -- profiles ----------------------------------------------------------------------------

    def _profiles(self) -> list[Profile]:
        return [Profile(**p) for p in self.lab_profiles]

    def _user_context(self) -> tuple[str, set[str], bool]:
        groups = {g.name for g in getattr(self.user, "groups", [])}
        return self.user.name, groups, bool(getattr(self.user, "admin", False))

    def allowed_profiles(self) -> list[Profile]:
        name, groups, admin = self._user_context()
        return [p for p in self._profiles() if p.allows(name, groups, admin)]

    def default_profile(self, allowed: list[Profile]) -> Profile:
        return next((p for p in allowed if p.default), allowed[0])

    def availability(self, profile: Profile) -> str:
        if profile.gpu == "none":
            return ""
        free, total = self.allocator().availability(profile.gpu_modes)
        return f"{free} of {total} GPU slot{'s' if total != 1 else ''} free"

    @default("options_form")
    def _default_options_form(self):
        def form(spawner):
            allowed = spawner.allowed_profiles()
            if len(allowed) <= 1:
                return ""  # nothing to choose: start straight away
            choices = [(p, spawner.availability(p)) for p in allowed]
            return render_form(choices, spawner.default_profile(allowed).name)

        return form

    @default("options_from_form")
    def _default_options_from_form(self):
        def options_from_form(formdata):
            return {"profile": formdata.get("profile", [""])[0]}

        return options_from_form

    @default("apply_user_options")
    def _default_apply_user_options(self):
        # JupyterHub's hook for user_options, run before start: refuse an unknown or forbidden
        # profile early. The profile itself (limits, GPU) is applied in start().
        def check_profile(spawner, user_options):
            spawner.selected_profile()

        return check_profile

    def selected_profile(self) -> Profile:
        """The profile of this spawn (user_options['profile'] or the default); 400/403 if not allowed."""
        wanted = self.user_options.get("profile")
        allowed = self.allowed_profiles()
        if not allowed:
            raise web.HTTPError(403, "No server profile is open to you; ask the course staff.")
        if not wanted:
            return self.default_profile(allowed)
        for p in allowed:
            if p.name == wanted:
                return p
        if any(p.name == wanted for p in self._profiles()):
            raise web.HTTPError(403, f"The profile {wanted!r} is not open to you.")
        raise web.HTTPError(400, f"There is no profile {wanted!r} (choose one of: {', '.join(p.name for p in allowed)}).")

    def _join_profile_group(self, profile: Profile) -> None:
        """Keep the user in exactly the group of their running profile (profile culling is scoped by it)."""
        db = getattr(self.user, "db", None)
        orm_user = getattr(self.user, "orm_user", None)
        if db is None or orm_user is None:
            return
        for group in list(orm_user.groups):
            if group.name.startswith("profile-") and group.name != profile.group:
                orm_user.groups.remove(group)
        group = orm.Group.find(db, profile.group)
        if group is None:
            group = orm.Group(name=profile.group)
            db.add(group)
        if group not in orm_user.groups:
            orm_user.groups.append(group)
        db.commit()

    # -- GPUs --------------------------------------------------------------------------------

    def allocator(self) -> Allocator:
        """The hub's allocator for this state file (reconciled at hub start, before any spawn)."""
        key = self.gpu_state_path
        if key not in CourseSpawner._allocators:
            devices = [Device.from_setting(d) for d in self.gpu_devices]
            CourseSpawner._allocators[key] = Allocator(devices, key)
        return CourseSpawner._allocators[key]

    def _apply_gpu(self, device: Device) -> None:
        host = dict(self.extra_host_config)
        host["device_requests"] = [
            docker.types.DeviceRequest(driver="nvidia", device_ids=[device.id], capabilities=[["gpu"]])
        ]
        self.extra_host_config = host
        env = dict(self.environment)
        env["NVIDIA_VISIBLE_DEVICES"] = device.id
        env["NVIDIA_DRIVER_CAPABILITIES"] = "compute,utility"
        self.environment = env

    def _label(self, **labels: str) -> None:
        create = dict(self.extra_create_kwargs)
        create["labels"] = {**create.get("labels", {}), **{f"mlops-lab.{k}": v for k, v in labels.items()}}
        self.extra_create_kwargs = create

    async def prepare_profile(self) -> Profile:
        """Apply the selected profile's limits (and GPU) to this spawner; return the profile."""
        profile = self.selected_profile()
        # JupyterHub reuses a user's spawner across starts: begin from the configured values.
        if not hasattr(self, "_base"):
            self._base = copy.deepcopy((self.extra_host_config, self.extra_create_kwargs, self.environment))
        self.extra_host_config, self.extra_create_kwargs, self.environment = copy.deepcopy(self._base)
        self.mem_limit = profile.mem_limit
        self.cpu_limit = profile.cpu_limit
        self._label(user=self.user.name, profile=profile.name)
        if profile.gpu != "none":
            try:
                device = self.allocator().acquire(self.user.name, profile.name, profile.gpu_modes)
            except NoDeviceFree as e:
                raise web.HTTPError(
                    503,
                    f"No GPU is free right now ({e.free} of {e.total} GPU slots free)."
                    " Start the CPU profile instead, or try again later.",
                ) from None
            except NoDeviceConfigured as e:
                raise web.HTTPError(503, f"This lab has no GPU for the {profile.display_name} profile ({e}).") from None
            self._apply_gpu(device)
            self._label(gpu=device.id)
            self.log.info("GPU %s (%s) allocated to %s", device.id, device.mode, self.user.name)
        self._join_profile_group(profile)
        return profile

    def release_gpu(self) -> None:
        if not self.gpu_devices:
            return
        released = self.allocator().release(self.user.name)
        if released:
            self.log.info("GPU %s released by %s", released, self.user.name)

    def run_post_stop_hook(self):
        # Called by JupyterHub after every stop, also when the container died on its own.
        self.release_gpu()
        return super().run_post_stop_hook()

    async def container_log_tail(self) -> str:
        """Return the container's last log lines (stdout and stderr), or '' if it is gone."""
        try:
            raw = await self.docker("logs", self.container_id, tail=self.log_tail_lines)
        except Exception as e:  # the container may already be gone
            self.log.debug("No logs for %s: %s", self.container_name, e)
            return ""
        return raw.decode("utf-8", "replace").strip()

    async def raise_if_ended(self) -> None:
        """While starting: raise ContainerExited (with its last log lines) if the container stopped."""
        container = await self.get_object()
        state = (container or {}).get("State", {})
        if not container or not state.get("Running"):
            exit_code = state.get("ExitCode")
            tail = await self.container_log_tail()
            self.log.error(
                "Container %s for %s exited while starting (exit code %s); last log lines:\n%s",
                self.container_name, self.user.name, exit_code, tail or "(no output)",
            )
            if container:
                await self.remove_object()
            self.object_id = ""
            raise ContainerExited(self.container_name, exit_code, tail)

    async def _wait_for_port_or_exit(self, ip: str, port: int) -> None:
        """Return once ip:port accepts a connection; raise ContainerExited if the container stops."""
        deadline = time.monotonic() + self.start_timeout
        checked = 0.0
        while time.monotonic() < deadline:
            try:
                _reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout=2)
            except (OSError, asyncio.TimeoutError):
                pass
            else:
                writer.close()
                return
            if time.monotonic() - checked < 2:
                # Ask Docker whether it still runs every 2 s, not at every try: each question shares
                # the spawner's few Docker threads with every other student's calls.
                await asyncio.sleep(0.25)
                continue
            checked = time.monotonic()
            await self.raise_if_ended()
        # Running but silent: let JupyterHub's own http_timeout handling report it.
        self.log.warning("Server of %s did not open port %s within %ss", self.user.name, port, self.start_timeout)

    async def start(self):
        try:
            return await self._start()
        finally:
            self.start_queue().leave(self.user.name)  # the next in line starts once this one answers

    async def _start(self):
        began = time.monotonic()
        if self.require_netguard:
            await self.check_netguard()
        profile = await self.prepare_profile()
        try:
            ip, port = await super().start()
            running = time.monotonic()
            await self._wait_for_port_or_exit(ip, port)
            # Where a start spends its time (JupyterHub then waits for the server's HTTP answer).
            self.log.info("Server of %s: %s, port %s open %.1f s later", self.user.name,
                          self.started_phases(running - began), port, time.monotonic() - running)
        except Exception as e:
            self.release_gpu()
            if profile.gpu != "none" and "could not select device driver" in str(e):
                await self._remove_failed_container()
                raise web.HTTPError(
                    500,
                    "This host cannot start GPU servers: Docker has no NVIDIA runtime"
                    " (install the NVIDIA Container Toolkit). Start the CPU profile instead.",
                ) from None
            raise
        return ip, port

    def started_phases(self, took: float) -> str:
        return f"container created and running in {took:.1f} s"

    async def _remove_failed_container(self) -> None:
        if await self.get_object():
            await self.remove_object()
        self.object_id = ""
