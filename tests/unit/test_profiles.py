"""Profiles and GPU requests as the spawner applies them, without Docker."""

import asyncio

import pytest
from tornado import web
from traitlets.config import Config

from hub.config import apply
from hub.gpu import Allocator, Device
from hub.settings import SettingsError, load_settings
from hub.spawner import CourseSpawner

DEVICES = (
    "gpus:\n  devices:\n"
    "    - {id: '0', mode: exclusive}\n"
    "    - {id: GPU-1a2b, mode: shared, max_users: 2}\n"
    "    - {id: MIG-3c4d, mode: mig}\n"
)


class User:
    def __init__(self, name="s230001", admin=False):
        self.name = self.escaped_name = name
        self.admin = admin
        self.groups = []
        self.url = f"/user/{name}/"
        self.id = 1


def make_spawner(tmp_path, text="", user=None, **env):
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    env.setdefault("LAB_COURSE_IMAGE", "mlops-lab/course:9.9.9")
    c = Config()
    apply(c, load_settings(path, environ=env))
    c.CourseSpawner.gpu_state_path = str(tmp_path / "gpu.sqlite")
    spawner = CourseSpawner(config=c, user=user or User(), _deprecated_db_session=None)
    if spawner.gpu_devices:
        devices = [Device.from_setting(d) for d in spawner.gpu_devices]
        CourseSpawner._allocators[spawner.gpu_state_path] = Allocator(devices, spawner.gpu_state_path)
    return spawner


def form(spawner):
    return spawner.options_form(spawner)


def test_without_gpus_there_is_no_form(tmp_path):
    """A CPU-only host shows no choice at all: GPU profiles are hidden, not broken."""
    s = make_spawner(tmp_path)
    assert [p.name for p in s.allowed_profiles()] == ["cpu"]
    assert form(s) == ""


def test_student_sees_cpu_and_shared_gpu_with_availability(tmp_path):
    """With devices, a student may pick CPU or a GPU share, and sees the free slots."""
    s = make_spawner(tmp_path, DEVICES)
    html = form(s)
    assert "GPU (shared)" in html and "3 of 3 GPU slots free" in html
    assert "GPU (whole)" not in html
    assert 'value="cpu" checked' in html


def test_admin_also_sees_whole_gpu(tmp_path):
    """The whole-GPU profile is for instructors (admins) only."""
    s = make_spawner(tmp_path, DEVICES, user=User("teacher", admin=True))
    assert "GPU (whole)" in form(s)


def test_student_cannot_take_a_staff_profile(tmp_path):
    """Asking for a profile through the API that is not open to you is refused."""
    s = make_spawner(tmp_path, DEVICES)
    s.user_options = {"profile": "gpu-whole"}
    with pytest.raises(web.HTTPError) as info:
        s.selected_profile()
    assert info.value.status_code == 403
    s.user_options = {"profile": "quantum"}
    with pytest.raises(web.HTTPError) as info:
        s.selected_profile()
    assert info.value.status_code == 400 and "choose one of: cpu, gpu-shared" in info.value.log_message


def test_gpu_profile_requests_exactly_its_device(tmp_path):
    """A GPU spawn gets one device request for the allocated device, and the matching env."""
    s = make_spawner(tmp_path, DEVICES)
    s.user_options = {"profile": "gpu-shared"}
    profile = asyncio.run(s.prepare_profile())
    assert profile.name == "gpu-shared"
    [req] = s.extra_host_config["device_requests"]
    assert req["Driver"] == "nvidia"
    assert req["DeviceIDs"] == ["GPU-1a2b"]  # least loaded of the shared devices (first in order)
    assert req["Capabilities"] == [["gpu"]]
    assert s.environment["NVIDIA_VISIBLE_DEVICES"] == "GPU-1a2b"
    assert s.extra_create_kwargs["labels"]["mlops-lab.gpu"] == "GPU-1a2b"
    assert s.mem_limit == 16 * 1024**3 and s.cpu_limit == 4.0


def test_cpu_start_after_gpu_start_has_no_gpu(tmp_path):
    """The same spawner started again with the CPU profile carries no device request."""
    s = make_spawner(tmp_path, DEVICES)
    s.user_options = {"profile": "gpu-shared"}
    asyncio.run(s.prepare_profile())
    s.release_gpu()
    s.user_options = {"profile": "cpu"}
    asyncio.run(s.prepare_profile())
    assert "device_requests" not in s.extra_host_config
    assert "NVIDIA_VISIBLE_DEVICES" not in s.environment
    assert "mlops-lab.gpu" not in s.extra_create_kwargs["labels"]


def test_full_gpus_offer_the_cpu_profile(tmp_path):
    """When every slot is taken the student is told so and pointed to the CPU profile."""
    s = make_spawner(tmp_path, DEVICES)
    allocator = s.allocator()
    for i in range(3):
        allocator.acquire(f"other{i}", "gpu-shared", ("shared", "mig"))
    s.user_options = {"profile": "gpu-shared"}
    assert "0 of 3 GPU slots free" in form(s)
    with pytest.raises(web.HTTPError) as info:
        asyncio.run(s.prepare_profile())
    assert info.value.status_code == 503
    assert "0 of 3 GPU slots free" in info.value.log_message and "CPU profile" in info.value.log_message


def test_profile_limits_can_be_changed(tmp_path):
    """An operator's profile settings merge with the defaults."""
    s = make_spawner(tmp_path, "profiles:\n  cpu:\n    mem_limit: 3G\n    cpu_limit: 1\n")
    s.user_options = {}
    asyncio.run(s.prepare_profile())
    assert s.mem_limit == 3 * 1024**3 and s.cpu_limit == 1.0


def test_shorter_gpu_idle_timeout_gets_its_own_group_scoped_culler(tmp_path):
    """GPU profiles' idle timeout runs a culler that only sees that profile's users."""
    path = tmp_path / "lab.yaml"
    path.write_text(DEVICES)
    c = Config()
    apply(c, load_settings(path, environ={}))
    [svc] = [s for s in c.JupyterHub.services if s["name"] == "idle-culler-gpu-shared"]
    assert "--timeout=1800" in svc["command"]
    [role] = [r for r in c.JupyterHub.load_roles if r["name"] == "idle-culler-gpu-shared"]
    assert "delete:servers!group=profile-gpu-shared" in role["scopes"]


@pytest.mark.parametrize("text, expected", [
    ("gpus:\n  devices:\n    - {id: '0', mode: mig}\n", "a mig device must be a MIG-... UUID"),
    ("gpus:\n  devices:\n    - {id: '0', mode: exclusive}\n    - {id: '0', mode: exclusive}\n", "listed twice"),
    ("gpus:\n  devices:\n    - {id: gpu0, mode: exclusive}\n", "is not a GPU index, a GPU-... UUID or a MIG-... UUID"),
    ("gpus:\n  devices:\n    - {id: '0', mode: exclusive, max_users: 3}\n", "only shared devices"),
    ("profiles:\n  cpu:\n    default: false\n  big:\n    default: true\n", "profiles.big.display_name: required"),
    ("profiles:\n  gpu-shared:\n    default: true\n", "only one profile may be the default"),
])
def test_bad_gpu_and_profile_settings_are_named(tmp_path, text, expected):
    """GPU and profile mistakes name the key."""
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError) as info:
        load_settings(path, environ={})
    assert expected in str(info.value)
