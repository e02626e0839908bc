"""Netguard: the host firewall that keeps student containers to what they may reach.

Docker gives every container on a bridge network a path to every other one, to the host and
to the internet. No Jupyter component changes that on a single Docker host (Zero to JupyterHub
relies on Kubernetes NetworkPolicies), so this small service of ours writes iptables rules for
the lab's bridge, in chains of its own hooked into DOCKER-USER (forwarded traffic) and INPUT
(traffic to the host itself). From a student container only these pass:

- the proxy (8000; not its API, 8001) and the hub's API (8081);
- the egress proxy (3128), which lets through only the operator's allowed hosts;
- replies to connections others opened.

Everything else is rejected: other students' servers, the demo identity provider, the host's
services (Docker's TCP API included), cloud metadata (169.254.169.254) and the internet. The hub,
the proxy and the egress proxy themselves are not restricted. Rules are recomputed every few seconds
from the running containers (their addresses change on restart) and removed on stop. With no
hub found, students get nothing at all (fail closed).

The hub starts no student server unless netguard's heartbeat says the rules are in force. The
heartbeat is a file on a volume the two share, written every ``BEAT`` seconds by a thread that
reads the rules back from the kernel (``iptables -S``) and compares them with what was applied.
It asks nothing of Docker, whose API slows down exactly when a class arrives and the engine is
busy starting containers; the hub reads the file itself, without starting a process. When the
rules are found changed or gone, the heartbeat is removed at once (the gate closes) and the
rules are applied again; when netguard stops, it removes its rules and the heartbeat; when it
hangs or dies, the heartbeat grows older than the hub's tolerance and the gate closes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time

# docker and the settings are imported where they are used, not here.

HUB_PORT, PROXY_PORT = 8081, 8000
EGRESS_PORT = 3128
# The heartbeat: written (atomically) every BEAT seconds while the rules read back from the
# kernel are the ones applied. On the volume netguard shares with the hub (read-only there).
HEARTBEAT = os.environ.get("LAB_NETGUARD_HEARTBEAT", "/run/lab-netguard/heartbeat.json")
BEAT = 2.0
# How old a heartbeat the hub still accepts. The largest age seen while 100 students' servers
# started at once on a 2-core host was far below it (bench/burst.py prints it each run).
TOLERANCE = 15.0
# Rounds of discovery (Docker's view of the lab's addresses), which rewrite the rules on change.
ROUND = 5.0


class NotABridge(Exception):
    """The lab's network is not a bridge on this host (a swarm's overlay)."""


def chain_names(instance: str) -> tuple[str, str]:
    tag = hashlib.sha1(instance.encode()).hexdigest()[:8]
    return f"LAB-FWD-{tag}", f"LAB-IN-{tag}"


def render_rules(fwd: str, inp: str, hub: str | None, egress: str | None, isolate: bool,
                 proxy: str | None = None, prometheus: str | None = None) -> str:
    """The iptables-restore input for our two chains. Connections from the hub, the proxy, the
    egress proxy and Prometheus (which scrapes the metrics service) are let through; to the
    students, only the hub's API, the proxy and the egress proxy are open."""
    lines = ["*filter", f":{fwd} - [0:0]", f":{inp} - [0:0]"]
    for chain in (fwd, inp):
        lines.append(f"-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")
        if not isolate:
            lines.append(f"-A {chain} -j RETURN")
            continue
        for trusted in (hub, proxy, egress, prometheus):
            if trusted:
                lines.append(f"-A {chain} -s {trusted}/32 -j RETURN")
    if isolate:
        if hub:
            lines.append(f"-A {fwd} -d {hub}/32 -p tcp --dport {HUB_PORT} -j RETURN")
        if proxy:
            lines.append(f"-A {fwd} -d {proxy}/32 -p tcp --dport {PROXY_PORT} -j RETURN")
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
    def __init__(self, instance: str, network: str, isolate: bool, client=None):
        self.instance, self.network, self.isolate = instance, network, isolate
        self.fwd, self.inp = chain_names(instance)
        import docker

        self.errors = docker.errors
        self.client = client or docker.from_env()
        self.applied: str | None = None
        # What the kernel showed right after the last apply, which each beat compares with.
        self.in_force: str | None = None
        self.bridge: str | None = None
        self.lock = threading.Lock()
        self.reapply = threading.Event()

    def beat(self) -> bool:
        """One heartbeat: write it if the rules are in force, else remove it and ask for a new apply."""
        with self.lock:
            expected, bridge = self.in_force, self.bridge
        if expected is None:
            return False
        if self.shown(bridge) != expected:
            with self.lock:
                clear_heartbeat()
                if self.in_force == expected:
                    self.in_force, self.applied = None, None
            print(f"[netguard] the rules on {bridge} were changed or removed outside netguard: student "
                  "servers may not start until they are applied again", file=sys.stderr, flush=True)
            self.reapply.set()
            return False
        with self.lock:  # not after a stop or a failed apply that came in the meantime
            if self.in_force != expected:
                return False
            write_heartbeat({"at": time.time(), "network": self.network, "bridge": bridge,
                             "isolate": self.isolate, "pid": os.getpid()})
        return True

    def shown(self, bridge: str) -> str:
        try:
            return read_rules(bridge, self.fwd, self.inp)
        except subprocess.CalledProcessError as e:  # a chain deleted
            return f"unreadable: {e.stderr}"

    def discover(self) -> tuple[str | None, dict[str, str]]:
        """(bridge name, {service: IP} of the hub, proxy, egress and Prometheus) of this lab, from Docker."""
        try:
            net = self.client.networks.get(self.network)
        except self.errors.NotFound:
            return None, {}
        attrs = net.attrs
        if attrs.get("Driver") != "bridge":
            # Rules on a host's bridge cannot see traffic between a swarm's nodes: never report
            # a network of another kind as isolated (no heartbeat, so no server starts).
            raise NotABridge(f"the network {self.network} is a {attrs.get('Driver')} network, not a bridge: "
                             "netguard isolates students on one host's bridge only")
        bridge = (attrs.get("Options") or {}).get("com.docker.network.bridge.name") or f"br-{attrs['Id'][:12]}"
        ips = {}
        for container in self.client.containers.list(
            filters={"label": f"com.docker.compose.project={self.instance}"}
        ):
            service = container.labels.get("com.docker.compose.service")
            endpoint = container.attrs["NetworkSettings"]["Networks"].get(self.network)
            if service and endpoint and endpoint.get("IPAddress"):
                ips[service] = str(ipaddress.ip_address(endpoint["IPAddress"]))
        return bridge, {k: v for k, v in ips.items() if k in ("hub", "proxy", "egress", "prometheus")}

    def apply_once(self) -> None:
        bridge, ips = self.discover()
        if bridge is not None:
            self.apply(bridge, ips.get("hub"), ips.get("egress"), ips.get("proxy"), ips.get("prometheus"))

    def apply(self, bridge: str, hub: str | None, egress: str | None, proxy: str | None = None,
              prometheus: str | None = None) -> None:
        """Put the rules for these addresses in force, unless the kernel already shows them."""
        rules = render_rules(self.fwd, self.inp, hub, egress, self.isolate, proxy, prometheus)
        key = bridge + rules
        with self.lock:
            expected = self.in_force if key == self.applied else None
        if expected is not None and self.shown(bridge) == expected:
            return
        # Declaring our chains in the input flushes them, so this replaces whatever is there.
        subprocess.run(["iptables-restore", "-w", "--noflush"], input=rules, text=True, check=True,
                       capture_output=True)
        if key != self.applied:
            print(f"[netguard] {self.network} ({bridge}): hub {hub or '-'}, proxy {proxy or '-'}, egress {egress or '-'},"
                  f" prometheus {prometheus or '-'};"
                  f" students {'isolated' if self.isolate else 'not isolated (network.isolate: false)'}",
                  flush=True)
        ensure_jump("DOCKER-USER", bridge, self.fwd)
        ensure_jump("INPUT", bridge, self.inp)
        with self.lock:
            self.applied = key
            self.bridge = bridge
            self.in_force = read_rules(bridge, self.fwd, self.inp)


