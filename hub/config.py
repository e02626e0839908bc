"""Apply validated settings to a JupyterHub config object.

Small functions, one area each, that only *set* values (as in The Littlest JupyterHub's
configurer). ``jupyterhub_config.py`` calls ``apply`` and nothing else.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import urlparse

from jupyterhub.utils import subdomain_hook_idna

from .profiles import profiles_from_settings
from .proxy import API_PORT as PROXY_API_PORT
from .proxy import AUTH_TOKEN, SYNC_TOKEN
from .roster import ROLE_GROUPS
from .settings import Settings
from .spawner import DOCKER_SAFE_USERNAME, docker_name

DEMO_CLIENT_ID = "mlops-lab"
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
HOME = "/home/jovyan"
SERVICE_START_TIMEOUT = 300  # seconds a managed service may take to answer when the hub starts


def apply(c, settings: Settings, proxy_tokens: dict[str, str] | None = None, metrics_token: str | None = None) -> None:
    """Set every part of the hub's configuration from ``settings``; ``proxy_tokens`` are the
    proxy's API token and the proxy-sync service's (``hub.proxy.ensure_tokens``, in the hub);
    ``metrics_token`` is Prometheus's (``hub.monitoring.write_prometheus_config``)."""
    update_hub(c, settings)
    update_proxy(c, proxy_tokens)
    update_auth(c, settings)
    update_spawner(c, settings)
    update_services(c, settings)
    update_monitoring(c, settings, metrics_token)
    update_warm(c, settings)
    if proxy_tokens:
        # The proxy asks the hub for every route when it (re)starts: this service's only right.
        c.JupyterHub.services.append({"name": "proxy-sync", "api_token": proxy_tokens[SYNC_TOKEN]})
        c.JupyterHub.load_roles.append({"name": "proxy-sync", "scopes": ["proxy"], "services": ["proxy-sync"]})


def update_proxy(c, tokens: dict[str, str] | None) -> None:
    """configurable-http-proxy runs in the proxy container (hub.proxy), not started by the hub, so a
    hub restart leaves students' connections open."""
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = f"http://proxy:{PROXY_API_PORT}"
    if tokens:
        c.ConfigurableHTTPProxy.auth_token = tokens[AUTH_TOKEN]


def update_hub(c, settings: Settings) -> None:
    """The hub process, its proxy, database and state folder."""
    c.JupyterHub.bind_url = "http://0.0.0.0:8000"
    # Every student's server on its own origin (<student>.<host>), every service on its own
    # (<service>--service.<host>), the hub on <host>: a page a student's server serves cannot act
    # with the session of the staff member who opens it.
    c.JupyterHub.subdomain_host = public_origin(settings)
    keep_port_in_service_links()
    c.JupyterHub.hub_bind_url = "http://0.0.0.0:8081"
    c.JupyterHub.hub_connect_url = settings.env["LAB_HUB_CONNECT_URL"]
    c.JupyterHub.db_url = settings.hub_db_url
    if not settings.hub_db_url.startswith("sqlite"):
        # A database server restarted under the hub leaves its pooled connections dead: test each
        # before use, so that no request fails for it.
        c.JupyterHub.db_kwargs = {"pool_pre_ping": True}
    c.JupyterHub.cookie_secret_file = "/srv/jupyterhub/jupyterhub_cookie_secret"
    c.JupyterHub.pid_file = "/srv/jupyterhub/jupyterhub.pid"
    c.JupyterHub.log_level = settings.get("hub.log_level")
    c.JupyterHub.concurrent_spawn_limit = settings.get("hub.concurrent_spawn_limit")
    c.JupyterHub.active_server_limit = settings.get("hub.active_server_limit")
    c.JupyterHub.cleanup_servers = False  # a hub restart leaves students' servers running
    if settings.demo:
        c.JupyterHub.template_vars = {"announcement_login": (
            "Demo sign-in: this lab uses the bundled <b>demo DTU and GitHub logins</b> and a demo roster,"
            " where anyone can sign in as one of the demo people. Set <code>auth.demo: false</code> and"
            " register the lab with DTU and GitHub before students use it."
        )}


