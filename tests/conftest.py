"""Shared fixtures: a separate, real lab instance (compose project "mlops-lab-test") for the
integration and browser tests, started once per session and removed after it, volumes included.
It never touches the operator's own lab (other instance name, network, ports and volumes)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
INSTANCE = "mlops-lab-test"
HTTP_PORT = int(os.environ.get("LAB_TEST_HTTP_PORT", "18000"))
IDP_PORT = int(os.environ.get("LAB_TEST_IDP_PORT", "19400"))
GITHUB_PORT = IDP_PORT + 1
CAS_PORT = IDP_PORT + 2
TAG = os.environ.get("LAB_IMAGE_TAG") or (ROOT / "VERSION").read_text().strip()
HUB_DB_PASSWORD = secrets.token_hex(16)  # the test lab's bundled PostgreSQL server
HOST = "localhost"  # every student's server and every service is on a subdomain of it

def course_notebook(assignment: str):
    import nbformat

    return nbformat.read(ROOT / "course" / "source" / assignment / f"{assignment}.ipynb", as_version=4)


def assignment_points(assignment: str) -> float:
    """All the points of an assignment (what nbgrader reports as its maximum)."""
    return sum(c.metadata["nbgrader"].get("points", 0) for c in course_notebook(assignment).cells
               if c.metadata.get("nbgrader", {}).get("grade"))


def solved(assignment: str, release):
    """A student's submission that does all the work: the released notebook with the instructor's
    answer in every solution cell (course/tools/gaming_check.py builds it the same way)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gaming_check", ROOT / "course" / "tools" / "gaming_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.solved(course_notebook(assignment), release)


# A script that tries a TCP connection to each HOST:PORT argument and prints "HOST:PORT open" or
# the error's type: run inside a container or a network namespace (nodeguard's and the swarm's tests).
CONNECT_SCRIPT = """
import socket, sys
for spec in sys.argv[1:]:
    host, port = spec.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close(); print(spec, "open")
    except OSError as e:
        print(spec, type(e).__name__)
"""


def submission_archive(assignment: str, nb) -> bytes:
    """What nbgrader submit uploads: the notebook, as ``<assignment>.ipynb`` in a gzipped tar."""
    import io
    import tarfile

    import nbformat

    data = nbformat.writes(nb).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo(f"{assignment}.ipynb")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return buf.getvalue()

# Chromium resolves <anything>.localhost to the loopback address by itself; the tests' own HTTP
# clients (requests, websocket-client) go through this, so they reach the same origins.
_getaddrinfo = socket.getaddrinfo


def _loopback_getaddrinfo(host, *args, **kwargs):
    if isinstance(host, str) and (host == HOST or host.endswith("." + HOST)):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _loopback_getaddrinfo


# The test lab: fake GPU devices (the host has none: GPU containers can be created, not started),
# a short-timeout profile for the culling test, fast activity reports, a low pids limit.
# Logins are configured as for real DTU (OpenID Connect) and GitHub, pointed at the protocol
# peers of the idp container: browsers reach them on 127.0.0.1, the hub on the lab network.
def auth_settings(idp_port: int, github_port: int) -> str:
    """lab.yaml's auth section for a test lab: the demo identity providers (DTU's OIDC and the
    GitHub peer) in the lab's idp container, their login pages published on ``idp_port`` and
    ``github_port`` of this machine's loopback."""
    return f"""\
auth:
  demo: false
  admin_users: [operator]
  contact: the 02476 teachers
  dtu:
    protocol: oidc
    oidc:
      client_id: mlops-lab-test
      authorize_url: http://127.0.0.1:{idp_port}/oauth2/authorize
      token_url: http://idp:9400/oauth2/token
      issuer: http://idp:9400
  github:
    client_id: mlops-lab-demo
    url: http://127.0.0.1:{github_port}
    api_url: http://idp:9401/api/v3
    token_url: http://idp:9401/login/oauth/access_token
"""


