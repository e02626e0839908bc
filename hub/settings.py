"""Operator settings: one YAML file (``lab.yaml``) plus ``LAB_*`` environment variables.

The file holds everything an operator tunes; secrets and per-host facts (ports, URLs, the
instance name) come from the environment, which ``docker compose`` fills from ``.env``.

Like The Littlest JupyterHub, defaults live in one place, the operator's YAML is merged over
them and validated by a JSON schema with ``additionalProperties: false``. We add what a schema
validator alone does not give: errors name the file, the line and the dotted key
(``lab.yaml:12: spawner.mem_limit: '4 GB' is not a size like 512M or 4G``), unknown ``LAB_*``
variables are refused by name, and every problem is reported at once, not one per restart.
That is why this module is ours rather than a library's; the checking itself is ``jsonschema``.

The settings tables in README.md are written from here: each key's "title" in ``SCHEMA`` with
its default, and each variable's help text.

    python -m hub.settings reference            rewrite the tables in README.md
    python -m hub.settings reference --check    exit 1, showing the difference, if they are out of date
"""

from __future__ import annotations

import argparse
import copy
import difflib
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
# A hub user name: also a container, volume and exchange folder name (lower case, no escapes).
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

# Environment variables the hub reads. Each: (default, help). None = no default.
ENV_VARS: dict[str, tuple[str | None, str]] = {
    "LAB_INSTANCE": (
        "mlops-lab",
        "Name of this lab instance: prefixes the Docker network, student containers and home volumes.",
    ),
    "LAB_PUBLIC_URL": ("http://localhost:8000", "Where browsers reach the lab (login callback URLs are built from it): a "
                       "host name at its root, since students' servers and the services are on its subdomains (see "
                       "[Security model](#security-model))."),
    "LAB_COURSE_IMAGE": ("mlops-lab/course:latest", "The course image student servers run (pinned)."),
    "LAB_SERVER_IMAGE": (None, "For load tests only (`make bench-burst-mini`): an image students' servers run instead "
                         "of the course image (grading sandboxes keep the course image); empty in a real lab."),
    "LAB_SWARM_NET": ("10.201", "In a swarm (`docker-compose.swarm.yml`): the first two numbers of the lab's overlay "
                      "network, `<net>.0.0/20`; the hub, proxy and egress proxy are `<net>.0.2` to `.4`."),
    "LAB_HUB_IMAGE": (None, "In a swarm: the hub's image, which nodeguard runs on every node (set by "
                      "`docker-compose.swarm.yml`)."),
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
    "LAB_ADMIN_API_TOKEN": (None, "Secret: API token of the lab-admin service, for automation: manage users and "
                            "servers, reach servers, import the roster (`make up` generates one)."),
    "LAB_DTU_CLIENT_SECRET": (None, "Secret: client secret of the hub's app registration in DTU's Entra ID."),
    "LAB_GITHUB_CLIENT_SECRET": (None, "Secret: client secret of the hub's GitHub OAuth app."),
    "LAB_GITHUB_API_TOKEN": (None, "Secret, optional: a GitHub token (no scopes needed) for looking up the roster's "
                             "GitHub logins at import (without one, GitHub allows 60 look-ups an hour)."),
    "LAB_GRADEBOOK_URL": (None, "Secret: a PostgreSQL URL (postgresql://user:password@host/db) for the nbgrader "
                          "gradebook; default: SQLite on the course-data volume (/srv/course/nbgrader/gradebook.db)."),
    "LAB_HUB_DB_URL": (None, "Secret: a PostgreSQL URL (postgresql://user:password@host/db) for the hub's own "
                       "database (users, servers, tokens); host `hubdb` is the bundled server, which `make up` "
                       "then starts (compose profile `postgres`). Empty: SQLite (lab.yaml `hub.db_url`)."),
    "LAB_SETTINGS_FILE": (DEFAULT_SETTINGS_FILE, "Path of the operator settings file inside the hub."),
    "LAB_COURSE_ROOT": ("/srv/course", "Where the course-data volume is mounted in the hub: nbgrader's course folder, "
                        "the exchange, the grading state (bench/autograde.py points it at a scratch folder)."),
    "LAB_COURSE_SRC": ("/srv/lab/course", "The course as the hub image ships it (calendar.yaml, nbgrader_config.py, "
                       "source/), read-only."),
}

