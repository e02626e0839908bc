"""Attacks on the exchange and the grader, made the way a student would: code run in their own
container with their own server token, and submissions that attack the grading sandbox. Each
test checks what people see: a clear refusal, no grade changed, honest work untouched."""

from __future__ import annotations

import base64
import json
import textwrap

import nbformat
import pytest
import requests

from tests.conftest import assignment_points
from tests.security.conftest import (A, ATTACKER, CLIENT, FORGER, HONEST, hub_exec, in_container, release_notebook,
                                     with_answer)

pytestmark = pytest.mark.security

CONFIG_FILES = ["nbgrader_config.py", "nbgrader_config.json", "jupyter_server_config.py", "jupyter_config.json",
                "ipython_config.py", "sitecustomize.py", "conftest.py", "__init__.py", "pyproject.toml"]
MARKER = "/srv/course/state/home/PWNED-BY-STUDENT"


def honest_submission(course) -> dict:
    """The honest student's submission, through the API with their own token (their baseline)."""
    subs = course.course("GET", "api/submissions", token=course.user_token(HONEST)).json()["submissions"]
    if not subs:
        r = course.course("POST", f"api/assignments/{A}/submit", token=course.user_token(HONEST),
                          data=with_answer(release_notebook(course), "pass  # honest, not done yet"))
        assert r.status_code == 201, r.text
        subs = course.course("GET", "api/submissions", token=course.user_token(HONEST)).json()["submissions"]
    return subs[-1]


def test_a_submission_carries_only_the_assignments_files(course, attacker):
    """Config files nbgrader, Jupyter, IPython or Python would load are left out of the stored
    submission; the answer names them. Nothing of them reaches the course folder."""
    honest = honest_submission(course)
    payload = "open(%r, 'w').write('x')\n" % MARKER
    out = in_container(ATTACKER, CLIENT + textwrap.dedent(f"""
        code, release = call("GET", "api/assignments")
        files = next(a["files"] for a in release["assignments"] if a["assignment_id"] == "{A}")
        nb = requests.get(BASE + "/api/assignments/{A}/download", headers=H).content
        with tarfile.open(fileobj=io.BytesIO(nb)) as t:
            notebook = t.extractfile("{A}.ipynb").read()
        entries = [("{A}.ipynb", notebook)] + [(name, {payload!r}.encode()) for name in {CONFIG_FILES!r}]
        entries += [(".ipython/profile_default/startup/00.py", b"x"), ("../{A}.ipynb", b"x")]
        code, body = call("POST", "api/assignments/{A}/submit", data=targz(entries[:-1]))
        bad, why = call("POST", "api/assignments/{A}/submit", data=targz(entries))
        print(json.dumps({{"files": files, "code": code, "body": body, "bad": bad, "why": why}}))
    """))
    assert out["files"] == [f"{A}.ipynb"]
    assert out["code"] == 201, out["body"]
    assert sorted(out["body"]["ignored"]) == sorted(CONFIG_FILES + [".ipython/profile_default/startup/00.py"])
    # a path out of the folder refuses the whole upload, with the name
    assert out["bad"] == 400 and "outside its folder" in out["why"]["error"]
    stored = hub_exec("find", "/srv/course", "-name", "*config*", "-o", "-name", "sitecustomize.py",
                      "-o", "-name", "conftest.py").stdout.split()
    assert not [p for p in stored if "/exchange/" in p or "/submitted/" in p or "/autograded/" in p], stored
    assert hub_exec("test", "-e", MARKER, check=False).returncode != 0
    assert honest_submission(course) == honest


def test_the_formgrader_takes_no_folder_from_a_link(course, attacker, staff_browser):
    """The link a student sends a TA (formgrader?path=<their submission>) is refused with a
    message; nbgrader would have loaded that folder's nbgrader_config.py as the grader."""
    sid = course.course("GET", "api/submissions", token=course.user_token(ATTACKER)).json()["submissions"][-1]["id"]
    folder = f"/srv/course/exchange/inbound/{ATTACKER}/{A}/{sid}"
    for victim in ("tahe", "teacher"):
        page = staff_browser(victim)
        response = page.goto(f"{course.service_url('formgrader')}/formgrader?path={folder}")
        assert response.status == 400
        assert "a path in the link is not accepted" in page.content()
        page.goto(f"{course.service_url('formgrader')}/formgrader")
        page.get_by_text("Manage Assignments").first.wait_for()
        page.context.close()
    assert hub_exec("test", "-e", MARKER, check=False).returncode != 0


