"""The hub's configuration and spawner options, checked without Docker."""

import asyncio

import pytest
from jupyterhub.app import JupyterHub
from tornado import web
from traitlets.config import Config

from hub.config import apply, service_url
from hub.settings import ENV_VARS, load_settings
from hub.spawner import ContainerExited, CourseSpawner, docker_name

TOKEN = "b" * 64


def service_settings(service):
    """The settings a hub-managed service loads from the environment the hub gives it."""
    return load_settings(environ=service["environment"], secrets=False)


def config_for(tmp_path, text="", **env):
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    env.setdefault("LAB_COURSE_IMAGE", "mlops-lab/course:9.9.9")
    c = Config()
    apply(c, load_settings(path, environ=env))
    return c


class FakeUser:
    name = "s230001"
    escaped_name = "s230001"
    url = "/user/s230001/"
    id = 1


def spawner_for(c):
    return CourseSpawner(config=c, user=FakeUser(), _deprecated_db_session=None)


def test_home_is_a_named_volume_per_student(tmp_path):
    """Each student's home is the named volume <instance>-home-<username>."""
    s = spawner_for(config_for(tmp_path, LAB_INSTANCE="lab7"))
    assert s.volume_binds == {"lab7-home-s230001": {"bind": "/home/jovyan", "mode": "rw"}}


def test_limits_come_from_settings(tmp_path):
    """Memory and CPU limits from lab.yaml reach the spawner."""
    s = spawner_for(config_for(tmp_path, "spawner:\n  mem_limit: 3G\n  cpu_limit: 1.5\n"))
    assert s.mem_limit == 3 * 1024**3
    assert s.cpu_limit == 1.5


def test_image_is_pinned_and_others_refused(tmp_path):
    """Only the course image may run; a user_options image outside the list is a 400."""
    import asyncio

    s = spawner_for(config_for(tmp_path))
    assert s.image == "mlops-lab/course:9.9.9"
    assert s.allowed_images == {"course": "mlops-lab/course:9.9.9"}
    assert s.pull_policy == "never"
    assert asyncio.run(s.check_allowed("course")) == "mlops-lab/course:9.9.9"
    with pytest.raises(web.HTTPError) as info:
        asyncio.run(s.check_allowed("evil/root-shell:latest"))
    assert info.value.status_code == 400


def test_container_is_removed_on_stop_and_hardened(tmp_path):
    """Containers are removed on stop (homes kept), drop capabilities and cap processes."""
    s = spawner_for(config_for(tmp_path, "spawner:\n  pids_limit: 300\n"))
    assert s.remove is True
    host = s.extra_host_config
    assert host["cap_drop"] == ["ALL"]
    assert host["security_opt"] == ["no-new-privileges:true"]
    assert host["pids_limit"] == 300
    assert host["auto_remove"] is False  # logs of a crashed start stay readable
    assert "/var/run/docker.sock" not in str(s.volumes)


def test_containers_join_the_lab_network_and_are_labelled(tmp_path):
    """Student servers are on the named network, reached by internal IP, labelled by instance."""
    s = spawner_for(config_for(tmp_path, LAB_INSTANCE="lab7"))
    assert s.network_name == "lab7"
    assert s.use_internal_ip is True
    assert s.extra_create_kwargs["labels"]["mlops-lab.instance"] == "lab7"
    assert s.container_name == "lab7-s230001"


def test_network_can_differ_from_instance(tmp_path):
    """LAB_NETWORK overrides the network name."""
    s = spawner_for(config_for(tmp_path, LAB_NETWORK="campus-net"))
    assert s.network_name == "campus-net"


def providers(c) -> dict:
    return {p["url_prefix"]: p for p in c.CourseAuthenticator.authenticators}


