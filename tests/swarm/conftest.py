"""A real three-node Docker Swarm on this one machine, and the lab on it.

Each node is a Docker engine in a container (Dockerfile.engine): a manager, which runs the lab
with docker compose exactly as `make up` does (plus docker-compose.swarm.yml), and two workers,
which run the students' servers. The swarm is made inside those engines, never on this machine's
own engine. The three share one folder at /srv/lab-homes, as NFS would be mounted on real nodes.
The workers declare fake GPUs as generic resources (node-a one, node-b two), as daemon.json does on
a GPU server; there is no GPU here, so GPU servers run the course image without one.

The manager publishes the lab's port and the demo identity providers' on this machine's loopback,
so the browser starts where a student does: the lab's front page.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, ROOT, TAG, Lab, auth_settings

PREFIX = "mlops-lab-test-sw"
ENGINE_IMAGE = "mlops-lab-test/engine:latest"
NETWORK = PREFIX
NODES = {"mgr": "node-mgr", "a": "node-a", "b": "node-b"}
# Fixed addresses: a manager that restarts must come back where the workers know it.
SUBNET = "10.231.57"
ADDRESSES = {"mgr": f"{SUBNET}.10", "a": f"{SUBNET}.11", "b": f"{SUBNET}.12"}
HTTP_PORT = int(os.environ.get("LAB_TEST_SWARM_HTTP_PORT", "18100"))
IDP_PORT = HTTP_PORT + 1400  # 19500, 19501 (GitHub), 19502 (CAS)
INSTANCE = "mlops-lab-swarm"
HOMES = "/srv/lab-homes"
# node -> the GPUs it declares (NVIDIA-GPU generic resources); modes come from lab.yaml.
FAKE_GPUS = {
    "a": ["GPU-aaaaaaaa-0000-0000-0000-00000000000a"],
    "b": ["GPU-bbbbbbbb-0000-0000-0000-0000000000b1", "GPU-bbbbbbbb-0000-0000-0000-0000000000b2"],
}
# Every capability the engine may grant here (this sandbox withholds SYS_RESOURCE, so --privileged fails).
CAPS = ("CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
        "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
        "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE "
        "AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ").split()

SWARM_SETTINGS = auth_settings(IDP_PORT, IDP_PORT + 1) + f"""\
spawner:
  mem_limit: 1G
  cpu_limit: 1.0
  pids_limit: 256
  start_timeout: 180
profiles:
  cpu:
    display_name: CPU
    default: true
    mem_limit: 1G
    cpu_limit: 1.0
  gpu-shared:
    mem_limit: 1G
    cpu_limit: 0.5
  gpu-whole:
    mem_limit: 1G
    cpu_limit: 0.5
monitoring:
  enabled: true
  scrape_seconds: 5
grading:
  test_clock: true
  workers: 2
swarm:
  enabled: true
  homes:
    path: {HOMES}
gpus:
  devices:
    - {{id: {FAKE_GPUS["b"][1]}, mode: shared, max_users: 2}}
