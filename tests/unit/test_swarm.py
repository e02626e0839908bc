"""The swarm mode's parts that need no swarm: GPUs from the nodes' generic resources, the home
mount every node can make, the settings' checks and the hub's configuration."""

from pathlib import Path

import pytest
import yaml

from hub.gpu import Allocator, Device, NoDeviceFree
from hub.settings import SettingsError, load_settings
from hub.swarm import home_mount, node_gpus, size_bytes

ROOT = Path(__file__).resolve().parents[2]


def node(node_id, hostname, gpus, state="ready", availability="active"):
    return {"ID": node_id, "Spec": {"Availability": availability},
            "Status": {"State": state},
            "Description": {"Hostname": hostname, "Resources": {"GenericResources": [
                {"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": g}} for g in gpus]}}}


def test_gpus_come_from_ready_active_nodes_with_modes_from_the_settings():
    nodes = [
        node("idB", "node-b", ["GPU-b1", "GPU-b2"]),
        node("idA", "node-a", ["GPU-a1"]),
        node("idC", "node-c", ["GPU-c1"], state="down"),          # lost: given to no one
        node("idD", "node-d", ["GPU-d1"], availability="drain"),  # drained by the operator
        {"ID": "idM", "Spec": {"Availability": "active"}, "Status": {"State": "ready"},
         "Description": {"Hostname": "mgr", "Resources": {}}},     # no GPUs at all
    ]
    configured = [{"id": "GPU-b2", "mode": "shared", "max_users": 3}]
    devices = node_gpus(nodes, configured)
    assert devices == [
        Device("GPU-a1", "exclusive", 1, node="idA"),  # unlisted: a whole GPU for one student
        Device("GPU-b1", "exclusive", 1, node="idB"),
        Device("GPU-b2", "shared", 3, node="idB"),
    ]


def test_only_gpus_of_nodes_the_placement_allows_are_given():
    manager = node("idM", "mgr", ["GPU-m1"])
    manager["Spec"]["Role"] = "manager"
    worker = node("idW", "w1", ["GPU-w1"])
    worker["Spec"].update(Role="worker", Labels={"gpu": "a100"})
    assert [d.id for d in node_gpus([manager, worker], [], ["node.role == worker"])] == ["GPU-w1"]
    assert [d.id for d in node_gpus([manager, worker], [], ["node.labels.gpu != a100"])] == ["GPU-m1"]
    assert [d.id for d in node_gpus([manager, worker], [], ["node.hostname==mgr"])] == ["GPU-m1"]
    assert [d.id for d in node_gpus([manager, worker], [], [])] == ["GPU-m1", "GPU-w1"]


def test_other_generic_resources_are_not_gpus():
    n = node("id1", "n1", [])
    n["Description"]["Resources"]["GenericResources"] = [
        {"DiscreteResourceSpec": {"Kind": "SSD", "Value": 2}},
        {"NamedResourceSpec": {"Kind": "FPGA", "Value": "f1"}},
    ]
    assert node_gpus([n], []) == []


def test_the_allocator_follows_the_nodes_and_spreads_by_free_capacity(tmp_path):
    alloc = Allocator([], str(tmp_path / "gpu.sqlite"))
    alloc.set_devices([Device("GPU-a1", "exclusive", node="A"), Device("GPU-b1", "exclusive", node="B")])
    first = alloc.acquire("u1", "gpu-whole", ["exclusive"])
    second = alloc.acquire("u2", "gpu-whole", ["exclusive"])
    assert {first.node, second.node} == {"A", "B"}
    with pytest.raises(NoDeviceFree):
        alloc.acquire("u3", "gpu-whole", ["exclusive"])
    # Node B is lost: its GPU is no longer given; its holder keeps the record until the hub stops it.
    alloc.set_devices([Device("GPU-a1", "exclusive", node="A")])
    assert alloc.availability(["exclusive"]) == (0, 1)
    alloc.release("u1")
    assert alloc.acquire("u3", "gpu-whole", ["exclusive"]).id == "GPU-a1"
    with pytest.raises(ValueError):
        alloc.set_devices([Device("GPU-x", "exclusive"), Device("GPU-x", "exclusive")])