def test_demo_logins_use_the_bundled_peers(tmp_path):
    """Demo mode: DTU and GitHub buttons; browsers go to the public peer URLs, the hub to "idp"."""
    c = config_for(tmp_path, LAB_IDP_PUBLIC_URL="http://lab.example:9400",
                   LAB_IDP_GITHUB_PUBLIC_URL="http://lab.example:9401", LAB_PUBLIC_URL="https://lab.example")
    assert c.JupyterHub.authenticator_class == "hub.auth.CourseAuthenticator"
    p = providers(c)
    dtu, github = p["/dtu"]["config"], p["/github"]["config"]
    assert p["/dtu"]["authenticator_class"] == "hub.auth.DTUOIDCAuthenticator"
    assert dtu["authorize_url"] == "http://lab.example:9400/oauth2/authorize"
    assert dtu["token_url"] == "http://idp:9400/oauth2/token"
    assert dtu["oauth_callback_url"] == "https://lab.example/hub/dtu/oauth_callback"
    assert dtu["userdata_from_id_token"] is True
    assert github["github_url"] == "http://lab.example:9401"
    assert github["github_api"] == "http://idp:9401/api/v3"
    assert github["oauth_callback_url"] == "https://lab.example/hub/github/oauth_callback"
    assert "demo DTU and GitHub logins" in c.JupyterHub.template_vars["announcement_login"]
    [roster] = [s for s in c.JupyterHub.services if s["name"] == "roster"]
    assert service_settings(roster).demo is True  # so the roster service loads the demo roster


TENANT = "f81f9b5a-3e36-4a1e-9f8d-4b5f2e1c0d11"


def test_live_logins_use_entra_cas_and_github_settings(tmp_path):
    """Live: Entra URLs from the tenant, the secrets from the environment, no demo notice or roster."""
    text = (f"auth:\n  demo: false\n  admin_users: [abc]\n  dtu:\n    oidc:\n      tenant_id: {TENANT}\n"
            "      client_id: lab\n  github:\n    client_id: Iv1.abc\n")
    c = config_for(tmp_path, text, LAB_DTU_CLIENT_SECRET="s3cret", LAB_GITHUB_CLIENT_SECRET="gh")
    p = providers(c)
    dtu, github = p["/dtu"]["config"], p["/github"]["config"]
    assert dtu["authorize_url"] == f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/authorize"
    assert dtu["token_url"] == f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"
    assert dtu["expected_issuer"] == f"https://login.microsoftonline.com/{TENANT}/v2.0"
    assert dtu["expected_tenant"] == TENANT
    assert dtu["client_secret"] == "s3cret" and dtu["username_claim"] == "preferred_username"
    assert github["client_secret"] == "gh" and github["github_url"] == "https://github.com"
    assert "github_api" not in github  # OAuthenticator's default: https://api.github.com
    assert c.CourseAuthenticator.admin_users == {"abc"}
    assert "announcement_login" not in c.JupyterHub.get("template_vars", {})
    [roster] = [s for s in c.JupyterHub.services if s["name"] == "roster"]
    assert service_settings(roster).demo is False and service_settings(roster).get("auth.admin_users") == ["abc"]
    for service in c.JupyterHub.services:  # no service is given the logins' client secrets
        assert not {"LAB_DTU_CLIENT_SECRET", "LAB_GITHUB_CLIENT_SECRET"} & set(service.get("environment", {}))
    cas = config_for(tmp_path, "auth:\n  demo: false\n  dtu:\n    protocol: cas\n  github:\n    enabled: false\n")
    [only] = cas.CourseAuthenticator.authenticators
    assert only["authenticator_class"] == "hub.auth.DTUCASAuthenticator"
    assert only["config"]["cas_server_url"] == "https://auth.dtu.dk/dtu/"
    assert only["config"]["cas_service_url"] == "http://localhost:8000/hub/dtu/login"


def test_roster_roles_become_groups_and_rbac_roles(tmp_path):
    """Instructors administer course users and servers; TAs reach students' servers; students get
    JupyterHub's default role (their own server only)."""
    c = config_for(tmp_path)
    assert set(c.JupyterHub.load_groups) == {"students", "tas", "instructors"}
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    instructor, ta = roles["course-instructor"], roles["course-ta"]
    assert instructor["groups"] == ["instructors"] and ta["groups"] == ["tas"]
    assert {"admin:servers!group=students", "admin:users!group=students", "access:servers!group=tas",
            "access:services!service=roster"} <= set(instructor["scopes"])
    assert {"access:servers!group=students", "read:servers!group=students"} <= set(ta["scopes"])
    assert not any(scope.startswith(("admin:", "access:servers!group=instructors")) for scope in ta["scopes"])
    assert "user" not in roles


