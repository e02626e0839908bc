"""The lab on a three-node swarm (tests/swarm/conftest.py): students land on different workers,
an instructor watches them on the monitor page, each with its machine, a worker stops and its
student starts again on the other with their home as they left it, the manager restarts and
nothing is lost, GPUs are placed by the nodes' declared resources, and grading's sandboxes run
on the workers, cut off from every network, within their limits.

The tests run in this order and share the swarm; each says what it leaves for the next.
"""

from __future__ import annotations

import json

import nbformat
import pytest
from playwright.sync_api import expect

from tests.browser.test_login import browser, login_dtu, new_page  # noqa: F401  (browser: the fixture)
from tests.browser.test_monitor import open_monitor
from tests.conftest import ARTIFACTS, CONNECT_SCRIPT, submission_archive, wait_for
from tests.swarm.conftest import FAKE_GPUS, NODES, SUBNET

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


BUSY_LOOP = ("import os, time\nend = time.time() + 240\n"
             "while time.time() < end and not os.path.exists('/tmp/stop-busy'): pass")


def test_an_instructor_sees_the_students_busy_on_each_worker_with_its_machine(swarm, swarm_lab, browser):
    """Monitoring on a swarm: an exporter on every node (a global service), which Prometheus on
    the manager finds by DNS. Both students train on their own worker; the instructor opens the
    monitor page from the hub's Services menu and sees each busy, with the machine it runs on."""
    nodes = STATE["nodes"]
    containers = {person: student_container(swarm, swarm_lab, person) for person in nodes}
    for node, cid in containers.values():
        swarm.docker(node, "exec", "-d", "-u", "1000", cid, "python3", "-c", BUSY_LOOP)
    teacher = new_page(browser)
    try:
        open_monitor(swarm_lab, teacher)

        def busy_rows():
            teacher.reload()
            seen = {}
            for person in nodes:
                row = teacher.locator("tr", has=teacher.locator("td", has_text=person))
                if row.count() != 1 or row.locator("td").count() != 5:
                    return None
                cells = [row.locator("td").nth(i).inner_text() for i in range(5)]
                if float(cells[2]) < 0.3:  # CPU cores over the last 2 minutes
                    return None
                seen[person] = cells[4]
            return seen

        machines = wait_for(busy_rows, "both students busy on the monitor page, with their machines", timeout=240)
        assert machines == {person: NODES[node] for person, node in nodes.items()}
        teacher.screenshot(path=str(ARTIFACTS / "swarm-monitor.png"), full_page=True)
    finally:
        teacher.context.close()
        for node, cid in containers.values():
            swarm.docker(node, "exec", "-u", "1000", cid, "touch", "/tmp/stop-busy", check=False)


def global_tasks(swarm, lab) -> dict[str, list[tuple[str, str, str]]]:
    """For nodeguard and the exporter: every task Swarm has made, as (node, task id, current state)."""
    tasks = {}
    for role in ("nodeguard", "metrics"):
        out = swarm.docker("mgr", "service", "ps", "--no-trunc", "--format", "{{.Node}} {{.ID}} {{.CurrentState}}",
                           f"{lab.instance}-{role}")
        tasks[role] = sorted(tuple(line.split(" ", 2)) for line in out.splitlines())
    return tasks


def exporter_addresses(swarm, lab) -> dict[str, str]:
    """node key -> the overlay address of that node's exporter task."""
    ids = swarm.docker("mgr", "service", "ps", "-q", "--filter", "desired-state=running", f"{lab.instance}-metrics").split()
    by_node = {v: k for k, v in NODES.items()}
    found = {}
    for task in swarm.docker_json("mgr", "inspect", *ids):
        node = swarm.docker("mgr", "node", "inspect", task["NodeID"], "--format", "{{.Description.Hostname}}").strip()
        for attachment in task.get("NetworksAttachments") or []:
            if attachment["Network"]["Spec"]["Name"] == lab.instance:
                found[by_node[node]] = attachment["Addresses"][0].split("/")[0]
    return found