"""


def run(*cmd: str, check: bool = True, timeout: float = 600, input: bytes | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(list(cmd), capture_output=True, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n"
                             f"{result.stdout.decode(errors='replace')[-3000:]}\n{result.stderr.decode(errors='replace')[-3000:]}")
    return result


def container(node: str) -> str:
    return f"{PREFIX}-{node}"


class Swarm:
    """The three engines: run `docker ...` on a node, stop and start a node."""

    def docker(self, node: str, *args: str, check: bool = True, timeout: float = 300) -> str:
        return run("docker", "exec", container(node), "docker", *args, check=check,
                   timeout=timeout).stdout.decode(errors="replace")

    def docker_json(self, node: str, *args: str):
        return json.loads(self.docker(node, *args))

    def node_of_service(self, service: str) -> str:
        """The node (key of NODES) whose engine runs the service's task."""
        for key in ("a", "b"):
            found = run("docker", "exec", container(key), "docker", "ps", "-q", "--filter",
                        f"label=com.docker.swarm.service.name={service}", check=False)  # a stopped node: not there
            if found.returncode == 0 and found.stdout.strip():
                return key
        raise AssertionError(f"no worker runs {service}: {self.docker('mgr', 'service', 'ps', service, check=False)}")

    def stop_node(self, node: str) -> None:
        run("docker", "stop", "-t", "5", container(node))

    def start_node(self, node: str) -> None:
        run("docker", "start", container(node))
        self.wait_engine(node)

    def wait_engine(self, node: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while run("docker", "exec", container(node), "docker", "info", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"the engine of {node} did not start:\n"
                                     + run("docker", "logs", "--tail", "30", container(node), check=False).stderr.decode())
            time.sleep(1)

    def node_state(self, node: str) -> str:
        return self.docker("mgr", "node", "inspect", NODES[node], "--format", "{{.Status.State}}").strip()


def _remove() -> None:
    for node in NODES:
        run("docker", "rm", "-f", "-v", container(node), check=False)
        run("docker", "volume", "rm", "-f", f"{container(node)}-docker", check=False)
    run("docker", "network", "rm", NETWORK, check=False)


def _load_images(swarm: Swarm, workdir: Path) -> None:
    """The manager gets the hub's images and Prometheus; the workers the course image and the
    hub's, which nodeguard and the exporter run on every node (there is no registry: `docker
    save`, then `docker load`)."""
    archive = workdir / "images.tar"
    run("docker", "save", "-o", str(archive), f"mlops-lab/course:{TAG}", f"mlops-lab/hub:{TAG}")
    manager = subprocess.Popen(f"docker save mlops-lab/hub:{TAG} mlops-lab/idp:{TAG} mlops-lab/prometheus:{TAG} | "
                               f"docker exec -i {container('mgr')} docker load -q", shell=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    workers = [subprocess.Popen(["docker", "exec", "-i", container(n), "docker", "load", "-q"],
                                stdin=open(archive, "rb"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for n in ("a", "b")]
    for p in (manager, *workers):
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out.decode(errors="replace")
    archive.unlink()


def make_swarm(workdir: Path) -> Swarm:
    """Build the engine image, start three engines, make the swarm, load the images (also for
    bench/burst_swarm.py)."""
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", workdir / "extra-ca.crt")
    compose_plugin = shutil.which("docker-compose") or os.path.expanduser("~/.docker/cli-plugins/docker-compose")
    shutil.copy(os.path.realpath(compose_plugin), workdir / "docker-compose")
    shutil.copy(Path(__file__).parent / "Dockerfile.engine", workdir / "Dockerfile")
    subprocess.run(["docker", "build", "-q", "-t", ENGINE_IMAGE, str(workdir)], check=True, capture_output=True,
                   env={**os.environ, "DOCKER_BUILDKIT": "0"})
    (workdir / "Dockerfile").unlink()
    (workdir / "docker-compose").unlink()
    _remove()
    homes = workdir / "homes"
    homes.mkdir()
    run("docker", "network", "create", "--subnet", f"{SUBNET}.0/24", NETWORK)
    caps = [a for c in CAPS for a in ("--cap-add", c)]
    for key, hostname in NODES.items():
        config = workdir / f"daemon-{key}.json"
        gpus = FAKE_GPUS.get(key, [])
        config.write_text(json.dumps({"node-generic-resources": [f"NVIDIA-GPU={g}" for g in gpus]} if gpus else {}))
        ports = []
        if key == "mgr":
            ports = ["-p", f"127.0.0.1:{HTTP_PORT}:8000"] + [
                a for i in range(3) for a in ("-p", f"127.0.0.1:{IDP_PORT + i}:{9400 + i}")]
        run("docker", "run", "-d", "--name", container(key), "--hostname", hostname, "--network", NETWORK,
            "--ip", ADDRESSES[key], *caps,
            "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
            "--security-opt", "systempaths=unconfined", "--device-cgroup-rule", "a *:* rwm", "--cgroupns=host",
            # /run on tmpfs: a restarted node must not find its engine's old pid file.
            "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "-v", f"{container(key)}-docker:/var/lib/docker",
            "-v", f"{homes}:{HOMES}", "-v", f"{config}:/etc/docker/daemon.json:ro",
            "-v", f"{ROOT}:/lab:ro", "-v", f"{workdir}:/lab-test", *ports, ENGINE_IMAGE)
    s = Swarm()
    for key in NODES:
        s.wait_engine(key)
    s.docker("mgr", "swarm", "init", "--advertise-addr", ADDRESSES["mgr"])
    token = s.docker("mgr", "swarm", "join-token", "-q", "worker").strip()
    for key in ("a", "b"):
        s.docker(key, "swarm", "join", "--advertise-addr", ADDRESSES[key], "--token", token, f"{ADDRESSES['mgr']}:2377")
    _load_images(s, workdir)
    s.homes = homes
    s.workdir = workdir
    return s


remove_swarm = _remove


@pytest.fixture(scope="session")
def swarm(tmp_path_factory) -> Swarm:
    s = make_swarm(tmp_path_factory.mktemp("swarm"))
    try:
        yield s
    finally:
        if not os.environ.get("LAB_KEEP_SWARM"):  # set it to look inside the nodes after a failure
            _remove()


class SwarmLab(Lab):
    """The lab on the swarm, run by compose on the manager node."""

    def __init__(self, swarm: Swarm, env_file: Path, settings_file: Path, token: str):
        super().__init__(env_file, settings_file, token)
        self.swarm = swarm
        self.url = f"http://localhost:{HTTP_PORT}"
        self.idp_url = f"http://127.0.0.1:{IDP_PORT}"
        self.github_url = f"http://127.0.0.1:{IDP_PORT + 1}"
        self.cas_url = f"http://127.0.0.1:{IDP_PORT + 2}"
        self.instance = INSTANCE

    def user_url(self, name: str) -> str:
        return f"http://{name}.localhost:{HTTP_PORT}/user/{name}"

    def service_url(self, name: str) -> str:
        return f"http://{name}--service.localhost:{HTTP_PORT}/services/{name}"

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["docker", "exec", container("mgr"), "docker", "compose", "--project-directory", "/lab",
               "-f", "/lab/docker-compose.yml", "-f", "/lab/docker-compose.swarm.yml",
               "--env-file", f"/lab-test/{self.env_file.name}", "-p", INSTANCE, "--profile", "demo", "--profile", "monitoring", *args]
        return subprocess.run(cmd, check=check, capture_output=True, text=True)

    def service(self, user: str) -> str:
        return f"{INSTANCE}-{user}"

    def grader(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """``make autograde``'s command, as the grader user in the hub on the manager."""
        return subprocess.run(["docker", "exec", container("mgr"), "docker", "exec", "-u", "grader", "-w",
                               "/srv/course/state/home", f"{INSTANCE}-hub-1", "python", "-m", "hub.course.grading",
                               *args], capture_output=True, text=True, timeout=timeout)

    def hub_file(self, path: str) -> str:
        return self.swarm.docker("mgr", "exec", f"{INSTANCE}-hub-1", "cat", path)


def start_lab(swarm: Swarm, extra_env: tuple[str, ...] = (), extra_settings: str = "") -> SwarmLab:
    """The lab on the manager, with compose, as `make up` starts it; up once it answers and the
    test roster is in (also for bench/burst_swarm.py, which may add top-level lab.yaml sections)."""
    workdir: Path = swarm.workdir
    token = secrets.token_hex(32)
    settings_file = workdir / "lab.yaml"
    settings_file.write_text(SWARM_SETTINGS + extra_settings)
    settings_file.chmod(0o644)
    env_file = workdir / "swarm.env"
    env_file.write_text("\n".join([
        f"LAB_INSTANCE={INSTANCE}",
        "LAB_HTTP_BIND=0.0.0.0",
        "LAB_HTTP_PORT=8000",
        "LAB_DTU_CLIENT_SECRET=any-secret-the-mock-accepts",
        "LAB_GITHUB_CLIENT_SECRET=demo-github",
        f"LAB_PUBLIC_URL=http://localhost:{HTTP_PORT}",
        f"LAB_IDP_PUBLIC_URL=http://127.0.0.1:{IDP_PORT}",
        f"LAB_IDP_GITHUB_PUBLIC_URL=http://127.0.0.1:{IDP_PORT + 1}",
        f"LAB_IDP_CAS_PUBLIC_URL=http://127.0.0.1:{IDP_PORT + 2}",
        f"LAB_ADMIN_API_TOKEN={token}",
        f"LAB_IMAGE_TAG={TAG}",
        "LAB_SETTINGS_HOST_FILE=/lab-test/lab.yaml",
        f"LAB_SWARM_HOMES={HOMES}",
        *extra_env,
    ]) + "\n")
    lab = SwarmLab(swarm, env_file, settings_file, token)
    up = lab.compose("up", "-d", check=False)
    assert up.returncode == 0, up.stdout + up.stderr
    lab.wait_answering(f"{lab.url}/hub/health", f"{lab.idp_url}/.well-known/openid-configuration")
    lab.wait_hub(timeout=300)
    lab.import_test_roster()
    return lab


@pytest.fixture(scope="session")
def swarm_lab(swarm) -> SwarmLab:
    lab = start_lab(swarm)  # (a lab that does not come up fails with its log's tail)
    try:
        yield lab
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "swarm-compose.log").write_text(lab.compose("logs", "--no-color", check=False).stdout)
