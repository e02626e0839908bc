"""The assignment exchange and sandboxed grading, against the real lab: the calendar releases on
time (the test clock moves, nobody sleeps), students fetch and submit from their containers
with nbgrader's own commands, one student's attacks on another's work fail from inside a real
student container, malicious submissions are contained and score 0 with a reason while the
others are graded, and an interrupted autograde resumes without re-grading what is done."""

import datetime as dt
import io
import json
import subprocess
import tarfile
import textwrap
import time

import nbformat
import pytest

from hub.course.calendar import load_calendar
from tests.conftest import INSTANCE, ROOT, TEST_ROSTER, assignment_points, docker, solved, submission_archive

pytestmark = pytest.mark.integration

A = "04-project-cli"
POINTS = assignment_points(A)
CLOCK = "2027-01-05T10:00:00+01:00"
# What the calendar has released by CLOCK (the 5th, session 2).
RELEASED = sorted(name for name, a in load_calendar(ROOT / "course" / "calendar.yaml").assignments.items()
                  if a.release <= dt.datetime.fromisoformat(CLOCK))
EXTRA = ["s240001", "s240002", "s240003", "s240004", "s240005", "s240006"]
ROSTER = TEST_ROSTER + "".join(f"{s},Test Student {s[-1]},{s}@student.dtu.dk,,student\n" for s in EXTRA)


@pytest.fixture(scope="module")
def course(lab):
    r = lab.import_roster(ROSTER)
    assert r.status_code == 200, r.text
    lab.set_clock(CLOCK)
    # Released, and each release job recorded as done (the schedule says so a moment before the job does).
    lab.wait_course(lambda s: all(s["schedule"].get(a, {}).get("released") for a in RELEASED) and {
        j["assignment"] for j in s["jobs"] if j["action"] == "release" and j["state"] == "done"} >= set(RELEASED),
        "the calendar's releases")
    yield lab
    assert lab.import_roster(TEST_ROSTER).status_code == 200


def in_container(user: str, script: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", "-w", "/home/jovyan", f"{INSTANCE}-{user}", "bash", "-c", script],
                          capture_output=True, text=True, timeout=timeout)


def test_calendar_released_only_what_is_due(course):
    listed = course.course("GET", "api/assignments").json()
    names = [a["assignment_id"] for a in listed["assignments"]]
    assert sorted(names) == RELEASED and A in names and "06-reproducibility" not in names  # the 6th
    assert listed["now"].startswith("2027-01-05T09:0")
    # the scheduled releases ran without anyone logged in: the job log says "calendar"
    jobs = course.course("GET", "api/status").json()["jobs"]
    assert {(j["action"], j["assignment"], j["by"]) for j in jobs if j["state"] == "done"} >= {
        ("release", a, "calendar") for a in RELEASED}


def test_student_cannot_reach_another_students_work(course):
    """s230002 fetches and submits with nbgrader in their container; s230001, from theirs, tries
    every way to see, change or remove it, or to see unreleased work and hidden tests."""
    for user in ("s230001", "s230002"):
        course.start(user)
    try:
        attack_from_another_container(course)
    finally:
        for user in ("s230001", "s230002"):  # later tests expect them logged out and stopped
            course.stop(user)


