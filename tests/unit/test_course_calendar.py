"""The course calendar: every assignment of course/source is scheduled, on weekdays of the three
January weeks, released before it is due, with a pass rule."""

import datetime as dt
from pathlib import Path

import yaml

COURSE = Path(__file__).resolve().parents[2] / "course"


def load():
    return yaml.safe_load((COURSE / "calendar.yaml").read_text())


def test_every_assignment_is_scheduled_once():
    scheduled = set(load()["assignments"])
    sources = {p.name for p in (COURSE / "source").iterdir() if p.is_dir()}
    assert scheduled == sources
    assert len(sources) >= 8
    for name in sources:
        assert (COURSE / "source" / name / f"{name}.ipynb").is_file()


def test_times_are_weekdays_of_three_weeks_in_order():
    cal = load()
    assert cal["timezone"] == "Europe/Copenhagen"
    times = []
    for name, a in cal["assignments"].items():
        release = dt.datetime.strptime(str(a["release"]), "%Y-%m-%d %H:%M")
        due = dt.datetime.strptime(str(a["due"]), "%Y-%m-%d %H:%M")
        assert release < due, name
        assert release.weekday() < 5 and due.weekday() < 5, f"{name}: weekend"
        assert isinstance(a["core"], bool) and a["title"]
        times += [release, due]
    assert (max(times) - min(times)).days < 21
    assert min(times).month == 1
    assert 0 < cal["pass_rule"]["core_min_fraction"] <= 1
    assert any(a["core"] for a in cal["assignments"].values())