# Secrets: never given to a process that does not need them (Settings.process_environment).
SECRET_VARS = ("LAB_ADMIN_API_TOKEN", "LAB_DTU_CLIENT_SECRET", "LAB_GITHUB_CLIENT_SECRET", "LAB_GITHUB_API_TOKEN",
               "LAB_GRADEBOOK_URL", "LAB_HUB_DB_URL")

# Variables of earlier versions: ignored when empty, else refused with their new name.
RENAMED_VARS = {"LAB_OIDC_CLIENT_SECRET": "LAB_DTU_CLIENT_SECRET (and lab.yaml auth.dtu.oidc)"}

# Host-side variables that compose and the scripts read, each (default, help); the hub may see
# them and ignores them.
HOST_VARS: dict[str, tuple[str | None, str]] = {
    "LAB_HTTP_PORT": ("8000", "Host port of the lab."),
    "LAB_GRAFANA_PORT": ("3000", "Host port, on loopback only, of Grafana where `docker-compose.grafana.yml` runs it."),
    "LAB_SWARM_HOMES": ("/srv/lab-homes", "In a swarm (`docker-compose.swarm.yml`): the shared home storage's path on every "
                        "node, mounted in the hub at the same path; equal to lab.yaml's `swarm.homes.path`."),
    "LAB_HTTP_BIND": ("0.0.0.0", "Address the lab's port and the demo providers' ports are published on "
                      "(`127.0.0.1` behind a TLS proxy on the host)."),
    "LAB_IDP_PORT": ("9400", "Host port of the demo DTU login (OpenID Connect) (demo mode only)."),
    "LAB_IDP_GITHUB_PORT": ("9401", "Host port of the demo GitHub (demo mode only)."),
    "LAB_IDP_CAS_PORT": ("9402", "Host port of the demo DTU login (CAS) (demo mode only)."),
    "LAB_IMAGE_TAG": (None, "Tag of the hub, idp and course images; empty: the `VERSION` file."),
    "LAB_TORCH_VARIANT": ("auto", "Torch build in the course image: `cuda` (PyPI's default build, for GPU hosts), "
                          "`cpu`, or `auto` (`cuda` where `nvidia-smi` sees a GPU)."),
    "LAB_WHEELHOUSE": (None, "A folder of wheels for pip `--find-links` (offline and CPU builds); empty: "
                       "`/opt/wheels` if present; `none`: none."),
    "LAB_EXTRA_CA_BUNDLE": (None, "A PEM bundle trusted in builds and images (TLS-intercepting proxies); empty: "
                            "the host's `/etc/ssl/certs/ca-certificates.crt`; `none`: none."),
    "LAB_BASE_IMAGE": ("debian:bookworm-slim", "The Debian image the lab's images are built from "
                       "(scripts/bootstrap.sh pulls or builds it)."),
    "LAB_TOOLS_DIR": ("/opt/mlops-lab-tools", "Where scripts/bootstrap.sh installs Docker Compose when "
                      "`docker compose` is missing."),
    "LAB_SETTINGS_HOST_FILE": ("./lab.yaml", "The settings file on the host that docker-compose.yml mounts into "
                               "the hub, egress and netguard."),
    "LAB_DOCKERD_LOG": ("/var/log/mlops-lab-dockerd.log", "Log of the Docker engine scripts/bootstrap.sh starts "
                        "when none answers."),
}
HOST_ONLY_VARS = set(HOST_VARS)

