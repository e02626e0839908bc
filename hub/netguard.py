"""Netguard: the host firewall that keeps student containers to what they may reach.

Docker gives every container on a bridge network a path to every other one, to the host and
to the internet. No Jupyter component changes that on a single Docker host (Zero to JupyterHub
relies on Kubernetes NetworkPolicies), so this small service of ours writes iptables rules for
the lab's bridge, in chains of its own hooked into DOCKER-USER (forwarded traffic) and INPUT
(traffic to the host itself). From a student container only these pass:

- the hub's proxy (8000) and API (8081);
- the egress proxy (3128), which lets through only the operator's allowed hosts;
- replies to connections others opened.

Everything else is rejected: other students' servers, the demo identity provider, the host's
services (Docker's TCP API included), cloud metadata (169.254.169.254) and the internet. The hub
and the egress proxy themselves are not restricted. Rules are recomputed every few seconds
from the running containers (their addresses change on restart) and removed on stop. With no
hub found, students get nothing at all (fail closed).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import signal
import subprocess
import sys
import time

# docker and the settings are imported where they are used, not here: the container's health
# check (``--check``) runs this module every few seconds, and must answer fast on a busy host.

HUB_PORTS = (8000, 8081)
# Touched after each round in which the rules are in force; the container's health check reads
# its age, and the hub starts no student server unless netguard is healthy.
HEARTBEAT = "/tmp/netguard-ok"
EGRESS_PORT = 3128


def chain_names(instance: str) -> tuple[str, str]:
    tag = hashlib.sha1(instance.encode()).hexdigest()[:8]
    return f"LAB-FWD-{tag}", f"LAB-IN-{tag}"


def render_rules(fwd: str, inp: str, hub: str | None, egress: str | None, isolate: bool) -> str:
    """The iptables-restore input for our two chains."""
    lines = ["*filter", f":{fwd} - [0:0]", f":{inp} - [0:0]"]
    for chain in (fwd, inp):
        lines.append(f"-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")
        if not isolate:
            lines.append(f"-A {chain} -j RETURN")
            continue
        for trusted in (hub, egress):
            if trusted:
                lines.append(f"-A {chain} -s {trusted}/32 -j RETURN")
    if isolate:
        if hub:
            for port in HUB_PORTS:
                lines.append(f"-A {fwd} -d {hub}/32 -p tcp --dport {port} -j RETURN")
        if egress:
            lines.append(f"-A {fwd} -d {egress}/32 -p tcp --dport {EGRESS_PORT} -j RETURN")
        for chain in (fwd, inp):
            lines.append(f"-A {chain} -p tcp -j REJECT --reject-with tcp-reset")
            lines.append(f"-A {chain} -j REJECT --reject-with icmp-admin-prohibited")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, check=check)


def ensure_jump(parent: str, bridge: str, chain: str) -> None:
    """Exactly one jump from ``parent`` to ``chain``, for the current bridge, at the top."""
    for line in iptables("-S", parent).stdout.splitlines():
        if f"-j {chain}" in line and f"-i {bridge} " not in line + " ":
            iptables(*line.replace("-A", "-D", 1).split())
    if iptables("-C", parent, "-i", bridge, "-j", chain, check=False).returncode != 0:
        iptables("-I", parent, "1", "-i", bridge, "-j", chain)


def remove(fwd: str, inp: str) -> None:
    for parent, chain in (("DOCKER-USER", fwd), ("INPUT", inp)):
        for line in iptables("-S", parent, check=False).stdout.splitlines():
            if f"-j {chain}" in line:
                iptables(*line.replace("-A", "-D", 1).split(), check=False)
        iptables("-F", chain, check=False)
        iptables("-X", chain, check=False)


class Guard:
    def __init__(self, instance: str, network: str, isolate: bool):
        self.instance, self.network, self.isolate = instance, network, isolate
        self.fwd, self.inp = chain_names(instance)
        import docker

        self.errors = docker.errors
        self.client = docker.from_env()
        self.applied: str | None = None

    def discover(self) -> tuple[str | None, str | None, str | None]:
        """(bridge name, hub IP, egress IP) of this lab, from Docker."""
        try:
            net = self.client.networks.get(self.network)
        except self.errors.NotFound:
            return None, None, None
        attrs = net.attrs
        bridge = (attrs.get("Options") or {}).get("com.docker.network.bridge.name") or f"br-{attrs['Id'][:12]}"
        ips = {}
        for container in self.client.containers.list(
            filters={"label": f"com.docker.compose.project={self.instance}"}
        ):
            service = container.labels.get("com.docker.compose.service")
            endpoint = container.attrs["NetworkSettings"]["Networks"].get(self.network)
            if service and endpoint and endpoint.get("IPAddress"):
                ips[service] = str(ipaddress.ip_address(endpoint["IPAddress"]))
        return bridge, ips.get("hub"), ips.get("egress")

    def apply_once(self) -> None:
        bridge, hub, egress = self.discover()
        if bridge is None:
            return
        rules = render_rules(self.fwd, self.inp, hub, egress, self.isolate)
        key = bridge + rules
        if key != self.applied:
            subprocess.run(["iptables-restore", "-w", "--noflush"], input=rules, text=True, check=True,
                           capture_output=True)
            print(f"[netguard] {self.network} ({bridge}): hub {hub or '-'}, egress {egress or '-'};"
                  f" students {'isolated' if self.isolate else 'not isolated (network.isolate: false)'}",
                  flush=True)
        ensure_jump("DOCKER-USER", bridge, self.fwd)
        ensure_jump("INPUT", bridge, self.inp)
        self.applied = key
        with open(HEARTBEAT, "w") as f:
            f.write(bridge)


def check_bridge_netfilter() -> None:
    try:
        value = open("/proc/sys/net/bridge/bridge-nf-call-iptables").read().strip()
    except OSError:
        value = "missing"
    if value != "1":
        print("[netguard] WARNING: net.bridge.bridge-nf-call-iptables is not 1 (br_netfilter not loaded):"
              " student containers on the same bridge can reach each other. Run: modprobe br_netfilter &&"
              " sysctl -w net.bridge.bridge-nf-call-iptables=1", file=sys.stderr, flush=True)


def healthy(max_age: float = 20.0) -> bool:
    """For the container's health check: the rules were in force within the last max_age seconds."""
    try:
        return time.time() - os.path.getmtime(HEARTBEAT) < max_age
    except OSError:
        return False


def main() -> None:
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if healthy() else 1)
    import docker

    from .settings import load_settings_or_exit

    settings = load_settings_or_exit("netguard", secrets=False)  # never given the hub's secrets
    guard = Guard(settings.instance, settings.network, settings.get("network.isolate"))
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    check_bridge_netfilter()
    try:
        while not stopping:
            try:
                guard.apply_once()
            except (subprocess.CalledProcessError, docker.errors.DockerException) as e:
                if os.path.exists(HEARTBEAT):
                    os.unlink(HEARTBEAT)
                detail = getattr(e, "stderr", "") or str(e)
                print(f"[netguard] could not apply rules: {detail}", file=sys.stderr, flush=True)
            for _ in range(10):
                if stopping:
                    break
                time.sleep(0.5)
    finally:
        remove(guard.fwd, guard.inp)
        print("[netguard] rules removed", flush=True)


if __name__ == "__main__":
    main()