TEST_SETTINGS = auth_settings(IDP_PORT, GITHUB_PORT) + """\
spawner:
  mem_limit: 2G
  cpu_limit: 1.0
  pids_limit: 256
  start_timeout: 120
  environment:
    JUPYTERHUB_ACTIVITY_INTERVAL: "5"
culler:
  enabled: true
  timeout: 3600
profiles:
  cpu:
    display_name: CPU
    mem_limit: 2G
    cpu_limit: 1.0
  cpu-short:
    display_name: CPU (culled after 20 s idle)
    description: For the culling test.
    mem_limit: 1G
    cpu_limit: 0.5
    idle_timeout: 20
grading:
  test_clock: true
  workers: 2
  cpus: 1.0
  mem_limit: 768M
  pids_limit: 64
  cell_timeout: 20
  wall_seconds: 120
monitoring:
  scrape_seconds: 5
warm:
  enabled: true
  memory_budget: 4G
  lead_minutes: 20
  hold_minutes: 30
gpus:
  devices:
    - {id: GPU-00000000-0000-0000-0000-0000000000a0, mode: shared, max_users: 2}
    - {id: MIG-00000000-0000-0000-0000-0000000000b1, mode: mig}
    - {id: "3", mode: exclusive}
"""


# The course roster the test lab starts with (the same people as the demo roster). The idp
# container also knows an outsider: DTU id s239999 and GitHub login octo-unlinked.
TEST_ROSTER = """\
id,name,email,github,role
s230001,Ada Lovelace,s230001@student.dtu.dk,ada-lovelace,student
s230002,Alan Turing,s230002@student.dtu.dk,,student
s230003,Grace Hopper,s230003@student.dtu.dk,grace-hopper,student
tahe,Tara Hensen,tahe@dtu.dk,,ta
teacher,Tea Cher,teacher@dtu.dk,tea-cher,instructor
"""