def read_rules(bridge: str, fwd: str, inp: str) -> str:
    """The rules in force, as the kernel shows them: both chains and whether the jumps exist."""
    shown = [iptables("-S", chain).stdout for chain in (fwd, inp)]
    for parent, chain in (("DOCKER-USER", fwd), ("INPUT", inp)):
        jump = iptables("-C", parent, "-i", bridge, "-j", chain, check=False).returncode == 0
        shown.append(f"{parent} -> {chain}: {'yes' if jump else 'MISSING'}\n")
    return "".join(shown)


def write_heartbeat(state: dict) -> None:
    tmp = f"{HEARTBEAT}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, HEARTBEAT)


def clear_heartbeat() -> None:
    try:
        os.unlink(HEARTBEAT)
    except FileNotFoundError:
        pass


def heartbeat_problem(network: str, tolerance: float = TOLERANCE, now: float | None = None) -> str | None:
    """For the hub's gate: None while netguard's rules for ``network`` are in force, else why not."""
    try:
        with open(HEARTBEAT) as f:
            state = json.load(f)
        at = float(state["at"])
    except FileNotFoundError:
        return "not running (no heartbeat)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable ({HEARTBEAT}: {e})"
    if state.get("network") != network:
        return f"guarding another network ({state.get('network')!r}, not {network!r})"
    age = (time.time() if now is None else now) - at
    if age > tolerance:
        return f"not answering (last heartbeat {age:.0f} s ago)"
    return None


def check_bridge_netfilter() -> None:
    try:
        value = open("/proc/sys/net/bridge/bridge-nf-call-iptables").read().strip()
    except OSError:
        value = "missing"
    if value != "1":
        print("[netguard] WARNING: net.bridge.bridge-nf-call-iptables is not 1 (br_netfilter not loaded):"
              " student containers on the same bridge can reach each other. Run: modprobe br_netfilter &&"
              " sysctl -w net.bridge.bridge-nf-call-iptables=1", file=sys.stderr, flush=True)


def main() -> None:
    import docker

    from .settings import load_settings_or_exit

    settings = load_settings_or_exit("netguard", secrets=False)  # never given the hub's secrets
    guard = Guard(settings.instance, settings.network, settings.get("network.isolate"))
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True
        guard.reapply.set()

    def beats():
        while not stopping:
            guard.beat()
            time.sleep(BEAT)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    check_bridge_netfilter()
    clear_heartbeat()
    threading.Thread(target=beats, name="heartbeat", daemon=True).start()
    try:
        while not stopping:
            try:
                guard.apply_once()
            except (subprocess.CalledProcessError, docker.errors.DockerException, NotABridge) as e:
                with guard.lock:
                    guard.in_force = guard.applied = None
                    clear_heartbeat()
                detail = getattr(e, "stderr", "") or str(e)
                print(f"[netguard] could not apply rules: {detail}", file=sys.stderr, flush=True)
            guard.reapply.wait(ROUND)
            guard.reapply.clear()
    finally:
        stopping = True
        with guard.lock:
            guard.in_force = None
            clear_heartbeat()
        remove(guard.fwd, guard.inp)
        print("[netguard] rules removed", flush=True)


if __name__ == "__main__":
    main()
