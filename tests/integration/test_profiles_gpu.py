"""Profiles, GPU requests, hardening and culling against the real engine and hub."""

import asyncio
import subprocess
import time

import pytest
import requests
from traitlets.config import Config

from jupyterhub.objects import Hub

from hub.config import apply
from hub.settings import load_settings
from hub.spawner import CourseSpawner
from tests.conftest import TEST_SETTINGS, docker, docker_json

pytestmark = pytest.mark.integration


class User:
    def __init__(self, name):
        self.name = self.escaped_name = name
        self.admin = False
        self.groups = []
        self.url = f"/user/{name}/"
        self.id = 1


def test_gpu_container_requests_exactly_the_allocated_device(lab, tmp_path):
    """A GPU-profile container, created (not started: no NVIDIA runtime here), asks Docker for its device."""
    path = tmp_path / "lab.yaml"
    path.write_text(TEST_SETTINGS)
    c = Config()
    apply(c, load_settings(path, environ={"LAB_INSTANCE": "mlops-lab-test", "LAB_COURSE_IMAGE": lab.course_image}, secrets=False))
    c.CourseSpawner.gpu_state_path = str(tmp_path / "gpu.sqlite")
    spawner = CourseSpawner(config=c, user=User("gpu-probe"), hub=Hub(), _deprecated_db_session=None)
    spawner.user_options = {"profile": "gpu-shared"}

    async def create():
        await spawner.prepare_profile()
        return await spawner.create_object()

    created = asyncio.run(create())
    try:
        info = docker_json("inspect", created["Id"])[0]
        [req] = info["HostConfig"]["DeviceRequests"]
        assert req["Driver"] == "nvidia"
        assert req["DeviceIDs"] == ["GPU-00000000-0000-0000-0000-0000000000a0"]
        assert req["Capabilities"] == [["gpu"]]
        assert "NVIDIA_VISIBLE_DEVICES=GPU-00000000-0000-0000-0000-0000000000a0" in info["Config"]["Env"]
        assert info["Config"]["Labels"]["mlops-lab.gpu"] == "GPU-00000000-0000-0000-0000-0000000000a0"
        assert info["HostConfig"]["Memory"] == 16 * 1024**3
    finally:
        docker("rm", "-f", created["Id"])


