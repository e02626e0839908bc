"""The lab on a Docker Swarm: each student's server is a Swarm service placed on a worker node.

DockerSpawner's ``SwarmSpawner`` makes one service per student, but three of its parts do not fit a
course lab, so this subclass replaces them (and keeps the rest: the service's lifecycle, its task
polling, its name as the server's address):

- **Homes.** Its ``volume_driver`` puts a volume driver on a *bind* mount, which Docker refuses. A
  student's home here is a ``volume`` mount made on whichever node runs the task: by default a
  ``local`` volume bound to ``<swarm.homes.path>/<user>``, a folder on shared storage the operator
  mounts at the same path on every node (NFS, CephFS, ...); or a volume of the operator's plugin
  (``swarm.homes.driver``). The hub creates the folder first (it mounts the same path), owned by
  the server's user, so the home follows the student to any node.
- **GPUs.** Services cannot ask for ``--gpus``. Nodes declare their GPUs as generic resources
  (``"node-generic-resources": ["NVIDIA-GPU=<uuid>"]`` in daemon.json); the hub reads them from the
  swarm before each GPU start, hands them to the lab's allocator (``hub.gpu``: fair, never over
  capacity, modes from ``gpus.devices``) and pins the service to the chosen GPU's node with
  ``NVIDIA_VISIBLE_DEVICES`` set to its UUID (the node's default runtime is NVIDIA's). Swarm's own
  generic-resource accounting is not used: it cannot share a GPU between students, and its choice
  of UUID could differ from the allocator's. So the allocator is the one authority, fed only with
  what the nodes declare, and its decisions become placement constraints.
- **Node loss.** A service's restart policy is ``none``: a server whose node fails is not started
  again behind the hub's back (its GPU pin could not be met elsewhere, and the hub would not know).
  The hub's poll sees the task gone, frees the GPU and records why; the student's page then says
  that the machine stopped, that their files are safe, and offers a new start, which Swarm places
  on a node that is up.

The limits a service cannot take (``pids_limit``, ``shm_size``) are set in the task's resources
and as a ``tmpfs`` on ``/dev/shm``. The service's endpoint mode is ``dnsrr`` (no IPVS load balancer,
not needed for one replica), and the hub reaches the server at its task's own address.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time

import docker
import docker.types
from dockerspawner import SwarmSpawner
from traitlets import Dict, Int, List, Unicode

from .gpu import Device
from .settings import size_bytes
from .spawner import ContainerExited, CourseSpawner

GPU_RESOURCE = "NVIDIA-GPU"
# Task states in which the server has not ended (Swarm's task life cycle).
LIVE_STATES = {"new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"}
NODE_LOST_STATES = {"down", "disconnected"}
NODE_LOSS_GRACE = 30.0  # seconds a node must stay down before its servers count as ended
NOT_READY_SINCE: dict[str, float] = {}  # node id -> when this hub first saw it down


def node_matches(node: dict, constraints: list[str]) -> bool:
    """Whether Swarm may place a server with these constraints on the node (the attributes the
    lab's settings use: node.id, node.hostname, node.role, node.labels.*, node.platform.*)."""
    desc, spec = node.get("Description", {}), node.get("Spec", {})
    for constraint in constraints:
        key, op, want = re.fullmatch(r"\s*([\w.-]+)\s*(==|!=)\s*(\S+)\s*", constraint).groups()
        if key == "node.id":
            have = node.get("ID", "")
        elif key == "node.hostname":
            have = desc.get("Hostname", "")
        elif key == "node.role":
            have = spec.get("Role", "")
        elif key.startswith("node.labels."):
            have = (spec.get("Labels") or {}).get(key[len("node.labels."):])
        elif key in ("node.platform.os", "node.platform.arch"):
            have = (desc.get("Platform") or {}).get("OS" if key.endswith(".os") else "Architecture", "")
        else:
            continue  # an attribute the hub does not read: Swarm still applies it
        if (have == want) != (op == "=="):
            return False
    return True


def node_gpus(nodes: list[dict], configured: list[dict], constraints: list[str] = ()) -> list[Device]:
    """The GPUs the swarm's nodes declare (generic resources ``NVIDIA-GPU=<uuid>``), as devices.

    Only nodes that are ready and active count: a drained or lost node's GPUs are given to no one.
    A device's mode (and ``max_users``) comes from its ``gpus.devices`` entry, by UUID; a GPU no
    entry names is a whole GPU for one student (``exclusive``), the safe default for a node added
    during the course.
    """
    by_id = {str(d["id"]): d for d in configured}
    devices = []
    for node in sorted(nodes, key=lambda n: n.get("Description", {}).get("Hostname", "")):
        if node.get("Status", {}).get("State") != "ready" or node.get("Spec", {}).get("Availability") != "active":
            continue
        if not node_matches(node, list(constraints)):
            continue  # servers are not placed there (a manager's own GPUs, by default)
        resources = node.get("Description", {}).get("Resources", {}).get("GenericResources") or []
        for resource in resources:
            spec = resource.get("NamedResourceSpec") or {}
            if spec.get("Kind") != GPU_RESOURCE or not spec.get("Value"):
                continue
            entry = by_id.get(spec["Value"], {"mode": "exclusive"})
            devices.append(Device(spec["Value"], entry["mode"], int(entry.get("max_users", 1)), node=node["ID"]))
    return devices


def home_mount(username: str, target: str, instance: str, path: str, driver: str = "",
               driver_options: dict | None = None) -> docker.types.Mount:
    """The student's home as a volume mount that every node can make (see the module's text)."""
    name = f"{instance}-home-{username}"
    if driver:
        options = {k: v.replace("{username}", username) for k, v in (driver_options or {}).items()}
        config = docker.types.DriverConfig(driver, options or None)
    else:
        config = docker.types.DriverConfig(
            "local", {"type": "none", "o": "bind", "device": f"{path.rstrip('/')}/{username}"})
    # Named after the path too: a node keeps a local volume's options from its first use, so a
    # changed swarm.homes.path must not meet an old volume of the same name.
    if not driver:
        name = f"{name}-{hashlib.sha1(path.encode()).hexdigest()[:6]}"
    return docker.types.Mount(target=target, source=name, type="volume", driver_config=config)


class SwarmCourseSpawner(CourseSpawner, SwarmSpawner):
    """The lab's spawner (profiles, GPUs, start queue, failure reports) with Swarm services."""

    swarm_homes_path = Unicode("/srv/lab-homes", config=True,
                               help="Shared storage mounted at this path on every node and in the hub.")
    swarm_homes_driver = Unicode("", config=True, help="A volume plugin for homes instead of the path.")
    swarm_homes_driver_options = Dict(config=True, help="The plugin's options ({username} is replaced).")
    swarm_placement = List(Unicode(), config=True, help="Swarm constraints for every student's server.")
    home_uid = Int(1000, config=True, help="The server's user, who owns the home folder.")
    home_gid = Int(1000, config=True, help="The server's group.")
    pids_limit = Int(0, config=True, help="Processes a server may run (0: no limit).")
    shm_size = Unicode("", config=True, help="Size of /dev/shm (a tmpfs), like 256M; empty: Docker's.")

    # What the student's "not running" page says about their last server when it ended on its own,
    # by user: JupyterHub makes a new spawner object after a stop, so it cannot live on this one.
    _stopped_reasons: dict[str, str] = {}

    @property
    def stopped_reason(self) -> str:
        return SwarmCourseSpawner._stopped_reasons.get(self.user.name, "")

    @stopped_reason.setter
    def stopped_reason(self, reason: str) -> None:
        if reason:
            SwarmCourseSpawner._stopped_reasons[self.user.name] = reason
        else:
            SwarmCourseSpawner._stopped_reasons.pop(self.user.name, None)

    # -- the service -------------------------------------------------------------------------

    @property
    def mounts(self):
        mounts = [home_mount(self.user.name, self.notebook_dir or "/home/jovyan", self.lab_instance,
                             self.swarm_homes_path, self.swarm_homes_driver, self.swarm_homes_driver_options)]
        if self.shm_size:
            mounts.append(docker.types.Mount(target="/dev/shm", source="", type="tmpfs",
                                             tmpfs_size=size_bytes(self.shm_size)))
        return mounts

    def make_home(self) -> None:
        """Create the student's folder on the shared storage (the hub mounts it at the same path)."""
        if self.swarm_homes_driver:
            return
        home = os.path.join(self.swarm_homes_path, self.user.name)
        if not os.path.isdir(self.swarm_homes_path):
            raise RuntimeError(f"the shared home storage {self.swarm_homes_path} is not mounted in the hub "
                               "(swarm.homes.path; docker-compose.swarm.yml mounts LAB_SWARM_HOMES there)")
        try:
            os.mkdir(home, 0o750)
        except FileExistsError:
            return
        os.chown(home, self.home_uid, self.home_gid)

    async def create_object(self):
        await asyncio.get_running_loop().run_in_executor(None, self.make_home)
        host = self.extra_host_config
        container = dict(self.extra_container_spec)
        container["labels"] = {**container.get("labels", {}), **self.extra_create_kwargs.get("labels", {})}
        container["cap_drop"] = host.get("cap_drop")
        container["init"] = False  # the course image's entry point is tini
        self.extra_container_spec = container
        placement = dict(self.extra_placement_spec)
        placement["constraints"] = list(self.swarm_placement) + list(placement.get("constraints") or [])
        self.extra_placement_spec = placement
        self.extra_task_spec = {**self.extra_task_spec,
                                "restart_policy": docker.types.RestartPolicy(condition="none")}
        self.extra_endpoint_spec = {**self.extra_endpoint_spec, "mode": "dnsrr"}
        return await super().create_object()

    def docker(self, method, *args, **kwargs):
        if method == "create_service" and self.pids_limit:
            # docker-py's Resources has no Pids; the API (1.41+) has Limits.Pids.
            task = kwargs["task_template"]
            task.setdefault("Resources", {}).setdefault("Limits", {})["Pids"] = self.pids_limit
        return super().docker(method, *args, **kwargs)

    # -- GPUs --------------------------------------------------------------------------------

    async def refresh_gpus(self) -> None:
        """Give the allocator the GPUs the swarm's ready nodes declare right now."""
        nodes = await self.docker("nodes")
        self.allocator().set_devices(node_gpus(nodes, self.gpu_devices, self.swarm_placement))

    async def get_options_form(self):
        # The form shows each GPU profile's free slots: count the nodes' GPUs as they are now.
        if any(p.gpu != "none" for p in self.allowed_profiles()):
            try:
                await self.refresh_gpus()
            except Exception as e:  # the form still opens; the start itself asks again
                self.log.warning("Could not read the swarm's GPUs: %s", e)
        return await super().get_options_form()

    def _apply_gpu(self, device: Device) -> None:
        env = dict(self.environment)
        env["NVIDIA_VISIBLE_DEVICES"] = device.id
        env["NVIDIA_DRIVER_CAPABILITIES"] = "compute,utility"
        self.environment = env
        placement = dict(self.extra_placement_spec)
        placement["constraints"] = [c for c in placement.get("constraints") or [] if not c.startswith("node.id")]
        placement["constraints"].append(f"node.id == {device.node}")
        self.extra_placement_spec = placement

    async def prepare_profile(self):
        # Each start begins from the configured placement (a GPU pin is per start).
        if not hasattr(self, "_base_placement"):
            self._base_placement = dict(self.extra_placement_spec)
        self.extra_placement_spec = dict(self._base_placement)
        profile = self.selected_profile()
        if profile.gpu != "none":
            await self.refresh_gpus()
        return await super().prepare_profile()

    # -- watching the server ----------------------------------------------------------------

    async def node_name(self, node_id: str) -> str:
        try:
            node = await self.docker("inspect_node", node_id)
        except Exception:
            return node_id[:12]
        return node.get("Description", {}).get("Hostname") or node_id[:12]

    async def why_ended(self, task: dict | None) -> str:
        """What the student is told about a server that ended without being stopped."""
        node_id = (task or {}).get("NodeID", "")
        node_state = ""
        if node_id:
            try:
                node = await self.docker("inspect_node", node_id)
                node_state = node.get("Status", {}).get("State", "")
            except Exception:
                node_state = "gone"
        if node_id and node_state != "ready":
            name = await self.node_name(node_id)
            return (f"The machine your server ran on ({name}) stopped, so your server stopped with it. "
                    "Your files are safe: they are kept on the lab's shared storage. Start your server again "
                    "and it will run on another machine (what was only in memory, like running kernels, is lost).")
        status = (task or {}).get("Status", {})
        return (f"Your server stopped on its own ({status.get('State', 'gone')}"
                f"{': ' + status['Err'] if status.get('Err') else ''}). Your files are safe; start it again.")

    async def poll(self):
        task = await self.get_task()
        state = (task or {}).get("Status", {}).get("State", "")
        node_lost = False
        if task and state in LIVE_STATES and task.get("NodeID"):
            # Swarm's own verdict, "down" or "disconnected", held for NODE_LOSS_GRACE, or no such
            # node. A manager that restarts marks every node "unknown" until it hears from it, and
            # "down" if that takes a few seconds, while the servers on it run on: the hub, which
            # restarts with the manager, must not end them for that.
            node_id = task["NodeID"]
            try:
                node = await self.docker("inspect_node", node_id)
                if node.get("Status", {}).get("State") in NODE_LOST_STATES:
                    since = NOT_READY_SINCE.setdefault(node_id, time.monotonic())
                    node_lost = time.monotonic() - since >= NODE_LOSS_GRACE
                    if not node_lost:
                        return None
                else:
                    NOT_READY_SINCE.pop(node_id, None)
            except docker.errors.NotFound:
                node_lost = True
            except Exception as e:  # the manager's API not answering (yet): nothing is known
                self.log.warning("Could not ask Swarm about the node of %s's server: %s", self.user.name, e)
                return None
        if task and state in LIVE_STATES and not node_lost:
            return None
        if await self.get_object() is None and not task:
            return 0
        # Ended on its own (or its node is down): say why, free its GPU, remove the service.
        self.stopped_reason = await self.why_ended(task)
        self.log.warning("Server of %s ended: %s", self.user.name, self.stopped_reason)
        return 1 if not node_lost else 2

    async def start(self):
        self.stopped_reason = ""
        return await super().start()

    async def start_object(self):
        """Wait until the task runs. SwarmSpawner waits through "rejected" too, which with the
        restart policy ``none`` is final: fail at once instead, with Swarm's reason."""
        delay = 0.5
        created = time.monotonic()
        deadline = created + self.start_timeout
        while time.monotonic() < deadline:
            task = await self.get_task()
            status = (task or {}).get("Status", {})
            state = status.get("State", "")
            if state == "running":
                self._running_after = time.monotonic() - created
                self._node = (task.get("NodeID") or "")[:12]
                return
            if task is None or state not in LIVE_STATES:
                tail = await self.container_log_tail()
                reason = status.get("Err") or state or "the service is gone"
                self.log.error("Service %s for %s did not start: %s\n%s", self.service_name, self.user.name,
                               reason, tail or "(no output)")
                await self._remove_failed_container()
                raise ContainerExited(self.service_name, (status.get("ContainerStatus") or {}).get("ExitCode"),
                                      tail or reason)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 3)
        raise RuntimeError(f"Service {self.service_name} did not run within {self.start_timeout} s")

    def started_phases(self, took: float) -> str:
        running_after = getattr(self, "_running_after", 0.0)
        return (f"service made in {took - running_after:.1f} s, its task running on node "
                f"{getattr(self, '_node', '') or '?'} {running_after:.1f} s later")

    async def get_ip_and_port(self):
        """The task's own address on the lab's network. Not the service's name: after a node is
        lost, Swarm's DNS can go on answering with the lost task's address for a while."""
        task = await self.get_task()
        for attachment in (task or {}).get("NetworksAttachments") or []:
            if attachment.get("Network", {}).get("Spec", {}).get("Name") == self.network_name:
                for address in attachment.get("Addresses") or []:
                    return address.split("/")[0], self.port
        raise RuntimeError(f"Service {self.service_name} has no address on the network {self.network_name}")

    async def container_log_tail(self) -> str:
        try:
            lines = await self.docker("service_logs", self.service_id, stdout=True, stderr=True,
                                      tail=self.log_tail_lines)
            raw = b"".join(lines)
        except Exception as e:
            self.log.debug("No logs for %s: %s", self.service_name, e)
            return ""
        return raw.decode("utf-8", "replace").strip()

    async def raise_if_ended(self) -> None:
        """While starting: raise ContainerExited if the service's task ended (CourseSpawner's wait)."""
        task = await self.get_task()
        status = (task or {}).get("Status", {})
        state = status.get("State", "")
        if not task or state not in LIVE_STATES:
            exit_code = (status.get("ContainerStatus") or {}).get("ExitCode")
            tail = await self.container_log_tail()
            self.log.error("Service %s for %s ended while starting (%s %s); last log lines:\n%s",
                           self.service_name, self.user.name, state, status.get("Err", ""), tail or "(no output)")
            await self._remove_failed_container()
            raise ContainerExited(self.service_name, exit_code, tail or status.get("Err", ""))