def keep_port_in_service_links() -> None:
    """The hub's Services menu links to ``//<service domain>/services/<name>/`` without the port of
    ``subdomain_host``, so on a lab served at a port (http://localhost:8000) every service link
    missed. Link to the service's full host (scheme, name and port) instead."""
    from jupyterhub.services.service import Service

    def href(self):
        return f"{self.host}{self.prefix}" if self.host else self.prefix

    Service.href = property(href)


def public_origin(settings: Settings) -> str:
    public = urlparse(settings.env["LAB_PUBLIC_URL"])
    return f"{public.scheme}://{public.netloc}"


def service_host(settings: Settings, name: str) -> str:
    """The host name of a hub service (JupyterHub gives each its own subdomain)."""
    return subdomain_hook_idna(name, urlparse(settings.env["LAB_PUBLIC_URL"]).hostname, "service")


def service_url(settings: Settings, name: str) -> str:
    """A service's public URL, as browsers reach it."""
    public = urlparse(settings.env["LAB_PUBLIC_URL"])
    port = f":{public.port}" if public.port else ""
    return f"{public.scheme}://{service_host(settings, name)}{port}/services/{name}/"


def github_api(settings: Settings) -> str:
    """GitHub's REST API as the hub reaches it ("" when GitHub login is off)."""
    if not settings.get("auth.github.enabled"):
        return ""
    if settings.demo:
        return f"http://{settings.env['LAB_IDP_HOST']}:9401/api/v3"
    return (settings.get("auth.github.api_url") or "https://api.github.com").rstrip("/")


def auth_providers(settings: Settings) -> list[dict]:
    """The login buttons: MultiAuthenticator's list of sub-authenticators with their settings.

    In demo mode DTU and GitHub are the bundled test peers (same protocols, other URLs)."""
    public = settings.env["LAB_PUBLIC_URL"].rstrip("/")
    admins = set(settings.get("auth.admin_users"))
    providers = []
    if settings.get("auth.dtu.enabled"):
        protocol = settings.get("auth.dtu.protocol")
        if protocol == "oidc":
            o = settings.get("auth.dtu.oidc")
            tenant = f"https://login.microsoftonline.com/{o['tenant_id']}/oauth2/v2.0"
            config = {
                "client_id": o["client_id"],
                "client_secret": settings.env["LAB_DTU_CLIENT_SECRET"] or "",
                "authorize_url": o["authorize_url"] or f"{tenant}/authorize",
                "token_url": o["token_url"] or f"{tenant}/token",
                "username_claim": o["username_claim"],
                "scope": list(o["scope"]),
                # The ID token must come from this issuer (and, for Entra, this tenant) and be for us.
                "expected_issuer": o["issuer"] or f"https://login.microsoftonline.com/{o['tenant_id']}/v2.0",
                "expected_tenant": o["tenant_id"] if GUID.match(o["tenant_id"]) else "",
            }
            if settings.demo:
                browser = settings.env["LAB_IDP_PUBLIC_URL"].rstrip("/")
                internal = f"http://{settings.env['LAB_IDP_HOST']}:9400"
                config.update(client_id=DEMO_CLIENT_ID, client_secret="demo-identity-provider",
                              authorize_url=f"{browser}/oauth2/authorize", token_url=f"{internal}/oauth2/token",
                              expected_issuer=internal, expected_tenant="")
            config.update(userdata_from_id_token=True, oauth_callback_url=f"{public}/hub/dtu/oauth_callback",
                          enable_auth_state=False, admin_users=admins)
            providers.append({"authenticator_class": "hub.auth.DTUOIDCAuthenticator", "url_prefix": "/dtu",
                              "config": config})
        else:
            cas = settings.get("auth.dtu.cas")
            config = {"cas_server_url": cas["server_url"], "cas_validate_url": cas["validate_url"]}
            if settings.demo:
                config = {"cas_server_url": settings.env["LAB_IDP_CAS_PUBLIC_URL"].rstrip("/") + "/cas/",
                          "cas_validate_url": f"http://{settings.env['LAB_IDP_HOST']}:9402/cas/"}
            config.update(cas_service_url=f"{public}/hub/dtu/login", admin_users=admins)
            providers.append({"authenticator_class": "hub.auth.DTUCASAuthenticator", "url_prefix": "/dtu",
                              "config": config})
    if settings.get("auth.github.enabled"):
        g = settings.get("auth.github")
        url = g["url"].rstrip("/")
        config = {
            "client_id": g["client_id"],
            "client_secret": settings.env["LAB_GITHUB_CLIENT_SECRET"] or "",
            "github_url": url,
        }
        if g["api_url"]:
            config["github_api"] = github_api(settings)
        if g["token_url"]:
            config["token_url"] = g["token_url"]
        if settings.demo:
            internal = f"http://{settings.env['LAB_IDP_HOST']}:9401"
            config = {"client_id": "mlops-lab-demo", "client_secret": "demo-github",
                      "github_url": settings.env["LAB_IDP_GITHUB_PUBLIC_URL"].rstrip("/"),
                      "github_api": f"{internal}/api/v3", "token_url": f"{internal}/login/oauth/access_token"}
        config.update(oauth_callback_url=f"{public}/hub/github/oauth_callback", enable_auth_state=False,
                      admin_users=admins, scope=[])
        providers.append({"authenticator_class": "hub.auth.CourseGitHubAuthenticator", "url_prefix": "/github",
                          "config": config})
    return providers


