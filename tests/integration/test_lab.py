"""The lab against the real stack: hub, proxy, demo IdP and one container per student."""

import re
import subprocess
import time

import pytest
import requests

from tests.conftest import docker, docker_json
from tests.integration.kernel import execute

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_students(lab):
    """Two students created through the API, both servers started."""
    a, b = lab.new_user("alice"), lab.new_user("bob")
    lab.api("POST", f"/users/{a}/server")
    lab.api("POST", f"/users/{b}/server")
    lab.wait_ready(a)
    lab.wait_ready(b)
    return a, b


def test_each_jupyterlab_answers_through_the_proxy(lab, two_students):
    """Each student's JupyterLab REST API answers at /user/<name>/ and lists the course material."""
    for name in two_students:
        r = lab.server_api(name, "GET", "/contents")
        assert r.status_code == 200, r.text
        names = {item["name"] for item in r.json()["content"]}
        assert "00-welcome" in names
        status = lab.server_api(name, "GET", "/status")
        assert status.status_code == 200
        # Students have nbgrader's assignment list, not the instructors' formgrader.
        formgrader = lab.session.get(f"{lab.user_url(name)}/formgrader", timeout=30)
        assert formgrader.status_code == 404


def test_torch_trains_in_a_kernel(lab, two_students):
    """A kernel in a student's server imports torch and takes an optimisation step."""
    code = (
        "import torch\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Linear(4, 1)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "x, y = torch.randn(32, 4), torch.randn(32, 1)\n"
        "before = torch.nn.functional.mse_loss(model(x), y)\n"
        "opt.zero_grad(); before.backward(); opt.step()\n"
        "after = torch.nn.functional.mse_loss(model(x), y)\n"
        "print('torch', torch.__version__, 'loss', round(before.item(), 4), '->', round(after.item(), 4))\n"
        "assert after.item() < before.item()\n"
    )
    out = execute(lab, two_students[0], code)
    assert out["error"] is None, out
    m = re.search(r"torch (\S+) loss ([\d.]+) -> ([\d.]+)", out["stdout"])
    assert m, out["stdout"]
    assert float(m.group(3)) < float(m.group(2))


def test_containers_and_home_volumes_are_distinct(lab, two_students):
    """Two students: two containers, two home volumes, non-root, memory-limited, pinned image."""
    infos = [docker_json("inspect", f"{lab.instance}-{name}")[0] for name in two_students]
    assert infos[0]["Id"] != infos[1]["Id"]
    homes = []
    for name, info in zip(two_students, infos):
        [home] = [m for m in info["Mounts"] if m["Destination"] == "/home/jovyan"]
        assert home["Type"] == "volume"
        assert home["Name"] == f"{lab.instance}-home-{name}"
        homes.append(home["Name"])
        assert info["Config"]["User"] not in ("", "0", "root", "0:0")
        assert info["HostConfig"]["Memory"] == 2 * 1024**3
        assert info["HostConfig"]["NanoCpus"] or info["HostConfig"]["CpuQuota"] == 100_000
        assert info["Config"]["Image"] == lab.course_image
        assert not any("docker.sock" in (m.get("Source") or "") for m in info["Mounts"])
    assert homes[0] != homes[1]
    volumes = docker("volume", "ls", "-q").split()
    assert set(homes) <= set(volumes)
    whoami = docker("exec", f"{lab.instance}-{two_students[0]}", "id", "-u").strip()
    assert whoami == "1000"


def test_file_survives_stop_and_start(lab):
    """A file written in the home is still there after the server is stopped and started."""
    name = lab.new_user("carol")
    lab.start(name)
    r = lab.server_api(name, "PUT", "/contents/notes.txt",
                       json={"type": "file", "format": "text", "content": "my notes"})
    assert r.status_code in (200, 201), r.text
    # Edit the seeded notebook too: a restart must not overwrite a student's edits.
    nb = lab.server_api(name, "GET", "/contents/00-welcome/welcome.ipynb").json()
    nb["content"]["cells"][0]["source"] = "# my own title"
    r = lab.server_api(name, "PUT", "/contents/00-welcome/welcome.ipynb",
                       json={"type": "notebook", "format": "json", "content": nb["content"]})
    assert r.status_code == 200, r.text
    container_id = docker_json("inspect", f"{lab.instance}-{name}")[0]["Id"]

    lab.stop(name)
    gone = subprocess.run(["docker", "inspect", container_id], capture_output=True)
    assert gone.returncode != 0, "the container should be removed on stop"
    assert f"{lab.instance}-home-{name}" in docker("volume", "ls", "-q").split()

    lab.start(name)
    r = lab.server_api(name, "GET", "/contents/notes.txt")
    assert r.status_code == 200 and r.json()["content"] == "my notes"
    nb = lab.server_api(name, "GET", "/contents/00-welcome/welcome.ipynb").json()
    assert nb["content"]["cells"][0]["source"] == "# my own title"
    lab.stop(name)
    # Stopping is clean: no error from the spawner's hooks in the hub's log.
    hub_log = lab.compose("logs", "hub").stdout
    assert "Error in Spawner" not in hub_log and "post_stop_hook failed" not in hub_log