def test_a_home_on_the_shared_path_is_a_local_volume_bound_to_the_students_folder():
    m = home_mount("s230001", "/home/jovyan", "mlops-lab", "/srv/lab-homes/")
    assert m["Type"] == "volume" and m["Target"] == "/home/jovyan"
    assert m["Source"].startswith("mlops-lab-home-s230001-")
    assert m["VolumeOptions"]["DriverConfig"] == {
        "Name": "local", "Options": {"type": "none", "o": "bind", "device": "/srv/lab-homes/s230001"}}
    # Another path, another volume name: a node keeps a local volume's options from its first use.
    assert home_mount("s230001", "/home/jovyan", "mlops-lab", "/mnt/other")["Source"] != m["Source"]


def test_a_home_from_a_volume_plugin_gets_its_options_with_the_students_name():
    m = home_mount("s230001", "/home/jovyan", "mlops-lab", "/srv/lab-homes", "rexray/efs",
                   {"subpath": "homes/{username}", "mode": "0700"})
    assert m["Source"] == "mlops-lab-home-s230001"
    assert m["VolumeOptions"]["DriverConfig"] == {
        "Name": "rexray/efs", "Options": {"subpath": "homes/s230001", "mode": "0700"}}


def test_sizes():
    assert size_bytes("512M") == 512 << 20 and size_bytes("1G") == 1 << 30 and size_bytes(None) is None


def load(tmp_path, text):
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    return load_settings(path, environ={})


def test_settings_errors_name_the_line_and_key(tmp_path):
    with pytest.raises(SettingsError) as e:
        load(tmp_path, "swarm:\n  enabled: true\n  homes:\n    path: srv/relative\n")
    assert any("lab.yaml:4" in p and "swarm.homes.path" in p for p in e.value.problems), e.value.problems
    with pytest.raises(SettingsError) as e:
        load(tmp_path, "swarm:\n  homes:\n    driver_options: {a: b}\n")
    assert any("swarm.homes.driver_options: only with swarm.homes.driver" in p for p in e.value.problems)
    with pytest.raises(SettingsError) as e:
        load(tmp_path, "network:\n  isolate: false\nswarm:\n  enabled: true\ngpus:\n  devices:\n    - {id: '0', mode: exclusive}\n")
    assert any("gpus.devices.0.id" in p and "UUID" in p for p in e.value.problems), e.value.problems
    with pytest.raises(SettingsError) as e:
        load(tmp_path, "swarm:\n  placement: ['node.role = worker']\n")
    assert any("swarm.placement" in p for p in e.value.problems), e.value.problems


def test_the_hub_uses_the_swarm_spawner_and_its_page_when_enabled(tmp_path):
    from traitlets.config import Config

    from hub.config import update_spawner

    settings = load(tmp_path, "network:\n  isolate: false\nswarm:\n  enabled: true\n  homes:\n    path: /mnt/homes\n"
                              "  placement: ['node.labels.lab == yes']\n")
    c = Config()
    update_spawner(c, settings)
    assert c.JupyterHub.spawner_class == "hub.swarm.SwarmCourseSpawner"
    assert c.SwarmCourseSpawner.swarm_homes_path == "/mnt/homes"
    assert c.SwarmCourseSpawner.swarm_placement == ["node.labels.lab == yes"]
    assert c.SwarmCourseSpawner.pids_limit == settings.get("spawner.pids_limit")
    assert c.CourseSpawner.cmd == ["jupyterhub-singleuser"]  # not read from an image the manager lacks
    (template_dir,) = c.JupyterHub.template_paths
    assert (Path(template_dir) / "not_running.html").is_file()
    # One host: the plain spawner, JupyterHub's own templates.
    c = Config()
    update_spawner(c, load(tmp_path, "swarm:\n  enabled: false\n"))
    assert c.JupyterHub.spawner_class == "hub.spawner.CourseSpawner" and "template_paths" not in c.JupyterHub


