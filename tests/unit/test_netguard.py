"""Netguard's heartbeat against the kernel's real iptables, in a network namespace of its own
(``unshare --net``), and the hub's reading of it. No Docker needed."""

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from hub import netguard

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, os, subprocess, sys
    from hub import netguard
    netguard.HEARTBEAT = sys.argv[1]
    subprocess.run(["iptables", "-N", "DOCKER-USER"], check=True)
    g = netguard.Guard("lab-x", "lab-x", isolate=True, client=object())
    seen = {}
    seen["before apply"] = g.beat()
    g.apply("br-test", "172.30.0.2", "172.30.0.3", "172.30.0.4")
    seen["applied"] = g.beat() and json.load(open(netguard.HEARTBEAT))["network"]
    # Someone removes the jump into our chain (what a Docker or firewall restart can do).
    subprocess.run(["iptables", "-D", "DOCKER-USER", "-i", "br-test", "-j", g.fwd], check=True)
    seen["jump removed"] = [g.beat(), os.path.exists(netguard.HEARTBEAT), g.reapply.is_set()]
    g.apply("br-test", "172.30.0.2", "172.30.0.3", "172.30.0.4")
    seen["applied again"] = g.beat()
    # A rule flushed from our own chain.
    subprocess.run(["iptables", "-F", g.inp], check=True)
    seen["chain flushed"] = [g.beat(), os.path.exists(netguard.HEARTBEAT)]
    # A flush between two beats is found by the next round's apply too, which does not take the
    # changed rules for the applied ones.
    g.apply("br-test", "172.30.0.2", "172.30.0.3")
    subprocess.run(["iptables", "-F", g.fwd], check=True)
    g.apply("br-test", "172.30.0.2", "172.30.0.3")
    seen["flushed between beats"] = [g.beat(), "REJECT" in subprocess.run(
        ["iptables", "-S", g.fwd], capture_output=True, text=True).stdout]
    netguard.remove(g.fwd, g.inp)
    seen["removed"] = g.beat()
    print(json.dumps(seen))
""")


def test_the_heartbeat_follows_the_rules_in_the_kernel(tmp_path):
    heartbeat = tmp_path / "heartbeat.json"
    r = subprocess.run(["unshare", "--net", sys.executable, "-c", SCRIPT, str(heartbeat)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.splitlines()[-1])
    assert seen == {
        "before apply": False,
        "applied": "lab-x",
        "jump removed": [False, False, True],
        "applied again": True,
        "chain flushed": [False, False],
        "flushed between beats": [True, True],
        "removed": False,
    }
    assert "changed or removed outside netguard" in r.stderr


def test_the_hub_reads_the_heartbeat_and_says_why_it_refuses(tmp_path, monkeypatch):
    heartbeat = tmp_path / "heartbeat.json"
    monkeypatch.setattr(netguard, "HEARTBEAT", str(heartbeat))
    assert netguard.heartbeat_problem("lab") == "not running (no heartbeat)"
    netguard.write_heartbeat({"at": time.time(), "network": "lab"})
    assert netguard.heartbeat_problem("lab") is None
    assert "another network" in netguard.heartbeat_problem("other-lab")
    assert netguard.heartbeat_problem("lab", now=time.time() + netguard.TOLERANCE + 1).startswith(
        "not answering (last heartbeat 1")
    heartbeat.write_text("{not json")
    assert netguard.heartbeat_problem("lab").startswith(f"unreadable ({heartbeat}")
    netguard.clear_heartbeat()
    assert not heartbeat.exists()


def test_prometheus_may_connect_out_but_students_may_not_reach_it():
    from hub.netguard import render_rules

    rules = render_rules("FWD", "INP", "10.0.0.2", "10.0.0.3", True, "10.0.0.4", "10.0.0.5").splitlines()
    # Prometheus's own connections (to the metrics service) pass, in both chains.
    assert "-A FWD -s 10.0.0.5/32 -j RETURN" in rules and "-A INP -s 10.0.0.5/32 -j RETURN" in rules
    # Nothing opens a port on it: only the hub's API, the proxy and the egress proxy are destinations.
    destinations = [r for r in rules if " -d " in r]
    assert len(destinations) == 3 and not any("10.0.0.5" in r for r in destinations)
    assert rules[-3:] == ["-A INP -p tcp -j REJECT --reject-with tcp-reset",
                          "-A INP -j REJECT --reject-with icmp-admin-prohibited", "COMMIT"]
    # Without monitoring, no rule names it.
    assert "None" not in render_rules("FWD", "INP", "10.0.0.2", "10.0.0.3", True, "10.0.0.4")
