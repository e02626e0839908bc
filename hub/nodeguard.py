"""Nodeguard: the firewall of students' servers on a swarm, inside each server's own network namespace.

On one host, netguard (hub/netguard.py) filters the lab's bridge in the host's chains. On a
swarm, students' servers on different nodes talk over an overlay network whose traffic never
passes a host's FORWARD chain, so the rules go where every packet of a server passes: its own
network namespace. Nodeguard runs on every node (a global Swarm service the hub keeps in place,
``hub.swarm.start_node_services``), watches its node's engine for the lab's student containers and, for each
one as it starts, writes its filter table with ``nsenter`` + ``iptables-restore``:

- in: only the hub and the proxy, to the server's port;
- out: only the hub's API (8081), the proxy (8000) and the egress proxy (3128), plus loopback,
  where Docker's DNS answers;
- everything else is rejected: other students' servers on any node, the nodes themselves (their
  Docker and Swarm ports), cloud metadata, the demo identity provider, the internet.

The hub, the proxy and the egress proxy have fixed addresses on the overlay
(docker-compose.swarm.yml: ``<LAB_SWARM_NET>.0.2`` to ``.4``; Swarm gives other endpoints
addresses from ``<net>.8.0/21`` only), so the rules never go stale. A server has no NET_ADMIN, so
it cannot change them; they live as long as its namespace, so a nodeguard restart leaves them.

Fail closed: the course image's entry point (``lab-start``) starts no server until nodeguard has
put ``/etc/lab/guard/in-force`` into the container (a root-owned folder the student cannot write),
which it does only after reading the rules back from the namespace. A node without nodeguard
starts no server; the student is told why.

Grading sandboxes on a swarm (``hub.course.sandbox.SwarmSandboxes``) are services too, and
Swarm has no ``none`` network for a service: a task without networks gets the node's default
bridge. Nodeguard deletes every interface but loopback in a sandbox's namespace as it starts, and
the sandbox's executor runs no notebook while it sees another interface (60 s, then no result).

Ours: no Jupyter or Docker component isolates containers from each other on an overlay network
(Docker's ``icc`` option is for bridges only; Kubernetes has NetworkPolicies, Swarm has none).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

HUB_PORT, PROXY_PORT, EGRESS_PORT, SERVER_PORT = 8081, 8000, 3128, 8888
GUARD_DIR = "/etc/lab/guard"
MARK = "in-force"
HOST_PROC = os.environ.get("LAB_HOST_PROC", "/host/proc")
ROUND = 2.0
# Touched after every round; the service's health check reads its age. (The hub image's own check
# asks the hub's port, which a nodeguard task does not have: Swarm would replace every nodeguard
# task as unhealthy about every 45 s, and the servers starting meanwhile would wait for its mark.)
ALIVE = "/tmp/nodeguard-alive"
ALIVE_WITHIN = 60


def addresses(net: str) -> dict[str, str]:
    """The fixed overlay addresses of the lab's own services (docker-compose.swarm.yml)."""
    return {"hub": f"{net}.0.2", "proxy": f"{net}.0.3", "egress": f"{net}.0.4"}


def render_rules(net: str, isolate: bool = True) -> str:
    """The iptables-restore input for a student server's filter table."""
    a = addresses(net)
    lines = ["*filter"]
    if not isolate:
        return "\n".join(lines + [":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
                                  "COMMIT"]) + "\n"
    lines += [":INPUT DROP [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT DROP [0:0]",
              "-A INPUT -i lo -j ACCEPT",
              "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
              f"-A INPUT -s {a['hub']}/32 -p tcp -m tcp --dport {SERVER_PORT} -j ACCEPT",
              f"-A INPUT -s {a['proxy']}/32 -p tcp -m tcp --dport {SERVER_PORT} -j ACCEPT",
              "-A INPUT -p tcp -j REJECT --reject-with tcp-reset",
              "-A INPUT -j REJECT --reject-with icmp-admin-prohibited",
              "-A OUTPUT -o lo -j ACCEPT",
              "-A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
              f"-A OUTPUT -d {a['hub']}/32 -p tcp -m tcp --dport {HUB_PORT} -j ACCEPT",
              f"-A OUTPUT -d {a['proxy']}/32 -p tcp -m tcp --dport {PROXY_PORT} -j ACCEPT",
              f"-A OUTPUT -d {a['egress']}/32 -p tcp -m tcp --dport {EGRESS_PORT} -j ACCEPT",
              "-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset",
              "-A OUTPUT -j REJECT --reject-with icmp-admin-prohibited"]
    return "\n".join(lines + ["COMMIT"]) + "\n"


def in_netns(pid: int, *cmd: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={HOST_PROC}/{pid}/ns/net", *cmd], input=input, text=True,
                          capture_output=True, check=True)


def interfaces(pid: int) -> list[str]:
    """The names of the network interfaces in that namespace."""
    out = in_netns(pid, "ip", "-o", "link", "show").stdout
    return sorted(line.split(":", 2)[1].strip().split("@")[0] for line in out.splitlines() if ":" in line)


def shown(pid: int) -> str:
    """The filter table as the kernel shows it in that namespace (policies and rules)."""
    return in_netns(pid, "iptables", "-w", "-S").stdout


def expected_listing(rules: str) -> set[str]:
    """The lines of ``iptables -S`` that ``rules`` should give (to compare with ``shown``)."""
    out = set()
    for line in rules.splitlines():
        if line.startswith(":"):
            chain, policy = line[1:].split()[:2]
            out.add(f"-P {chain} {policy}")
        elif line.startswith("-A"):
            out.add(line)
    return out


