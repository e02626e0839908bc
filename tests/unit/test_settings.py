"""Operator settings: defaults, merging, and errors that name the file, line and key."""

from pathlib import Path

import pytest

from hub.settings import DEFAULTS, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "a" * 64


def load(tmp_path, text=None, **env):
    """Load settings from a lab.yaml with the given text (None: no file) and environment."""
    path = tmp_path / "lab.yaml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    return load_settings(path, environ=env)


def problems(tmp_path, text=None, **env):
    with pytest.raises(SettingsError) as info:
        load(tmp_path, text, **env)
    return info.value.problems


def test_no_file_gives_defaults_that_work_on_one_host(tmp_path):
    """Without a settings file every default applies and the demo provider is used."""
    s = load(tmp_path)
    assert s.values == DEFAULTS
    assert s.demo is True
    assert s.instance == "mlops-lab"
    assert s.network == "mlops-lab"
    assert s.home_volume_template == "mlops-lab-home-{username}"


def test_example_file_documents_exactly_the_defaults():
    """lab.example.yaml spells out every default, so the operator's template never drifts."""
    import yaml

    raw = yaml.safe_load((ROOT / "lab.example.yaml").read_text())
    assert raw == DEFAULTS
    assert load_settings(ROOT / "lab.example.yaml", environ={}).values == DEFAULTS


def test_override_merges_with_defaults(tmp_path):
    """A partial section keeps the other defaults of that section."""
    s = load(tmp_path, "spawner:\n  mem_limit: 8G\n")
    assert s.get("spawner.mem_limit") == "8G"
    assert s.get("spawner.cpu_limit") == DEFAULTS["spawner"]["cpu_limit"]


def test_unknown_key_is_named_with_file_and_line(tmp_path):
    """A misspelt key stops start-up with its file, line and dotted path."""
    text = "hub:\n  log_level: INFO\nspawner:\n  mem_limt: 4G\n"
    [problem] = problems(tmp_path, text)
    assert problem.startswith(f"{tmp_path / 'lab.yaml'}:4: spawner.mem_limt: unknown key 'mem_limt'")
    assert "mem_limit" in problem  # the known keys are listed


def test_bad_size_names_the_key_and_the_expected_form(tmp_path):
    """A memory limit that is not a size says what a size looks like."""
    [problem] = problems(tmp_path, "spawner:\n  cpu_limit: 1\n  mem_limit: 4 GB\n")
    assert ":3: spawner.mem_limit: '4 GB' is not a size like 512M or 4G" in problem


def test_all_problems_are_reported_at_once(tmp_path):
    """Two bad values give two messages, not one per restart."""
    found = problems(tmp_path, "hub:\n  log_level: LOUD\nculler:\n  timeout: 5\n")
    assert len(found) == 2
    assert any(":2: hub.log_level: 'LOUD' is not one of: DEBUG | INFO | WARNING | ERROR" in p for p in found)
    assert any(":4: culler.timeout:" in p for p in found)


def test_yaml_syntax_error_names_the_line(tmp_path):
    """Broken YAML is reported with its line, not as a traceback."""
    [problem] = problems(tmp_path, "hub:\n  log_level: INFO\n   bad: [\n")
    assert "lab.yaml:3: not valid YAML" in problem


def test_top_level_must_be_a_mapping(tmp_path):
    """A list at the top level is refused with a hint of the sections."""
    [problem] = problems(tmp_path, "- hub\n")
    assert "must be a mapping of sections" in problem


def test_unknown_lab_environment_variable_is_refused(tmp_path):
    """A misspelt LAB_* variable is named, with the known ones."""
    [problem] = problems(tmp_path, None, LAB_ADMIN_TOKEN="x")
    assert problem.startswith("environment: unknown variable LAB_ADMIN_TOKEN")
    assert "LAB_ADMIN_API_TOKEN" in problem


def test_weak_admin_token_is_refused(tmp_path):
    """The automation token must be long enough to be a secret."""
    [problem] = problems(tmp_path, None, LAB_ADMIN_API_TOKEN="short")
    assert "LAB_ADMIN_API_TOKEN must be at least 32 characters" in problem


def test_host_only_variables_are_accepted(tmp_path):
    """Variables meant for compose and the build scripts do not upset the hub."""
    s = load(tmp_path, None, LAB_HTTP_PORT="8000", LAB_ADMIN_API_TOKEN=TOKEN, LAB_INSTANCE="lab2")
    assert s.env["LAB_ADMIN_API_TOKEN"] == TOKEN
    assert s.network == "lab2"


