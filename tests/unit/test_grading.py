"""Grading and the course service without Docker: the settings they load, the grading CLI's
defaults, the calendar's jobs and the grades export over a real nbgrader gradebook (SQLite)."""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def lab_env(tmp_path, text: str = "", **extra) -> dict:
    """The environment of a lab process whose lab.yaml is ``text``, with a course volume in tmp_path."""
    (tmp_path / "lab.yaml").write_text(text)
    (tmp_path / "course" / "nbgrader").mkdir(parents=True, exist_ok=True)
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
            "LAB_SETTINGS_FILE": str(tmp_path / "lab.yaml"), "LAB_COURSE_ROOT": str(tmp_path / "course"),
            "LAB_COURSE_SRC": str(ROOT / "course"), **extra}


def grading_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hub.course.grading", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_make_autograde_uses_the_workers_of_lab_yaml(tmp_path):
    """`make autograde` without WORKERS runs as many workers as lab.yaml's grading.workers says
    (it used to fall back to one per core, whatever lab.yaml said)."""
    r = grading_cli(lab_env(tmp_path, "grading:\n  workers: 3\n"), "autograde", "01-pytorch-training")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["workers"] == 3
    r = grading_cli(lab_env(tmp_path, "grading:\n  workers: 3\n"), "autograde", "01-pytorch-training",
                    "--workers", "1")
    assert json.loads(r.stdout.strip().splitlines()[-1])["workers"] == 1  # the command line wins


def test_a_bad_lab_yaml_stops_the_grading_cli_with_the_file_and_line(tmp_path):
    r = grading_cli(lab_env(tmp_path, "grading:\n  workers: many\n"), "autograde", "01-pytorch-training")
    assert r.returncode == 2
    assert f"{tmp_path / 'lab.yaml'}:2: grading.workers: 'many' is not of type integer" in r.stderr


def test_an_unknown_assignment_is_named(tmp_path):
    r = grading_cli(lab_env(tmp_path), "autograde", "99-nothing")
    assert r.returncode == 1 and "no assignment '99-nothing'" in r.stderr


def test_grading_reads_its_places_from_the_settings(tmp_path, monkeypatch):
    """Paths and the gradebook come from one Settings object; nothing is read at import time."""
    from hub import settings
    from hub.course import grading

    for name, value in lab_env(tmp_path, LAB_GRADEBOOK_URL="postgresql://g:pw@db/gradebook").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(settings, "_CURRENT", {})
    assert grading.coursedir_root() == tmp_path / "course" / "nbgrader"
    assert grading.ledger_path("01-pytorch-training") == tmp_path / "course" / "state" / "grading" / "01-pytorch-training.json"
    assert grading.gradebook_url() == "postgresql+psycopg2://g:pw@db/gradebook"
    config = grading.lab_config()
    assert config.CourseDirectory.root == str(tmp_path / "course" / "nbgrader")
    assert config.CourseDirectory.course_id == "mlops-02476"  # the course's own nbgrader_config.py
    assert config.LabExchange.root == str(tmp_path / "course" / "exchange")
    assert "01-pytorch-training" in grading.calendar().assignments


@pytest.fixture
def course(tmp_path, monkeypatch):
    """The course service's state, built from a lab.yaml the way the service builds it."""
    from hub import settings

    text = "auth:\n  admin_users: [boss]\ngrading:\n  test_clock: true\n  grace_minutes: 30\n  workers: 2\n"
    for name, value in lab_env(tmp_path, text).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(settings, "_CURRENT", {})
    from hub.course.state import Course
    c = Course()
    c.prepare()
    return c


def test_the_course_service_takes_everything_from_the_settings(course, tmp_path):
    assert course.root == tmp_path / "course" and course.src == ROOT / "course"
    assert course.operators == {"boss"} and course.workers == 2 and course.clock.enabled
    assert course.course_id == "mlops-02476"
    assert course.formgrader_url == "http://formgrader--service.localhost:8000/services/formgrader/"
    assert (tmp_path / "course" / "nbgrader" / "source" / "01-pytorch-training" / "01-pytorch-training.ipynb").is_file()
    env = course.grader_env()  # what `python -m hub.course.grading` gets: the same settings, no other variables
    assert env["LAB_SETTINGS_FILE"] == str(tmp_path / "lab.yaml") and "LAB_GRADING" not in env


def test_the_calendar_releases_on_time_and_grades_after_the_grace(course):
    first = course.calendar.assignments["01-pytorch-training"]
    course.clock.set(first.release - dt.timedelta(minutes=1))
    assert ("01-pytorch-training", "release") not in course.due_jobs()
    course.clock.set(first.release)
    assert ("01-pytorch-training", "release") in course.due_jobs()
    course.save_schedule({"01-pytorch-training": {"released": first.release.isoformat()}})
    course.clock.set(first.due + dt.timedelta(minutes=29))
    jobs = course.due_jobs()
    assert ("01-pytorch-training", "release") not in jobs and ("01-pytorch-training", "deadline") not in jobs
    course.clock.set(first.due + dt.timedelta(minutes=30))  # grading.grace_minutes
    assert ("01-pytorch-training", "deadline") in course.due_jobs()
    # Not twice while one is queued.
    course.enqueue("01-pytorch-training", "deadline", "calendar")
    assert ("01-pytorch-training", "deadline") not in course.due_jobs()