def mark_tar() -> bytes:
    data = f"{time.time():.0f}\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(MARK)
        info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o444, 0, 0, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class NodeGuard:
    def __init__(self, instance: str, net: str, isolate: bool, client=None):
        import docker

        self.instance, self.net, self.isolate = instance, net, isolate
        self.client = client or docker.APIClient(version="auto")
        self.rules = render_rules(net, isolate)
        self.expected = expected_listing(self.rules)
        self.guarded: set[str] = set()
        self.lock = threading.Lock()

    def students(self) -> list[dict]:
        return self.client.containers(filters={"label": [f"mlops-lab.instance={self.instance}",
                                                          "mlops-lab.role=student-server"]})

    def sandboxes(self) -> list[dict]:
        return self.client.containers(filters={"label": [f"mlops-lab.instance={self.instance}",
                                                          "mlops-lab.role=autograde-sandbox"]})

    def _once(self, container_id: str, act) -> bool:
        """``act(container_id, pid)`` once per running container; True once it is done."""
        with self.lock:
            if container_id in self.guarded:
                return True
            state = self.client.inspect_container(container_id)["State"]
            pid = state.get("Pid") or 0
            if not state.get("Running") or pid <= 0:
                return False
            act(container_id, pid)
            self.guarded.add(container_id)
            return True

    def cut_off(self, container_id: str) -> bool:
        """Delete every interface but loopback in a sandbox's namespace; True once only lo is left."""
        return self._once(container_id, self._remove_interfaces)

    def _remove_interfaces(self, container_id: str, pid: int) -> None:
        for name in interfaces(pid):
            if name != "lo":
                in_netns(pid, "ip", "link", "delete", name)
        left = interfaces(pid)
        if left != ["lo"]:
            raise RuntimeError(f"sandbox {container_id[:12]} still has {left}")
        print(f"[nodeguard] sandbox {container_id[:12]}: cut off from every network", flush=True)

    def guard(self, container_id: str) -> bool:
        """Write and check one server's rules, then mark it; True once it is guarded."""
        return self._once(container_id, self._write_rules)

    def _write_rules(self, container_id: str, pid: int) -> None:
        in_netns(pid, "iptables-restore", "-w", input=self.rules)
        missing = self.expected - set(shown(pid).splitlines())
        if missing:
            raise RuntimeError(f"rules not in force in {container_id[:12]}: missing {sorted(missing)}")
        self.client.put_archive(container_id, GUARD_DIR, mark_tar())
        name = self.client.inspect_container(container_id)["Name"].lstrip("/")
        print(f"[nodeguard] {name}: {'isolated' if self.isolate else 'not isolated (network.isolate: false)'}",
              flush=True)

    def handle(self, container_id: str, role: str) -> None:
        try:
            if role == "student-server":
                self.guard(container_id)
            elif role == "autograde-sandbox":
                self.cut_off(container_id)
        except Exception as e:  # one container's failure must not stop the others'
            print(f"[nodeguard] could not guard {container_id[:12]}: {e}", file=sys.stderr, flush=True)

    def round(self) -> None:
        live = set()
        for role, found in (("student-server", self.students()), ("autograde-sandbox", self.sandboxes())):
            for c in found:
                live.add(c["Id"])
                self.handle(c["Id"], role)
        with self.lock:
            self.guarded &= live

    def watch(self) -> None:
        """Guard each container as soon as its engine says it started (the rounds catch the rest)."""
        events = self.client.events(decode=True, filters={
            "type": "container", "event": "start", "label": [f"mlops-lab.instance={self.instance}"]})
        for event in events:
            role = event.get("Actor", {}).get("Attributes", {}).get("mlops-lab.role", "")
            self.handle(event.get("id", ""), role)


def service_spec(instance: str, image: str, net: str, isolate: bool) -> dict:
    """The global service's arguments for docker-py's ``create_service``/``update_service``."""
    import docker.types

    from .swarm import health_check

    container = docker.types.ContainerSpec(
        image, command=["python3", "-m", "hub.nodeguard"],
        env={"LAB_INSTANCE": instance, "LAB_SWARM_NET": net, "LAB_NODEGUARD_ISOLATE": "1" if isolate else "0"},
        mounts=[docker.types.Mount("/var/run/docker.sock", "/var/run/docker.sock", type="bind"),
                docker.types.Mount(HOST_PROC, "/proc", type="bind", read_only=True)],
        cap_add=["NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"],
        labels={"mlops-lab.instance": instance, "mlops-lab.role": "nodeguard"},
        healthcheck=health_check(["python3", "-c", "import os, sys, time; "
                                  f"sys.exit(time.time() - os.stat('{ALIVE}').st_mtime > {ALIVE_WITHIN})"]),
    )
    task = docker.types.TaskTemplate(container, networks=[{"Target": "host"}],
                                     restart_policy=docker.types.RestartPolicy(condition="any", delay=2_000_000_000))
    return {"task_template": task, "mode": docker.types.ServiceMode("global"), "name": f"{instance}-nodeguard",
            "labels": {"mlops-lab.instance": instance, "mlops-lab.role": "nodeguard"}}


def main() -> None:
    instance = os.environ["LAB_INSTANCE"]
    guard = NodeGuard(instance, os.environ["LAB_SWARM_NET"], os.environ.get("LAB_NODEGUARD_ISOLATE", "1") == "1")
    print(f"[nodeguard] guarding {instance}'s student servers on this node", flush=True)
    threading.Thread(target=guard.watch, name="events", daemon=True).start()
    while True:
        guard.round()
        Path(ALIVE).touch()
        time.sleep(ROUND)


if __name__ == "__main__":
    main()