FORGE = r'''
import base64, json, os, signal
stolen = []
for path in ("/proc/1/mem", "/proc/1/environ"):
    try:
        stolen.append(open(path, "rb").read(4096)[:40])
    except OSError as e:
        stolen.append(type(e).__name__)
print("STOLEN", stolen, flush=True)
nb = json.loads(base64.b64decode("{release}"))
body = base64.b64encode(json.dumps({{"notebook": nb, "reason": "", "seconds": 1.0}}).encode())
marker = b"==MLOPS-LAB-SANDBOX-RESULT=="
# Frames without the run's secret, and with guessed ones, to every pipe this process holds: one
# of them is the container's real stdout (the kernel keeps a copy of it).
frames = [b"\n" + marker + guess + b"\n" + body + b"\n" for guess in (b"", b"0" * 64)]
for fd in map(int, os.listdir("/proc/self/fd")):
    try:
        if os.readlink(f"/proc/self/fd/{{fd}}").startswith("pipe:") and fd != 0:
            for frame in frames:
                os.write(fd, frame)
    except OSError:
        pass
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGKILL):
    try:
        os.kill(1, sig)
    except OSError as e:
        print("kill", sig, type(e).__name__)
'''


def test_a_forged_sandbox_result_gets_no_marks(course):
    """A notebook that prints a result frame of its own (the released notebook with no errors,
    which nbgrader would score full) and then signals the executor (PID 1) gets 0, with a
    reason; a correct submission graded in the same run gets its marks."""
    release = release_notebook(course)
    clean = nbformat.from_dict(json.loads(json.dumps(release)))
    for cell in clean.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    encoded = base64.b64encode(json.dumps(clean).encode()).decode()
    r = course.course("POST", f"api/assignments/{A}/submit", token=course.user_token(FORGER),
                      data=with_answer(release, FORGE.format(release=encoded)))
    assert r.status_code == 201, r.text
    graded = course.grader("autograde", A, "--collect", "--workers", "2", "--force")
    assert graded.returncode == 0, graded.stdout + graded.stderr
    book = json.loads(hub_exec("cat", f"/srv/course/state/grading/{A}.json").stdout)
    forger = book[FORGER]
    assert forger["status"] == "graded" and forger["score"] == 0, forger
    assert forger["max_score"] == assignment_points(A)
    # The executor survived every signal; what the notebook read of PID 1 is in its own output.
    autograded = hub_exec("cat", f"/srv/course/nbgrader/autograded/{FORGER}/{A}/{A}.ipynb").stdout
    assert "STOLEN" in autograded and "PermissionError" in autograded, autograded[:2000]
    # The export says 0 for the forger.
    csv = course.course("GET", "api/grades.csv").text
    header, *rows = csv.splitlines()
    col = header.split(",").index(f"{A} (of {assignment_points(A):g})")
    row = next(r.split(",") for r in rows if r.startswith(FORGER + ","))
    assert row[col] == "0"


def test_uploads_are_limited_while_they_stream_in(course):
    """Too big is cut off while it streams in and stores nothing; too many entries is refused while
    reading, with a message; a file and a folder of the same name is answered cleanly and leaves
    nothing."""
    token = course.user_token(HONEST)
    url = f"{course.service_url('course')}/api/assignments/{A}/submit"
    headers = {"Authorization": f"token {token}"}
    before = len(course.course("GET", "api/submissions", token=token).json()["submissions"])

    def endless():
        for _ in range(200):  # 200 MiB, past the 100 MiB limit, without a Content-Length
            yield b"\0" * 2**20

    try:
        # The service answers 413 and closes the connection at the limit; the proxy, still being
        # sent the body, may report that as 503. Either way nothing is stored.
        r = requests.post(url, data=endless(), headers=headers, timeout=120)
        assert r.status_code in (413, 503), r.text
    except requests.ConnectionError:
        pass
    assert len(course.course("GET", "api/submissions", token=token).json()["submissions"]) == before

    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for i in range(3000):
            t.addfile(tarfile.TarInfo(f"e{i}"), io.BytesIO(b""))
    r = requests.post(url, data=buf.getvalue(), headers=headers, timeout=60)
    assert r.status_code == 400 and "more than 1000 entries" in r.json()["error"], r.text
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name in (f"{A}.ipynb", f"{A}.ipynb/inside"):
            info = tarfile.TarInfo(name)
            info.size = 2
            t.addfile(info, io.BytesIO(b"{}"))
    r = requests.post(url, data=buf.getvalue(), headers=headers, timeout=60)
    assert r.status_code == 201 and r.json()["ignored"] == [f"{A}.ipynb/inside"], r.text
    leftovers = hub_exec("find", "/srv/course/exchange", "-name", "*.partial").stdout.strip()
    assert leftovers == ""
    # A bad token is no token: refused, nothing stored.
    before = len(course.course("GET", "api/submissions", token=token).json()["submissions"])
    r = requests.post(url, data=buf.getvalue(), headers={"Authorization": "token not-a-token"}, timeout=60)
    assert r.status_code == 403
    assert len(course.course("GET", "api/submissions", token=token).json()["submissions"]) == before