class Lab:
    """A running test lab: its URLs, admin token and helpers for the hub's REST API."""

    def __init__(self, env_file: Path, settings_file: Path, token: str):
        self.env_file = env_file
        self.settings_file = settings_file
        self.token = token
        self.url = f"http://{HOST}:{HTTP_PORT}"
        self.idp_url = f"http://127.0.0.1:{IDP_PORT}"
        self.github_url = f"http://127.0.0.1:{GITHUB_PORT}"
        self.cas_url = f"http://127.0.0.1:{CAS_PORT}"
        self.instance = INSTANCE
        self.course_image = f"mlops-lab/course:{TAG}"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"

    def user_url(self, name: str) -> str:
        """A student's server, on its own origin: http://<name>.localhost:PORT/user/<name>"""
        return f"http://{name}.{HOST}:{HTTP_PORT}/user/{name}"

    def service_url(self, name: str) -> str:
        """A hub service, on its own origin: http://<name>--service.localhost:PORT/services/<name>"""
        return f"http://{name}--service.{HOST}:{HTTP_PORT}/services/{name}"

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["docker", "compose", "--project-directory", str(ROOT), "--env-file", str(self.env_file),
               "-p", INSTANCE, "--profile", "demo", "--profile", "postgres", "--profile", "monitoring", *args]
        return subprocess.run(cmd, check=check, capture_output=True, text=True)

    def api(self, method: str, path: str, **kw) -> requests.Response:
        return self.session.request(method, f"{self.url}/hub/api{path}", timeout=60, **kw)

    def new_user(self, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        r = self.api("POST", f"/users/{name}")
        assert r.status_code == 201, r.text
        return name

    def start(self, name: str, timeout: float = 240, profile: str | None = None) -> dict:
        r = self.api("POST", f"/users/{name}/server", json={"profile": profile} if profile else None)
        assert r.status_code in (201, 202), f"starting {name}: {r.status_code} {r.text}"
        return self.wait_ready(name, timeout)

    def wait_ready(self, name: str, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.api("GET", f"/users/{name}").json()
            server = model.get("servers", {}).get("")
            if server and server.get("ready"):
                return server
            if not server:
                raise AssertionError(f"{name}'s server stopped while starting: {model}")
            time.sleep(1)
        raise AssertionError(f"{name}'s server not ready after {timeout}s")

    def stop(self, name: str, timeout: float = 120) -> None:
        r = self.api("DELETE", f"/users/{name}/server")
        assert r.status_code in (202, 204), r.text
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.api("GET", f"/users/{name}").json().get("servers"):
                return
            time.sleep(1)
        raise AssertionError(f"{name}'s server did not stop")

    def restart_hub(self, timeout: float = 120) -> None:
        """Restart the hub's container; return once the hub and its services answer again."""
        self.compose("restart", "hub")
        self.wait_hub(timeout)

    def services_answer(self) -> bool:
        """The hub's services, each through the proxy. The proxy answers for the hub as soon as
        the hub's API is up, while the hub still starts its services one by one. A service that
        answers at all counts (a test may have made the course service's status fail on purpose);
        502 to 504 are the proxy's and the hub's answers for a service not up yet."""
        return self.session.get(f"{self.service_url('gpu-usage')}/?format=json", timeout=5).ok and \
            self.session.get(f"{self.service_url('roster')}/api/roster", timeout=5).ok and \
            self.course("GET", "api/status").status_code not in (502, 503, 504) and \
            self._answers("monitor", "?format=json") and self._answers("warm", "api/status")

    def _answers(self, service: str, path: str) -> bool:
        """A service answers (the monitor page itself says 503, with a reason, while Prometheus starts)."""
        r = self.session.get(f"{self.service_url(service)}/{path}", timeout=10)
        return r.status_code not in (502, 503, 504) or "Prometheus" in r.text

    def wait_answering(self, *urls: str, timeout: float = 300) -> None:
        """Until every URL answers 200 (the hub starts its services one by one: slow on a busy host)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if all(requests.get(url, timeout=2).ok for url in urls):
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the lab did not come up ({', '.join(urls)}):\n"
                                     + self.compose("logs", "--tail", "60", check=False).stdout)
            time.sleep(1)

    def import_test_roster(self, timeout: float = 60) -> None:
        """The test roster, once the roster service takes it (it starts after the hub)."""
        deadline = time.monotonic() + timeout
        while (r := self.import_roster(TEST_ROSTER)).status_code != 200:
            if time.monotonic() > deadline:
                raise AssertionError(f"roster import failed: {r.status_code} {r.text}")
            time.sleep(1)

    def wait_hub(self, timeout: float = 120) -> None:
        """Return once the hub and its services answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/hub/health", timeout=2).ok and self.services_answer():
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise AssertionError("the hub did not come back after a restart:\n" + self.compose("logs", "--tail", "40", "hub").stdout)

    def wait_netguard_healthy(self, timeout: float = 60) -> None:
        """Until netguard is healthy and its heartbeat is there now: Docker's health status lags
        by up to its 5 s interval, and netguard removes the heartbeat while it puts back rules
        it found changed, so servers cannot start in between (the gate is closed)."""
        deadline = time.monotonic() + timeout
        guard = f"{INSTANCE}-netguard-1"
        while time.monotonic() < deadline:
            state = docker("inspect", "--format", "{{.State.Health.Status}}", guard, check=False).strip()
            beating = subprocess.run(["docker", "exec", guard, "sh", "-c", "test -n \"$(find /run/lab-netguard/"
                                      "heartbeat.json -newermt '-15 seconds' 2>/dev/null)\""],
                                     capture_output=True).returncode == 0
            if state == "healthy" and beating:
                return
            time.sleep(1)
        raise AssertionError(f"netguard not healthy after {timeout}s:\n" + self.compose("logs", "--tail", "30", "netguard").stdout)

    def import_roster(self, text: str | bytes, filename: str = "roster.csv", dry_run: bool = False) -> requests.Response:
        """Import a roster through the roster service's API, as `make roster` does."""
        data = text.encode() if isinstance(text, str) else text
        return self.session.post(f"{self.service_url('roster')}/api/import",
                                 params={"filename": filename, "dry_run": int(dry_run)}, data=data, timeout=120)

    # -- the course service ---------------------------------------------------------------------
    def course(self, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
        """Call the course service through the proxy (with the admin token, or ``token``)."""
        headers = {"Authorization": f"token {token or self.token}"}
        return requests.request(method, f"{self.service_url('course')}/{path}", headers=headers, timeout=120, **kw)

    def set_clock(self, when: str) -> None:
        r = self.course("PUT", "api/clock", json={"now": when})
        assert r.status_code == 200, r.text

    def wait_course(self, check, what: str, timeout: float = 300) -> dict:
        """Poll the course service's status until ``check(status)`` is true; return the status."""
        deadline = time.monotonic() + timeout
        status = {}
        while time.monotonic() < deadline:
            r = self.course("GET", "api/status")
            if r.status_code == 200:
                status = r.json()
                if check(status):
                    return status
            time.sleep(1)
        jobs = [(j["action"], j["assignment"], j["state"], j["output"][-800:]) for j in status.get("jobs", [])]
        raise AssertionError(f"course service: {what} did not happen in {timeout}s; jobs: {jobs}")

    def user_token(self, name: str) -> str:
        """An API token of ``name`` (with that person's own permissions)."""
        r = self.api("POST", f"/users/{name}/tokens", json={"expires_in": 3600, "note": "test"})
        assert r.status_code in (200, 201), r.text
        return r.json()["token"]

    def grader(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run ``python -m hub.course.grading ARGS`` as the grader user in the hub, as `make autograde` does."""
        return subprocess.run(["docker", "exec", "-u", "grader", "-w", "/srv/course/state/home",
                               f"{INSTANCE}-hub-1", "python", "-m", "hub.course.grading", *args],
                              capture_output=True, text=True, timeout=timeout)

    def server_api(self, name: str, method: str, path: str, **kw) -> requests.Response:
        """Call a user's JupyterLab REST API through the proxy, with the admin token."""
        return self.session.request(method, f"{self.user_url(name)}/api{path}", timeout=60, **kw)


def wait_for(check, what: str, timeout: float = 120, every: float = 2):
    """check() until it gives something true (returned), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True).stdout


def docker_json(*args: str):
    return json.loads(docker(*args))


def _remove_instance_objects() -> None:
    ids = docker("ps", "-aq", "--filter", f"label=mlops-lab.instance={INSTANCE}").split()
    if ids:
        docker("rm", "-f", *ids, check=False)
    vols = [v for v in docker("volume", "ls", "-q").split() if v.startswith(f"{INSTANCE}-home-")]
    if vols:
        docker("volume", "rm", "-f", *vols, check=False)


@pytest.fixture(scope="session")
def lab_settings() -> str:
    """The test lab's lab.yaml (tests/gpu overrides it with the host's real GPUs)."""
    return TEST_SETTINGS


@pytest.fixture(scope="session")
def lab(tmp_path_factory, lab_settings) -> Lab:
    """Start the test lab from the built images; remove it and all its volumes afterwards."""
    subprocess.run(["docker", "info"], check=True, capture_output=True)
    for image in ("hub", "idp", "course"):
        subprocess.run(["docker", "image", "inspect", f"mlops-lab/{image}:{TAG}"], check=True,
                       capture_output=True)
    workdir = tmp_path_factory.mktemp("lab")
    token = secrets.token_hex(32)
    settings_file = workdir / "lab.yaml"
    settings_file.write_text(lab_settings)
    env_file = workdir / "test.env"
    env_file.write_text("\n".join([
        f"LAB_INSTANCE={INSTANCE}",
        "LAB_HTTP_BIND=127.0.0.1",
        f"LAB_HTTP_PORT={HTTP_PORT}",
        f"LAB_IDP_PORT={IDP_PORT}",
        f"LAB_IDP_GITHUB_PORT={GITHUB_PORT}",
        f"LAB_IDP_CAS_PORT={CAS_PORT}",
        "LAB_DTU_CLIENT_SECRET=any-secret-the-mock-accepts",
        "LAB_GITHUB_CLIENT_SECRET=demo-github",
        f"LAB_PUBLIC_URL=http://{HOST}:{HTTP_PORT}",
        f"LAB_IDP_PUBLIC_URL=http://127.0.0.1:{IDP_PORT}",
        f"LAB_ADMIN_API_TOKEN={token}",
        f"LAB_IMAGE_TAG={TAG}",
        f"LAB_SETTINGS_HOST_FILE={settings_file}",
        # The hub's database on the bundled PostgreSQL server (make up's default is SQLite).
        f"LAB_HUB_DB_URL=postgresql://hub:{HUB_DB_PASSWORD}@hubdb/jupyterhub",
    ]) + "\n")
    settings_file.chmod(0o644)
    lab = Lab(env_file, settings_file, token)
    lab.compose("down", "-v", check=False)
    _remove_instance_objects()
    up = lab.compose("up", "-d", check=False)
    assert up.returncode == 0, up.stderr
    try:
        lab.wait_answering(f"{lab.url}/hub/health", f"{lab.idp_url}/.well-known/openid-configuration",
                           f"{lab.cas_url}/cas/login?service=x")
        lab.wait_netguard_healthy()
        lab.wait_hub(timeout=300)  # every service up, not only the hub's API
        lab.import_test_roster()
        yield lab
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "compose.log").write_text(lab.compose("logs", "--no-color", check=False).stdout)
        lab.compose("down", "-v", check=False)
        _remove_instance_objects()