def test_admin_token_becomes_a_service_with_admin_scopes(tmp_path):
    """LAB_ADMIN_API_TOKEN creates the lab-admin service for automation."""
    c = config_for(tmp_path, LAB_ADMIN_API_TOKEN=TOKEN)
    [svc] = [s for s in c.JupyterHub.services if s["name"] == "lab-admin"]
    assert svc["api_token"] == TOKEN
    [role] = [r for r in c.JupyterHub.load_roles if r["name"] == "lab-admin"]
    assert {"admin:users", "admin:servers", "access:servers"} <= set(role["scopes"])


def test_no_admin_token_no_admin_service(tmp_path):
    """Without a token there is no automation service at all."""
    c = config_for(tmp_path)
    assert [s["name"] for s in c.JupyterHub.services] == ["idle-culler", "gpu-usage", "roster", "course", "sandbox",
                                                         "formgrader", "monitor"]


def test_course_services_their_access_and_the_student_token(tmp_path):
    """The exchange is reachable with a student's server token, but only through a role the
    roster's groups carry; the course service and the formgrader run as the unprivileged
    grader; only the sandbox runner is root, and the proxy does not route to it."""
    c = config_for(tmp_path, "grading:\n  workers: 3\n  mem_limit: 2G\n", LAB_ADMIN_API_TOKEN=TOKEN)
    services = {s["name"]: s for s in c.JupyterHub.services}
    course, formgrader, sandbox = services["course"], services["formgrader"], services["sandbox"]
    assert course["url"] == "http://hub:10103" and course["user"] == "grader"
    assert "user" not in sandbox and "url" not in sandbox  # root (it starts containers), not proxied
    # Each service loads the same settings from lab.yaml, not a copy of some of them.
    assert service_settings(sandbox).get("grading.workers") == 3 and service_settings(sandbox).grading_workers == 3
    grading = service_settings(course).get("grading")
    assert grading["workers"] == 3 and grading["mem_limit"] == "2G" and grading["test_clock"] is False
    assert formgrader["user"] == "grader" and formgrader["cwd"] == "/srv/lab/formgrader"
    assert "LAB_GRADEBOOK_URL" not in formgrader["environment"]  # SQLite on the course volume by default
    assert service_settings(formgrader).gradebook_url.startswith("sqlite:////srv/course/nbgrader/gradebook.db")
    for service in services.values():  # the hub's own secrets stay in the hub
        assert not {k for k in service.get("environment", {}) if k.startswith("LAB_")} - set(ENV_VARS)
        assert "LAB_ADMIN_API_TOKEN" not in service.get("environment", {})
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["course-member"]["scopes"] == ["access:services!service=course"]
    assert set(roles["course-member"]["groups"]) == {"students", "tas", "instructors"}
    for staff in ("course-instructor", "course-ta"):
        assert "access:services!service=formgrader" in roles[staff]["scopes"]
    assert "access:services!service=course" in c.CourseSpawner.server_token_scopes
    assert c.CourseSpawner.environment["LAB_COURSE_URL"] == "http://proxy:8000/services/course/"


def test_postgres_gradebook_url_reaches_grading_only_from_the_environment(tmp_path):
    url = "postgresql://grader:secret@db/gradebook"
    c = config_for(tmp_path, LAB_GRADEBOOK_URL=url)
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert services["course"]["environment"]["LAB_GRADEBOOK_URL"] == url
    assert services["formgrader"]["environment"]["LAB_GRADEBOOK_URL"] == url
    assert service_settings(services["course"]).gradebook_url == "postgresql+psycopg2://grader:secret@db/gradebook"
    assert "LAB_GRADEBOOK_URL" not in services["sandbox"]["environment"]  # root's runner needs no gradebook