DEFAULTS: dict[str, Any] = {
    "hub": {
        "log_level": "INFO",
        "db_url": "sqlite:////srv/jupyterhub/jupyterhub.sqlite",
        "concurrent_spawn_limit": 500,
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
        "starts_at_once": 0,
        "docker_threads": 4,
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
        "warm_sandboxes": None,
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
    "warm": {
        "enabled": False,
        "memory_budget": "0",
        "lead_minutes": 20,
        "active_within_days": 3,
        "hold_minutes": 30,
        "session_start": "09:00",
    },
    "monitoring": {
        "enabled": True,
        "retention": "30d",
        "scrape_seconds": 15,
    },
    "swarm": {
        "enabled": False,
        "homes": {
            "path": "/srv/lab-homes",
            "driver": "",
            "driver_options": {},
        },
        "placement": ["node.role == worker"],
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
                "log_level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"],
                              "title": "the hub's log level: `DEBUG`, `INFO`, `WARNING` or `ERROR`"},
                "db_url": {"type": "string", "pattern": r"^sqlite:///",
                           "description": "an SQLite URL (sqlite:////path); PostgreSQL's URL holds a password, so it "
                                          "goes in .env as LAB_HUB_DB_URL",
                           "title": "hub database, SQLite on the `hub-state` volume; LAB_HUB_DB_URL in .env "
                                    "(PostgreSQL) takes its place"},
                "concurrent_spawn_limit": {"type": "integer", "minimum": 0,
                                           "title": "servers starting or waiting to start at once; beyond it "
                                                    "students are told to try again in a minute (0: no limit)"},
                "active_server_limit": {"type": "integer", "minimum": 0,
                                        "title": "servers running at once (0: no limit)"},
            },
        },
        "auth": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "demo": {"type": "boolean",
                         "title": "the bundled demo providers and demo roster; `false` for real students"},
                "admin_users": {**_user_list, "title": "operator accounts (DTU ids): hub admins, let in without "
                                                      "being on the roster"},
                "contact": {"type": "string", "minLength": 1,
                            "title": "who people should ask, named on the refusal pages"},
                "id_pattern": {"type": "string", "minLength": 1,
                               "title": "what a DTU id looks like (student number or staff initials)"},
                "id_domains": {"type": "array", "items": {"type": "string", "pattern": r"^[a-z0-9.-]+$",
                                                          "description": "a domain like dtu.dk"},
                               "title": "domains accepted after an id (`s123456@dtu.dk`)"},
                "dtu": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "enabled": {"type": "boolean", "title": "DTU login"},
                        "protocol": {"enum": ["oidc", "cas"],
                                     "title": "DTU login by `oidc` (Entra ID) or `cas` (auth.dtu.dk)"},
                        "oidc": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "tenant_id": {"type": "string", "pattern": r"^[A-Za-z0-9.-]*$",
                                              "description": "an Entra tenant id (a GUID) or domain",
                                              "title": "DTU's Entra tenant: its id (a GUID) or a domain name"},
                                "client_id": {"type": "string",
                                              "title": "the hub's app registration in DTU's Entra ID"},
                                "authorize_url": {**_url,
                                                  "title": "Entra's authorization endpoint (empty: from the tenant; "
                                                           "set to use another OIDC provider)"},
                                "token_url": {**_url,
                                              "title": "Entra's token endpoint (empty: from the tenant; set to use "
                                                       "another OIDC provider)"},
                                "issuer": {"type": "string", "description": "the ID token's iss claim",
                                           "title": "the ID token's `iss` (empty: from the tenant id); the hub also "
                                                    "checks `aud` and, for Entra, `tid` (required when `tenant_id` "
                                                    "is a domain name)"},
                                "username_claim": {"type": "string", "minLength": 1,
                                                   "title": "the ID-token claim holding the DTU id"},
                                "scope": {"type": "array", "items": {"type": "string"},
                                          "title": "the scopes the hub asks for"},
                            },
                        },
                        "cas": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "server_url": {**_url, "title": "the CAS server for browsers"},
                                "validate_url": {**_url, "title": "the CAS server for the hub, if different "
                                                                  "(empty: `server_url`)"},
                            },
                        },
                    },
                },
                "github": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "enabled": {"type": "boolean", "title": "GitHub login"},
                        "client_id": {"type": "string", "title": "the hub's GitHub OAuth app"},
                        "url": {**_url, "title": "GitHub or GitHub Enterprise"},
                        "api_url": {**_url, "title": "GitHub's REST API (empty: GitHub's default)"},
                        "token_url": {**_url, "title": "GitHub's token endpoint (empty: GitHub's default)"},
                    },
                },
            },
        },
        "spawner": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "mem_limit": {**_size, "title": "memory per student server"},
                "cpu_limit": {"type": "number", "exclusiveMinimum": 0, "title": "CPU cores per student server"},
                "pids_limit": {"type": "integer", "minimum": 64, "title": "processes per student server"},
                "shm_size": {**_size,
                             "title": "`/dev/shm` size (PyTorch DataLoader workers need more than Docker's 64M)"},
                "start_timeout": {"type": "integer", "minimum": 10, "title": "seconds for a container to start"},
                "http_timeout": {"type": "integer", "minimum": 10, "title": "seconds for its server to answer"},
                "docker_threads": {"type": "integer", "minimum": 1, "maximum": 64,
                                   "title": "threads that make the spawner's Docker API calls (DockerSpawner has "
                                            "one for everyone; the hub logs how long calls wait for one)"},
                "starts_at_once": {"type": "integer", "minimum": 0,
                                   "title": "servers started at a time; others wait in line, in order, and see "
                                            "their place (0: two per CPU core of the host, at least 4)"},
                "home_volume": {
                    "type": "string",
                    "pattern": r"\{username\}",
                    "description": "a volume name template containing {username}",
                    "title": "name of each student's home volume",
                },
                "environment": {
                    "type": "object",
                    "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                    "additionalProperties": {"type": "string"},
                    "title": "extra environment variables for student servers",
                },
            },
        },
        "culler": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "enabled": {"type": "boolean", "title": "stop idle servers (jupyterhub-idle-culler); homes are kept"},
                "timeout": {"type": "integer", "minimum": 10,
                            "title": "seconds of inactivity before a server is stopped"},
                "every": {"type": "integer", "minimum": 5, "title": "seconds between checks"},
                "max_age": {"type": "integer", "minimum": 0, "title": "stop any server older than this (0: never)"},
            },
        },
        "profiles": {
            "type": "object",
            "propertyNames": {"pattern": r"^[a-z0-9][a-z0-9-]{0,30}$"},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "display_name": {"type": "string", "minLength": 1,
                                     "title": "what the spawn form shows (required)"},
                    "description": {"type": "string", "title": "what the spawn form shows under the name"},
                    "gpu": {"enum": ["none", "shared", "whole"],
                            "title": "`none`, `shared` (a shared device or a MIG slice) or `whole` (an exclusive "
                                     "device); unset: `none`"},
                    "access": {
                        "oneOf": [
                            {"enum": ["all", "admins"]},
                            {"type": "array", "items": {
                                "type": "string", "pattern": r"^(group:)?[a-z0-9][a-z0-9._-]{0,63}$",
                                "description": "a user name or group:NAME"}},
                        ],
                        "title": "`all`, `admins`, or a list of user names and `group:NAME` (hub admins may use "
                                 "every profile); unset: `all`",
                    },
                    "default": {"type": "boolean", "title": "the preselected profile, used when none is asked for"},
                    "enabled": {"type": "boolean", "title": "`false` turns the profile off"},
                    "mem_limit": {**_size, "title": "the profile's memory limit (unset: `spawner.mem_limit`)"},
                    "cpu_limit": {"type": "number", "exclusiveMinimum": 0,
                                  "title": "the profile's CPU cores (unset: `spawner.cpu_limit`)"},
                    "idle_timeout": {"type": "integer", "minimum": 10,
                                     "title": "the profile's own idle culling, in seconds (unset: only the culler's)"},
                },
                "title": "server profiles, keyed by name (lower-case letters, digits, `-`); the spawn form offers "
                         "those a person may use",
            },
        },
        "grading": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "calendar": {"type": "boolean",
                             "title": "release and grade on the calendar's times (`false`: only by hand)"},
                "grace_minutes": {"type": "integer", "minimum": 0,
                                  "title": "minutes after the due time before collecting"},
                "auto_grade": {"type": "boolean", "title": "autograde after the due time"},
                "auto_feedback": {"type": "boolean", "title": "release feedback when grading is done"},
                "workers": {"type": "integer", "minimum": 0, "maximum": 256,
                            "title": "autograde workers (0: one per core, plus one: a worker waits for its sandbox part of the time)"},
                "warm_sandboxes": {"type": ["integer", "null"], "minimum": 0, "maximum": 256,
                                   "title": "sandbox containers started ahead of need, kernel up, each for one "
                                            "notebook (null: as many as workers; 0: none; one host only: on a "
                                            "swarm each notebook's sandbox starts with it)"},
                "cpus": {"type": "number", "exclusiveMinimum": 0, "title": "each sandbox's CPU cores"},
                "mem_limit": {**_size, "title": "each sandbox's memory"},
                "pids_limit": {"type": "integer", "minimum": 32, "title": "each sandbox's processes"},
                "wall_seconds": {"type": "integer", "minimum": 30, "title": "a sandbox's wall time, in seconds"},
                "cell_timeout": {"type": "integer", "minimum": 5, "title": "one cell's time, in seconds"},
                "test_clock": {"type": "boolean",
                               "title": "let instructors move the course clock (`PUT /services/course/api/clock`); "
                                        "for tests only"},
            },
        },
        "network": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "isolate": {"type": "boolean",
                            "title": "firewall student servers (netguard) and send their traffic through "
                                     "the egress proxy"},
                "allowed_hosts": {
                    "type": "array",
                    "uniqueItems": True,
                    "items": {"type": "string", "pattern": r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$",
                              "description": "a host name like pypi.org or *.example.org"},
                    "title": "hosts student servers may reach through the egress proxy (`*.example.org` allowed)",
                },
            },
        },
        "warm": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "enabled": {"type": "boolean",
                            "title": "start recently active students' servers shortly before each session of the "
                                     "calendar, so that they find them running at 9:00"},
                "memory_budget": {"type": "string", "pattern": r"^(0|[0-9]+(\.[0-9]+)?[KMGT])$",
                                  "description": "a size like 64G, or 0", "title": "memory the warm servers may take together (their profile's "
                                                    "`mem_limit` each); `0`: none are started"},
                "lead_minutes": {"type": "integer", "minimum": 1, "maximum": 240,
                                 "title": "minutes before a session's start when warm servers are started"},
                "active_within_days": {"type": "integer", "minimum": 1, "maximum": 60,
                                       "title": "a student counts as recently active if they used the lab within "
                                                "these days"},
                "hold_minutes": {"type": "integer", "minimum": 1, "maximum": 240,
                                 "title": "minutes after the session's start that an unused warm server is kept "
                                          "(the culler leaves it meanwhile); then it is stopped"},
                "session_start": {"type": "string", "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
                                  "description": "a time like 09:00",
                                  "title": "when a session starts on its day, in the calendar's time zone, unless "
                                           "one of its assignments is released earlier"},
            },
        },
        "monitoring": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "enabled": {"type": "boolean",
                            "title": "run Prometheus (compose profile `monitoring`) and the staff page "
                                     "`/services/monitor/`"},
                "retention": {"type": "string", "pattern": r"^[1-9][0-9]*(h|d|w)$", "description": "like 30d",
                              "title": "how long Prometheus keeps its figures (like `30d`)"},
                "scrape_seconds": {"type": "integer", "minimum": 5, "maximum": 300,
                                   "title": "seconds between two readings of every figure"},
            },
        },
        "swarm": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "enabled": {"type": "boolean",
                            "title": "run students' servers as Docker Swarm services on the swarm's nodes (the "
                                     "hub on a manager; see [One host or a swarm](#one-host-or-a-swarm))"},
                "homes": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "path": {"type": "string", "pattern": r"^/[^\s:]*[^\s:/]$",
                                 "description": "an absolute path",
                                 "title": "shared storage (NFS, CephFS, ...) mounted at this path on every node: "
                                          "a student's home is its folder `<path>/<user>`"},
                        "driver": {"type": "string", "pattern": r"^([a-z0-9][a-z0-9._/:-]*)?$",
                                   "title": "instead of `path`: a volume plugin that serves the same volume on "
                                            "every node (its volume per student: `<instance>-home-<user>`)"},
                        "driver_options": {"type": "object", "additionalProperties": {"type": "string"},
                                           "title": "the plugin's options; `{username}` in a value is the "
                                                    "student's name"},
                    },
                },
                "placement": {
                    "type": "array",
                    "items": {"type": "string", "pattern": r"^[a-zA-Z0-9._-]+ *(==|!=) *[^\s]+$",
                              "description": "a Swarm constraint like node.role == worker"},
                    "title": "Swarm constraints for students' servers (`node.role == worker`, "
                             "`node.labels.lab == yes`)",
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
                                   "description": "a GPU index, a GPU-... UUID or a MIG-... UUID",
                                   "title": "a GPU index, a `GPU-...` UUID or a `MIG-...` UUID"},
                            "mode": {"enum": ["exclusive", "shared", "mig"],
                                     "title": "`exclusive` (one student), `shared` (time-sliced by up to `max_users` "
                                              "students) or `mig` (a MIG slice, one student)"},
                            "max_users": {"type": "integer", "minimum": 1, "maximum": 64,
                                          "title": "students sharing a `shared` device (unset: 1)"},
                        },
                    },
                    "title": "the host's GPUs, as `nvidia-smi -L` lists them: `{id, mode: exclusive | shared | mig, "
                             "max_users}` per device",
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

    # -- fixed places in the hub container, named once --------------------------------------
    state_dir = Path("/srv/jupyterhub")  # the hub's own volume
    roster_file = state_dir / "roster.json"
    gpu_state = state_dir / "gpu-allocations.sqlite"
    demo_roster = Path(__file__).with_name("demo-roster.csv")
    sandbox_url = "http://127.0.0.1:10104"  # the sandbox runner: loopback only, never proxied
    sandbox_token_file = Path("/run/lab-sandbox/token")

    @property
    def course_root(self) -> Path:
        return Path(self.env["LAB_COURSE_ROOT"] or "/srv/course")

    @property
    def course_src(self) -> Path:
        return Path(self.env["LAB_COURSE_SRC"] or "/srv/lab/course")

    @property
    def hub_db_url(self) -> str:
        """The hub's database: LAB_HUB_DB_URL (PostgreSQL, by psycopg2, which the hub image has), else lab.yaml's."""
        url = self.env["LAB_HUB_DB_URL"]
        if not url:
            return self.get("hub.db_url")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg2://" + url[len("postgresql://"):]
        return url

    @property
    def gradebook_url(self) -> str:
        """nbgrader's gradebook: LAB_GRADEBOOK_URL (PostgreSQL), else SQLite on the course volume."""
        url = self.env["LAB_GRADEBOOK_URL"] or f"sqlite:///{self.course_root}/nbgrader/gradebook.db"
        if url.startswith("postgresql://"):
            # SQLAlchemy 2.1 would pick psycopg 3 for a plain postgresql:// URL; the image has psycopg2.
            url = "postgresql+psycopg2://" + url[len("postgresql://"):]
        if url.startswith("sqlite:") and "timeout=" not in url:
            # Parallel workers write one SQLite file: wait for the lock rather than fail.
            url += ("&" if "?" in url else "?") + "timeout=120"
        return url

    @property
    def grading_workers(self) -> int:
        return int(self.get("grading.workers")) or (os.cpu_count() or 1) + 1

    def process_environment(self, *secrets: str) -> dict[str, str]:
        """The environment a lab process needs to load these same settings: every LAB_* variable
        that is set, without the secrets except those named."""
        unknown = set(secrets) - set(SECRET_VARS)
        if unknown:
            raise ValueError(f"not secrets: {sorted(unknown)}")
        return {name: value for name, value in self.env.items()
                if value is not None and (name not in SECRET_VARS or name in secrets)} | {"LAB_SETTINGS_FILE": self.source}


