"""The hub's database on PostgreSQL (LAB_HUB_DB_URL): the test lab runs on the bundled server
(host hubdb, compose profile "postgres"). What the hub knows is in PostgreSQL, not in an SQLite
file; a student's running server stays known and reachable through a restart of the database
server and then of the hub."""

import time

import pytest

from tests.conftest import docker

pytestmark = pytest.mark.integration


def psql(lab, sql: str) -> list[str]:
    out = docker("exec", f"{lab.instance}-hubdb-1", "psql", "-h", "/var/run/postgresql", "-d", "jupyterhub",
                 "-tA", "-c", sql)
    return [line for line in out.splitlines() if line]


def test_the_hub_keeps_users_and_servers_in_postgresql_through_restarts(lab):
    name = lab.new_user("pg")
    lab.start(name)
    try:
        users = psql(lab, "SELECT name FROM users")
        assert name in users and "s230001" in users  # a roster student, made by the roster service
        running = psql(lab, "SELECT u.name FROM users u JOIN spawners sp ON sp.user_id = u.id "
                            "WHERE sp.server_id IS NOT NULL")
        assert name in running
        files = docker("exec", f"{lab.instance}-hub-1", "ls", "/srv/jupyterhub")
        assert "jupyterhub.sqlite" not in files, files

        # The database server restarts under a running hub: the hub answers again by itself.
        lab.compose("restart", "hubdb")
        deadline = time.monotonic() + 90
        while True:
            try:
                r = lab.api("GET", f"/users/{name}")
                if r.status_code == 200 and r.json()["servers"].get("", {}).get("ready"):
                    break
            except Exception:  # noqa: BLE001 - the hub may drop a connection while the database is away
                pass
            assert time.monotonic() < deadline, f"the hub did not recover from the database restart: {r.text}"
            time.sleep(1)

        # Then the hub restarts: it finds the student's server in PostgreSQL and routes to it again.
        lab.restart_hub(timeout=300)
        assert lab.wait_ready(name, timeout=60)
        status = lab.server_api(name, "GET", "/status")
        assert status.status_code == 200, status.text
    finally:
        lab.stop(name)