def attack_from_another_container(course):
    r = in_container("s230002", f"nbgrader fetch_assignment {A} && nbgrader submit {A} && nbgrader list --cached")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Submitted as:" in r.stdout + r.stderr
    victim = course.course("GET", "api/submissions", token=course.user_token("s230002")).json()["submissions"]
    assert [s["assignment_id"] for s in victim] == [A]
    sid = victim[0]["id"]

    attack = textwrap.dedent(f"""
        import io, json, os, socket, tarfile, requests
        base = os.environ["LAB_COURSE_URL"].rstrip("/")
        h = {{"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"], "Host": os.environ["LAB_COURSE_HOST"]}}
        out = {{}}
        def code(method, path, **kw):
            try:
                return requests.request(method, base + "/" + path, headers=h, timeout=20, **kw).status_code
            except requests.RequestException as e:
                return type(e).__name__
        out["mine"] = requests.get(base + "/api/submissions", headers=h).json()["submissions"]
        out["by_param"] = requests.get(base + "/api/submissions", headers=h,
                                       params={{"student": "s230002", "student_id": "s230002"}}).json()["submissions"]
        out["their_feedback"] = code("GET", "api/submissions/{A}/{sid}/feedback")
        out["traversal"] = [code("GET", p) for p in (
            "api/assignments/..%2F..%2Finbound%2Fs230002%2F{A}/download",
            "api/assignments/..%2Finbound/download",
            "api/submissions/..%2F..%2Fs230002%2F{A}/{sid}/feedback",
            "api/assignments/%2E%2E/download")]
        out["unreleased"] = code("GET", "api/assignments/10-unit-testing/download")
        out["listed"] = [a["assignment_id"] for a in requests.get(base + "/api/assignments", headers=h).json()["assignments"]]
        release = requests.get(base + "/api/assignments/{A}/download", headers=h).content
        with tarfile.open(fileobj=io.BytesIO(release)) as t:
            text = "".join(t.extractfile(m).read().decode() for m in t.getmembers() if m.isfile())
        out["hidden_in_release"] = "BEGIN HIDDEN TESTS" in text or "BEGIN SOLUTION" in text or "_check_random_config" in text
        out["staff"] = {{p: code(m, p) for m, p in (("GET", "api/status"), ("GET", "api/grades.csv"), ("GET", "dashboard"),
                                                  ("POST", "api/assignments/{A}/collect"), ("PUT", "api/clock"))}}
        fg = base.replace("/services/course", "/services/formgrader")
        fh = {{**h, "Host": h["Host"].replace("course--service", "formgrader--service")}}
        out["formgrader"] = [requests.get(fg + p, headers=fh, allow_redirects=False, timeout=20).status_code
                             for p in ("/formgrader", "/formgrader/api/submissions/{A}", "/api/contents/submitted")]
        ports = {{}}
        for port in (10103, 10104, 10105):
            try:
                socket.create_connection(("hub", port), timeout=3).close()
                ports[port] = "open"
            except OSError as e:
                ports[port] = type(e).__name__
        out["ports"] = ports
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            info = tarfile.TarInfo("../../s230002/{A}/x.ipynb"); data = b"{{}}"; info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        out["evil_tar"] = code("POST", "api/assignments/{A}/submit", data=buf.getvalue())
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            info = tarfile.TarInfo("{A}.ipynb"); info.type = tarfile.SYMTYPE; info.linkname = "/srv/course/nbgrader/gradebook.db"
            t.addfile(info)
        out["symlink_tar"] = code("POST", "api/assignments/{A}/submit", data=buf.getvalue())
        out["fs"] = [os.path.exists(p) for p in ("/srv/course", "/var/run/docker.sock", "/srv/lab/course")]
        print(json.dumps(out))
    """)
    r = in_container("s230001", f"python3 - <<'EOF'\n{attack}\nEOF")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["mine"] == [] and out["by_param"] == []
    assert out["their_feedback"] == 404
    assert all(c in (400, 404) for c in out["traversal"]), out["traversal"]
    assert out["unreleased"] == 404 and "10-unit-testing" not in out["listed"]
    assert out["hidden_in_release"] is False
    assert all(c == 403 for c in out["staff"].values()), out["staff"]
    assert all(c in (302, 403) for c in out["formgrader"]), out["formgrader"]
    assert "open" not in out["ports"].values(), out["ports"]
    assert out["evil_tar"] == 400 and out["symlink_tar"] == 400
    assert out["fs"] == [False, False, False]
    # and the victim's submission is exactly as it was
    after = course.course("GET", "api/submissions", token=course.user_token("s230002")).json()["submissions"]
    assert after == victim
    r = in_container("s230002", "nbgrader list --cached")
    assert victim[0]["timestamp"] in r.stdout + r.stderr


def notebook_with(release: nbformat.NotebookNode, answer: str | None) -> bytes:
    """The release with ``answer`` in its first solution cell; None: all the work done."""
    nb = nbformat.from_dict(json.loads(json.dumps(release)))
    if answer is None:
        nb = solved(A, nb)
    for cell in nb.cells:
        if answer is not None and cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = answer
            break
    return submission_archive(A, nb)


MALICIOUS = {
    "s240001": ("fork bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"),
    "s240002": ("infinite loop", "while True:\n    pass"),
    "s240003": ("memory hog", "hog = bytearray(3 * 1024**3)"),
    "s240004": ("network", "import urllib.request\nurllib.request.urlopen('http://hub:8000/hub/health', timeout=5)"),
    "s240005": ("files outside the sandbox", "print(open('/srv/course/nbgrader/gradebook.db', 'rb').read(10))"),
}


@pytest.fixture(scope="module")
def submitted(course):
    """Five malicious submissions and one correct one, uploaded through the API as each student."""
    admin = course.course("GET", f"api/assignments/{A}/download")
    with tarfile.open(fileobj=io.BytesIO(admin.content)) as t:
        release = nbformat.reads(t.extractfile(f"{A}.ipynb").read().decode(), as_version=4)
    answers = {s: code for s, (_, code) in MALICIOUS.items()}
    answers["s240006"] = None  # the correct one
    for student, answer in answers.items():
        r = course.course("POST", f"api/assignments/{A}/submit", token=course.user_token(student),
                          data=notebook_with(release, answer))
        assert r.status_code == 201, r.text
        assert r.json()["late"] is False
    return answers