def size_bytes(size: str | int | None) -> int | None:
    """'2G' -> bytes (the lab's size strings: a number with K, M, G or T); None stays None."""
    if size is None or isinstance(size, int):
        return size
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if size[-1:].upper() in units:
        return int(float(size[:-1]) * units[size[-1].upper()])
    return int(size)


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
    net = env["LAB_SWARM_NET"] or ""
    if not re.fullmatch(r"(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\.(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])", net):
        problems.append(f"environment: LAB_SWARM_NET={net!r} is not the first two numbers of an address, like 10.201")
    gradebook = env["LAB_GRADEBOOK_URL"]
    if gradebook and not re.fullmatch(r"(postgresql(\+psycopg2)?://\S+|sqlite:////\S+)", gradebook):
        # the value may hold a password: name the variable, not its value
        problems.append("environment: LAB_GRADEBOOK_URL is not a postgresql://user:password@host/db (or sqlite:////path) URL")
    hub_db = env["LAB_HUB_DB_URL"]
    if hub_db:
        db = urlparse(hub_db)
        if db.scheme not in ("postgresql", "postgresql+psycopg2") or not (db.hostname and db.username and
                                                                          db.path.strip("/")):
            problems.append("environment: LAB_HUB_DB_URL is not a postgresql://user:password@host/db URL")
        elif db.hostname == "hubdb" and not (re.fullmatch(r"[a-z_][a-z0-9_]*", db.username) and
                                             re.fullmatch(r"[a-z_][a-z0-9_]*", db.path.strip("/")) and
                                             re.fullmatch(r"[A-Za-z0-9._~-]{16,}", db.password or "")):
            problems.append("environment: LAB_HUB_DB_URL: for the bundled server (host hubdb) the user and database "
                            "are plain names ([a-z_][a-z0-9_]*) and the password 16 or more letters, digits or ._~- "
                            "(make up writes one when LAB_HUB_DB_URL=postgres)")
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
        except OSError as e:
            problems.append(f"{name}: cannot be read ({e.strerror}); the lab's services read it as their own "
                            "users (the course service as 'grader'): make it readable by all (chmod 644)")
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
    if settings.get("swarm.homes.driver_options") and not settings.get("swarm.homes.driver"):
        problems.append(f"{where('swarm', 'homes', 'driver_options')}: swarm.homes.driver_options: only with "
                        "swarm.homes.driver (a volume plugin)")
    if settings.get("swarm.enabled"):
        for i, device in enumerate(settings.get("gpus.devices")):
            if device["id"].isdigit():
                problems.append(f"{where('gpus', 'devices', str(i))}: gpus.devices.{i}.id: in a swarm, name a GPU by "
                                "its GPU-... or MIG-... UUID (an index is not unique across nodes)")
    if settings.get("culler.max_age") and settings.get("culler.max_age") < settings.get("culler.every"):
        problems.append(f"{where('culler', 'max_age')}: culler.max_age: must be 0 (off) or at least culler.every")