def running_gpu_services(client, instance: str) -> dict[str, tuple[str, str]]:
    """user -> (device id, profile) for every live GPU service of this lab (hub start's reconcile)."""
    running = {}
    for service in client.services(filters={"label": [f"mlops-lab.instance={instance}", "mlops-lab.gpu"]}):
        labels = service.get("Spec", {}).get("Labels") or {}
        tasks = client.tasks(filters={"service": service["ID"]})
        if labels.get("mlops-lab.user") and any(t.get("Status", {}).get("State") in LIVE_STATES for t in tasks):
            running[labels["mlops-lab.user"]] = (labels["mlops-lab.gpu"], labels.get("mlops-lab.profile", ""))
    return running


def health_check(command: list[str]):
    """A global service's own health check, in place of the hub image's (the hub's port): Swarm
    replaces a task that fails it three times in a row."""
    second = 1_000_000_000
    return docker.types.Healthcheck(test=["CMD", *command], interval=10 * second, timeout=5 * second,
                                    retries=3, start_period=30 * second)


def _services_named(client, name: str) -> list[dict]:
    return [s for s in client.services(filters={"name": name}) if s["Spec"]["Name"] == name]  # (a prefix filter)


def ensure_global_service(client, spec: dict, log=print) -> str:
    """Create a global service of the lab (nodeguard, the exporter), or update it when anything in
    its spec changed (image, command, environment, mounts, health check...): the service carries
    a digest of the spec it was made from. The hub calls it at each start."""
    spec = dict(spec)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    spec["labels"] = {**(spec.get("labels") or {}), "mlops-lab.spec": digest}
    name, image = spec["name"], spec["task_template"]["ContainerSpec"]["Image"]
    found = _services_named(client, name)
    if not found:
        client.create_service(**spec)
        log(f"[mlops-lab] created the global service {name} ({image})")
        return "created"
    current = found[0]
    if (current["Spec"].get("Labels") or {}).get("mlops-lab.spec") == digest:
        return "unchanged"
    client.update_service(current["ID"], current["Version"]["Index"], fetch_current_spec=False, **spec)
    log(f"[mlops-lab] updated the global service {name} ({image})")
    return "updated"