def test_bad_instance_name_is_refused(tmp_path):
    """The instance names Docker objects, so it must be a valid Docker name."""
    [problem] = problems(tmp_path, None, LAB_INSTANCE="My Lab")
    assert "LAB_INSTANCE='My Lab'" in problem


def test_live_logins_need_their_client_ids_and_secrets(tmp_path):
    """Turning demo mode off without registering the lab names each missing piece."""
    text = "\n".join(problems(tmp_path, "auth:\n  demo: false\n"))
    assert "auth.dtu.oidc.client_id: required for DTU login by OpenID Connect" in text
    assert "auth.dtu.oidc.authorize_url: required unless auth.dtu.oidc.tenant_id is set" in text
    assert "LAB_DTU_CLIENT_SECRET: required" in text
    assert "auth.github.client_id: required for GitHub login" in text
    assert "LAB_GITHUB_CLIENT_SECRET: required" in text


def test_entra_tenant_and_github_app_are_enough(tmp_path):
    """A tenant id fills the Entra URLs and the expected issuer; with both secrets, live logins load."""
    text = ("auth:\n  demo: false\n  dtu:\n    oidc:\n      tenant_id: %s\n      client_id: lab\n"
            "  github:\n    client_id: Iv1.abc\n" % "f81f9b5a-3e36-4a1e-9f8d-4b5f2e1c0d11")
    s = load(tmp_path, text, LAB_DTU_CLIENT_SECRET="x", LAB_GITHUB_CLIENT_SECRET="y")
    assert s.demo is False


def test_a_tenant_domain_needs_the_issuer_spelled_out(tmp_path):
    """Entra's ID tokens name the tenant by its id, so with a domain the issuer must be given."""
    text = ("auth:\n  demo: false\n  dtu:\n    oidc:\n      tenant_id: dtu.dk\n      client_id: lab\n"
            "  github:\n    enabled: false\n")
    found = "\n".join(problems(tmp_path, text, LAB_DTU_CLIENT_SECRET="x"))
    assert "lab.yaml:4: auth.dtu.oidc.issuer: required unless auth.dtu.oidc.tenant_id is the tenant's id" in found
    s = load(tmp_path, text.replace("client_id: lab\n", "client_id: lab\n      issuer: https://login.microsoftonline.com/%s/v2.0\n" % "f81f9b5a-3e36-4a1e-9f8d-4b5f2e1c0d11"),
             LAB_DTU_CLIENT_SECRET="x")
    assert s.get("auth.dtu.oidc.issuer").endswith("/v2.0")


def test_cas_needs_no_client_secret(tmp_path):
    """DTU by CAS has no client registration: only its server URL, which has a default."""
    s = load(tmp_path, "auth:\n  demo: false\n  dtu:\n    protocol: cas\n  github:\n    enabled: false\n")
    assert s.get("auth.dtu.cas.server_url") == "https://auth.dtu.dk/dtu/"


def test_some_login_must_be_enabled(tmp_path):
    found = problems(tmp_path, "auth:\n  dtu:\n    enabled: false\n  github:\n    enabled: false\n")
    assert any("enable at least one of auth.dtu and auth.github" in p for p in found)


def test_bad_id_pattern_is_named(tmp_path):
    [problem] = problems(tmp_path, "auth:\n  id_pattern: '^(s[0-9'\n")
    assert problem.startswith(f"{tmp_path / 'lab.yaml'}:2: auth.id_pattern: not a regular expression")


def test_bad_user_name_in_list_is_named(tmp_path):
    """User names become Docker names: upper case and spaces are refused with the item's line."""
    [problem] = problems(tmp_path, "auth:\n  admin_users:\n    - ok1\n    - Bad Name\n")
    assert ":4: auth.admin_users.1: 'Bad Name' is not a valid user name" in problem


def test_home_volume_template_needs_username(tmp_path):
    """Without {username} every student would share one home."""
    [problem] = problems(tmp_path, "spawner:\n  home_volume: shared-home\n")
    assert "spawner.home_volume: 'shared-home' is not a volume name template containing {username}" in problem


def test_database_url_must_be_one_the_hub_can_open(tmp_path):
    """A database the hub image has no driver for is refused at start, not at first login."""
    [problem] = problems(tmp_path, "hub:\n  db_url: mysql://lab@db/lab\n")
    assert ":2: hub.db_url: 'mysql://lab@db/lab' is not an SQLite URL" in problem