def test_the_dashboard_and_the_student_page_escape_what_they_show(course):
    """The pages are plain functions of the course's state; a name or a sandbox's reason with
    markup in it is shown as text."""
    from hub.course import pages

    row = {"assignment": "01-pytorch-training", "title": "<script>alert(1)</script>", "core": True,
           "release": "2027-01-04T09:00:00+01:00", "due": "2027-01-06T23:59:00+01:00", "released": True,
           "fetched": 3, "submitted": 2, "late": 1, "graded": 2, "scores": [10.0, 4.0], "max_score": 10.0,
           "flagged": {"s230001": "<img src=x onerror=alert(1)>"}}
    page = pages.dashboard(course, [row], "teacher", "instructor", "/services/course/api/grades.csv")
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("<rect") == 4 + 10  # four counts, ten score bins
    assert 'href="/services/course/api/grades.csv"' in page
    mine = pages.my_assignments(course, "s230001")
    assert "My assignments (s230001)" in mine and "<table>" in mine


def test_a_worker_checks_cell_metadata_as_nbgrader_does(monkeypatch):
    """The worker's metadata check (the schema checked once) accepts and refuses what nbgrader's
    own check does, with the same error."""
    import jsonschema
    from nbformat.v4 import new_code_cell
    from nbgrader.nbgraderformat import common
    from nbgrader.nbgraderformat.v3 import MetadataValidatorV3

    from hub.course import grading

    validator = MetadataValidatorV3()
    good = new_code_cell("x = 1", metadata={"nbgrader": {"schema_version": 3, "grade": True, "solution": False,
                                                         "locked": True, "points": 2, "grade_id": "t1"}})
    bad = new_code_cell("x = 1", metadata={"nbgrader": {"schema_version": 3, "grade": True, "solution": False,
                                                        "locked": True, "points": "two", "grade_id": "t1"}})

    def outcome(cell):
        try:
            validator.validate_cell(cell)
        except jsonschema.ValidationError as exc:
            return exc.message
        return "valid"

    before = outcome(good), outcome(bad)
    assert before[0] == "valid" and "'two'" in before[1]
    monkeypatch.setattr(common, "jsonschema", common.jsonschema)  # put back after the test
    checks = []
    real = jsonschema.validators.validator_for(validator.schema).check_schema
    monkeypatch.setattr(jsonschema.validators.validator_for(validator.schema), "check_schema",
                        lambda schema: checks.append(1) or real(schema))
    grading.check_cell_metadata_once_per_schema()
    assert [outcome(good), outcome(bad)] * 3 == [outcome(c) for c in (good, bad) * 3] == list(before) * 3
    assert len(checks) == 1  # the schema itself was checked once, not once per cell


def test_a_worker_checks_the_gradebook_tables_once(tmp_path, monkeypatch):
    """A grading worker keeps one engine per gradebook and checks its tables once; the gradebook
    works as before."""
    import nbgrader.api
    from sqlalchemy import event

    from hub.course import grading

    for name in ("create_engine", "inspect"):
        monkeypatch.setattr(nbgrader.api, name, getattr(nbgrader.api, name))
    monkeypatch.setattr(nbgrader.api.Base.metadata, "create_all", nbgrader.api.Base.metadata.create_all)
    monkeypatch.setattr(grading, "_ENGINES", {})
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # nbgrader runs alembic
    url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    with nbgrader.api.Gradebook(url) as gb:  # as autograde_all does before the workers
        gb.add_student("s230001")
    grading.reuse_gradebook_engines()
    statements = []
    for i in range(5):
        with nbgrader.api.Gradebook(url) as gb:
            if i == 0:
                engine = gb.engine
                event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
            gb.add_assignment(f"a{i}")
            assert [s.id for s in gb.students] == ["s230001"]
    assert len(grading._ENGINES) == 1
    assert not [s for s in statements if "PRAGMA" in s.upper() or "sqlite_master" in s]
    with nbgrader.api.Gradebook(url) as gb:
        assert sorted(a.name for a in gb.assignments) == ["a0", "a1", "a2", "a3", "a4"]


def test_each_submission_gets_its_own_sandbox_report(tmp_path, monkeypatch):
    """What the sandbox says of a notebook (the reason it was stopped, where its time went) goes
    to the report of the submission being graded, not to a list shared by the process."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import nbformat

    from hub import settings
    from hub.course import grading

    seen = []

    class Runner(BaseHTTPRequestHandler):  # the sandbox runner's protocol, as hub.course.runner speaks it
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers["Authorization"], body["label"]))
            reply = json.dumps({"notebook": body["notebook"], "reason": f"stopped: {body['label']}", "seconds": 1.0,
                                "timing": {"execute": 0.5, "kernel_wait": 0.1}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Runner)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "token").write_text("t0k3n\n")
    monkeypatch.setattr(settings.Settings, "sandbox_url", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(settings.Settings, "sandbox_token_file", tmp_path / "token")
    try:
        reports = [grading.SandboxReport(), grading.SandboxReport()]
        for report, student in zip(reports, ("s230001", "s230002")):
            executor = grading.lab_config(report).Autograde.autograde_preprocessors[0]
            resources = {"nbgrader": {"assignment": "a1", "student": student, "notebook": "nb"}}
            executor().preprocess(nbformat.v4.new_notebook(), resources)
    finally:
        server.shutdown()
    assert seen == [("/run", "token t0k3n", "a1/s230001/nb"), ("/run", "token t0k3n", "a1/s230002/nb")]
    assert [r.reasons for r in reports] == [["nb: stopped: a1/s230001/nb"], ["nb: stopped: a1/s230002/nb"]]
    assert [r.timings[0]["execute"] for r in reports] == [0.5, 0.5] and all(len(r.timings) == 1 for r in reports)
    assert grading.lab_config().Autograde.autograde_preprocessors[0] is grading.SandboxExecute  # no report: none kept