def ledger(course) -> dict:
    out = docker("exec", f"{INSTANCE}-hub-1", "cat", f"/srv/course/state/grading/{A}.json", check=False)
    return json.loads(out) if out.strip() else {}


def test_malicious_submissions_are_contained_and_score_zero(course, submitted):
    r = course.grader("autograde", A, "--collect", "--workers", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["failed"] == 0 and summary["submissions"] >= 6  # the six (and s230002 when run after the isolation test)
    assert "autograde 04-project-cli" in r.stderr  # the progress bar
    book = ledger(course)
    good = book["s240006"]
    assert good["status"] == "graded" and good["score"] == good["max_score"] == POINTS, good
    for student, (what, _) in MALICIOUS.items():
        entry = book[student]
        assert entry["status"] == "graded" and entry["score"] == 0, (what, entry)
        assert entry["reason"] or entry["errors"], (what, entry)
    assert "cell timeout" in book["s240001"]["reason"] or "wall-time" in book["s240001"]["reason"]
    assert "cell timeout" in book["s240002"]["reason"]
    assert "kernel died" in book["s240003"]["reason"]
    assert "URLError" in book["s240004"]["errors"] or "Network" in book["s240004"]["errors"]
    assert "FileNotFoundError" in book["s240005"]["errors"]
    # the reasons are in the instructor's output too, and no sandbox is left behind
    assert "cell timeout" in r.stderr and "kernel died" in r.stderr
    # every sandbox that ran a notebook is gone; what is left was started ahead and never got one
    for cid in docker("ps", "-aq", "--filter", "label=mlops-lab.role=autograde-sandbox").split():
        assert docker("inspect", "-f", "{{.State.Running}} {{index .Config.Labels \"mlops-lab.grading\"}}", cid).split() \
            == ["true", "warm"], cid
        assert "notebook received" not in subprocess.run(["docker", "logs", cid], capture_output=True, text=True).stderr
    # the grades export shows them
    csv = course.course("GET", "api/grades.csv").text
    rows = {line.split(",")[0]: line.split(",") for line in csv.splitlines()[1:]}
    header = csv.splitlines()[0].split(",")
    col = header.index(f"{A} (of {POINTS:g})")
    assert rows["s240006"][col] == f"{POINTS:g}" and rows["s240001"][col] == "0"


def test_interrupted_autograde_resumes_without_regrading(course, submitted):
    hub = f"{INSTANCE}-hub-1"
    docker("exec", "-u", "grader", hub, "rm", "-f", f"/srv/course/state/grading/{A}.json")
    proc = subprocess.Popen(["docker", "exec", "-u", "grader", "-w", "/srv/course/state/home", hub,
                             "python", "-m", "hub.course.grading", "autograde", A, "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(ledger(course)) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no two submissions graded in 300 s"
        time.sleep(0.3)
    # kill -9 the command and its workers, as a closed laptop or a crash would
    killer = ("import os, signal\n"
              "for p in filter(str.isdigit, os.listdir('/proc')):\n"
              "    try: cmd = open(f'/proc/{p}/cmdline', 'rb').read()\n"
              "    except OSError: continue\n"
              "    if int(p) != os.getpid() and (b'hub.course.grading' in cmd or b'multiprocessing' in cmd):\n"
              "        os.kill(int(p), signal.SIGKILL)\n")
    docker("exec", hub, "python3", "-c", killer)
    proc.wait(30)
    before = ledger(course)
    assert 2 <= len(before) < 7, before
    r = course.grader("autograde", A, "--workers", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    after = ledger(course)
    assert summary["already_graded"] == len(before)
    assert summary["graded_now"] + summary["failed"] == summary["submissions"] - len(before)
    assert f"{len(before)} of {summary['submissions']} submission(s) already graded" in r.stderr
    for student, entry in before.items():
        assert after[student]["graded_at"] == entry["graded_at"], student  # not graded again
    assert set(after) >= set(EXTRA) and after["s240006"]["score"] == POINTS


def test_a_student_taken_off_the_roster_loses_the_exchange(course, submitted):
    token = course.user_token("s240006")
    assert course.course("GET", "api/submissions", token=token).status_code == 200
    r = course.import_roster(TEST_ROSTER + "".join(
        f"{s},Test Student {s[-1]},{s}@student.dtu.dk,,student\n" for s in EXTRA if s != "s240006"))
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30
    while (code := course.course("GET", "api/submissions", token=token).status_code) == 200:
        assert time.monotonic() < deadline, "still allowed 30 s after leaving the roster"
        time.sleep(1)
    assert code == 403
    assert course.course("POST", f"api/assignments/{A}/submit", token=token, data=b"x").status_code == 403