_CURRENT: dict[bool, Settings] = {}


def current(who: str, secrets: bool = False) -> Settings:
    """This process's settings, loaded once (the services, the grading CLI and its workers)."""
    if secrets not in _CURRENT:
        _CURRENT[secrets] = load_settings_or_exit(who, secrets=secrets)
    return _CURRENT[secrets]


def load_settings_or_exit(who: str, environ: dict[str, str] | None = None, secrets: bool = True) -> Settings:
    """For the lab's processes (hub, egress, netguard): the settings, or every problem printed
    under ``[who]`` and exit status 2, so a bad lab.yaml stops them with a readable message."""
    try:
        return load_settings(environ=environ, secrets=secrets)
    except SettingsError as error:
        print(f"[{who}] {error}", file=sys.stderr)
        sys.exit(2)


# -- the settings tables in README.md ---------------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"
REFERENCE_BEGIN = "<!-- settings-reference: begin (python -m hub.settings reference) -->"
REFERENCE_END = "<!-- settings-reference: end -->"
# Variables that docker-compose.yml or the lab itself sets; an operator does not put them in .env.
INTERNAL_VARS = ("LAB_COURSE_IMAGE", "LAB_SERVER_IMAGE", "LAB_NETWORK", "LAB_HUB_CONNECT_URL", "LAB_IDP_HOST", "LAB_SETTINGS_FILE",
                 "LAB_COURSE_ROOT", "LAB_COURSE_SRC")


