"""Nodeguard's rules in a real network namespace: a "server" namespace linked to a "peer" one that
holds the hub's, the proxy's and the egress proxy's fixed addresses and another student's. The
rules are written the way nodeguard writes them (nsenter into the server's namespace by a pid)
and read back; then real connections show what passes. No Docker needed."""

import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from hub import nodeguard
from hub.nodeguard import ALIVE, ALIVE_WITHIN, service_spec
from tests.conftest import CONNECT_SCRIPT

NET = "10.201"
OTHER = f"{NET}.8.11"  # another student's server
SERVER = f"{NET}.8.10"

LISTEN = textwrap.dedent("""
    import socket, sys, threading
    def serve(host, port):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port)); s.listen(16)
        while True:
            c, _ = s.accept(); c.close()
    for spec in sys.argv[1:]:
        host, port = spec.rsplit(":", 1)
        threading.Thread(target=serve, args=(host, int(port)), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
""")



def sh(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


@pytest.fixture
def namespaces():
    if os.geteuid() != 0:
        pytest.fail("nodeguard's test needs root (network namespaces), as the lab's tests run")
    tag = uuid.uuid4().hex[:6]
    server, peer = f"ngs-{tag}", f"ngp-{tag}"
    procs = []
    try:
        sh("ip", "netns", "add", server)
        sh("ip", "netns", "add", peer)
        sh("ip", "link", "add", f"vs{tag}", "netns", server, "type", "veth", "peer", "name", f"vp{tag}", "netns", peer)
        sh("ip", "-n", server, "addr", "add", f"{SERVER}/20", "dev", f"vs{tag}")
        for address in (*nodeguard.addresses(NET).values(), OTHER):
            sh("ip", "-n", peer, "addr", "add", f"{address}/20", "dev", f"vp{tag}")
        for ns, dev in ((server, f"vs{tag}"), (peer, f"vp{tag}")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        a = nodeguard.addresses(NET)
        listener = subprocess.Popen(
            ["ip", "netns", "exec", peer, sys.executable, "-c", LISTEN, f"{a['hub']}:8081", f"{a['hub']}:22",
             f"{a['proxy']}:8000", f"{a['proxy']}:8001", f"{a['egress']}:3128", f"{OTHER}:8888"],
            stdout=subprocess.PIPE, text=True)
        procs.append(listener)
        assert listener.stdout.readline().strip() == "ready"
        # A process in the server's namespace: nodeguard finds a container's namespace by its pid.
        holder = subprocess.Popen(["ip", "netns", "exec", server, "sleep", "120"])
        procs.append(holder)
        time.sleep(0.3)
        yield server, peer, holder.pid
    finally:
        for p in procs:
            p.kill()
        sh("ip", "netns", "del", server, check=False)
        sh("ip", "netns", "del", peer, check=False)


def connect(ns, *targets):
    out = sh("ip", "netns", "exec", ns, sys.executable, "-c", CONNECT_SCRIPT, *targets).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def test_a_guarded_server_reaches_only_the_hub_proxy_and_egress_and_only_they_reach_it(namespaces, monkeypatch):
    server, peer, pid = namespaces
    monkeypatch.setattr(nodeguard, "HOST_PROC", "/proc")
    a = nodeguard.addresses(NET)
    rules = nodeguard.render_rules(NET)
    nodeguard.in_netns(pid, "iptables-restore", "-w", input=rules)
    assert nodeguard.expected_listing(rules) <= set(nodeguard.shown(pid).splitlines())
    seen = connect(server, f"{a['hub']}:8081", f"{a['proxy']}:8000", f"{a['egress']}:3128",
                   f"{a['hub']}:22", f"{a['proxy']}:8001", f"{OTHER}:8888")
    assert seen == {
        f"{a['hub']}:8081": "open", f"{a['proxy']}:8000": "open", f"{a['egress']}:3128": "open",
        # the hub's other ports, the proxy's API and another student's server: refused at once
        f"{a['hub']}:22": "ConnectionRefusedError", f"{a['proxy']}:8001": "ConnectionRefusedError",
        f"{OTHER}:8888": "ConnectionRefusedError",
    }
    # Inbound: the proxy reaches the server's port; another student does not.
    listener = subprocess.Popen(["ip", "netns", "exec", server, sys.executable, "-c", LISTEN, f"{SERVER}:8888"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        probe = textwrap.dedent(f"""
            import socket
            for src in ({a['proxy']!r}, {OTHER!r}):
                s = socket.socket(); s.settimeout(2); s.bind((src, 0))
                try:
                    s.connect(({SERVER!r}, 8888)); print(src, "open")
                except OSError as e:
                    print(src, type(e).__name__)
                s.close()
        """)
        out = sh("ip", "netns", "exec", peer, sys.executable, "-c", probe).stdout
        assert dict(line.split(" ", 1) for line in out.splitlines()) == {
            a["proxy"]: "open", OTHER: "ConnectionRefusedError"}
    finally:
        listener.kill()


def test_without_isolation_everything_passes(namespaces, monkeypatch):
    server, _peer, pid = namespaces
    monkeypatch.setattr(nodeguard, "HOST_PROC", "/proc")
    nodeguard.in_netns(pid, "iptables-restore", "-w", input=nodeguard.render_rules(NET, isolate=False))
    assert connect(server, f"{OTHER}:8888") == {f"{OTHER}:8888": "open"}


def test_the_global_service_runs_on_every_node_with_what_it_needs():
    spec = nodeguard.service_spec("lab-x", "mlops-lab/hub:1.0", NET, True)
    task = spec["task_template"]
    assert spec["mode"] == {"global": {}} and spec["name"] == "lab-x-nodeguard"
    assert task["Networks"] == [{"Target": "host"}]
    container = task["ContainerSpec"]
    assert container["CapabilityAdd"] == ["NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"]
    assert sorted(container["Env"]) == ["LAB_INSTANCE=lab-x", "LAB_NODEGUARD_ISOLATE=1", f"LAB_SWARM_NET={NET}"]
    assert {(m["Source"], m["Target"], m.get("ReadOnly", False)) for m in container["Mounts"]} == {
        ("/var/run/docker.sock", "/var/run/docker.sock", False), ("/proc", "/host/proc", True)}


def test_the_mark_is_a_root_owned_file_the_student_cannot_have_made():
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(nodeguard.mark_tar())) as tar:
        (member,) = tar.getmembers()
    assert member.name == nodeguard.MARK and member.uid == 0 and member.mode == 0o444


class Engine:
    """The one engine call cut_off makes: a running container whose process is ``pid``."""

    def __init__(self, pid: int):
        self.pid = pid

    def inspect_container(self, _container_id):
        return {"State": {"Running": True, "Pid": self.pid}}


def test_a_grading_sandbox_is_cut_off_from_every_network(namespaces, monkeypatch):
    """A sandbox on a swarm gets the node's bridge (Swarm has no "none" network for services):
    nodeguard deletes every interface but loopback in its namespace, and then nothing answers."""
    server, _peer, pid = namespaces
    monkeypatch.setattr(nodeguard, "HOST_PROC", "/proc")
    a = nodeguard.addresses(NET)
    assert connect(server, f"{a['hub']}:8081") == {f"{a['hub']}:8081": "open"}  # before: a network
    guard = nodeguard.NodeGuard("lab-x", NET, True, client=Engine(pid))
    assert guard.cut_off("c" * 64) is True
    assert nodeguard.interfaces(pid) == ["lo"]
    assert connect(server, f"{a['hub']}:8081", f"{OTHER}:8888") == {
        f"{a['hub']}:8081": "OSError", f"{OTHER}:8888": "OSError"}


def test_nodeguards_health_check_is_its_own_rounds_not_the_hubs_port(tmp_path):
    """The hub image's check asks the hub's port, which a nodeguard task has not: Swarm would
    replace every task as unhealthy. Nodeguard's check is the age of the file each round touches."""
    check = service_spec("lab", "mlops-lab/hub:1", "10.201", True)["task_template"]["ContainerSpec"]["Healthcheck"]
    assert check["Test"][0] == "CMD" and "8081" not in " ".join(check["Test"])
    assert check["Retries"] == 3 and check["StartPeriod"] == 30 * 10**9
    alive = tmp_path / "alive"
    command = [c.replace(ALIVE, str(alive)) for c in check["Test"][1:]]
    assert subprocess.run(command).returncode != 0  # no round yet
    alive.touch()
    assert subprocess.run(command).returncode == 0
    old = time.time() - ALIVE_WITHIN - 5
    os.utime(alive, (old, old))
    assert subprocess.run(command).returncode != 0  # rounds stopped
