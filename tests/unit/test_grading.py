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
