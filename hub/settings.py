"""Operator settings: one YAML file (``lab.yaml``) plus ``LAB_*`` environment variables.

The file holds everything an operator tunes; secrets and per-host facts (ports, URLs, the
instance name) come from the environment, which ``docker compose`` fills from ``.env``.

Like The Littlest JupyterHub, defaults live in one place, the operator's YAML is merged over
them and validated by a JSON schema with ``additionalProperties: false``. We add what a schema
validator alone does not give: errors name the file, the line and the dotted key
(``lab.yaml:12: spawner.mem_limit: '4 GB' is not a size like 512M or 4G``), unknown ``LAB_*``
variables are refused by name, and every problem is reported at once, not one per restart.
That is why this module is ours rather than a library's; the checking itself is ``jsonschema``.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import yaml

DEFAULT_SETTINGS_FILE = "/srv/lab/lab.yaml"

SIZE_RE = re.compile(r"^[0-9]+(\.[0-9]+)?[KMGT]$")
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

# Environment variables the hub reads. Each: (default, help). None = no default.
ENV_VARS: dict[str, tuple[str | None, str]] = {
    "LAB_INSTANCE": (
        "mlops-lab",
        "Name of this lab instance: prefixes the Docker network, student containers and home volumes.",
    ),
    "LAB_PUBLIC_URL": ("http://localhost:8000", "URL at which students' browsers reach the lab."),
    "LAB_COURSE_IMAGE": ("mlops-lab/course:latest", "The course image student servers run (pinned)."),
    "LAB_NETWORK": (None, "Docker network shared by the hub and student servers (default: LAB_INSTANCE)."),
    "LAB_HUB_CONNECT_URL": ("http://hub:8081", "URL at which student servers reach the hub's API."),
    "LAB_IDP_PUBLIC_URL": (
        "http://localhost:9400",
        "Demo DTU login (OpenID Connect) as browsers reach it (demo mode only).",
    ),
    "LAB_IDP_GITHUB_PUBLIC_URL": (
        "http://localhost:9401",
        "Demo GitHub as browsers reach it (demo mode only).",
    ),
    "LAB_IDP_CAS_PUBLIC_URL": (
        "http://localhost:9402",
        "Demo DTU login (CAS) as browsers reach it (demo mode only).",
    ),
    "LAB_IDP_HOST": ("idp", "Host name at which the hub reaches the demo providers (demo mode only)."),
    "LAB_ADMIN_API_TOKEN": (None, "Secret: API token of the lab-admin service, for automation."),
    "LAB_DTU_CLIENT_SECRET": (None, "Secret: client secret of the hub's app registration in DTU's Entra ID."),
    "LAB_GITHUB_CLIENT_SECRET": (None, "Secret: client secret of the hub's GitHub OAuth app."),
    "LAB_GITHUB_API_TOKEN": (None, "Secret, optional: a GitHub token (no scopes needed) for looking up the roster's "
                             "GitHub logins at import (without one, GitHub allows 60 look-ups an hour)."),
    "LAB_GRADEBOOK_URL": (None, "Secret: a PostgreSQL URL (postgresql://user:password@host/db) for the nbgrader "
                          "gradebook; default: SQLite on the course-data volume (/srv/course/nbgrader/gradebook.db)."),
    "LAB_SETTINGS_FILE": (DEFAULT_SETTINGS_FILE, "Path of the operator settings file inside the hub."),
}

# Variables of earlier versions: ignored when empty, else refused with their new name.
RENAMED_VARS = {"LAB_OIDC_CLIENT_SECRET": "LAB_DTU_CLIENT_SECRET (and lab.yaml auth.dtu.oidc)"}

# Host-side variables that compose and the scripts read; the hub may see them and ignores them.
HOST_ONLY_VARS = {
    "LAB_HTTP_PORT", "LAB_HTTP_BIND", "LAB_IDP_PORT", "LAB_IDP_GITHUB_PORT", "LAB_IDP_CAS_PORT", "LAB_IMAGE_TAG", "LAB_TORCH_VARIANT", "LAB_WHEELHOUSE",
    "LAB_EXTRA_CA_BUNDLE", "LAB_BASE_IMAGE", "LAB_TOOLS_DIR", "LAB_DOCKERD_LOG",
}

DEFAULTS: dict[str, Any] = {
    "hub": {
        "log_level": "INFO",
        "db_url": "sqlite:////srv/jupyterhub/jupyterhub.sqlite",
        "concurrent_spawn_limit": 20,
        "active_server_limit": 0,
    },
    "auth": {
        "demo": True,
        "admin_users": [],
        "contact": "the course's instructors",
        "id_pattern": r"^(s[0-9]{6}|[a-z]{2,8})$",
        "id_domains": ["dtu.dk", "student.dtu.dk"],
        "dtu": {
            "enabled": True,
            "protocol": "oidc",
            "oidc": {
                "tenant_id": "",
                "client_id": "",
                "authorize_url": "",
                "token_url": "",
                "issuer": "",
                "username_claim": "preferred_username",
                "scope": ["openid", "profile", "email"],
            },
            "cas": {
                "server_url": "https://auth.dtu.dk/dtu/",
                "validate_url": "",
            },
        },
        "github": {
            "enabled": True,
            "client_id": "",
            "url": "https://github.com",
            "api_url": "",
            "token_url": "",
        },
    },
    "spawner": {
        "mem_limit": "4G",
        "cpu_limit": 2.0,
        "pids_limit": 1024,
        "shm_size": "1G",
        "start_timeout": 180,
        "http_timeout": 120,
        "home_volume": "{instance}-home-{username}",
        "environment": {},
    },
    "culler": {
        "enabled": True,
        "timeout": 3600,
        "every": 300,
        "max_age": 0,
    },
    "profiles": {
        "cpu": {
            "display_name": "CPU",
            "description": "For most modules.",
            "gpu": "none",
            "access": "all",
            "default": True,
        },
        "gpu-shared": {
            "display_name": "GPU (shared)",
            "description": "A share of a GPU: time-sliced or a MIG slice.",
            "gpu": "shared",
            "access": "all",
            "mem_limit": "16G",
            "cpu_limit": 4.0,
            "idle_timeout": 1800,
        },
        "gpu-whole": {
            "display_name": "GPU (whole)",
            "description": "A whole GPU, for instructors.",
            "gpu": "whole",
            "access": ["group:instructors"],
            "mem_limit": "32G",
            "cpu_limit": 8.0,
            "idle_timeout": 1800,
        },
    },
    "gpus": {
        "devices": [],
    },
    "grading": {
        "calendar": True,
        "grace_minutes": 0,
        "auto_grade": True,
        "auto_feedback": True,
        "workers": 0,
        "cpus": 1.0,
        "mem_limit": "1G",
        "pids_limit": 128,
        "wall_seconds": 900,
        "cell_timeout": 300,
        "test_clock": False,
    },
    "network": {
        "isolate": True,
        "allowed_hosts": ["pypi.org", "files.pythonhosted.org", "download.pytorch.org"],
    },
}

# Which device modes serve which kind of GPU profile.
GPU_KINDS = {"none": (), "shared": ("shared", "mig"), "whole": ("exclusive",)}

_size = {"type": "string", "pattern": SIZE_RE.pattern, "description": "a size like 512M or 4G"}
_user_list = {
    "type": "array",
    "items": {"type": "string", "pattern": USERNAME_RE.pattern},
    "uniqueItems": True,
}
_url = {"type": "string", "pattern": r"^(https?://[^\s]+)?$", "description": "an http(s) URL"}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "hub": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "log_level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
                "db_url": {"type": "string", "pattern": r"^sqlite:///",
                           "description": "an SQLite URL (sqlite:////path); the hub image has no other database driver"},
                "concurrent_spawn_limit": {"type": "integer", "minimum": 0},
                "active_server_limit": {"type": "integer", "minimum": 0},
            },
        },
        "auth": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "demo": {"type": "boolean"},
                "admin_users": _user_list,
                "contact": {"type": "string", "minLength": 1},
                "id_pattern": {"type": "string", "minLength": 1},
                "id_domains": {"type": "array", "items": {"type": "string", "pattern": r"^[a-z0-9.-]+$",
                                                          "description": "a domain like dtu.dk"}},
                "dtu": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "enabled": {"type": "boolean"},
                        "protocol": {"enum": ["oidc", "cas"]},
                        "oidc": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "tenant_id": {"type": "string", "pattern": r"^[A-Za-z0-9.-]*$",
                                              "description": "an Entra tenant id (a GUID) or domain"},
                                "client_id": {"type": "string"},
                                "authorize_url": _url,
                                "token_url": _url,
                                "issuer": {"type": "string", "description": "the ID token's iss claim"},
                                "username_claim": {"type": "string", "minLength": 1},
                                "scope": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                        "cas": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "server_url": _url,
                                "validate_url": _url,
                            },
                        },
                    },
                },
                "github": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "enabled": {"type": "boolean"},
                        "client_id": {"type": "string"},
                        "url": _url,
                        "api_url": _url,
                        "token_url": _url,
                    },
                },
            },
        },
        "spawner": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "mem_limit": _size,
                "cpu_limit": {"type": "number", "exclusiveMinimum": 0},
                "pids_limit": {"type": "integer", "minimum": 64},
                "shm_size": _size,
                "start_timeout": {"type": "integer", "minimum": 10},
                "http_timeout": {"type": "integer", "minimum": 10},
                "home_volume": {
                    "type": "string",
                    "pattern": r"\{username\}",
                    "description": "a volume name template containing {username}",
                },
                "environment": {
                    "type": "object",
                    "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                    "additionalProperties": {"type": "string"},
                },
            },
        },
        "culler": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "enabled": {"type": "boolean"},
                "timeout": {"type": "integer", "minimum": 10},
                "every": {"type": "integer", "minimum": 5},
                "max_age": {"type": "integer", "minimum": 0},
            },
        },
        "profiles": {
            "type": "object",
            "propertyNames": {"pattern": r"^[a-z0-9][a-z0-9-]{0,30}$"},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "display_name": {"type": "string", "minLength": 1},
                    "description": {"type": "string"},
                    "gpu": {"enum": ["none", "shared", "whole"]},
                    "access": {
                        "oneOf": [
                            {"enum": ["all", "admins"]},
                            {"type": "array", "items": {
                                "type": "string", "pattern": r"^(group:)?[a-z0-9][a-z0-9._-]{0,63}$",
                                "description": "a user name or group:NAME"}},
                        ],
                    },
                    "default": {"type": "boolean"},
                    "enabled": {"type": "boolean"},
                    "mem_limit": _size,
                    "cpu_limit": {"type": "number", "exclusiveMinimum": 0},
                    "idle_timeout": {"type": "integer", "minimum": 10},
                },
            },
        },
        "grading": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "calendar": {"type": "boolean"},
                "grace_minutes": {"type": "integer", "minimum": 0},
                "auto_grade": {"type": "boolean"},
                "auto_feedback": {"type": "boolean"},
                "workers": {"type": "integer", "minimum": 0, "maximum": 256},
                "cpus": {"type": "number", "exclusiveMinimum": 0},
                "mem_limit": _size,
                "pids_limit": {"type": "integer", "minimum": 32},
                "wall_seconds": {"type": "integer", "minimum": 30},
                "cell_timeout": {"type": "integer", "minimum": 5},
                "test_clock": {"type": "boolean"},
            },
        },
        "network": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "isolate": {"type": "boolean"},
                "allowed_hosts": {
                    "type": "array",
                    "uniqueItems": True,
                    "items": {"type": "string", "pattern": r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$",
                              "description": "a host name like pypi.org or *.example.org"},
                },
            },
        },
        "gpus": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "devices": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["id", "mode"],
                        "properties": {
                            "id": {"type": "string", "pattern": r"^([0-9]+|GPU-[0-9a-fA-F-]+|MIG-[0-9a-zA-Z/-]+)$",
                                   "description": "a GPU index, a GPU-... UUID or a MIG-... UUID"},
                            "mode": {"enum": ["exclusive", "shared", "mig"]},
                            "max_users": {"type": "integer", "minimum": 1, "maximum": 64},
                        },
                    },
                },
            },
        },
    },
}


class SettingsError(ValueError):
    """The operator's settings are invalid; the message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid lab settings:\n  " + "\n  ".join(problems))