def update_auth(c, settings: Settings) -> None:
    """DTU and GitHub logins (hub.auth), the roster deciding who gets in, and the course's roles."""
    c.JupyterHub.authenticator_class = "hub.auth.CourseAuthenticator"
    a = c.CourseAuthenticator
    a.authenticators = auth_providers(settings)
    a.username_prefix = ""  # both providers map to the same DTU id
    a.roster_file = str(settings.roster_file)
    a.contact = settings.get("auth.contact")
    a.id_pattern = settings.get("auth.id_pattern")
    a.id_domains = list(settings.get("auth.id_domains"))
    a.admin_users = set(settings.get("auth.admin_users"))
    a.allow_all = False
    a.enable_auth_state = False
    # refresh_user re-checks the roster on each request (at most once a second per user).
    a.auth_refresh_age = 1
    # Usernames become container and volume names: keep them lower-case.
    c.Authenticator.username_pattern = DOCKER_SAFE_USERNAME.pattern
    # The roster's roles are these groups (kept by the roster service) and these RBAC roles.
    c.JupyterHub.load_groups = {group: {} for group in ROLE_GROUPS.values()}


def course_roles() -> list[dict]:
    """RBAC for the roster's roles. Students keep JupyterHub's default: their own server only."""
    course = tuple(ROLE_GROUPS.values())
    return [
        {
            "name": "course-instructor",
            "description": "Instructors: administer the course's users and servers, reload the roster.",
            "scopes": ["admin-ui", "list:users", "read:users", "read:groups", "list:groups", "read:roles:users",
                       "access:services!service=roster", "access:services!service=gpu-usage",
                       "access:services!service=course", "access:services!service=formgrader"]
            + [f"{scope}!group={g}" for g in course for scope in ("admin:users", "admin:servers", "access:servers")],
            "groups": ["instructors"],
        },
        {
            "name": "course-ta",
            "description": "Teaching assistants: open students' servers to help.",
            "scopes": ["admin-ui", "list:users!group=students", "read:users!group=students",
                       "read:servers!group=students", "access:servers!group=students",
                       "access:services!service=course", "access:services!service=formgrader"],
            "groups": ["tas"],
        },
        {
            "name": "course-member",
            "description": "Everyone on the roster: the assignment exchange (fetch, submit, feedback).",
            "scopes": ["access:services!service=course"],
            "groups": list(course),
        },
    ]