def test_the_swarm_compose_file_makes_the_lab_network_an_attachable_overlay_with_fixed_addresses():
    from hub.nodeguard import addresses

    compose = yaml.safe_load((ROOT / "docker-compose.swarm.yml").read_text())
    network = compose["networks"]["lab"]
    assert network["driver"] == "overlay" and network["attachable"] is True
    assert network["ipam"]["config"][0] == {"subnet": "${LAB_SWARM_NET:-10.201}.0.0/20",
                                            "ip_range": "${LAB_SWARM_NET:-10.201}.8.0/21"}
    # The addresses nodeguard's rules name are the ones compose gives (outside Swarm's range).
    for service, address in addresses("${LAB_SWARM_NET:-10.201}").items():
        assert compose["services"][service]["networks"]["lab"]["ipv4_address"] == address
    hub = compose["services"]["hub"]
    assert hub["volumes"] == ["${LAB_SWARM_HOMES:-/srv/lab-homes}:${LAB_SWARM_HOMES:-/srv/lab-homes}"]
    assert hub["environment"]["LAB_HUB_IMAGE"].startswith("mlops-lab/hub:")
    assert compose["services"]["netguard"]["profiles"] == ["one-host-only"]  # nodeguard's job on a swarm


# -- the spawner, with a stand-in for the manager's Docker API ---------------------------------

class FakeUser:
    name = "s230001"
    escaped_name = "s230001"
    url = "/user/s230001/"
    id = 1


class FakeDocker:
    """The few calls the swarm spawner makes, answered from dicts the test sets."""

    def __init__(self):
        self.tasks_list, self.nodes, self.created, self.removed = [], {}, [], []

    def __call__(self, method, *args, **kwargs):
        if method == "tasks":
            return self.tasks_list
        if method == "inspect_node":
            return self.nodes[args[0]]
        if method == "inspect_service":
            return {"ID": "svc1", "Spec": {"Name": "x"}} if not self.removed else None
        if method == "remove_service":
            self.removed.append(args[0])
            return None
        if method == "service_logs":
            return [b"lab-start: the lab's network firewall (nodeguard) did not guard this server\n"]
        if method == "create_service":
            self.created.append(kwargs)
            return {"ID": "svc1"}
        raise AssertionError(f"unexpected Docker call {method}")


def swarm_spawner(tmp_path, fake, text=""):
    from traitlets.config import Config

    from hub.config import apply
    from hub.swarm import SwarmCourseSpawner

    path = tmp_path / "lab.yaml"
    path.write_text("network:\n  isolate: true\nswarm:\n  enabled: true\n  homes:\n    path: "
                    f"{tmp_path}/homes\n" + text)
    c = Config()
    apply(c, load_settings(path, environ={"LAB_COURSE_IMAGE": "mlops-lab/course:9.9.9"}))
    s = SwarmCourseSpawner(config=c, user=FakeUser(), _deprecated_db_session=None)
    s.object_id = "svc1"
    s._docker = fake  # what CourseSpawner.docker calls in its threads

    async def get_command():
        return ["jupyterhub-singleuser"]

    s.get_command = get_command
    s.get_env = lambda: dict(s.environment)  # JupyterHub's part needs a running hub
    return s


def task(state, node="n1", err=""):
    return {"NodeID": node, "Status": {"State": state, "Err": err}, "DesiredState": "running"}


