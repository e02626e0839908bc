"""The lab on a three-node swarm (tests/swarm/conftest.py): students land on different workers,
a worker stops and its student starts again on the other with their home as they left it, the
manager restarts and nothing is lost, and GPUs are placed by the nodes' declared resources.

The tests run in this order and share the swarm; each says what it leaves for the next.
"""

from __future__ import annotations


import pytest
from playwright.sync_api import expect

from tests.browser.test_login import browser, login_dtu, new_page  # noqa: F401  (browser: the fixture)
from tests.conftest import ARTIFACTS, wait_for
from tests.swarm.conftest import FAKE_GPUS, NODES

pytestmark = pytest.mark.swarm


def start_in_browser(lab, page, person: str) -> None:
    """The front page, the DTU button, the CPU profile, Start: the student's JupyterLab."""
    login_dtu(lab, page, person)
    expect(page.get_by_text("Choose the kind of server to start")).to_be_visible()
    page.get_by_label("CPU", exact=False).first.check()
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(f"**/user/{person}/lab**", timeout=300_000)
    expect(page.locator(".jp-DirListing-content").get_by_text("00-welcome")).to_be_visible(timeout=120_000)


def write_note(lab, person: str, text: str) -> None:
    r = lab.server_api(person, "PUT", "/contents/notes.txt",
                       json={"type": "file", "format": "text", "content": text})
    assert r.status_code in (200, 201), r.text


STATE: dict = {}


def test_students_land_on_different_nodes_with_their_homes_on_shared_storage(swarm, swarm_lab, browser):
    pages = {}
    for person in ("s230001", "s230002"):
        pages[person] = new_page(browser)
        start_in_browser(swarm_lab, pages[person], person)
    nodes = {person: swarm.node_of_service(swarm_lab.service(person)) for person in pages}
    # Swarm spreads the two servers over the two workers; the manager runs none.
    assert sorted(nodes.values()) == ["a", "b"], nodes
    for person in pages:
        write_note(swarm_lab, person, f"{person}'s notes, written on {NODES[nodes[person]]}")
        # The home is the student's folder on the shared storage, owned by the server's user.
        note = swarm.homes / person / "notes.txt"
        assert note.read_text() == f"{person}'s notes, written on {NODES[nodes[person]]}"
        assert note.stat().st_uid == 1000
    # The student sees it in JupyterLab's file browser.
    pages["s230001"].reload()
    expect(pages["s230001"].locator(".jp-DirListing-content").get_by_text("notes.txt")).to_be_visible(timeout=60_000)
    STATE.update(pages=pages, nodes=nodes)


PROBE = """
import socket, sys
for spec in sys.argv[1:]:
    host, port = spec.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close(); print(spec, "open")
    except OSError as e:
        print(spec, type(e).__name__)
"""


