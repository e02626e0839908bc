"""Apply validated settings to a JupyterHub config object.

Small functions, one area each, that only *set* values (as in The Littlest JupyterHub's
configurer). ``jupyterhub_config.py`` calls ``apply`` and nothing else.
"""

from __future__ import annotations

import sys

from .profiles import profiles_from_settings
from .settings import Settings
from .spawner import DOCKER_SAFE_USERNAME, docker_name

DEMO_CLIENT_ID = "mlops-lab"
HOME = "/home/jovyan"
GPU_STATE = "/srv/jupyterhub/gpu-allocations.sqlite"


def apply(c, settings: Settings) -> None:
    """Set every part of the hub's configuration from ``settings``."""
    update_hub(c, settings)
    update_auth(c, settings)
    update_spawner(c, settings)
    update_services(c, settings)


def update_hub(c, settings: Settings) -> None:
    """The hub process, its proxy, database and state folder."""
    c.JupyterHub.bind_url = "http://0.0.0.0:8000"
    c.JupyterHub.hub_bind_url = "http://0.0.0.0:8081"
    c.JupyterHub.hub_connect_url = settings.env["LAB_HUB_CONNECT_URL"]
    c.JupyterHub.db_url = settings.get("hub.db_url")
    c.JupyterHub.cookie_secret_file = "/srv/jupyterhub/jupyterhub_cookie_secret"
    c.JupyterHub.pid_file = "/srv/jupyterhub/jupyterhub.pid"
    c.JupyterHub.log_level = settings.get("hub.log_level")
    c.JupyterHub.concurrent_spawn_limit = settings.get("hub.concurrent_spawn_limit")
    c.JupyterHub.active_server_limit = settings.get("hub.active_server_limit")
    c.JupyterHub.cleanup_servers = False  # a hub restart leaves students' servers running
    c.JupyterHub.template_vars = {"lab_auth_provider": settings.auth_provider}
    if settings.auth_provider == "demo":
        c.JupyterHub.template_vars["announcement_login"] = (
            "Demo sign-in: this lab uses the bundled <b>demo identity provider</b>, where anyone can"
            " sign in as one of the demo people. Configure a real identity provider before students use it."
        )


def update_auth(c, settings: Settings) -> None:
    """Login through OAuthenticator's generic OpenID Connect client."""
    c.JupyterHub.authenticator_class = "generic-oauth"
    a = c.GenericOAuthenticator
    public_url = settings.env["LAB_PUBLIC_URL"].rstrip("/")
    a.oauth_callback_url = f"{public_url}/hub/oauth_callback"
    a.enable_auth_state = False
    if settings.auth_provider == "demo":
        browser = settings.env["LAB_IDP_PUBLIC_URL"].rstrip("/")
        internal = settings.env["LAB_IDP_INTERNAL_URL"].rstrip("/")
        a.client_id = DEMO_CLIENT_ID
        a.client_secret = "demo-identity-provider"
        a.authorize_url = f"{browser}/oauth2/authorize"
        a.token_url = f"{internal}/oauth2/token"
        a.userdata_url = f"{internal}/userinfo"
        a.username_claim = "sub"
        a.scope = ["openid", "profile", "email"]
        a.login_service = "the demo identity provider"
        a.allowed_users = set(settings.get("auth.demo.people"))
        a.admin_users = set(settings.get("auth.demo.admins")) | set(settings.get("auth.admin_users"))
    else:
        o = settings.get("auth.oidc")
        a.client_id = o["client_id"]
        a.client_secret = settings.env["LAB_OIDC_CLIENT_SECRET"]
        a.authorize_url = o["authorize_url"]
        a.token_url = o["token_url"]
        a.userdata_url = o["userdata_url"]
        a.username_claim = o["username_claim"]
        a.scope = o["scope"]
        a.login_service = o["login_service"]
        a.allowed_users = set(settings.get("auth.allowed_users"))
        a.allow_all = settings.get("auth.allow_all")
        a.admin_users = set(settings.get("auth.admin_users"))
    # Usernames become container and volume names: keep them lower-case.
    c.Authenticator.username_pattern = DOCKER_SAFE_USERNAME.pattern