def test_a_server_on_a_node_that_went_down_is_reported_stopped_with_the_reason(tmp_path):
    import asyncio

    from hub import swarm

    fake = FakeDocker()
    s = swarm_spawner(tmp_path, fake)
    fake.nodes["n1"] = {"Status": {"State": "ready"}, "Description": {"Hostname": "node-a"}}
    fake.tasks_list = [task("running")]
    assert asyncio.run(s.poll()) is None and s.stopped_reason == ""
    # A manager that just restarted has every node "unknown" until it hears from it: not lost.
    fake.nodes["n1"] = {"Status": {"State": "unknown"}, "Description": {"Hostname": "node-a"}}
    assert asyncio.run(s.poll()) is None and s.stopped_reason == ""
    # Down: lost once it stays down for the grace (a restarted manager may say "down" for a moment).
    fake.nodes["n1"] = {"Status": {"State": "down"}, "Description": {"Hostname": "node-a"}}
    assert asyncio.run(s.poll()) is None and s.stopped_reason == ""
    swarm.NOT_READY_SINCE["n1"] -= swarm.NODE_LOSS_GRACE
    assert asyncio.run(s.poll()) is not None
    assert s.stopped_reason.startswith("The machine your server ran on (node-a) stopped")
    assert "Your files are safe" in s.stopped_reason


def test_a_rejected_task_fails_the_start_at_once_with_swarms_reason(tmp_path):
    import asyncio

    from hub.spawner import ContainerExited

    fake = FakeDocker()
    s = swarm_spawner(tmp_path, fake)
    fake.tasks_list = [task("rejected", err="No such image: mlops-lab/course:9.9.9")]
    with pytest.raises(ContainerExited) as e:
        asyncio.run(s.start_object())
    assert "nodeguard" in e.value.log_tail  # the service's last log lines, shown to the student
    assert fake.removed == ["svc1"]


def test_the_service_has_the_limits_home_and_placement_a_server_needs(tmp_path):
    import asyncio

    fake = FakeDocker()
    s = swarm_spawner(tmp_path, fake, "  placement: ['node.labels.lab == yes']\nspawner:\n  pids_limit: 300\n")
    (tmp_path / "homes").mkdir()
    s.home_uid = s.home_gid = __import__("os").getuid()
    fake.tasks_list = [task("running")]
    asyncio.run(s.prepare_profile())
    asyncio.run(s.create_object())
    (created,) = fake.created
    spec = created["task_template"]
    assert spec["Placement"]["Constraints"] == ["node.labels.lab == yes"]
    assert spec["Resources"]["Limits"]["Pids"] == 300
    assert spec["RestartPolicy"]["Condition"] == "none"
    container = spec["ContainerSpec"]
    assert container["CapabilityDrop"] == ["ALL"]
    assert container["Labels"]["mlops-lab.role"] == "student-server" and container["Labels"]["mlops-lab.user"] == "s230001"
    env = dict(e.split("=", 1) for e in container["Env"])
    assert env["LAB_GUARD_WAIT"] == "60"  # the server waits for nodeguard's rules
    (home, shm) = container["Mounts"]
    assert home["VolumeOptions"]["DriverConfig"]["Options"]["device"] == f"{tmp_path}/homes/s230001"
    assert shm["Type"] == "tmpfs" and shm["Target"] == "/dev/shm"
    assert created["endpoint_spec"]["Mode"] == "dnsrr"
    assert (tmp_path / "homes" / "s230001").is_dir()


def test_the_server_is_reached_at_its_tasks_own_address_on_the_lab_network(tmp_path):
    import asyncio

    fake = FakeDocker()
    s = swarm_spawner(tmp_path, fake)
    running = task("running")
    running["NetworksAttachments"] = [
        {"Network": {"Spec": {"Name": "ingress"}}, "Addresses": ["10.0.0.5/24"]},
        {"Network": {"Spec": {"Name": "mlops-lab"}}, "Addresses": ["10.201.8.7/20"]},
    ]
    fake.tasks_list = [running]
    assert asyncio.run(s.get_ip_and_port()) == ("10.201.8.7", 8888)