def remove_global_service(client, name: str, log=print) -> bool:
    found = _services_named(client, name)
    for service in found:
        client.remove_service(service["ID"])
        log(f"[mlops-lab] removed the global service {name}")
    return bool(found)


def start_node_services(settings, log=print) -> None:
    """At hub start: the lab's global services in place, with this hub's image and settings:
    nodeguard, the firewall of students' servers, and with monitoring on, the exporter that reads
    each node's containers for Prometheus."""
    from . import monitoring, nodeguard

    image = settings.env["LAB_HUB_IMAGE"]
    if not image:
        raise SystemExit("[mlops-lab] swarm.enabled: LAB_HUB_IMAGE is not set (docker-compose.swarm.yml sets it; "
                         "is that file in COMPOSE_FILE?)")
    client = docker.APIClient(version="auto")
    say = lambda m: log(m, flush=True)  # noqa: E731
    ensure_global_service(client, nodeguard.service_spec(settings.instance, image, settings.env["LAB_SWARM_NET"],
                                                         settings.get("network.isolate")), log=say)
    exporter = monitoring.service_spec(settings.instance, image, settings.network)
    if settings.get("monitoring.enabled"):
        ensure_global_service(client, exporter, log=say)
    else:
        remove_global_service(client, exporter["name"], log=say)
