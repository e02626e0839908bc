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
    assert s.auth_provider == "demo"
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


def test_real_oidc_provider_needs_its_urls_and_secret(tmp_path):
    """Choosing the real provider without its settings lists each missing one."""
    found = problems(tmp_path, "auth:\n  provider: oidc\n  allow_all: true\n")
    text = "\n".join(found)
    for key in ("client_id", "authorize_url", "token_url", "userdata_url"):
        assert f"auth.oidc.{key}: required when auth.provider is oidc" in text
    assert "LAB_OIDC_CLIENT_SECRET: required" in text


def test_client_id_selects_the_real_provider(tmp_path):
    """With auth.provider auto, setting a client id turns the demo provider off."""
    text = (
        "auth:\n  allowed_users: [s123456]\n  oidc:\n    client_id: lab\n"
        "    authorize_url: https://login.example.org/authorize\n"
        "    token_url: https://login.example.org/token\n"
        "    userdata_url: https://login.example.org/userinfo\n"
    )
    s = load(tmp_path, text, LAB_OIDC_CLIENT_SECRET="secret")
    assert s.auth_provider == "oidc"


def test_demo_admin_must_be_a_demo_person(tmp_path):
    """A demo admin who cannot sign in is a mistake worth naming."""
    [problem] = problems(tmp_path, "auth:\n  demo:\n    people: [a1]\n    admins: [b2]\n")
    assert "auth.demo.admins: 'b2' is not in auth.demo.people" in problem


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
