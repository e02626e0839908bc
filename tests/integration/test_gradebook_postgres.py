"""LAB_GRADEBOOK_URL selects PostgreSQL: the hub image's grading tools (nbgrader with psycopg2)
release an assignment into a real PostgreSQL server (the lab's own images/postgres) and export
grades from it."""

import secrets
import subprocess
import time
import uuid

import pytest

from tests.conftest import TAG, assignment_points, docker

pytestmark = pytest.mark.integration

PG_IMAGE = f"mlops-lab/postgres:{TAG}"  # scripts/test.sh builds it
PG_URL = f"postgresql://lab:{secrets.token_hex(16)}@db/gradebook"


@pytest.fixture(scope="module")
def postgres():
    run = uuid.uuid4().hex[:8]
    net, name = f"mlops-lab-test-pg-{run}", f"mlops-lab-test-pg-{run}"
    docker("network", "create", "--internal", net)
    docker("run", "-d", "--name", name, "--network", net, "--network-alias", "db",
           "--label", "mlops-lab.instance=mlops-lab-test", "-e", f"LAB_HUB_DB_URL={PG_URL}", PG_IMAGE)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "exec", name, "pg_isready", "-q", "-h", "127.0.0.1"]).returncode != 0:
            assert time.monotonic() < deadline, docker("logs", name, check=False)
            time.sleep(0.5)
        yield net
    finally:
        docker("rm", "-f", name, check=False)
        docker("network", "rm", net, check=False)


def hub_run(net: str, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", "run", "--rm", "--network", net, "-u", "grader", "--entrypoint", "sh",
         "-e", f"LAB_GRADEBOOK_URL={PG_URL}", "-e", "LAB_COURSE_ROOT=/tmp/course",
         f"mlops-lab/hub:{TAG}", "-c", script], capture_output=True, text=True, timeout=300)


def test_release_and_export_use_the_postgres_gradebook(postgres):
    script = (
        "set -e; mkdir -p /tmp/course/state /tmp/course/nbgrader/source /tmp/course/exchange; "
        "cp -r /srv/lab/course/source/04-project-cli /tmp/course/nbgrader/source/; "
        "python -m hub.course.grading release 04-project-cli; "
        "python -m hub.course.grading grades; "
        "python -c \"from nbgrader.api import Gradebook; from hub.course.grading import gradebook_url; "
        "gb = Gradebook(gradebook_url()); a = gb.find_assignment('04-project-cli'); "
        "print('in postgres:', a.name, a.duedate, a.max_score, gb.db.bind.dialect.name)\"; "
        "ls /tmp/course/nbgrader")
    r = hub_run(postgres, script)
    assert r.returncode == 0, r.stdout + r.stderr
    points = assignment_points("04-project-cli")
    assert f"in postgres: 04-project-cli 2027-01-07 22:59:00 {float(points)} postgresql" in r.stdout
    assert f"04-project-cli (of {points:g})" in r.stdout.splitlines()[0]
    assert "gradebook.db" not in r.stdout  # no SQLite file was made