def test_culler_settings_reach_its_command(tmp_path):
    """The idle culler runs with the configured timeout and maximum age."""
    c = config_for(tmp_path, "culler:\n  timeout: 600\n  every: 60\n  max_age: 7200\n")
    [culler] = [s for s in c.JupyterHub.services if s["name"] == "idle-culler"]
    assert "--timeout=600" in culler["command"]
    assert "--cull-every=60" in culler["command"]
    assert "--max-age=7200" in culler["command"]


def test_hub_accepts_the_generated_config(tmp_path):
    """JupyterHub itself loads the generated config without complaint."""
    c = config_for(tmp_path, LAB_ADMIN_API_TOKEN=TOKEN)
    hub = JupyterHub(config=c)
    assert hub.spawner_class is CourseSpawner
    assert hub.hub_connect_url == "http://hub:8081"


def test_container_exit_message_shows_log_lines():
    """The error a student sees carries the container's own last lines."""
    e = ContainerExited("lab-s1", 1, "lab-start: the home <dir> is not writable")
    assert e.status_code == 500
    assert "not writable" in e.jupyterhub_message
    assert "exit code 1" in str(e)
    assert "<pre>lab-start: the home &lt;dir&gt; is not writable</pre>" in e.jupyterhub_html_message


def test_docker_names_keep_the_username(tmp_path):
    """A user name with '-' or '.' names its volume and container unchanged, without escapes."""
    c = config_for(tmp_path, LAB_INSTANCE="lab7")
    user = FakeUser()
    user.name = user.escaped_name = "ab-c.d"
    s = CourseSpawner(config=c, user=user, _deprecated_db_session=None)
    assert s.container_name == "lab7-ab-c.d"
    assert list(s.volume_binds) == ["lab7-home-ab-c.d"]


def test_names_outside_the_pattern_are_still_escaped():
    """Defence in depth: a name the hub should have refused is escaped, never passed raw."""
    assert docker_name("Evil/../name") != "Evil/../name"
    assert "/" not in docker_name("Evil/../name")


def test_isolation_requires_the_firewall_before_any_start(tmp_path):
    """With network.isolate (the default) no server starts unless netguard is healthy."""
    assert config_for(tmp_path).CourseSpawner.require_netguard is True
    off = config_for(tmp_path, "network:\n  isolate: false\n")
    assert off.CourseSpawner.require_netguard is False


def test_student_servers_and_services_each_get_their_own_origin(tmp_path):
    """The hub on the public host, each student's server on <name>.<host>, each service on
    <name>--service.<host>; the student's exchange client names the course service's host."""
    c = config_for(tmp_path, LAB_PUBLIC_URL="https://lab.example.dk")
    assert c.JupyterHub.subdomain_host == "https://lab.example.dk"
    assert c.CourseSpawner.environment["LAB_COURSE_HOST"] == "course--service.lab.example.dk"
    [course] = [s for s in c.JupyterHub.services if s["name"] == "course"]
    assert service_url(service_settings(course), "formgrader") == \
        "https://formgrader--service.lab.example.dk/services/formgrader/"
    local = config_for(tmp_path)
    assert local.JupyterHub.subdomain_host == "http://localhost:8000"


def test_the_proxy_runs_apart_and_the_hub_gives_it_its_tokens(tmp_path):
    """configurable-http-proxy is not started by the hub; its API token and the route-sync
    service's token come from the volume the two share, made once and kept."""
    from hub.proxy import ensure_tokens

    first = ensure_tokens(tmp_path)
    assert ensure_tokens(tmp_path) == first and len(set(first.values())) == 2
    assert all(oct((tmp_path / name).stat().st_mode)[-3:] == "600" for name in first)
    c = Config()
    apply(c, load_settings(tmp_path / "missing.yaml", environ={"LAB_COURSE_IMAGE": "mlops-lab/course:9.9.9"}),
          proxy_tokens=first)
    assert c.ConfigurableHTTPProxy.should_start is False
    assert c.ConfigurableHTTPProxy.api_url == "http://proxy:8001"
    assert c.ConfigurableHTTPProxy.auth_token == first["auth-token"]
    sync = next(s for s in c.JupyterHub.services if s["name"] == "proxy-sync")
    assert sync == {"name": "proxy-sync", "api_token": first["sync-token"]}
    assert {"name": "proxy-sync", "scopes": ["proxy"], "services": ["proxy-sync"]} in c.JupyterHub.load_roles