def usage(lab):
    r = lab.session.get(f"{lab.service_url('gpu-usage')}/?format=json", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_gpu_spawn_without_runtime_is_explained_and_released(lab):
    """On a host without the NVIDIA runtime a GPU spawn fails clearly and gives its slot back."""
    name = lab.new_user("gpu")
    r = lab.api("POST", f"/users/{name}/server", json={"profile": "gpu-shared"})
    assert r.status_code == 500
    assert "no NVIDIA runtime" in r.json()["message"]
    assert "CPU profile" in r.json()["message"]
    periods = [p for p in usage(lab)["periods"] if p["user"] == name]
    assert len(periods) == 1 and periods[0]["end"] is not None  # allocated, then released
    assert not docker("ps", "-aq", "--filter", f"name={lab.instance}-{name}").strip()
    # The same student can start a CPU server right after (JupyterHub would reuse the last options).
    lab.start(name, profile="cpu")
    lab.stop(name)


def test_student_cannot_ask_for_a_whole_gpu(lab):
    """The instructors' profile is refused to a student through the API."""
    name = lab.new_user("greedy")
    r = lab.api("POST", f"/users/{name}/server", json={"profile": "gpu-whole"})
    assert r.status_code == 403
    assert "not open to you" in r.json()["message"]


def test_gpu_hours_are_for_staff_only(lab):
    """Staff (the admin token) read GPU hours; a student's token does not."""
    name = lab.new_user("curious")
    token = lab.api("POST", f"/users/{name}/tokens", json={"expires_in": 600}).json()["token"]
    r = requests.get(f"{lab.service_url('gpu-usage')}/?format=json", headers={"Authorization": f"token {token}"},
                     timeout=30, allow_redirects=False)
    assert r.status_code in (302, 403)
    assert "hours_by_user" in usage(lab)


@pytest.fixture(scope="module")
def student_container(lab):
    name = lab.new_user("hard")
    lab.start(name)
    yield f"{lab.instance}-{name}"
    lab.stop(name)


def sh(container, script, timeout=120):
    return subprocess.run(["docker", "exec", container, "bash", "-c", script],
                          capture_output=True, text=True, timeout=timeout)


def test_capabilities_are_dropped_and_privileges_fixed(student_container):
    """Inside a student's container: no capabilities, no-new-privileges, not root."""
    out = sh(student_container, "capsh --print; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; id -u").stdout
    assert "CapEff:\t0000000000000000" in out
    assert "CapBnd:\t0000000000000000" in out
    assert "NoNewPrivs:\t1" in out
    assert out.strip().endswith("1000")
    lines = out.splitlines()
    assert "Current: =" in lines and "Bounding set =" in lines  # capsh: empty sets
    assert "no-new-privs=1" in out


def test_shm_is_large_enough_for_dataloader_workers(student_container):
    """/dev/shm has the configured 1G, not Docker's 64M."""
    out = sh(student_container, "df -k --output=size /dev/shm | tail -n 1").stdout.strip()
    assert int(out) == 1024 * 1024


def test_fork_bomb_hits_the_pids_limit_and_the_host_survives(lab, student_container):
    """A fork bomb in a student's container stops at the pids limit; hub and host carry on."""
    script = (
        "import os, time\n"
        "n = 0\n"
        "while True:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as e:\n"
        "        print('blocked after', n, 'forks:', e.strerror, flush=True)\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(20)\n"
        "        os._exit(0)\n"
        "    n += 1\n"
    )
    r = subprocess.run(["docker", "exec", student_container, "python3", "-c", script],
                       capture_output=True, text=True, timeout=120)
    assert "blocked after" in r.stdout, r.stdout + r.stderr
    forks = int(r.stdout.split("blocked after")[1].split()[0])
    assert forks < 256
    assert requests.get(f"{lab.url}/hub/health", timeout=10).ok
    assert subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def test_idle_server_is_culled_and_active_one_stays(lab):
    """With a 20 s idle timeout on its profile, an idle server is stopped and a busy one kept."""
    idle, busy = lab.new_user("idle"), lab.new_user("busy")
    for name in (idle, busy):
        r = lab.api("POST", f"/users/{name}/server", json={"profile": "cpu-short"})
        assert r.status_code in (201, 202), r.text
    lab.wait_ready(idle)
    lab.wait_ready(busy)
    deadline = time.monotonic() + 150
    culled = False
    while time.monotonic() < deadline:
        assert lab.server_api(busy, "GET", "/contents").status_code == 200  # activity
        if not lab.api("GET", f"/users/{idle}").json().get("servers"):
            culled = True
            break
        time.sleep(3)
    assert culled, "the idle server was not culled"
    assert lab.api("GET", f"/users/{busy}").json()["servers"][""]["ready"]
    groups = lab.api("GET", f"/users/{busy}").json()["groups"]
    assert groups == ["profile-cpu-short"]
    lab.stop(busy)


def test_gpu_allocations_are_reconciled_after_a_hub_restart(lab):
    """After a restart the hub adopts running GPU containers and frees allocations whose container is gone."""
    ghost = f"{lab.instance}-ghost-gpu"
    docker("run", "-d", "--rm", "--name", ghost, "--network", lab.instance,
           "--label", f"mlops-lab.instance={lab.instance}", "--label", "mlops-lab.user=ghost",
           "--label", "mlops-lab.gpu=MIG-00000000-0000-0000-0000-0000000000b1",
           "--label", "mlops-lab.profile=gpu-shared", "--entrypoint", "sleep", lab.course_image, "600")
    try:
        lab.restart_hub()
        periods = usage(lab)["periods"]
        assert [p["device"] for p in periods if p["user"] == "ghost" and p["end"] is None] == [
            "MIG-00000000-0000-0000-0000-0000000000b1"]
        assert "reconciled" in lab.compose("logs", "hub").stdout
    finally:
        docker("rm", "-f", ghost, check=False)
    # Its container gone, the next restart frees the slot.
    lab.restart_hub()
    assert all(p["end"] is not None for p in usage(lab)["periods"] if p["user"] == "ghost")
    # The hub's services stopped cleanly on each restart.
    assert "hub/services/gpu_usage.py" not in lab.compose("logs", "hub").stdout