def update_spawner(c, settings: Settings) -> None:
    """One container per student from the pinned course image, with a named home volume."""
    c.JupyterHub.spawner_class = "hub.spawner.CourseSpawner"
    s = c.CourseSpawner
    image = settings.env["LAB_SERVER_IMAGE"] or settings.env["LAB_COURSE_IMAGE"]
    if settings.env["LAB_SERVER_IMAGE"]:
        print(f"[lab] LAB_SERVER_IMAGE: students' servers run {image}, not the course image (a load test)",
              file=sys.stderr, flush=True)
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
    s.starts_at_once = settings.get("spawner.starts_at_once")
    s.docker_threads = settings.get("spawner.docker_threads")
    s.http_timeout = settings.get("spawner.http_timeout")
    s.default_url = "/lab"
    env = {}
    s.require_netguard = settings.get("network.isolate")
    if settings.get("network.isolate"):
        # Direct connections are rejected by netguard; the egress proxy lets allowed hosts through.
        proxy = "http://egress:3128"
        no_proxy = "hub,proxy,localhost,127.0.0.1"
        env.update({"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy,
                    "NO_PROXY": no_proxy, "no_proxy": no_proxy})
    # The Assignments panel's exchange: the course service, through the proxy, with this server's token.
    env["LAB_COURSE_URL"] = "http://proxy:8000/services/course/"
    # The proxy routes by host name: the course service's own, sent as the Host header.
    env["LAB_COURSE_HOST"] = service_host(settings, "course")
    env.update(settings.get("spawner.environment"))
    s.environment = env
    # The server's own token may also reach the course service (for people whose roster role allows it).
    s.server_token_scopes = ["users:activity!user", "access:servers!server", "access:services!service=course"]
    s.extra_create_kwargs = {
        "labels": {"mlops-lab.instance": settings.instance, "mlops-lab.role": "student-server"},
    }
    s.lab_profiles = [p.as_dict() for p in profiles_from_settings(settings)]
    s.gpu_devices = list(settings.get("gpus.devices"))
    s.gpu_state_path = str(settings.gpu_state)
    if settings.get("swarm.enabled"):
        # Each student's server a Swarm service on a worker (hub/swarm.py); the CourseSpawner
        # settings above apply to it too (traitlets configures a class through its parents).
        c.JupyterHub.spawner_class = "hub.swarm.SwarmCourseSpawner"
        w = c.SwarmCourseSpawner
        w.swarm_homes_path = settings.get("swarm.homes.path")
        w.swarm_homes_driver = settings.get("swarm.homes.driver")
        w.swarm_homes_driver_options = dict(settings.get("swarm.homes.driver_options"))
        w.swarm_placement = list(settings.get("swarm.placement"))
        s.pull_policy = "skip"  # the image is on the workers (Swarm reports a node without it)
        if not settings.env["LAB_SERVER_IMAGE"]:
            # The course image's command, named here: the manager need not have the image to read it.
            s.cmd = ["jupyterhub-singleuser"]
        s.pop("remove", None)  # services are always removed (SwarmSpawner has no such option)
        # Nodeguard writes each server's firewall on its node (hub/nodeguard.py); the course
        # image's entry point waits for it and starts nothing unguarded.
        s.require_netguard = False
        if settings.get("network.isolate"):
            env["LAB_GUARD_WAIT"] = "60"
            s.environment = env
        w.pids_limit = settings.get("spawner.pids_limit")
        w.shm_size = settings.get("spawner.shm_size")
        # Its template shows why a server ended on its own (its node stopped).
        c.JupyterHub.template_paths = [str(Path(__file__).parent / "templates" / "swarm")]
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
        "url": service_bind_url(settings, 10101),
        "command": [sys.executable, "-m", "hub.services.gpu_usage"],
        "environment": settings.process_environment(),
        "oauth_no_confirm": True,
        "display": bool(settings.get("gpus.devices")),
    })
    # The roster: import (API and `make roster`), and keeping hub users and groups in step with it.
    services.append({
        "name": "roster",
        "url": service_bind_url(settings, 10102),
        "command": [sys.executable, "-m", "hub.services.roster"],
        # GitHub logins are linked by GitHub's numeric id, looked up here at import (with the token).
        "environment": settings.process_environment("LAB_GITHUB_API_TOKEN"),
        "oauth_no_confirm": True,
        "display": False,
    })
    roles.append({
        "name": "roster",
        "description": "The roster service: course users, their groups, and stopping removed students' servers.",
        "scopes": ["admin:users", "admin:groups", "admin:servers", "tokens", "list:users", "read:users"],
        "services": ["roster"],
    })
    services.extend(course_services(settings))
    roles.extend(course_roles())
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
    for service in services:
        if "command" in service and "url" in service:
            # JupyterHub gives up (and exits) when a managed service does not answer within 30 s;
            # on a host busy starting a class's servers the formgrader alone can take longer.
            service.setdefault("timeout", SERVICE_START_TIMEOUT)
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles


