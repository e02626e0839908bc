"""Importing the roster with `make roster` (scripts/roster.sh) and the roster service's API:
bad input refused with file, line and field and nothing changed; what changed reported; who may
import; what each roster role may do through the hub's API."""

import os
import subprocess

import pytest
import requests

from tests.conftest import ROOT, TEST_ROSTER

pytestmark = pytest.mark.integration


def roster_command(lab, path, dry_run=False) -> subprocess.CompletedProcess:
    env = dict(os.environ, LAB_ENV_FILE=str(lab.env_file), DRY_RUN="1" if dry_run else "0")
    return subprocess.run(["bash", "scripts/roster.sh", str(path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def stored(lab) -> dict:
    r = lab.session.get(f"{lab.service_url('roster')}/api/roster", timeout=30)
    assert r.ok, r.text
    return r.json()


def groups(lab) -> dict:
    return {g["name"]: sorted(g["users"]) for g in lab.api("GET", "/groups").json()}


@pytest.fixture
def restore_roster(lab):
    yield
    r = lab.import_roster(TEST_ROSTER)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("content, expected", [
    (b"id,name,email,role\ns230001,Ada,s230001@student.dtu.dk,student\nS23OOO2,Bad,b@dtu.dk,student\n",
     "fall.csv:3: id: 'S23OOO2' is not a DTU id"),
    (b"id,name,email,role\ns230001,Ada,a@dtu.dk,student\ns230001,Ada again,a2@dtu.dk,student\n",
     "fall.csv:3: id: s230001 is listed twice (first on line 2)"),
    (b"id,name,email,github,role\ns230001,Ada,a@dtu.dk,ada,student\ns230002,Al,al@dtu.dk,ADA,student\n",
     "fall.csv:3: github: 'ada' is claimed by s230002 and by s230001 (line 2)"),
    (b"id,name,email,github,role\ns230001,Ada,a@dtu.dk,no-such-login-zz,student\n",
     "fall.csv:2: github: GitHub has no account named 'no-such-login-zz'"),
    (b"id,name,email,role\ns230001,Ada,a@dtu.dk,professor\n",
     "fall.csv:2: role: 'professor' is not a role (one of: student, ta, instructor)"),
    (b"id,name,email,role\ns230001,Ada,a@dtu.dk,student\ns230002,J\x81rgen,j@dtu.dk,student\n",
     "fall.csv:3: file: byte 0x81 is neither UTF-8 nor Windows-1252"),
    ("id,name,email,role\ns230001,Ada,a@dtu.dk,student\n".encode("utf-16-le"),
     "fall.csv:1: file: contains NUL bytes"),
])
def test_bad_roster_is_refused_with_file_line_and_field_and_changes_nothing(lab, tmp_path, content, expected):
    before, groups_before = stored(lab), groups(lab)
    path = tmp_path / "fall.csv"
    path.write_bytes(content)
    result = roster_command(lab, path)
    assert result.returncode == 1, result.stdout
    assert "refused, nothing changed" in result.stderr
    assert expected in result.stderr, result.stderr
    assert stored(lab) == before
    assert groups(lab) == groups_before


def test_dtu_learn_export_imports_and_reports_what_changed(lab, tmp_path, restore_roster):
    """A DTU Learn class list (UTF-8 BOM, ';', Brightspace columns and roles): a dry run changes
    nothing; the import reports added, removed, role and GitHub changes, and groups follow."""
    export = ("Username;OrgDefinedId;Last Name;First Name;Email;Role;GitHub\r\n"
              "#s230001;s230001;Lovelace;Ada;s230001@student.dtu.dk;Student;octo-unlinked\r\n"
              "#S230002;s230002;Turing;Alan;s230002@student.dtu.dk;Teaching Assistant;\r\n"
              "#tahe;tahe;Hensen;Tara;tahe@dtu.dk;Teaching Assistant;\r\n"
              "#teacher;teacher;Cher;Tea;teacher@dtu.dk;Instructor;tea-cher\r\n"
              "#s230004;s230004;Højgård;Søren;s230004@student.dtu.dk;Student;\r\n")
    path = tmp_path / "classlist.csv"
    path.write_bytes(b"\xef\xbb\xbf" + export.encode("utf-8"))
    before = stored(lab)
    dry = roster_command(lab, path, dry_run=True)
    assert dry.returncode == 0, dry.stderr
    assert "dry run, nothing changed" in dry.stdout
    assert stored(lab) == before

    result = roster_command(lab, path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "imported: 5 people, read as utf-8" in out
    assert "added: 1 (s230004)" in out
    assert "removed: 1 (s230003)" in out
    assert "s230002: student -> ta" in out
    assert "s230001: ada-lovelace -> octo-unlinked" in out
    g = groups(lab)
    assert g["students"] == ["s230001", "s230004"]
    assert g["tas"] == ["s230002", "tahe"]
    assert g["instructors"] == ["teacher"]
    assert [p["name"] for p in stored(lab)["people"] if p["id"] == "s230004"] == ["Søren Højgård"]


def test_only_staff_tokens_may_import(lab):
    """Students and TAs cannot change the roster; instructors (and the operator's token) can."""
    def token_for(name):
        r = lab.api("POST", f"/users/{name}/tokens", json={"note": "roster test"})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    url = f"{lab.service_url('roster')}/api/import"
    for name, allowed in (("s230001", False), ("tahe", False), ("teacher", True)):
        r = requests.post(url, params={"dry_run": 1}, data=TEST_ROSTER.encode(),
                          headers={"Authorization": f"token {token_for(name)}"}, timeout=60)
        assert (r.status_code == 200) == allowed, (name, r.status_code, r.text[:200])
    r = requests.post(url, data=TEST_ROSTER.encode(), timeout=60)
    assert r.status_code in (302, 403)


def test_roster_roles_through_the_hub_api(lab):
    """Instructors see and manage course users' servers; TAs see students only; students see themselves."""
    def token_for(name):
        return lab.api("POST", f"/users/{name}/tokens", json={"note": "rbac test"}).json()["token"]

    def get(token, path):
        return requests.get(f"{lab.url}/hub/api{path}", headers={"Authorization": f"token {token}"}, timeout=30)

    teacher, ta, student = token_for("teacher"), token_for("tahe"), token_for("s230001")
    assert get(teacher, "/users/s230002").status_code == 200
    assert {u["name"] for u in get(teacher, "/users").json()} >= {"s230001", "s230002", "tahe", "teacher"}
    assert get(ta, "/users/s230002").status_code == 200
    assert get(ta, "/users/teacher").status_code == 404  # not visible to a TA
    assert {u["name"] for u in get(ta, "/users").json()} == {"s230001", "s230002", "s230003"}
    assert get(student, "/users/s230001").status_code == 200
    assert get(student, "/users/s230002").status_code == 404
    # Only instructors may stop a student's server (nothing runs: the hub answers 204 or 400, not 403).
    stop = lambda token: requests.delete(f"{lab.url}/hub/api/users/s230002/server",
                                         headers={"Authorization": f"token {token}"}, timeout=30)
    assert stop(teacher).status_code in (202, 204, 400)
    assert stop(ta).status_code in (403, 404)
    assert stop(student).status_code in (403, 404)
