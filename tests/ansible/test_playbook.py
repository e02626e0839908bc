"""The Ansible playbook against a real target: a systemd Debian 12 container (built from the local
base image) reached with Ansible's docker connection, with its own Docker engine inside.

- yamllint and ansible-lint (production profile) pass;
- the playbook converges: Docker runs in the target, the firewall lets only 22/80/443 in, Caddy
  serves the hub over HTTPS and redirects HTTP, the roster is imported. The GPU steps are skipped
  (lspci finds no NVIDIA device) and Let's Encrypt too (lab.test is not a public name);
- a second run changes nothing (changed=0);
- lab_hub_db: postgres moves the hub's database to the bundled PostgreSQL server;
- a backup, a deleted home file and a restore bring the file back, and the hub's database back
  from its dump.

The lab's hub, idp, postgres and prometheus images (and the helper base image) are handed to the target as a
`docker save` archive, the playbook's lab_images_archive, instead of a build inside it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
VENV_BIN = ROOT / ".venv-ansible" / "bin"
TARGET = "mlops-lab-test-target"
TAG = (ROOT / "VERSION").read_text().strip()
# Every capability the engine may grant here (this sandbox withholds SYS_RESOURCE, so --privileged
# fails): systemd and a nested Docker engine need most of them.
CAPS = ("CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
        "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
        "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE "
        "AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ").split()
ROSTER = "id,name,email,github,role\ns230001,Ada Lovelace,s230001@student.dtu.dk,ada-lovelace,student\n" \
         "teacher,Tea Cher,teacher@dtu.dk,,instructor\n"


def run(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def target(*cmd, check=True) -> subprocess.CompletedProcess:
    return run("docker", "exec", TARGET, *cmd, check=check)


def remove_target():
    run("docker", "rm", "-f", TARGET, check=False)
    run("docker", "volume", "rm", "-f", f"{TARGET}-docker", check=False)


@pytest.fixture(scope="module")
def target_host(tmp_path_factory):
    """Start the bare target; hand it the images archive; remove it (and its engine's volume) after."""
    work = tmp_path_factory.mktemp("ansible")
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", work / "extra-ca.crt")
    shutil.copy(ROOT / "tests" / "ansible" / "Dockerfile.target", work / "Dockerfile")
    run("docker", "build", "-q", "-t", "mlops-lab-test/target:latest", str(work), env={**os.environ, "DOCKER_BUILDKIT": "0"})
    archive = work / "images.tar"
    run("docker", "save", "-o", str(archive), f"mlops-lab/hub:{TAG}", f"mlops-lab/idp:{TAG}", f"mlops-lab/postgres:{TAG}",
        f"mlops-lab/prometheus:{TAG}", "debian:bookworm-slim")
    remove_target()
    caps = [a for c in CAPS for a in ("--cap-add", c)]
    run("docker", "run", "-d", "--name", TARGET, "--hostname", "lab-target", *caps,
        "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
        "--security-opt", "systempaths=unconfined", "--device-cgroup-rule", "a *:* rwm", "--cgroupns=host",
        "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
        "-v", f"{TARGET}-docker:/var/lib/docker", "-v", f"{archive}:/srv/lab-images.tar:ro",
        "mlops-lab-test/target:latest")
    roster = work / "roster.csv"
    roster.write_text(ROSTER)
    inventory = work / "inventory.yml"
    inventory.write_text(f"""\
lab:
  hosts:
    {TARGET}:
      ansible_connection: community.docker.docker
  vars:
    lab_domain: lab.test
    docker_source: distro
    lab_images_archive: /srv/lab-images.tar
    lab_admin_api_token: {secrets.token_hex(32)}
    lab_roster_file: {roster}
    lab_settings:
      auth:
        demo: true
      spawner:
        mem_limit: 2G
""")
    try:
        yield inventory
    finally:
        logs = target("journalctl", "--no-pager", "-n", "200", check=False).stdout
        (ROOT / "tests" / "artifacts").mkdir(parents=True, exist_ok=True)
        (ROOT / "tests" / "artifacts" / "ansible-target-journal.log").write_text(logs)
        if not os.environ.get("LAB_KEEP_TARGET"):  # set it to look inside the target after a failure
            remove_target()


def playbook(inventory: Path, *extra: str) -> str:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0",
           "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    result = run(str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(ANSIBLE / "site.yml"), *extra,
                 cwd=ANSIBLE, env=env, check=False, timeout=1500)
    (ROOT / "tests" / "artifacts").mkdir(parents=True, exist_ok=True)
    with open(ROOT / "tests" / "artifacts" / "ansible-converge.log", "a") as f:
        f.write(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    return result.stdout


def recap(output: str) -> dict[str, int]:
    line = next(l for l in output.splitlines() if l.startswith(TARGET) and "ok=" in l)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def test_lint():
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    run(str(VENV_BIN / "yamllint"), "-c", ".yamllint", ".", cwd=ANSIBLE, env=env)
    run(str(VENV_BIN / "ansible-lint"), cwd=ANSIBLE, env=env)


def test_converge_then_idempotent_then_backup_and_restore(target_host):
    first = playbook(target_host)
    assert recap(first)["failed"] == 0 and recap(first)["changed"] > 0
    # The GPU and Let's Encrypt steps were skipped by facts.
    assert "Install the NVIDIA driver" not in first or "skipping: [" in first
    assert target("systemctl", "is-active", "docker").stdout.strip() == "active"
    running = target("docker", "ps", "--format", "{{.Names}}").stdout
    assert "mlops-lab-hub-1" in running
    assert "mlops-lab-prometheus-1" in running and "mlops-lab-metrics-1" in running  # monitoring: on by default
    # The hub answers over HTTPS on lab.test, and HTTP redirects there.
    health = target("curl", "-sk", "--resolve", "lab.test:443:127.0.0.1", "-o", "/dev/null", "-w", "%{http_code}",
                    "https://lab.test/hub/health").stdout
    assert health == "200"
    redirect = target("curl", "-s", "--resolve", "lab.test:80:127.0.0.1", "-o", "/dev/null", "-w",
                      "%{http_code} %{redirect_url}", "http://lab.test/hub/health").stdout
    assert redirect.startswith("308 https://lab.test/hub/health")
    # A student's server and a service each have their own name under lab.test, covered by the
    # wildcard certificate (checked against Caddy's own CA, host name included).
    root_ca = "/var/lib/caddy/.local/share/caddy/pki/authorities/local/root.crt"
    for name in ("s230001.lab.test", "course--service.lab.test"):
        answer = target("curl", "-s", "--cacert", root_ca, "--resolve", f"{name}:443:127.0.0.1", "-o", "/dev/null",
                        "-w", "%{http_code} %{ssl_verify_result}", f"https://{name}/hub/health", check=False)
        assert answer.returncode == 0 and answer.stdout.split()[1] == "0", (name, answer.stdout, answer.stderr)
    # Only 22, 80 and 443 are open; the lab's own port listens on 127.0.0.1 only.
    rules = target("nft", "list", "table", "inet", "lab_firewall").stdout
    assert "policy drop" in rules and re.search(r"tcp dport \{ 22, 80, 443 \} accept", rules)
    assert "127.0.0.1:8000->8000" in target("docker", "ps", "--format", "{{.Ports}}").stdout
    # The roster was imported.
    token = re.search(r"lab_admin_api_token: (\w+)", target_host.read_text()).group(1)
    people = target("curl", "-s", "-H", f"Authorization: token {token}", "-H", "Host: roster--service.lab.test",
                    "http://127.0.0.1:8000/services/roster/api/roster").stdout
    assert '"s230001"' in people and '"teacher"' in people

    second = playbook(target_host)
    assert recap(second)["changed"] == 0, [l for l in second.splitlines() if l.startswith("changed:")]

    # A change (a profile's memory, the roster) is applied with the least disruption: the settings
    # file is rewritten and the hub restarted (students' servers outlive that), the roster re-imported;
    # nothing else is touched.
    def started(name):
        return target("docker", "inspect", "--format", "{{.State.StartedAt}}", name).stdout.strip()

    idp_before, hub_before = started("mlops-lab-idp-1"), started("mlops-lab-hub-1")
    roster = Path(re.search(r"lab_roster_file: (\S+)", target_host.read_text()).group(1))
    roster.write_text(ROSTER + "s230002,Alan Turing,s230002@student.dtu.dk,,student\n")
    changed = playbook(target_host, "-e", '{"lab_settings": {"auth": {"demo": true}, "spawner": {"mem_limit": "3G"}}}')
    assert recap(changed)["changed"] == 3, changed[-3000:]  # lab.yaml, the services' restart, the roster
    assert "mem_limit: 3G" in target("cat", "/opt/mlops-lab/lab.yaml").stdout
    assert started("mlops-lab-idp-1") == idp_before and started("mlops-lab-hub-1") != hub_before
    people = target("curl", "-s", "-H", f"Authorization: token {token}", "-H", "Host: roster--service.lab.test",
                    "http://127.0.0.1:8000/services/roster/api/roster").stdout
    assert '"s230002"' in people

    # The hub's database moves to the bundled PostgreSQL server: it runs, the hub answers, and the
    # roster's people are hub users there (the roster service puts them back into a new database).
    password = secrets.token_hex(16)
    moved = playbook(target_host, "-e", json.dumps({"lab_hub_db": "postgres", "lab_hub_db_password": password,
                                                    "lab_settings": {"auth": {"demo": True},
                                                                     "spawner": {"mem_limit": "3G"}}}))
    assert recap(moved)["failed"] == 0
    assert f"LAB_HUB_DB_URL=postgresql://hub:{password}@hubdb/jupyterhub" in target("cat", "/opt/mlops-lab/.env").stdout
    users = ""
    for _ in range(60):
        users = target("docker", "exec", "mlops-lab-hubdb-1", "psql", "-h", "/var/run/postgresql", "-d", "jupyterhub",
                       "-tAc", "SELECT name FROM users", check=False).stdout
        if "s230002" in users:
            break
        time.sleep(2)
    assert "s230001" in users and "s230002" in users, users

    # Back up, delete a student's home file, restore it.
    volume = "mlops-lab-home-s230001"
    target("docker", "run", "--rm", "-v", f"{volume}:/h", "debian:bookworm-slim", "sh", "-c",
           "echo my thesis notebook > /h/work.ipynb")
    folder = target("/usr/local/sbin/mlops-lab-backup").stdout.strip().splitlines()[-1]
    listing = target("ls", folder).stdout.split()
    assert f"{volume}.tar.gz" in listing and "mlops-lab_hub-state.tar.gz" in listing and "hub-db.dump" in listing
    target("docker", "run", "--rm", "-v", f"{volume}:/h", "debian:bookworm-slim", "rm", "/h/work.ipynb")
    target("/usr/local/sbin/mlops-lab-restore", folder, volume)
    restored = target("docker", "run", "--rm", "-v", f"{volume}:/h", "debian:bookworm-slim", "cat", "/h/work.ipynb")
    assert restored.stdout.strip() == "my thesis notebook"
    # The hub's database comes back from its dump.
    assert "restored the hub's database" in target("/usr/local/sbin/mlops-lab-restore", folder, "hub-db").stdout
    users = target("docker", "exec", "mlops-lab-hubdb-1", "psql", "-h", "/var/run/postgresql", "-d", "jupyterhub",
                   "-tAc", "SELECT name FROM users").stdout
    assert "s230002" in users
    assert target("systemctl", "is-enabled", "mlops-lab-backup.timer").stdout.strip() == "enabled"