def student_container(swarm, lab, person: str) -> tuple[str, str]:
    node = swarm.node_of_service(lab.service(person))
    cid = swarm.docker(node, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={lab.service(person)}").split()[0]
    return node, cid


def probe(swarm, node: str, cid: str, *targets: str) -> dict[str, str]:
    """Connections from inside a student's container, as the student (uid 1000)."""
    out = swarm.docker(node, "exec", "-u", "1000", cid, "python3", "-c", PROBE, *targets)
    return dict(line.split(" ", 1) for line in out.splitlines())


def test_isolation_holds_across_nodes(swarm, swarm_lab):
    """From s230001's server: the other student's server on the other node, the nodes' Docker and
    Swarm ports, the identity provider, the proxy's API and cloud metadata are refused; the hub's
    API, the proxy and the egress proxy are open (controls)."""
    node, cid = student_container(swarm, swarm_lab, "s230001")
    other_node, other_cid = student_container(swarm, swarm_lab, "s230002")
    assert node != other_node
    other_ip = swarm.docker(other_node, "inspect", other_cid, "--format",
                            f"{{{{(index .NetworkSettings.Networks \"{swarm_lab.instance}\").IPAddress}}}}").strip()
    manager_ip = swarm.docker("mgr", "info", "--format", "{{.Swarm.NodeAddr}}").strip()
    worker_ip = swarm.docker(other_node, "info", "--format", "{{.Swarm.NodeAddr}}").strip()
    seen = probe(swarm, node, cid, "hub:8081", "proxy:8000", "egress:3128",
                 f"{other_ip}:8888", f"{swarm_lab.service('s230002')}:8888", "proxy:8001", "hub:10102",
                 "idp:9400", f"{manager_ip}:2377", f"{manager_ip}:7946", f"{worker_ip}:7946",
                 f"{manager_ip}:2375", "169.254.169.254:80")
    opened = {k for k, v in seen.items() if v == "open"}
    assert opened == {"hub:8081", "proxy:8000", "egress:3128"}, seen
    # The student cannot put nodeguard's mark themselves (nor remove it).
    r = swarm.docker(node, "exec", "-u", "1000", cid, "sh", "-c",
                     "touch /etc/lab/guard/x; rm -f /etc/lab/guard/in-force; ls /etc/lab/guard", check=False)
    assert r.strip() == "in-force", r
    # Nor change the rules: the server's processes have no capabilities at all (no NET_ADMIN).
    caps = run_in(swarm, node, cid, "grep -E '^Cap(Eff|Bnd)' /proc/1/status /proc/self/status")
    assert caps.count("0000000000000000") == 4, caps
    assert probe(swarm, node, cid, f"{other_ip}:8888")[f"{other_ip}:8888"] != "open"


def run_in(swarm, node, cid, command: str) -> str:
    return swarm.docker(node, "exec", "-u", "1000", cid, "sh", "-c", command, check=False)


def test_a_stopped_worker_its_student_is_told_and_starts_again_on_the_other_with_their_home(swarm, swarm_lab, browser):
    pages, nodes = STATE["pages"], STATE["nodes"]
    lost = nodes["s230001"]
    kept = "b" if lost == "a" else "a"
    swarm.stop_node(lost)
    wait_for(lambda: swarm.node_state(lost) == "down", "the manager to see the stopped worker down", timeout=120)
    # The hub's poll notices the server gone with its node (every 30 s) and stops it.
    wait_for(lambda: not swarm_lab.api("GET", "/users/s230001").json().get("servers"),
             "the hub to see s230001's server gone", timeout=120)
    # The other student's server, on the other node, goes on.
    assert swarm_lab.api("GET", "/users/s230002").json()["servers"][""]["ready"]
    assert swarm_lab.server_api("s230002", "GET", "/contents/notes.txt").status_code == 200

    page = pages["s230001"]
    page.goto(f"{swarm_lab.user_url('s230001')}/lab")
    message = page.locator("#lab-stopped-reason")
    expect(message).to_contain_text(f"The machine your server ran on ({NODES[lost]}) stopped")
    expect(message).to_contain_text("Your files are safe")
    page.screenshot(path=str(ARTIFACTS / "swarm-node-stopped.png"))
    page.locator("#start").click()  # "Launch Server"
    expect(page.get_by_text("Choose the kind of server to start")).to_be_visible()
    page.get_by_label("CPU", exact=False).first.check()
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**/user/s230001/lab**", timeout=300_000)
    listing = page.locator(".jp-DirListing-content")
    expect(listing.get_by_text("notes.txt")).to_be_visible(timeout=120_000)
    assert swarm.node_of_service(swarm_lab.service("s230001")) == kept
    r = swarm_lab.server_api("s230001", "GET", "/contents/notes.txt")
    assert r.json()["content"] == f"s230001's notes, written on {NODES[lost]}"
    swarm.start_node(lost)
    wait_for(lambda: swarm.node_state(lost) == "ready", "the worker to rejoin", timeout=120)


def test_the_manager_restarts_and_nothing_is_lost(swarm, swarm_lab):
    before = {p: swarm_lab.api("GET", f"/users/{p}").json()["servers"][""]["started"] for p in ("s230001", "s230002")}
    swarm.stop_node("mgr")
    swarm.start_node("mgr")
    swarm_lab.wait_hub(timeout=300)
    for person, started in before.items():
        # The hub checks each server it knew once it is back (the overlay's paths come back with the node).
        server = wait_for(lambda: (s := swarm_lab.api("GET", f"/users/{person}").json()["servers"].get("")) and
                          s["ready"] and s, f"{person}'s server to be ready after the restart", timeout=120)
        assert server["started"] == started, server  # the same server, not a new one

        def note():  # through the restarted proxy, once the hub has given it the routes again
            r = swarm_lab.server_api(person, "GET", "/contents/notes.txt")
            return r.status_code == 200 and r.headers.get("Content-Type", "").startswith("application/json") and r.json()

        assert person in wait_for(note, f"{person}'s notes through the proxy", timeout=120)["content"]
    users = {u["name"] for u in swarm_lab.api("GET", "/users").json()}
    assert {"s230001", "s230002", "s230003", "teacher"} <= users
    for person in before:
        swarm_lab.stop(person)


def gpu_of(swarm, lab, person: str) -> tuple[str, str]:
    """(device, node) of a person's running GPU service, from the service's own spec."""
    spec = swarm.docker_json("mgr", "service", "inspect", lab.service(person))[0]["Spec"]
    env = dict(e.split("=", 1) for e in spec["TaskTemplate"]["ContainerSpec"]["Env"])
    node_id = next(c.split("==")[1].strip() for c in spec["TaskTemplate"]["Placement"]["Constraints"]
                   if c.startswith("node.id"))
    hostname = swarm.docker("mgr", "node", "inspect", node_id, "--format", "{{.Description.Hostname}}").strip()
    return env["NVIDIA_VISIBLE_DEVICES"], hostname


def test_whole_gpus_follow_the_nodes_declared_resources_never_over_capacity(swarm, swarm_lab):
    # node-a declares one GPU, node-b two; lab.yaml makes node-b's second a shared one, so two
    # GPUs (one on each node) are whole GPUs.
    people = []
    for i in range(3):
        name = swarm_lab.new_user("gpu")
        r = swarm_lab.api("POST", "/groups/instructors/users", json={"users": [name]})
        assert r.status_code == 200, r.text
        people.append(name)
    first, second, third = people
    swarm_lab.start(first, profile="gpu-whole")
    swarm_lab.start(second, profile="gpu-whole")
    placed = {p: gpu_of(swarm, swarm_lab, p) for p in (first, second)}
    assert {placed[first], placed[second]} == {(FAKE_GPUS["a"][0], "node-a"), (FAKE_GPUS["b"][0], "node-b")}, placed
    for person, (_device, hostname) in placed.items():
        assert NODES[swarm.node_of_service(swarm_lab.service(person))] == hostname
    # Every whole GPU is taken: the third is refused with the count, not placed over capacity.
    r = swarm_lab.api("POST", f"/users/{third}/server", json={"profile": "gpu-whole"})
    assert r.status_code == 503 and "0 of 2 GPU slots free" in r.text, r.text
    # A stop frees the GPU for the next.
    swarm_lab.stop(first)
    swarm_lab.start(third, profile="gpu-whole")
    assert gpu_of(swarm, swarm_lab, third) == placed[first]
    # A node lost: its GPU server ends, its GPU is freed and not given again while the node is down.
    on_b = second if placed[second][1] == "node-b" else third
    swarm.stop_node("b")
    try:
        wait_for(lambda: not swarm_lab.api("GET", f"/users/{on_b}").json().get("servers"),
                 f"the hub to see {on_b}'s server gone with node-b", timeout=150)
        usage = swarm_lab.session.get(f"{swarm_lab.service_url('gpu-usage')}/?format=json", timeout=10).json()
        open_periods = [p for p in usage["periods"] if p["user"] == on_b and p["end"] is None]
        assert not open_periods, usage
        r = swarm_lab.api("POST", f"/users/{first}/server", json={"profile": "gpu-whole"})
        assert r.status_code == 503 and "0 of 1 GPU slot" in r.text, r.text
    finally:
        swarm.start_node("b")
    wait_for(lambda: swarm.node_state("b") == "ready", "node-b to rejoin", timeout=120)
    swarm_lab.start(first, profile="gpu-whole")
    assert gpu_of(swarm, swarm_lab, first)[1] == "node-b"