def test_servers_start_a_few_at_a_time_and_the_rest_wait_in_order():
    """The start queue: at most `size` start at once; the others wait in arrival order, know their
    place, and a waiter that gives up leaves the line without holding a place."""
    import asyncio

    from hub.spawner import StartQueue

    async def scenario():
        q = StartQueue(2)
        await q.enter("a")
        await q.enter("b")
        started = []

        async def wait(name):
            await q.enter(name)
            started.append(name)

        waiters = {n: asyncio.create_task(wait(n)) for n in ("c", "d", "e")}
        await asyncio.sleep(0)
        assert q.starting == {"a", "b"} and [q.ahead_of(n) for n in "cde"] == [0, 1, 2]
        waiters["d"].cancel()
        await asyncio.sleep(0)
        assert q.ahead_of("d") is None and q.ahead_of("e") == 1
        q.leave("a")
        await asyncio.sleep(0)
        assert started == ["c"] and q.starting == {"b", "c"}
        q.leave("b")
        q.leave("b")  # twice: no second place freed
        await asyncio.sleep(0)
        assert started == ["c", "e"] and q.starting == {"c", "e"} and not q.waiting
        q.leave("c")
        q.leave("e")
        await asyncio.wait_for(q.enter("f"), 1)  # places free and nobody waiting: no wait
        await asyncio.wait_for(q.enter("g"), 1)
        assert q.starting == {"f", "g"}

    asyncio.run(scenario())


def test_start_queue_size_comes_from_the_settings(tmp_path):
    c = config_for(tmp_path, "spawner:\n  starts_at_once: 3\n")
    assert c.CourseSpawner.starts_at_once == 3
    assert config_for(tmp_path).CourseSpawner.starts_at_once == 0


def test_managed_services_may_start_slowly_on_a_busy_host(tmp_path):
    """JupyterHub exits when a managed service does not answer in time; ours get 300 s, not 30."""
    services = {s["name"]: s for s in config_for(tmp_path).JupyterHub.services}
    for name in ("course", "formgrader", "roster", "gpu-usage"):
        assert services[name]["timeout"] == 300, name


def test_docker_calls_are_timed_and_summarised_each_minute():
    from hub.spawner import DockerCalls

    class Log:
        lines = []

        def info(self, line):
            self.lines.append(line)

    calls, log = DockerCalls(), Log()
    for i in range(100):
        calls.record("inspect_container", waited=i / 1000, took=0.010, log=log)
    calls.record("create_container", waited=0.5, took=0.2, log=log)
    assert log.lines == []  # within the first minute: nothing logged yet
    calls.since -= DockerCalls.EVERY
    calls.record("start", waited=0.0, took=0.05, log=log)
    assert len(log.lines) == 1 and calls.calls == []
    line = log.lines[0]
    assert line.startswith("Docker calls in the last 60 s: 102 (inspect_container 100, create_container 1, start 1)")
    assert "waited for a thread p50 50 p95 95 max 500 ms" in line and "took p50 10 p95 10 max 200 ms" in line


def test_the_spawner_makes_docker_calls_on_the_threads_set(tmp_path):
    from hub.spawner import DockerCalls
    c = config_for(tmp_path, "spawner:\n  docker_threads: 3\n")
    CourseSpawner._executor = None  # one executor per hub process; start afresh
    try:
        spawner = spawner_for(c)
        assert spawner.docker_threads == 3 and spawner.executor._max_workers == 3
        spawner._docker_calls = DockerCalls()
        spawner._docker = lambda method, *args, **kw: (method, args, kw)  # no engine in unit tests

        async def call():
            return await spawner.docker("inspect_container", "lab-s1", size=False)

        assert asyncio.run(call()) == ("inspect_container", ("lab-s1",), {"size": False})
        assert [c[0] for c in spawner._docker_calls.calls] == ["inspect_container"]
    finally:
        CourseSpawner._executor = None
