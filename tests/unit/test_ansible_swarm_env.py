"""A lab on several servers (the Ansible inventory has lab_workers): the manager's .env names
docker-compose.swarm.yml after docker-compose.yml (and before docker-compose.gpu.yml) and the shared
homes' path, and its lab.yaml gets swarm.enabled, swarm.homes.path and the Swarm's GPUs. Without
workers both stay as they were. The lab role's own expressions and templates are evaluated here (with
Ansible's combine), as tests/ansible/test_swarm_playbook.py skips the lab role."""

from pathlib import Path

import jinja2
import jinja2.nativetypes
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "ansible" / "roles" / "lab"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
TASKS = yaml.safe_load((ROLE / "tasks" / "main.yml").read_text())
BASE = {**DEFAULTS, "ansible_managed": "Ansible", "lab_domain": "lab.example.dk", "lab_version": "1.0.0",
        "lab_swarm_homes_path": "/srv/lab-homes"}


def combine(a, b, recursive=False):
    """Ansible's combine filter: b over a; with recursive, dicts are merged, anything else replaced."""
    out = dict(a)
    for key, value in b.items():
        out[key] = combine(out[key], value, True) if recursive and isinstance(out.get(key), dict) and isinstance(
            value, dict) else value
    return out


def native(expression: str, values: dict):
    env = jinja2.nativetypes.NativeEnvironment(undefined=jinja2.StrictUndefined)
    env.filters["combine"] = combine
    env.filters["bool"] = lambda v: v if isinstance(v, bool) else str(v).lower() in ("true", "yes", "1")
    return env.from_string(expression).render(values)


def set_fact(task_name: str) -> dict:
    task = next(t for t in TASKS if t.get("name") == task_name)
    return task["ansible.builtin.set_fact"], task.get("vars", {})


def env_file(**values) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True)  # as Ansible's template module
    env.filters["bool"] = lambda v: v if isinstance(v, bool) else str(v).lower() in ("true", "yes", "1")
    return env.from_string((ROLE / "templates" / "env.j2").read_text()).render({**BASE, **values})


def settings(**values) -> dict:
    """lab_effective_settings as the role works it out."""
    facts, task_vars = set_fact("Work out the version and the settings")
    values = {**BASE, "lab_version_file": {"content": ""}, **values}
    values.update({k: native(v, values) for k, v in task_vars.items()})
    return native(facts["lab_effective_settings"], values)


def test_the_role_knows_a_swarm_by_its_workers_and_takes_the_swarm_roles_homes_path():
    facts, _ = set_fact("Work out which images the lab needs")
    assert native(facts["lab_swarm"], {"groups": {"lab": ["m"], "lab_workers": ["w1"]}}) is True
    assert native(facts["lab_swarm"], {"groups": {"lab": ["m"], "lab_workers": []}}) is False
    assert native(facts["lab_swarm"], {"groups": {"lab": ["m"]}}) is False
    assert native(DEFAULTS["lab_swarm_homes_path"], {"swarm_homes_path": "/mnt/homes"}) == "/mnt/homes"
    assert native(DEFAULTS["lab_swarm_homes_path"], {}) == "/srv/lab-homes"


def test_a_swarm_manager_runs_the_lab_with_the_swarm_compose_file_and_the_homes_path():
    env = env_file(lab_swarm=True, lab_swarm_homes_path="/mnt/homes")
    assert "COMPOSE_FILE=docker-compose.yml:docker-compose.swarm.yml\n" in env
    assert "LAB_SWARM_HOMES=/mnt/homes\n" in env and "LAB_SWARM_NET=10.201\n" in env
    assert env.count("COMPOSE_FILE=") == 1
    # A GPU manager with monitoring: the GPU file comes after the swarm file.
    env = env_file(lab_swarm=True, lab_gpu_devices=[{"id": "GPU-1", "mode": "exclusive"}], lab_monitoring=True)
    assert "COMPOSE_FILE=docker-compose.yml:docker-compose.swarm.yml:docker-compose.gpu.yml\n" in env
    assert env.count("COMPOSE_FILE=") == 1


def test_without_workers_the_env_is_as_on_one_host():
    for values in ({}, {"lab_swarm": False}):
        env = env_file(**values)
        assert "COMPOSE_FILE" not in env and "SWARM" not in env
        env = env_file(lab_gpu_devices=[{"id": "GPU-1", "mode": "exclusive"}], lab_monitoring=True, **values)
        assert "COMPOSE_FILE=docker-compose.yml:docker-compose.gpu.yml\n" in env and "SWARM" not in env


def test_a_swarm_managers_settings_turn_the_swarm_on_with_its_homes_and_gpus():
    devices = [{"id": "GPU-aa", "mode": "shared", "max_users": 4}, {"id": "MIG-bb", "mode": "mig"}]
    operator = {"auth": {"demo": False}, "swarm": {"placement": ["node.labels.lab == yes"]},
                "gpus": {"devices": [{"id": "GPU-stale", "mode": "exclusive"}]}}
    result = settings(lab_settings=operator, lab_swarm=True, lab_swarm_homes_path="/mnt/homes",
                      swarm_gpu_devices=devices, lab_gpu_devices=[{"id": "GPU-manager", "mode": "exclusive"}])
    assert result["swarm"] == {"enabled": True, "homes": {"path": "/mnt/homes"}, "placement": ["node.labels.lab == yes"]}
    assert result["gpus"] == {"devices": devices}  # every node's GPUs, as the Swarm's nodes declare them
    assert result["auth"] == {"demo": False}
    # The lab.yaml template writes exactly these settings.
    written = jinja2.Environment().from_string((ROLE / "templates" / "lab.yaml.j2").read_text().replace(
        "to_nice_yaml(indent=2, sort_keys=false)", "tojson")).render(ansible_managed="A", lab_effective_settings=result)
    assert yaml.safe_load(written) == result


def test_without_workers_the_settings_are_as_on_one_host():
    operator = {"auth": {"demo": False}}
    gpus = [{"id": "GPU-manager", "mode": "exclusive"}]
    assert settings(lab_settings=operator, lab_swarm=False, lab_gpu_devices=gpus) == {**operator, "gpus": {"devices": gpus}}
    assert settings(lab_settings=operator, lab_swarm=False) == operator
    assert settings(lab_settings=operator, lab_swarm=False, swarm_gpu_devices=gpus) == operator