def student_container(swarm, lab, person: str) -> tuple[str, str]:
    node = swarm.node_of_service(lab.service(person))
    cid = swarm.docker(node, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={lab.service(person)}").split()[0]
    return node, cid


def probe(swarm, node: str, cid: str, *targets: str) -> dict[str, str]:
    """Connections from inside a student's container, as the student (uid 1000)."""
    out = swarm.docker(node, "exec", "-u", "1000", cid, "python3", "-c", CONNECT_SCRIPT, *targets)
    return dict(line.split(" ", 1) for line in out.splitlines())


def test_isolation_holds_across_nodes(swarm, swarm_lab):
    """From s230001's server: the other student's server on the other node, the nodes' Docker and
    Swarm ports, the identity provider, the proxy's API, Prometheus and every node's exporter
    (its own node's too) and cloud metadata are refused; the hub's
    API, the proxy and the egress proxy are open (controls)."""
    node, cid = student_container(swarm, swarm_lab, "s230001")
    other_node, other_cid = student_container(swarm, swarm_lab, "s230002")
    assert node != other_node
    # The global services run one task per node, each healthy, none replaced since the lab started
    # minutes ago (Swarm replaces an unhealthy task: a check that cannot pass shows here).
    for role, tasks in global_tasks(swarm, swarm_lab).items():
        assert sorted(t[0] for t in tasks) == sorted(NODES.values()), (role, tasks)
        assert all(t[2].startswith("Running") for t in tasks), (role, tasks)
    other_ip = swarm.docker(other_node, "inspect", other_cid, "--format",
                            f"{{{{(index .NetworkSettings.Networks \"{swarm_lab.instance}\").IPAddress}}}}").strip()
    manager_ip = swarm.docker("mgr", "info", "--format", "{{.Swarm.NodeAddr}}").strip()
    worker_ip = swarm.docker(other_node, "info", "--format", "{{.Swarm.NodeAddr}}").strip()
    exporters = exporter_addresses(swarm, swarm_lab)
    assert set(exporters) == {"mgr", "a", "b"}, exporters  # one per node
    seen = probe(swarm, node, cid, "hub:8081", "proxy:8000", "egress:3128",
                 f"{other_ip}:8888", f"{swarm_lab.service('s230002')}:8888", "proxy:8001", "hub:10102",
                 "idp:9400", f"{manager_ip}:2377", f"{manager_ip}:7946", f"{worker_ip}:7946",
                 f"{manager_ip}:2375", "169.254.169.254:80", "prometheus:9090",
                 *(f"{ip}:9101" for ip in exporters.values()))
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
    STATE["global_tasks_before_restart"] = global_tasks(swarm, swarm_lab)
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
    # The restarted hub found nodeguard and the exporter as it left them: on the worker that ran
    # throughout, the same tasks (an update of the services would have replaced them; the
    # manager's own restarted with its engine, and the other worker's with it in the test before).
    steady = NODES[STATE["nodes"]["s230002"]]

    def running_on_steady_worker(tasks):
        return {role: [t[1] for t in found if t[0] == steady and t[2].startswith("Running")]
                for role, found in tasks.items()}
    now = running_on_steady_worker(global_tasks(swarm, swarm_lab))
    assert now == running_on_steady_worker(STATE["global_tasks_before_restart"]) and all(now.values()), now
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


# What a student's notebook tries in the grading sandbox, printed as one JSON line.
SANDBOX_PROBE = """\
import json, os, socket
probe = {"interfaces": sorted(n for _, n in socket.if_nameindex()), "ids": list(os.getresuid())}
try:
    probe["secret"] = open("/run/secrets/lab-sandbox-input", "rb").read(1).hex()
except OSError as e:
    probe["secret"] = type(e).__name__
status = open("/proc/self/status").read()
probe["caps"] = [l.split()[1] for l in status.splitlines() if l.startswith(("CapEff", "CapPrm"))]
probe["no_new_privs"] = [l.split()[1] for l in status.splitlines() if l.startswith("NoNewPrivs")]
probe["reach"] = {}
for host, port in TARGETS:
    try:
        socket.create_connection((host, port), timeout=3).close()
        probe["reach"][f"{host}:{port}"] = "open"
    except OSError as e:
        probe["reach"][f"{host}:{port}"] = type(e).__name__
print("PROBE" + json.dumps(probe))
"""


def submission(release, first_cell: str | None, answer: str | None = None) -> bytes:
    """The released notebook, solved (or ``answer`` in its first solution cell), with
    ``first_cell`` as an extra code cell at the top, as the tarball nbgrader submit uploads."""
    from tests.integration.test_course_exchange import A, solved

    nb = nbformat.from_dict(json.loads(json.dumps(release)))
    if answer is None:
        nb = solved(A, nb)
    else:
        next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")).source = answer
    if first_cell:
        nb.cells.insert(0, nbformat.v4.new_code_cell(first_cell))
    return submission_archive(A, nb)


def test_grading_sandboxes_run_on_the_workers_cut_off_from_every_network(swarm, swarm_lab):
    """Two students submit (one with a probe of the sandbox in their notebook, one whose notebook
    hogs memory); the instructor's autograde runs each notebook as a Swarm service on a worker:
    the good one scores full marks, the probe finds no network, no secret, no capability, and the
    hog is killed at the sandbox's limit and scores 0. The manager has no course image at all."""
    import io
    import tarfile

    from tests.integration.test_course_exchange import A, CLOCK, POINTS, RELEASED

    lab = swarm_lab
    lab.set_clock(CLOCK)
    lab.wait_course(lambda s: {j["assignment"] for j in s["jobs"] if j["action"] == "release"
                               and j["state"] == "done"} >= set(RELEASED), "the calendar's releases")
    targets = [(f"{SUBNET}.10", 2377), (f"{SUBNET}.11", 7946), ("10.201.0.2", 8081), ("172.17.0.1", 80),
               ("169.254.169.254", 80)]
    release_tar = lab.course("GET", f"api/assignments/{A}/download", token=lab.user_token("s230001"))
    assert release_tar.status_code == 200, release_tar.text
    with tarfile.open(fileobj=io.BytesIO(release_tar.content)) as t:
        release = nbformat.reads(t.extractfile(f"{A}.ipynb").read().decode(), as_version=4)
    for student, data in (("s230001", submission(release, f"TARGETS = {targets!r}\n" + SANDBOX_PROBE)),
                          ("s230002", submission(release, None, "hog = bytearray(3 * 1024**3)"))):
        r = lab.course("POST", f"api/assignments/{A}/submit", token=lab.user_token(student), data=data)
        assert r.status_code == 201, r.text
    assert not swarm.docker("mgr", "image", "ls", "-q", "mlops-lab/course").strip()  # grading needs none here

    r = lab.grader("autograde", A, "--collect", "--workers", "2", "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    book = json.loads(lab.hub_file(f"/srv/course/state/grading/{A}.json"))
    good, hog = book["s230001"], book["s230002"]
    assert good["status"] == "graded" and good["score"] == good["max_score"] == POINTS, good
    assert hog["status"] == "graded" and hog["score"] == 0 and "kernel died" in hog["reason"], hog

    graded = lab.hub_file(f"/srv/course/nbgrader/autograded/s230001/{A}/{A}.ipynb")
    printed = nbformat.reads(graded, as_version=4).cells[0].outputs[0].text
    line = next(l for l in printed.splitlines() if l.startswith("PROBE"))
    probe = json.loads(line[len("PROBE"):])
    assert probe["interfaces"] == ["lo"], probe
    assert probe["ids"] == [1000, 1000, 1000] and probe["secret"] == "PermissionError", probe
    assert probe["caps"] == ["0000000000000000"] * 2 and probe["no_new_privs"] == ["1"], probe
    assert set(probe["reach"].values()) == {"OSError"}, probe  # no route: no interface to send on

    logs = lab.compose("logs", "--no-color", "hub").stdout
    ran_on = {l.split(" ran on ")[1].split(":")[0] for l in logs.splitlines() if "sandbox" in l and " ran on " in l}
    assert ran_on and ran_on <= {"node-a", "node-b"}, ran_on
    # nothing is left behind: no sandbox service, no secret with a notebook in it
    for kind in ("service", "secret"):
        left = swarm.docker("mgr", kind, "ls", "-q", "--filter", "label=mlops-lab.role=autograde-sandbox")
        assert not left.strip(), (kind, left)