def test_requests_without_a_valid_token_are_refused(lab, two_students):
    """No token, a made-up token or another student's token cannot start or use a server."""
    a, b = two_students
    anon = requests.Session()
    r = anon.post(f"{lab.url}/hub/api/users/{a}/server", timeout=30)
    assert r.status_code == 403
    r = anon.post(f"{lab.url}/hub/api/users/{a}/server", headers={"Authorization": "token " + "0" * 64}, timeout=30)
    assert r.status_code == 403
    # The server itself: no token is sent to log in, a bad token is refused.
    r = anon.get(f"{lab.user_url(a)}/api/contents", allow_redirects=False, timeout=30)
    assert r.status_code in (302, 403) and "content" not in r.text
    if r.status_code == 302:
        assert "/hub/" in r.headers["Location"]
    r = anon.get(f"{lab.user_url(a)}/api/contents", headers={"Authorization": "token " + "0" * 64},
                 allow_redirects=False, timeout=30)
    assert r.status_code in (302, 403) and "content" not in r.text
    # A student's own token works on their own server and not on another's.
    token_b = lab.api("POST", f"/users/{b}/tokens", json={"note": "test", "expires_in": 600}).json()["token"]
    own = anon.get(f"{lab.user_url(b)}/api/contents", headers={"Authorization": f"token {token_b}"}, timeout=30)
    assert own.status_code == 200
    other = anon.get(f"{lab.user_url(a)}/api/contents", headers={"Authorization": f"token {token_b}"},
                     allow_redirects=False, timeout=30)
    assert other.status_code in (403, 404) and "content" not in other.text
    r = anon.post(f"{lab.url}/hub/api/users/{a}/server", headers={"Authorization": f"token {token_b}"}, timeout=30)
    assert r.status_code in (403, 404)


def test_failed_start_shows_the_containers_own_log_lines(lab):
    """A container that exits while starting: the student and operator see its last log lines."""
    name = lab.new_user("broken")
    volume = f"{lab.instance}-home-{name}"
    # A home volume the student's UID cannot write: the image's start script refuses to run.
    docker("volume", "create", volume)
    docker("run", "--rm", "--user", "0", "--entrypoint", "sh", "-v", f"{volume}:/h", lab.course_image,
           "-c", "chown 0:0 /h && chmod 0755 /h && touch /h/owned-by-root")
    r = lab.api("POST", f"/users/{name}/server")
    deadline = time.monotonic() + 120
    message = r.text if r.status_code >= 400 else ""
    while not message and time.monotonic() < deadline:
        progress = lab.session.get(f"{lab.url}/hub/api/users/{name}/server/progress", timeout=60, stream=True)
        for line in progress.iter_lines(decode_unicode=True):
            if line.startswith("data:") and '"failed": true' in line:
                message = line
                break
        if not message:
            time.sleep(1)
    assert "not writable" in message, message
    assert "Server failed to start" in message or "stopped while starting" in message
    assert "InvalidStateError" not in message
    # Nothing is left running, and the hub's log names the reason for the operator.
    assert not docker("ps", "-q", "--filter", f"name={lab.instance}-{name}").strip()
    assert "not writable" in lab.compose("logs", "hub").stdout


def test_hub_restart_keeps_users_and_running_servers(lab, two_students):
    """Restarting the hub container keeps its database (volume) and students' running servers."""
    a, _ = two_students
    before = docker_json("inspect", f"{lab.instance}-{a}")[0]["Id"]
    lab.restart_hub()
    assert lab.api("GET", f"/users/{a}").json()["servers"][""]["ready"]
    r = lab.server_api(a, "GET", "/contents")
    assert r.status_code == 200
    assert docker_json("inspect", f"{lab.instance}-{a}")[0]["Id"] == before
