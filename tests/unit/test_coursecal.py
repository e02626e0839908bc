"""Reading the course calendar (errors name file, line and key), the pass rule, the test clock."""

import datetime as dt

import pytest

from hub.course.calendar import CalendarError, Clock, load_calendar
from tests.unit.test_course_calendar import COURSE


def test_the_course_calendar_loads_with_its_sources():
    cal = load_calendar(COURSE / "calendar.yaml", COURSE / "source")
    first = cal.get("01-pytorch-training")
    assert first.release.isoformat() == "2027-01-04T09:00:00+01:00" and first.core
    assert cal.get("17-quantisation").core is False


def test_pass_rule_needs_every_core_module():
    cal = load_calendar(COURSE / "calendar.yaml")
    core = [a.name for a in cal.assignments.values() if a.core]
    assert cal.passed({name: 0.5 for name in core})
    assert not cal.passed({**{name: 1.0 for name in core}, core[0]: 0.49})
    assert not cal.passed({name: 1.0 for name in core[1:]})  # one core module missing


def test_errors_name_the_file_line_and_key(tmp_path):
    path = tmp_path / "calendar.yaml"
    path.write_text("timezone: Mars/Olympus\npass_rule:\n  core_min_fraction: 2\nassignments:\n"
                    "  a1:\n    release: 2027-01-05 09:00\n    due: 2027-01-04 09:00\n    core: maybe\n"
                    "  a2:\n    release: tomorrow\n    due: 2027-01-04 09:00\n    colour: red\n")
    with pytest.raises(CalendarError) as err:
        load_calendar(path, tmp_path)
    text = "\n".join(err.value.problems)
    assert f"{path}:1: timezone: unknown time zone 'Mars/Olympus'" in text
    assert f"{path}:3: pass_rule.core_min_fraction: 2 is not a fraction" in text
    assert f"{path}:7: assignments.a1.due: is not after the release time" in text
    assert f"{path}:8: assignments.a1.core: 'maybe' is not true or false" in text
    assert f"{path}:10: assignments.a2.release: 'tomorrow' is not a time like 2027-01-04 09:00" in text
    assert f"{path}:12: assignments.a2.colour: unknown key" in text
    assert "no source notebook" in text


def test_the_test_clock_moves_only_when_enabled(tmp_path):
    real = Clock(tmp_path / "clock.json", enabled=False)
    with pytest.raises(PermissionError):
        real.set(dt.datetime(2027, 1, 9, tzinfo=dt.timezone.utc))
    clock = Clock(tmp_path / "clock.json", enabled=True)
    clock.set(dt.datetime(2027, 1, 9, tzinfo=dt.timezone.utc))
    assert abs((clock.now() - dt.datetime(2027, 1, 9, tzinfo=dt.timezone.utc)).total_seconds()) < 5
    again = Clock(tmp_path / "clock.json", enabled=True)  # kept across a restart
    assert abs((again.now() - clock.now()).total_seconds()) < 5
    with pytest.raises(ValueError):
        clock.set(dt.datetime(2027, 1, 9))