def test_renamed_variable_is_named_with_its_new_name(tmp_path):
    """An .env from before DTU and GitHub logins: empty is ignored, set is refused with the new name."""
    load(tmp_path, None, LAB_OIDC_CLIENT_SECRET="")
    [problem] = problems(tmp_path, None, LAB_OIDC_CLIENT_SECRET="x")
    assert problem == ("environment: LAB_OIDC_CLIENT_SECRET is now LAB_DTU_CLIENT_SECRET"
                       " (and lab.yaml auth.dtu.oidc); rename it in .env")


def test_egress_and_netguard_load_live_settings_without_the_hub_secrets(tmp_path):
    """Only the hub gets the client secrets; the firewall and proxy must still start."""
    text = "auth:\n  demo: false\n  dtu:\n    protocol: cas\n  github:\n    client_id: Iv1.abc\n"
    assert "LAB_GITHUB_CLIENT_SECRET: required" in "\n".join(problems(tmp_path, text))
    path = tmp_path / "lab.yaml"
    assert load_settings(path, environ={}, secrets=False).demo is False


def test_grading_settings_are_checked_with_file_line_and_key(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text("grading:\n  workers: -1\n  mem_limit: lots\n  colour: red\n")
    with pytest.raises(SettingsError) as err:
        load_settings(path, environ={})
    text = "\n".join(err.value.problems)
    assert "lab.yaml:2: grading.workers:" in text
    assert "lab.yaml:3: grading.mem_limit: 'lots' is not a size like 512M or 4G" in text
    assert "lab.yaml:4: grading.colour: unknown key" in text


def test_a_bad_gradebook_url_is_named_without_its_password(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text("")
    with pytest.raises(SettingsError) as err:
        load_settings(path, environ={"LAB_GRADEBOOK_URL": "mysql://u:hunter2@db/x"})
    assert "LAB_GRADEBOOK_URL is not a postgresql://" in str(err.value) and "hunter2" not in str(err.value)
    ok = load_settings(path, environ={"LAB_GRADEBOOK_URL": "postgresql://u:p@db/gradebook"})
    assert ok.env["LAB_GRADEBOOK_URL"] == "postgresql://u:p@db/gradebook"


@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1:8000", "use a host name, not an address"),
    ("http://[::1]:8000", "use a host name, not an address"),
    ("https://lab.example.dk/lab", "drop the path"),
])
def test_the_public_url_must_be_a_host_name_at_its_root(tmp_path, url, message):
    """Students' servers live on subdomains of it, which an address or a path cannot give."""
    assert any(message in p for p in problems(tmp_path, LAB_PUBLIC_URL=url))


def test_a_profile_without_a_display_name_is_named_with_the_file_and_line(tmp_path):
    """The problem names the settings file and the profile's line, not the profile as a file."""
    found = problems(tmp_path, "profiles:\n  cpu:\n    enabled: true\n  extra:\n    description: more\n")
    path = tmp_path / "lab.yaml"
    assert f"{path}:4: profiles.extra.display_name: required" in found, found


def test_the_hub_database_url_is_checked_without_showing_its_password(tmp_path):
    from tests.unit.test_spawner import config_for
    path = tmp_path / "lab.yaml"
    path.write_text("")
    for bad, says in [
        ("mysql://u:hunter2@db/x", "LAB_HUB_DB_URL is not a postgresql://user:password@host/db URL"),
        ("postgres", "LAB_HUB_DB_URL is not a postgresql://"),  # make up replaces the word; compose alone does not
        ("postgresql://hub:hunter2@hubdb/jupyterhub", "the password 16 or more letters"),
        ("postgresql://Hub-1:0123456789abcdef0@hubdb/jupyterhub", "plain names"),
    ]:
        with pytest.raises(SettingsError) as err:
            load_settings(path, environ={"LAB_HUB_DB_URL": bad})
        assert says in str(err.value) and "hunter2" not in str(err.value), (bad, str(err.value))
    # Not hubdb: the operator's own server; its password is theirs to choose.
    ok = load_settings(path, environ={"LAB_HUB_DB_URL": "postgresql://u:p@db.example.dk/hub"})
    assert ok.hub_db_url == "postgresql+psycopg2://u:p@db.example.dk/hub"
    c = config_for(tmp_path, LAB_HUB_DB_URL="postgresql://hub:0123456789abcdef0@hubdb/jupyterhub")
    assert c.JupyterHub.db_url == "postgresql+psycopg2://hub:0123456789abcdef0@hubdb/jupyterhub"
    assert c.JupyterHub.db_kwargs == {"pool_pre_ping": True}
    # Unset: lab.yaml's SQLite.
    c = config_for(tmp_path)
    assert c.JupyterHub.db_url == "sqlite:////srv/jupyterhub/jupyterhub.sqlite" and "db_kwargs" not in c.JupyterHub
