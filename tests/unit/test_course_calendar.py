"""The course calendar follows the course: every session has an assignment released on its own
day, every core module of the course has one, every assignment gets the same working time to its
deadline and the same points in several test cells (so the 50 % rule means half the work
everywhere), every graded cell has gamed answers that the suite autogrades, and what students
read (README, notebook headers) is generated from the calendar."""

import datetime as dt
import json
from pathlib import Path

import yaml

from hub.course import docs as coursedocs
from hub.course.calendar import load_calendar

COURSE = Path(__file__).resolve().parents[2] / "course"
# The core modules of 02476 and the assignment module names that cover them.
CORE_MODULES = {
    "command line": "Command line", "package managers": "package managers", "deep learning software":
    "Deep learning software", "git": "Git", "code structure": "Code structure", "dvc": "Data version control",
    "config files": "Config files", "docker": "Docker", "profiling": "Profiling", "logging": "Logging",
    "unit testing": "Unit testing", "github actions": "GitHub Actions", "the cloud": "Using the cloud",
    "apis": "APIs", "api testing": "API testing", "data drifting": "Data drifting",
    "distributed data loading": "Distributed data loading",
}


def load():
    return yaml.safe_load((COURSE / "calendar.yaml").read_text())


def calendar():
    return load_calendar(COURSE / "calendar.yaml", COURSE / "source")


def notebook(name):
    return json.loads((COURSE / "source" / name / f"{name}.ipynb").read_text())


def graded(nb):
    return {c["metadata"]["nbgrader"]["grade_id"]: c["metadata"]["nbgrader"]["points"] for c in nb["cells"]
            if c["metadata"].get("nbgrader", {}).get("grade") and c["cell_type"] == "code"}


def weekdays_between(start: dt.date, end: dt.date) -> int:
    days, d = 0, start
    while d < end:
        d += dt.timedelta(days=1)
        days += d.weekday() < 5
    return days


def test_every_assignment_is_scheduled_once_and_stands_alone():
    scheduled = set(load()["assignments"])
    sources = {p.name for p in (COURSE / "source").iterdir() if p.is_dir()}
    assert scheduled == sources
    assert len(sources) >= 16
    for name in sources:
        # Graded notebooks run alone in the sandbox: nothing else may sit beside them.
        assert [p.name for p in (COURSE / "source" / name).iterdir()] == [f"{name}.ipynb"], name
        # Sources are kept without outputs: the release is made from them.
        stored = [c["metadata"].get("nbgrader", {}).get("grade_id") for c in notebook(name)["cells"]
                  if c["cell_type"] == "code" and (c["outputs"] or c["execution_count"])]
        assert not stored, f"{name}: outputs stored in cells {stored}"


def test_each_session_releases_on_its_day_with_equal_working_time():
    cal = calendar()
    assert len(cal.sessions) == 10
    dates = [s.date for s in cal.sessions.values()]
    assert dates == sorted(dates) and all(d.weekday() < 5 for d in dates)
    assert (dates[-1] - dates[0]).days < 14 and dates[0].month == 1
    for number in cal.sessions:
        assert any(a.session == number for a in cal.assignments.values()), f"session {number} releases nothing"
    spans = set()
    for a in cal.assignments.values():
        session = cal.sessions[a.session]
        assert a.release.date() == session.date and a.release.strftime("%H:%M") == "09:00", a.name
        assert a.due.strftime("%H:%M") == "23:59" and a.due.weekday() < 5, a.name
        spans.add(weekdays_between(a.release.date(), a.due.date()))
    assert spans == {2}, f"working days from release to due differ: {spans}"


def test_core_marks_follow_the_course():
    cal = calendar()
    modules = " ".join(a.module for a in cal.assignments.values() if a.core).lower()
    missing = [m for m, label in CORE_MODULES.items() if label.lower() not in modules]
    assert not missing, f"core modules without a core assignment: {missing}"
    optional = [a.name for a in cal.assignments.values() if not a.core]
    assert optional and len(optional) < len(cal.assignments) / 3
    assert 0 < cal.core_min_fraction <= 1 and "points" in cal.pass_description


def test_points_are_even_so_the_pass_rule_means_half_the_work():
    for name in calendar().assignments:
        cells = graded(notebook(name))
        assert sum(cells.values()) == 10, f"{name}: {sum(cells.values())} points, not 10"
        assert len(cells) >= 3, f"{name}: {len(cells)} graded cells"
        assert max(cells.values()) <= 4, f"{name}: one cell holds {max(cells.values())} of 10 points"


def test_every_graded_cell_has_at_least_two_gamed_answers():
    for name in calendar().assignments:
        gaming = COURSE / "gaming" / f"{name}.yaml"
        assert gaming.is_file(), f"{gaming} is missing"
        gamed = yaml.safe_load(gaming.read_text())["gamed"]
        solution_ids = {c["metadata"]["nbgrader"]["grade_id"] for c in notebook(name)["cells"]
                        if c["metadata"].get("nbgrader", {}).get("solution")}
        for g in gamed:
            assert set(g["cells"]) <= solution_ids, f"{gaming}: {g['name']}: not solution cells: {set(g['cells']) - solution_ids}"
        for gid in graded(notebook(name)):
            n = sum(gid in g["targets"] for g in gamed)
            assert n >= 2, f"{gaming}: {gid} is the target of {n} gamed answers, needs 2"


def test_readme_and_headers_are_generated_from_the_calendar():
    stale, problems = coursedocs.write(COURSE, check=True)
    assert not problems and not stale, f"run python -m hub.course.docs: {stale + problems}"
    text = (COURSE / "material" / "README.md").read_text()
    for a in calendar().assignments.values():
        assert a.name in text and coursedocs.when(a.due) in text
    for phrase in ("How to fetch, validate and submit", "Hidden tests", "every core assignment at 50 %",
                   "Where to get help"):
        assert phrase in text


def test_a_header_names_due_time_and_graded_cells(tmp_path):
    cal = calendar()
    nb = coursedocs.nbformat.from_dict(notebook("10-unit-testing"))
    text = coursedocs.header(cal, "10-unit-testing", nb)
    assert text.startswith("# 10 · Unit testing: tests that catch bugs")
    assert "due Tuesday 12 January 2027, 23:59" in text and "Session 5" in text
    for gid, points in graded(notebook("10-unit-testing")).items():
        assert f"`{gid}` ({points:g})" in text
