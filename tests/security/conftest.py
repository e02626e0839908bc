"""The red-team suite's shared pieces: the course state the attacks need (an assignment released
and open, attackers and an honest student on the roster), a way to run code inside a real
student container, and browser sessions of staff victims."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile

import nbformat
import pytest

from tests.browser.test_login import browser, login_dtu, new_page  # noqa: F401  (fixture)
from tests.conftest import INSTANCE, TEST_ROSTER, submission_archive

A = "04-project-cli"
ATTACKER = "s230001"          # runs code in their own container, with their own token
HONEST = "s240020"            # submits honest work; must stay untouched
FORGER = "s240021"            # submits notebooks that attack the grader
EXTRA = [HONEST, FORGER, "s240022", "s240023"]
ROSTER = TEST_ROSTER + "".join(f"{s},Red Team {s[-2:]},{s}@student.dtu.dk,,student\n" for s in EXTRA)


@pytest.fixture(scope="package")
def course(lab):
    """04-project-cli released and not yet due; the red team on the roster."""
    r = lab.import_roster(ROSTER)
    assert r.status_code == 200, r.text
    lab.set_clock("2027-01-06T12:00:00+01:00")
    lab.wait_course(lambda s: s["schedule"].get(A, {}).get("released"), f"the release of {A}")
    yield lab
    assert lab.import_roster(TEST_ROSTER).status_code == 200


@pytest.fixture(scope="package")
def attacker(course):
    """The attacker's own running server (a real student container)."""
    if not course.api("GET", f"/users/{ATTACKER}").json().get("servers"):
        course.start(ATTACKER, profile="cpu")
    yield ATTACKER
    if course.api("GET", f"/users/{ATTACKER}").json().get("servers"):
        course.stop(ATTACKER)  # later tests expect a fresh spawn form


@pytest.fixture
def staff_browser(course, browser):  # noqa: F811  (the fixture imported above)
    """``open_as(person)``: a fresh browser of that person, logged in through the DTU button."""
    pages = []

    def open_as(person: str):
        page = new_page(browser)
        login_dtu(course, page, person)
        page.wait_for_url(f"{course.url}/hub/**")
        pages.append(page)
        return page

    yield open_as
    for page in pages:
        try:
            page.context.close()
        except Exception:
            pass


def in_container(user: str, script: str, timeout: float = 180) -> dict:
    """Run a Python script as the student, inside their container; it prints one JSON line."""
    r = subprocess.run(["docker", "exec", "-i", "-w", "/home/jovyan", f"{INSTANCE}-{user}", "python3", "-"],
                       input=script, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


# What every script run in a student container starts with: the course service as the student's
# own nbgrader client reaches it (its URL, the Host the proxy routes by, the server's own token).
CLIENT = """
import io, json, os, tarfile, requests
BASE = os.environ["LAB_COURSE_URL"].rstrip("/")
H = {"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"], "Host": os.environ["LAB_COURSE_HOST"]}
def call(method, path, **kw):
    r = requests.request(method, BASE + "/" + path, headers={**H, **kw.pop("headers", {})}, timeout=60, **kw)
    try:
        body = r.json()
    except ValueError:
        body = r.text[:300]
    return r.status_code, body
def targz(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in entries:
            info = tarfile.TarInfo(name); info.size = len(data); t.addfile(info, io.BytesIO(data))
    return buf.getvalue()
"""


def release_notebook(lab) -> nbformat.NotebookNode:
    data = lab.course("GET", f"api/assignments/{A}/download").content
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return nbformat.reads(t.extractfile(f"{A}.ipynb").read().decode(), as_version=4)


def with_answer(release: nbformat.NotebookNode, answer: str, extra_cells=()) -> bytes:
    """A submission archive: the released notebook with ``answer`` in its first solution cell."""
    nb = nbformat.from_dict(json.loads(json.dumps(release)))
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = answer
            break
    nb.cells.extend(extra_cells)
    return submission_archive(A, nb)


def hub_exec(*args: str, user: str = "root", check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["docker", "exec", "-u", user, f"{INSTANCE}-hub-1", *args], capture_output=True, text=True,
                       timeout=120)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r