def update_monitoring(c, settings: Settings, metrics_token: str | None) -> None:
    """Prometheus reads the hub's metrics with its own token (``read:metrics``, nothing else); the
    staff page ``monitor`` shows what it gathered, to admins and instructors."""
    if not settings.get("monitoring.enabled"):
        return
    if metrics_token:
        c.JupyterHub.services.append({"name": "prometheus", "api_token": metrics_token})
        c.JupyterHub.load_roles.append({"name": "prometheus", "description": "Prometheus: read the hub's metrics.",
                                        "scopes": ["read:metrics"], "services": ["prometheus"]})
    c.JupyterHub.services.append({
        "name": "monitor",
        "url": service_bind_url(settings, 10107),
        "command": [sys.executable, "-m", "hub.services.monitor"],
        "environment": settings.process_environment(),
        "oauth_no_confirm": True,
        "display": True,
        "timeout": SERVICE_START_TIMEOUT,
    })
    grant_instructors(c, "access:services!service=monitor")


def update_warm(c, settings: Settings) -> None:
    """Warm capacity before each session (hub.services.warm), when the operator turns it on."""
    if not settings.get("warm.enabled"):
        return
    from .services.warm import service_definition

    service, role = service_definition(settings)
    service.setdefault("timeout", SERVICE_START_TIMEOUT)
    c.JupyterHub.services.append(service)
    c.JupyterHub.load_roles.append(role)
    grant_instructors(c, "access:services!service=warm")


def grant_instructors(c, scope: str) -> None:
    """Instructors may also use this (a service that exists only when its setting is on)."""
    for role in c.JupyterHub.load_roles:
        if role["name"] == "course-instructor":
            role["scopes"].append(scope)


def service_bind_url(settings: Settings, port: int) -> str:
    """Where a hub-managed service listens: the hub container's address on the lab network, which
    the proxy (a container of its own) routes to. Netguard lets students reach only the hub's
    8081 there, never these ports."""
    return f"http://{urlparse(settings.env['LAB_HUB_CONNECT_URL']).hostname or 'hub'}:{port}"


def course_services(settings: Settings) -> list[dict]:
    """The course service (exchange, calendar, grading jobs, dashboard, export), the sandbox
    runner, and the formgrader for staff; the course service and the formgrader appear in the
    hub's Services menu for instructors and TAs. Each loads the same settings (hub.settings)."""
    root = settings.course_root
    grader_env = {**settings.process_environment("LAB_GRADEBOOK_URL"), "HOME": f"{root}/state/home"}
    return [
        {
            # As the grader user, who owns the course volume: nothing here runs as root.
            "name": "course",
            "url": service_bind_url(settings, 10103),
            "command": [sys.executable, "-m", "hub.course.service"],
            "user": "grader",
            "cwd": str(root),
            "environment": grader_env,
            "oauth_no_confirm": True,
        },
        {
            # The sandbox runner: root (it starts containers), on 127.0.0.1 only, not proxied.
            "name": "sandbox",
            "command": [sys.executable, "-m", "hub.course.runner"],
            "environment": settings.process_environment(),
            "display": False,
        },
        {
            "name": "formgrader",
            "url": service_bind_url(settings, 10105),
            "command": ["jupyterhub-singleuser"],
            "user": "grader",
            "cwd": "/srv/lab/formgrader",
            "environment": {**grader_env, "JUPYTER_CONFIG_PATH": "/srv/lab/formgrader", "JUPYTER_CONFIG_DIR": "/tmp/formgrader-config",
                            "JUPYTER_RUNTIME_DIR": "/tmp/formgrader-runtime", "JUPYTERHUB_DEFAULT_URL": "/formgrader"},
            "oauth_no_confirm": True,
        },
    ]