@dataclass
class Settings:
    """Validated settings: ``values`` (merged YAML) and ``env`` (LAB_* variables with defaults)."""

    values: dict[str, Any]
    env: dict[str, str | None]
    source: str = "<defaults>"

    def get(self, dotted: str) -> Any:
        """Return the value at a dotted path, e.g. ``get("spawner.mem_limit")``."""
        node: Any = self.values
        for part in dotted.split("."):
            node = node[part]
        return node

    @property
    def instance(self) -> str:
        return self.env["LAB_INSTANCE"] or "mlops-lab"

    @property
    def network(self) -> str:
        return self.env["LAB_NETWORK"] or self.instance

    @property
    def demo(self) -> bool:
        """Demo mode: the bundled demo DTU and GitHub providers and the demo roster."""
        return bool(self.get("auth.demo"))

    @property
    def home_volume_template(self) -> str:
        return self.get("spawner.home_volume").replace("{instance}", self.instance)


def _line_index(node: yaml.Node, path: tuple[str, ...] = (), out: dict | None = None) -> dict:
    """Map each dotted key path in a YAML document to its 1-based line number."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = path + (str(key_node.value),)
            out[key_path] = key_node.start_mark.line + 1
            _line_index(value_node, key_path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (str(i),)] = item.start_mark.line + 1
            _line_index(item, path + (str(i),), out)
    return out


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _describe(error: jsonschema.ValidationError) -> str:
    """Turn a schema error into words an operator can act on."""
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        known = ", ".join(sorted(error.schema.get("properties", {})))
        return f"unknown key {', '.join(repr(e) for e in extra)} (known keys here: {known})"
    if error.validator == "enum":
        choices = " | ".join(str(c) for c in error.validator_value)
        return f"{error.instance!r} is not one of: {choices}"
    if error.validator == "pattern" and "description" in error.schema:
        return f"{error.instance!r} is not {error.schema['description']}"
    if error.validator == "pattern" and error.path and error.schema.get("pattern") == USERNAME_RE.pattern:
        return f"{error.instance!r} is not a valid user name (lower-case letters, digits, . _ -)"
    if error.validator == "type":
        return f"{error.instance!r} is not of type {error.validator_value}"
    return error.message


def _check_env(environ: dict[str, str], problems: list[str]) -> dict[str, str | None]:
    env: dict[str, str | None] = {}
    for name in sorted(k for k in environ if k.startswith("LAB_")):
        if name in RENAMED_VARS:
            if environ[name]:
                problems.append(f"environment: {name} is now {RENAMED_VARS[name]}; rename it in .env")
        elif name not in ENV_VARS and name not in HOST_ONLY_VARS:
            known = ", ".join(sorted(ENV_VARS))
            problems.append(f"environment: unknown variable {name} (known: {known})")
    for name, (default, _help) in ENV_VARS.items():
        value = environ.get(name, "")
        env[name] = value if value != "" else default
    instance = env["LAB_INSTANCE"] or ""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,40}", instance):
        problems.append(
            f"environment: LAB_INSTANCE={instance!r} must be lower-case letters, digits, '.', '_' or '-'"
        )
    for name in ("LAB_PUBLIC_URL", "LAB_HUB_CONNECT_URL", "LAB_IDP_PUBLIC_URL", "LAB_IDP_GITHUB_PUBLIC_URL",
                 "LAB_IDP_CAS_PUBLIC_URL"):
        if not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", env[name] or ""):
            problems.append(f"environment: {name}={env[name]!r} is not an http(s) URL")
    public = urlparse(env["LAB_PUBLIC_URL"] or "")
    if public.hostname and (re.fullmatch(r"[0-9.]+", public.hostname) or ":" in public.hostname):
        problems.append(f"environment: LAB_PUBLIC_URL={env['LAB_PUBLIC_URL']!r}: use a host name, not an address: every "
                        "student's server gets its own origin under it (<student>.<host>), which needs a name "
                        "(http://localhost:8000 on one machine; a wildcard DNS name and certificate on a server)")
    elif public.path.strip("/"):
        problems.append(f"environment: LAB_PUBLIC_URL={env['LAB_PUBLIC_URL']!r}: the lab is served at the root of its "
                        "host name; drop the path")
    gradebook = env["LAB_GRADEBOOK_URL"]
    if gradebook and not re.fullmatch(r"(postgresql(\+psycopg2)?://\S+|sqlite:////\S+)", gradebook):
        # the value may hold a password: name the variable, not its value
        problems.append("environment: LAB_GRADEBOOK_URL is not a postgresql://user:password@host/db (or sqlite:////path) URL")
    token = env["LAB_ADMIN_API_TOKEN"]
    if token is not None and (len(token) < 32 or not re.fullmatch(r"[A-Za-z0-9_-]+", token)):
        problems.append(
            "environment: LAB_ADMIN_API_TOKEN must be at least 32 characters of letters, digits, '-' or '_'"
            " (make one with: openssl rand -hex 32)"
        )
    return env


def load_settings(path: str | os.PathLike | None = None, environ: dict[str, str] | None = None,
                  secrets: bool = True) -> Settings:
    """Load, merge and validate the settings file and environment; raise SettingsError listing all problems.

    A missing file means all defaults. ``path`` defaults to ``$LAB_SETTINGS_FILE``. With
    ``secrets=False`` (processes that are never given the hub's secrets: egress, netguard) the
    client secrets the logins need are not required.
    """
    environ = dict(os.environ if environ is None else environ)
    problems: list[str] = []
    env = _check_env(environ, problems)
    file_path = Path(path or env["LAB_SETTINGS_FILE"] or DEFAULT_SETTINGS_FILE)
    name = str(file_path)

    user_values: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    if file_path.is_dir():
        problems.append(f"{name}: is a directory, not a settings file")
    elif file_path.exists():
        try:
            text = file_path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})")
            text = ""
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{name}:{mark.line + 1}" if mark else name
            problems.append(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}")
            node, loaded = None, None
        if node is not None:
            lines = _line_index(node)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            problems.append(f"{name}:1: the settings file must be a mapping of sections (hub, auth, spawner, culler)")
        else:
            user_values = loaded

    validator = jsonschema.Draft7Validator(SCHEMA)
    for error in sorted(validator.iter_errors(user_values), key=lambda e: list(map(str, e.path))):
        key_path = tuple(str(p) for p in error.path)
        if error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            key_path = key_path + (str(extra[0]),) if extra else key_path
        line = lines.get(key_path)
        where = f"{name}:{line}" if line else name
        dotted = ".".join(key_path) or "(top level)"
        problems.append(f"{where}: {dotted}: {_describe(error)}")

    values = _merge(DEFAULTS, user_values) if not problems else copy.deepcopy(DEFAULTS)
    settings = Settings(values=values, env=env, source=name)
    if not problems:
        _check_consistency(settings, lines, name, problems, secrets)
    if problems:
        raise SettingsError(problems)
    return settings


def _check_consistency(settings: Settings, lines: dict, name: str, problems: list[str], secrets: bool = True) -> None:
    """Rules that span several keys."""

    def where(*key: str) -> str:
        line = lines.get(tuple(key))
        return f"{name}:{line}" if line else name

    try:
        re.compile(settings.get("auth.id_pattern"))
    except re.error as e:
        problems.append(f"{where('auth', 'id_pattern')}: auth.id_pattern: not a regular expression ({e})")
    if not settings.get("auth.dtu.enabled") and not settings.get("auth.github.enabled"):
        problems.append(f"{where('auth')}: auth: enable at least one of auth.dtu and auth.github")
    if not settings.demo:
        if settings.get("auth.dtu.enabled") and settings.get("auth.dtu.protocol") == "oidc":
            o = settings.get("auth.dtu.oidc")
            if not o["client_id"]:
                problems.append(f"{where('auth', 'dtu', 'oidc')}: auth.dtu.oidc.client_id: required for DTU login by OpenID Connect"
                                " (or set auth.dtu.protocol: cas, or auth.demo: true)")
            for key in ("authorize_url", "token_url"):
                if not o[key] and not o["tenant_id"]:
                    problems.append(f"{where('auth', 'dtu', 'oidc')}: auth.dtu.oidc.{key}: required unless auth.dtu.oidc.tenant_id is set")
            if not o["issuer"] and not re.match(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$", o["tenant_id"]):
                problems.append(f"{where('auth', 'dtu', 'oidc')}: auth.dtu.oidc.issuer: required unless auth.dtu.oidc.tenant_id "
                                "is the tenant's id (a GUID): the ID token's issuer is checked")
            if secrets and not settings.env["LAB_DTU_CLIENT_SECRET"]:
                problems.append("environment: LAB_DTU_CLIENT_SECRET: required for DTU login by OpenID Connect")
        if settings.get("auth.dtu.enabled") and settings.get("auth.dtu.protocol") == "cas":
            if not settings.get("auth.dtu.cas.server_url"):
                problems.append(f"{where('auth', 'dtu', 'cas')}: auth.dtu.cas.server_url: required for DTU login by CAS")
        if settings.get("auth.github.enabled"):
            if not settings.get("auth.github.client_id"):
                problems.append(f"{where('auth', 'github')}: auth.github.client_id: required for GitHub login"
                                " (or set auth.github.enabled: false)")
            if secrets and not settings.env["LAB_GITHUB_CLIENT_SECRET"]:
                problems.append("environment: LAB_GITHUB_CLIENT_SECRET: required for GitHub login")
    profiles = settings.get("profiles")
    enabled = {n: p for n, p in profiles.items() if p.get("enabled", True)}
    if not enabled:
        problems.append(f"{where('profiles')}: profiles: at least one profile must be enabled")
    defaults = [n for n, p in enabled.items() if p.get("default")]
    if len(defaults) > 1:
        problems.append(f"{where('profiles')}: profiles: only one profile may be the default, not {', '.join(defaults)}")
    for profile_name, profile in enabled.items():
        if "display_name" not in profile:
            problems.append(f"{where('profiles', profile_name)}: profiles.{profile_name}.display_name: required")
    ids = [d["id"] for d in settings.get("gpus.devices")]
    for i, device in enumerate(settings.get("gpus.devices")):
        if ids.count(device["id"]) > 1:
            problems.append(f"{where('gpus', 'devices', str(i))}: gpus.devices.{i}.id: {device['id']!r} is listed twice")
        if device["mode"] == "mig" and not device["id"].startswith("MIG-"):
            problems.append(f"{where('gpus', 'devices', str(i))}: gpus.devices.{i}.id: a mig device must be a MIG-... UUID")
        if "max_users" in device and device["mode"] != "shared":
            problems.append(f"{where('gpus', 'devices', str(i))}: gpus.devices.{i}.max_users: only shared devices take more than one user")
    if settings.get("culler.max_age") and settings.get("culler.max_age") < settings.get("culler.every"):
        problems.append(f"{where('culler', 'max_age')}: culler.max_age: must be 0 (off) or at least culler.every")


def load_settings_or_exit(who: str, environ: dict[str, str] | None = None, secrets: bool = True) -> Settings:
    """For the lab's processes (hub, egress, netguard): the settings, or every problem printed
    under ``[who]`` and exit status 2, so a bad lab.yaml stops them with a readable message."""
    try:
        return load_settings(environ=environ, secrets=secrets)
    except SettingsError as error:
        print(f"[{who}] {error}", file=sys.stderr)
        sys.exit(2)
