"""The course calendar (``course/calendar.yaml``): when each assignment is released and due,
which modules are core, and the pass rule; and the clock the course service schedules by.

nbgrader knows one due date per assignment and nothing of release times or passing, so this
small reader is ours. Every problem is reported at once as ``FILE:LINE: key: message``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from ..settings import _line_index

NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class CalendarError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid course calendar:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class Assignment:
    name: str
    title: str
    release: dt.datetime  # aware, in the course's time zone
    due: dt.datetime
    core: bool
    session: int | None = None
    module: str = ""


@dataclass(frozen=True)
class Session:
    number: int
    date: dt.date
    title: str


@dataclass(frozen=True)
class Calendar:
    timezone: str
    assignments: dict[str, Assignment]
    core_min_fraction: float
    pass_description: str
    sessions: dict[int, Session] = field(default_factory=dict)

    def get(self, name: str) -> Assignment | None:
        return self.assignments.get(name)

    def passed(self, fractions: dict[str, float]) -> bool:
        """The pass rule: every core module at core_min_fraction or more of its points."""
        return all(fractions.get(a.name, 0.0) >= self.core_min_fraction
                   for a in self.assignments.values() if a.core)


def load_calendar(path: str | Path, source_dir: str | Path | None = None) -> Calendar:
    import re

    path = Path(path)
    problems: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise CalendarError([f"{path}: cannot read: {exc}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise CalendarError([f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    lines = _line_index(node) if node is not None else {}

    def err(keys: tuple[str, ...], message: str) -> None:
        line = lines.get(keys) or lines.get(keys[:-1]) or 1
        problems.append(f"{path}:{line}: {'.'.join(keys)}: {message}")

    if not isinstance(data, dict):
        raise CalendarError([f"{path}:1: the calendar must be a mapping"])
    for key in data:
        if key not in ("timezone", "pass_rule", "sessions", "assignments"):
            err((str(key),), "unknown key (expected timezone, pass_rule, sessions, assignments)")
    tzname = data.get("timezone", "Europe/Copenhagen")
    try:
        tz = ZoneInfo(str(tzname))
    except (ZoneInfoNotFoundError, ValueError):
        err(("timezone",), f"unknown time zone {tzname!r}")
        tz = ZoneInfo("UTC")
    rule = data.get("pass_rule") or {}
    fraction = rule.get("core_min_fraction", 0.5) if isinstance(rule, dict) else None
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 <= fraction <= 1:
        err(("pass_rule", "core_min_fraction"), f"{fraction!r} is not a fraction between 0 and 1")
        fraction = 0.5
    description = str(rule.get("description", "")) if isinstance(rule, dict) else ""
    sessions: dict[int, Session] = {}
    raw_sessions = data.get("sessions") or {}
    if not isinstance(raw_sessions, dict):
        err(("sessions",), "must map each session's number to its date and title")
        raw_sessions = {}
    for number, sess in raw_sessions.items():
        keys = ("sessions", str(number))
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            err(keys, "a session's key is its number: 1, 2, ...")
            continue
        if not isinstance(sess, dict) or not isinstance(sess.get("date"), dt.date) or not sess.get("title"):
            err(keys, "must be a mapping with date (like 2027-01-04) and title")
            continue
        for key in sess:
            if key not in ("date", "title"):
                err(keys + (str(key),), "unknown key (expected date, title)")
        sessions[number] = Session(number, sess["date"], str(sess["title"]))
    assignments: dict[str, Assignment] = {}
    raw = data.get("assignments")
    if not isinstance(raw, dict) or not raw:
        err(("assignments",), "must map each assignment's name to its release and due times")
        raw = {}
    for name, a in raw.items():
        name = str(name)
        keys = ("assignments", name)
        if not re.match(NAME_RE, name):
            err(keys, "not a valid assignment name (lower-case letters, digits, - and _)")
            continue
        if not isinstance(a, dict):
            err(keys, "must be a mapping with release, due, title and core")
            continue
        for key in a:
            if key not in ("title", "release", "due", "core", "session", "module"):
                err(keys + (str(key),), "unknown key (expected title, release, due, core, session, module)")
        times = {}
        for key in ("release", "due"):
            value = a.get(key)
            if isinstance(value, dt.datetime):
                times[key] = value.replace(tzinfo=tz) if value.tzinfo is None else value
                continue
            try:
                times[key] = dt.datetime.strptime(str(value), "%Y-%m-%d %H:%M").replace(tzinfo=tz)
            except ValueError:
                err(keys + (key,), f"{value!r} is not a time like 2027-01-04 09:00")
        if len(times) == 2 and times["release"] >= times["due"]:
            err(keys + ("due",), "is not after the release time")
        core = a.get("core", True)
        if not isinstance(core, bool):
            err(keys + ("core",), f"{core!r} is not true or false")
        session = a.get("session")
        if session is not None and session not in sessions:
            err(keys + ("session",), f"{session!r} is not one of the sessions ({', '.join(map(str, sessions)) or 'none'})")
            session = None
        if source_dir is not None and not (Path(source_dir) / name / f"{name}.ipynb").is_file():
            err(keys, f"no source notebook {Path(source_dir) / name / (name + '.ipynb')}")
        if len(times) == 2:
            assignments[name] = Assignment(name, str(a.get("title") or name), times["release"], times["due"],
                                           bool(core), session, str(a.get("module") or ""))
    if problems:
        raise CalendarError(problems)
    return Calendar(str(tzname), assignments, float(fraction), description, sessions)


class Clock:
    """The course's time: real time, or (``grading.test_clock``) real time plus an offset that the
    test suite sets through the course service, so deadlines pass without sleeping. The offset
    is kept in a file so it survives a restart of the service."""

    def __init__(self, state_file: str | Path, enabled: bool):
        self.state_file = Path(state_file)
        self.enabled = enabled
        self.offset = 0.0
        if enabled and self.state_file.is_file():
            try:
                self.offset = float(json.loads(self.state_file.read_text())["offset"])
            except (ValueError, KeyError, OSError):
                self.offset = 0.0

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=self.offset)

    def set(self, when: dt.datetime) -> None:
        if not self.enabled:
            raise PermissionError("the test clock is off (grading.test_clock: false)")
        if when.tzinfo is None:
            raise ValueError("the time needs a UTC offset, like 2027-01-07T00:00:00+01:00")
        self.offset = (when - dt.datetime.now(dt.timezone.utc)).total_seconds()
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"offset": self.offset}))
        os.replace(tmp, self.state_file)
