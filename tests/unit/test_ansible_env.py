"""The .env that Ansible writes carries every setting an operator can give the lab in .env, so a
host set up by Ansible can keep what a host set up by hand can (a PostgreSQL gradebook, a GitHub
token); the template is rewritten on every run, so a variable it leaves out is lost."""

import re
from pathlib import Path

import jinja2
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "ansible" / "roles" / "lab" / "templates" / "env.j2"
# The demo providers' ports and addresses: Ansible hosts are live (Caddy in front, no demo peers).
DEMO_ONLY = {"LAB_IDP_PORT", "LAB_IDP_GITHUB_PORT", "LAB_IDP_CAS_PORT", "LAB_IDP_PUBLIC_URL",
             "LAB_IDP_GITHUB_PUBLIC_URL", "LAB_IDP_CAS_PUBLIC_URL"}


def names(text: str) -> set[str]:
    return set(re.findall(r"^#? ?(LAB_[A-Z_]+)=", text, re.M))


def test_the_ansible_env_has_every_variable_of_the_env_example():
    missing = names((ROOT / ".env.example").read_text()) - DEMO_ONLY - names(TEMPLATE.read_text())
    assert not missing, f"{TEMPLATE.relative_to(ROOT)} leaves out {sorted(missing)}"


def test_the_gradebook_url_from_the_vault_reaches_the_env():
    defaults = yaml.safe_load((ROOT / "ansible" / "roles" / "lab" / "defaults" / "main.yml").read_text())
    values = {**defaults, "ansible_managed": "Ansible", "lab_domain": "lab.example.dk", "lab_version": "1.0.0",
              "lab_gradebook_url": "postgresql://lab:pw@db.example.dk/gradebook",
              "lab_github_api_token": "ghp_x"}
    env = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(TEMPLATE.read_text()).render(values)
    assert "LAB_GRADEBOOK_URL=postgresql://lab:pw@db.example.dk/gradebook\n" in env
    assert "LAB_GITHUB_API_TOKEN=ghp_x\n" in env
    # Empty by default: the lab's SQLite gradebook.
    env = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(TEMPLATE.read_text()).render(
        {**defaults, "ansible_managed": "Ansible", "lab_domain": "lab.example.dk", "lab_version": "1.0.0"})
    assert "LAB_GRADEBOOK_URL=\n" in env


def test_the_hub_database_choice_reaches_the_env():
    defaults = yaml.safe_load((ROOT / "ansible" / "roles" / "lab" / "defaults" / "main.yml").read_text())
    base = {**defaults, "ansible_managed": "Ansible", "lab_domain": "lab.example.dk", "lab_version": "1.0.0"}

    def render(**values):
        template = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True).from_string(
            TEMPLATE.read_text())  # Ansible's template module trims blocks too
        return template.render({**base, **values})

    assert "LAB_HUB_DB_URL=\n" in render()  # SQLite, the default
    assert "LAB_HUB_DB_URL=postgresql://hub:0123456789abcdef01@hubdb/jupyterhub\n" in render(
        lab_hub_db="postgres", lab_hub_db_password="0123456789abcdef01")
    assert "LAB_HUB_DB_URL=postgresql://u:p@db.example.dk/hub\n" in render(
        lab_hub_db="external", lab_hub_db_url="postgresql://u:p@db.example.dk/hub")
    assert render().count("LAB_HUB_DB_URL=") == 1


def test_a_gpu_host_with_monitoring_gives_the_exporter_its_gpus():
    defaults = yaml.safe_load((ROOT / "ansible" / "roles" / "lab" / "defaults" / "main.yml").read_text())
    base = {**defaults, "ansible_managed": "Ansible", "lab_domain": "lab.example.dk", "lab_version": "1.0.0"}
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True)
    env.filters["bool"] = lambda v: v if isinstance(v, bool) else str(v).lower() in ("true", "yes", "1")  # Ansible's
    template = env.from_string(TEMPLATE.read_text())
    gpus = [{"id": "0", "mode": "exclusive"}]
    line = "COMPOSE_FILE=docker-compose.yml:docker-compose.gpu.yml\n"
    assert line in template.render({**base, "lab_gpu_devices": gpus, "lab_monitoring": "True"})
    assert line not in template.render({**base, "lab_gpu_devices": gpus, "lab_monitoring": False})
    assert line not in template.render({**base, "lab_gpu_devices": [], "lab_monitoring": True})
    assert line not in template.render(base)  # a CPU host: the role never set the GPU list