def update_spawner(c, settings: Settings) -> None:
    """One container per student from the pinned course image, with a named home volume."""
    c.JupyterHub.spawner_class = "hub.spawner.CourseSpawner"
    s = c.CourseSpawner
    image = settings.env["LAB_COURSE_IMAGE"]
    s.lab_instance = settings.instance
    s.image = image
    s.allowed_images = {"course": image}  # a user_options image outside this list is refused
    s.pull_policy = "never"  # the lab builds its images; never fetch another by that name
    s.prefix = settings.instance
    s.escape = docker_name
    s.name_template = "{prefix}-{username}{servername}"
    s.network_name = settings.network
    s.use_internal_ip = True
    s.remove = True
    s.notebook_dir = HOME
    s.volumes = {settings.home_volume_template: HOME}
    s.mem_limit = settings.get("spawner.mem_limit")
    s.cpu_limit = float(settings.get("spawner.cpu_limit"))
    s.start_timeout = settings.get("spawner.start_timeout")
    s.http_timeout = settings.get("spawner.http_timeout")
    s.default_url = "/lab"
    env = {}
    if settings.get("network.isolate"):
        # Direct connections are rejected by netguard; the egress proxy lets allowed hosts through.
        proxy = "http://egress:3128"
        no_proxy = "hub,localhost,127.0.0.1"
        env.update({"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy,
                    "NO_PROXY": no_proxy, "no_proxy": no_proxy})
    env.update(settings.get("spawner.environment"))
    s.environment = env
    s.extra_create_kwargs = {
        "labels": {"mlops-lab.instance": settings.instance, "mlops-lab.role": "student-server"},
    }
    s.lab_profiles = [p.as_dict() for p in profiles_from_settings(settings)]
    s.gpu_devices = list(settings.get("gpus.devices"))
    s.gpu_state_path = GPU_STATE
    s.extra_host_config = {
        # Keep an exited container until the spawner has read its logs; stop() removes it.
        "auto_remove": False,
        "pids_limit": settings.get("spawner.pids_limit"),
        "shm_size": settings.get("spawner.shm_size"),
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
    }


def update_services(c, settings: Settings) -> None:
    """Idle cullers (one for all, one per profile with its own timeout), the GPU-hours page, the lab-admin token."""
    services = []
    roles = []
    if settings.get("culler.enabled"):
        culler_scopes = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
        cmd = [
            sys.executable, "-m", "jupyterhub_idle_culler",
            f"--timeout={settings.get('culler.timeout')}",
            f"--cull-every={settings.get('culler.every')}",
        ]
        if settings.get("culler.max_age"):
            cmd.append(f"--max-age={settings.get('culler.max_age')}")
        services.append({"name": "idle-culler", "command": cmd})
        roles.append({"name": "idle-culler", "scopes": culler_scopes, "services": ["idle-culler"]})
        # A profile with its own (shorter) idle timeout gets its own culler, which RBAC lets see
        # only the users whose running server is of that profile (the spawner keeps them in the
        # group "profile-<name>"). So an idle GPU goes back to the pool sooner.
        for profile in profiles_from_settings(settings):
            if profile.idle_timeout is None:
                continue
            name = f"idle-culler-{profile.name}"
            services.append({"name": name, "command": [
                sys.executable, "-m", "jupyterhub_idle_culler",
                f"--timeout={profile.idle_timeout}",
                f"--cull-every={min(settings.get('culler.every'), max(5, profile.idle_timeout // 2))}",
            ]})
            roles.append({
                "name": name,
                "scopes": [f"{scope}!group={profile.group}" for scope in culler_scopes],
                "services": [name],
            })
    # GPU hours for staff (admins, and the lab-admin token).
    services.append({
        "name": "gpu-usage",
        "url": "http://127.0.0.1:10101",
        "command": [sys.executable, "-m", "hub.services.gpu_usage"],
        "environment": {"LAB_GPU_STATE": GPU_STATE},
        "oauth_no_confirm": True,
        "display": bool(settings.get("gpus.devices")),
    })
    token = settings.env["LAB_ADMIN_API_TOKEN"]
    if token:
        services.append({"name": "lab-admin", "api_token": token})
        roles.append({
            "name": "lab-admin",
            "description": "Automation (instructor tools, tests): manage users, servers and groups.",
            "scopes": ["admin:users", "admin:servers", "admin:groups", "access:servers", "tokens", "read:hub",
                       "access:services"],
            "services": ["lab-admin"],
        })
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles
