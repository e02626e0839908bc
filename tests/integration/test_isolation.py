"""Network isolation, checked from inside a real student container (netguard + egress proxy)."""

import json
import socket
import subprocess
import threading
import time

import pytest

from hub.netguard import chain_names
from tests.conftest import docker, docker_json

pytestmark = pytest.mark.integration

PROBE = r"""
import json, os, socket, sys, urllib.request
def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=5).close()
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return f"error: {e.strerror or e}"
def http(url, proxy=None, token=None):
    handlers = [urllib.request.ProxyHandler({"http": proxy, "https": proxy} if proxy else {})]
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        return urllib.request.build_opener(*handlers).open(req, timeout=30).status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception as e:
        return f"error: {e}"
targets = json.loads(sys.argv[1])
out = {}
for key, (kind, *args) in targets.items():
    out[key] = tcp(*args) if kind == "tcp" else http(*args)
print(json.dumps(out))
"""


def ip_on(container, network):
    return docker_json("inspect", container)[0]["NetworkSettings"]["Networks"][network]["IPAddress"]


def probe(container, targets):
    r = subprocess.run(["docker", "exec", container, "python3", "-c", PROBE, json.dumps(targets)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def two_containers(lab):
    a, b = lab.new_user("iso-a"), lab.new_user("iso-b")
    lab.api("POST", f"/users/{a}/server", json={"profile": "cpu"})
    lab.api("POST", f"/users/{b}/server", json={"profile": "cpu"})
    lab.wait_ready(a)
    lab.wait_ready(b)
    yield f"{lab.instance}-{a}", f"{lab.instance}-{b}"
    lab.stop(a)
    lab.stop(b)


@pytest.fixture(scope="module")
def host_service():
    """A TCP service on the host, listening on every address (the host's 'other services')."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    stop = threading.Event()

    def serve():
        server.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    stop.set()
    server.close()


def hub_container(lab):
    return f"{lab.instance}-hub-1"


def test_blocked_targets_fail_and_the_hub_answers(lab, two_containers, host_service):
    """From a student: the hub's API and the proxy answer; the proxy's API, another student, the IdP,
    the hub's database server, Prometheus and the metrics exporter, the host, metadata do not, and
    the hub's metrics refuse the student's token."""
    me, other = two_containers
    network = lab.instance
    gateway = docker_json("network", "inspect", network)[0]["IPAM"]["Config"][0]["Gateway"]
    other_ip = ip_on(other, network)
    idp_ip = ip_on(f"{lab.instance}-idp-1", network)
    # Controls: each target really listens (seen from the host or from the hub's container).
    with socket.create_connection(("127.0.0.1", host_service), timeout=5):
        pass
    control = probe(hub_container(lab), {"other": ["tcp", other_ip, 8888], "idp": ["tcp", idp_ip, 9400],
                                         "chp_api": ["tcp", "proxy", 8001], "hub_db": ["tcp", "hubdb", 5432],
                                         "prometheus": ["tcp", "prometheus", 9090],
                                         "metrics": ["tcp", "metrics", 9101]})
    assert control == {"other": "open", "idp": "open", "chp_api": "open", "hub_db": "open", "prometheus": "open",
                       "metrics": "open"}
    # The student's view.
    token = docker_json("inspect", me)[0]["Config"]["Env"]
    token = next(e.split("=", 1)[1] for e in token if e.startswith("JUPYTERHUB_API_TOKEN="))
    seen = probe(me, {
        "hub_api": ["http", "http://hub:8081/hub/api/user", None, token],
        "proxy": ["http", "http://proxy:8000/hub/health"],
        "other_student": ["tcp", other_ip, 8888],
        "idp": ["tcp", idp_ip, 9400],
        "host_service": ["tcp", gateway, host_service],
        "docker_tcp_api": ["tcp", gateway, 2375],
        "chp_api": ["tcp", "proxy", 8001],
        "hub_db": ["tcp", "hubdb", 5432],
        "prometheus": ["tcp", "prometheus", 9090],
        "metrics": ["tcp", "metrics", 9101],
        # The hub's metrics need read:metrics, which a student's token has not.
        "hub_metrics": ["http", "http://hub:8081/hub/metrics", None, token],
    })
    assert seen["hub_api"] == 200
    assert seen["proxy"] == 200
    assert seen["hub_metrics"] == 403
    for target in ("other_student", "idp", "host_service", "docker_tcp_api", "chp_api", "hub_db", "prometheus",
                   "metrics"):
        assert seen[target] == "refused", (target, seen[target])
    # Traffic off this machine is probed only once this lab's own chain ends in REJECT, so a
    # missing rule can never send a packet to the metadata address or the internet.
    fwd, _inp = chain_names(lab.instance)
    rules = subprocess.run(["iptables", "-S", fwd], capture_output=True, text=True).stdout.splitlines()
    assert rules and rules[-1].endswith("REJECT --reject-with icmp-admin-prohibited"), rules
    assert not any("RETURN" in r and ip_on(me, network) in r for r in rules)
    pypi_ip = socket.gethostbyname("pypi.org")
    seen = probe(me, {"metadata": ["tcp", "169.254.169.254", 80], "internet_direct": ["tcp", pypi_ip, 443],
                      "internet_by_name": ["tcp", "pypi.org", 443]})
    assert seen["metadata"] == "refused"
    assert seen["internet_direct"] == "refused"
    assert "name resolution" in seen["internet_by_name"]  # no outside DNS either: names resolve via the proxy


def test_no_docker_socket_and_no_hub_secrets_inside(two_containers):
    """No Docker socket, no hub state, no hub secrets in a student's container."""
    me, _ = two_containers
    r = subprocess.run(["docker", "exec", me, "bash", "-c",
                        "ls -la /var/run/docker.sock /srv/jupyterhub 2>&1; env"], capture_output=True, text=True)
    assert "No such file or directory" in r.stdout
    assert r.stdout.count("No such file or directory") == 2
    for secret in ("LAB_ADMIN_API_TOKEN", "CONFIGPROXY_AUTH_TOKEN", "LAB_DTU_CLIENT_SECRET", "LAB_GITHUB_CLIENT_SECRET", "JPY_COOKIE_SECRET",
                   "LAB_HUB_DB_URL", "LAB_GRADEBOOK_URL"):
        assert secret not in r.stdout


def test_allowed_registry_through_egress_only(two_containers):
    """Through the egress proxy: an allowed registry answers, any other host is refused by the proxy."""
    me, _ = two_containers
    seen = probe(me, {
        "pypi": ["http", "https://pypi.org/simple/six/", "http://egress:3128"],
        "not_allowed": ["http", "http://example.com/", "http://egress:3128"],
    })
    assert seen["pypi"] == 200
    assert seen["not_allowed"] == 403


def test_pip_works_from_a_student_server(two_containers):
    """A student's pip (through the proxy the container is given) can fetch from PyPI."""
    me, _ = two_containers
    r = subprocess.run(["docker", "exec", me, "pip", "download", "--no-deps", "-q", "-d", "/tmp/dl", "six==1.17.0"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "six-1.17.0" in docker("exec", me, "ls", "/tmp/dl")


def test_no_server_starts_while_the_firewall_is_down(lab):
    """Isolation fails closed: with netguard stopped the hub refuses to start a student's server,
    says why, and starts it again once netguard is back."""
    name = lab.new_user("nofw")
    lab.compose("stop", "netguard")
    try:
        r = lab.api("POST", f"/users/{name}/server")
        assert r.status_code == 503, (r.status_code, r.text)
        assert "network firewall is not running" in r.json()["message"]
        assert not lab.api("GET", f"/users/{name}").json()["servers"]
        assert not docker("ps", "-q", "--filter", f"name={lab.instance}-{name}").strip()
    finally:
        lab.compose("start", "netguard")
        lab.wait_netguard_healthy()
    lab.start(name)
    lab.stop(name)


def test_a_hung_firewall_closes_the_gate_and_rules_removed_behind_its_back_come_back(lab):
    """Netguard frozen (its heartbeat stops): within its tolerance the hub refuses to start servers,
    and starts them again once it runs. Its rules removed from the host's firewall while it runs:
    it notices at its next beat and puts them back by itself."""
    from hub.netguard import TOLERANCE

    name = lab.new_user("hung")
    guard = f"{lab.instance}-netguard-1"
    docker("pause", guard)
    try:
        time.sleep(TOLERANCE + 1)  # a frozen process writes no heartbeat
        r = lab.api("POST", f"/users/{name}/server")
        assert r.status_code == 503, (r.status_code, r.text)
        assert "network firewall is not running" in r.json()["message"]
        assert "not answering (last heartbeat" in lab.compose("logs", "--tail", "20", "hub").stdout
    finally:
        docker("unpause", guard)
    lab.wait_netguard_healthy()
    lab.start(name)
    lab.stop(name)

    fwd, _ = chain_names(lab.instance)
    net = docker_json("network", "inspect", lab.instance)[0]
    bridge = (net.get("Options") or {}).get("com.docker.network.bridge.name") or f"br-{net['Id'][:12]}"
    subprocess.run(["iptables", "-w", "-D", "DOCKER-USER", "-i", bridge, "-j", fwd], check=True)
    deadline = time.monotonic() + 15
    while subprocess.run(["iptables", "-w", "-C", "DOCKER-USER", "-i", bridge, "-j", fwd]).returncode != 0:
        assert time.monotonic() < deadline, "netguard did not put back the rules removed from DOCKER-USER"
        time.sleep(0.5)
    assert "changed or removed outside netguard" in lab.compose("logs", "--tail", "20", "netguard").stdout
    lab.wait_netguard_healthy()  # the gate opens again at its next beat: later tests start servers