def _flow(value: Any) -> str:
    """A value as YAML flow style writes it: [a, b], {k: v}, true, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    return str(value)


def _shown(value: Any) -> str:
    return "empty" if value == "" else f"`{_flow(value)}`"


def _schema_rows(schema: dict, path: tuple[str, ...] = (), required: bool = False):
    """(key path, schema, required) for each key with a title, in the schema's order. ``<name>``
    stands for a profile's name, ``<n>`` for a list item's index."""
    children = [(k, sub, k in schema.get("required", ())) for k, sub in schema.get("properties", {}).items()]
    extra, items = schema.get("additionalProperties"), schema.get("items")
    if isinstance(extra, dict) and "properties" in extra:
        children.append(("<name>", extra, False))
    if isinstance(items, dict) and "properties" in items:
        children.append(("<n>", items, False))
    if "title" in schema:
        yield path, schema, required
    elif path and not children:
        raise ValueError(f"settings schema: {'.'.join(path)} has no title")
    for key, sub, req in children:
        yield from _schema_rows(sub, path + (key,), req)


def _default_cell(path: tuple[str, ...], required: bool) -> str:
    node: Any = DEFAULTS
    for i, part in enumerate(path):
        if part == "<n>":  # list items have no defaults
            return "required" if required else "unset"
        if part == "<name>":  # the bundled profiles' values
            if i + 1 == len(path):
                return ", ".join(f"`{name}`" for name in node)
            (key,) = path[i + 1:]
            return ", ".join(f"`{name}`: {_shown(p[key])}" for name, p in node.items() if key in p) or "unset"
        node = node[part]
    return _shown(node)


def _row(*cells: str) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def reference_markdown() -> str:
    """README.md's settings tables: the keys of lab.yaml, the variables of .env, and the variables
    that docker-compose.yml or the lab sets."""
    lines = ["| `lab.yaml` key | default | meaning |", "|---|---|---|"]
    for path, schema, required in _schema_rows(SCHEMA):
        lines.append(_row(f"`{'.'.join(path)}`", _default_cell(path, required), schema["title"]))
    env = {name: v for name, v in ENV_VARS.items() if name not in INTERNAL_VARS} | HOST_VARS
    lines += ["", "| `.env` variable | default | meaning |", "|---|---|---|"]
    lines += [_row(f"`{name}`", "empty" if d is None else _shown(d), text) for name, (d, text) in env.items()]
    lines += ["", "| set by `docker-compose.yml` or the lab | default | meaning |", "|---|---|---|"]
    for name in INTERNAL_VARS:
        d, text = ENV_VARS[name]
        lines.append(_row(f"`{name}`", "empty" if d is None else _shown(d), text))
    return "\n".join(lines) + "\n"


def with_reference(text: str) -> str:
    """README.md's text with the part between the markers replaced by reference_markdown()."""
    if REFERENCE_BEGIN not in text or REFERENCE_END not in text:
        raise ValueError(f"no settings tables (the lines {REFERENCE_BEGIN} and {REFERENCE_END})")
    before, rest = text.split(REFERENCE_BEGIN, 1)
    after = rest.split(REFERENCE_END, 1)[1]
    return f"{before}{REFERENCE_BEGIN}\n\n{reference_markdown()}\n{REFERENCE_END}{after}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hub.settings", description="The lab's operator settings.")
    commands = p.add_subparsers(dest="command", required=True)
    ref = commands.add_parser("reference", help="write the settings tables in README.md")
    ref.add_argument("--check", action="store_true", help="only report whether README.md is out of date")
    ref.add_argument("--readme", type=Path, default=README, help="the README (default: %(default)s)")
    args = p.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    try:
        new = with_reference(text)
    except ValueError as e:
        print(f"error: {args.readme}: {e}", file=sys.stderr)
        return 1
    if new == text:
        return 0
    if args.check:
        print(f"out of date: {args.readme} (run python -m hub.settings reference)")
        sys.stdout.writelines(difflib.unified_diff(text.splitlines(keepends=True), new.splitlines(keepends=True),
                                                   str(args.readme), "python -m hub.settings reference", n=0))
        return 1
    args.readme.write_text(new, encoding="utf-8")
    print(f"written: {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
