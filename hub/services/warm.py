"""Warm capacity before class: a hub-managed service at ``/services/warm/`` that starts the servers
of recently active students shortly before each session of the course calendar, so that at 9:00
they find their server running instead of all starting one at once.

**Why it is ours.** Nothing in the Jupyter ecosystem starts servers ahead of a timetable:
KubeSpawner's and Zero to JupyterHub's "user placeholders" keep *cluster nodes* warm (pods of
nothing that a real user's pod pushes out), which Docker on one host does not need; the idle
culler only stops servers; JupyterHub's API can start a server but knows no calendar. The
calendar (``hub.course.calendar``), the roster's ``students`` group and the course clock are the
lab's own, so the few rules here are too. It only calls the hub's public REST API.

**When.** Each session of ``course/calendar.yaml`` starts at ``warm.session_start`` (09:00) on its
date in the calendar's time zone, or at the earliest release time on that date of an assignment
of that session (or of no session), if that is earlier. Time is the course clock
(``grading.test_clock``: the offset the course service keeps in ``<course root>/state/clock.json``,
read afresh every tick), so the test suite moves it with ``PUT /services/course/api/clock``. The
hub's own records (users' and servers' ``last_activity``) are in real time, and so is everything
this service compares with them or writes to the hub; only the calendar's times are course time.

**Each tick** (every 30 s; ``api/warm`` and ``api/release`` below look first too), with S the next
session's start:

1. *Look*: one paged listing of the students (``GET /hub/api/users``, which RBAC limits to the
   ``students`` group) gives each warmed server's state: starting, ready, used (its
   ``last_activity`` is later, by more than a few seconds, than the last activity this service
   posted for it: the single-user server and the proxy report real use), or gone (stopped by
   someone else, or the student left the ``students`` group). Used and gone servers are
   forgotten: never held or stopped by this service again. Use is seen when the hub hears of it:
   the single-user server reports every ``JUPYTERHUB_ACTIVITY_INTERVAL`` (5 min by default) and
   the hub reads the proxy's every 5 min, so ``warm.hold_minutes`` should be longer than that.
2. *Release*: once the course clock passes S + ``warm.hold_minutes``, each warmed server that is
   still unused is stopped (``DELETE /hub/api/users/NAME/server``). A server still starting then
   is looked at again next tick.
3. *Hold*: until S, ``POST /hub/api/users/NAME/activity`` for each ready, unused warmed server with
   the real time, so the idle culler (which stops servers idle for ``culler.timeout``, or a
   profile's ``idle_timeout``) leaves it alone. Only the server's activity is posted, never the
   user's. After S nothing is posted: an unused server is idle from S on, and the culler may stop
   it before this service does if ``culler.timeout`` is shorter than the hold (it is then gone).
4. *Warm*: if the course clock is in [S - ``warm.lead_minutes``, S), choose students and queue
   them (below). Outside the window nothing new is started.

**Whom.** Members of the hub group ``students`` with no server (running or pending) whose own
last activity is within ``warm.active_within_days`` (real time) of now, most recent first, as many
as fit in ``warm.memory_budget`` at the warm profile's ``mem_limit`` each, counting the servers
already warmed for S (queued, starting, ready or used: used ones still take their memory). A
student's *own* last activity: starting and stopping a server moves the hub's ``last_activity``
of the user, so when this service warmed someone whose server then went unused, the activity it
caused (up to a few minutes after that server ended) is not counted, and the student's activity
from before the warm-up is used instead; otherwise one warm-up would make a student "recently
active" for ever. By the schedule, a student is warmed at most once per session (a failed start
is tried again on later ticks, at most three times in all); ``POST api/warm`` may warm again
those whose earlier warm server for the session was stopped. With ``hub.active_server_limit``
set, warming stops so that a tenth of the limit (at least one server) stays free for everyone
else, counting the students' servers this service can see (it cannot see staff's).

**How.** With the warm profile: the default profile if it is a CPU profile open to everyone,
else the first such profile; never a GPU profile (and no warming at all if there is no such
profile). ``POST /hub/api/users/NAME/server`` with the spawn form's user options
(``{"profile": NAME}``). Queued students are started by four workers (fewer if
``spawner.starts_at_once`` is lower), each waiting until its server is ready or has failed
before starting the next: the spawner starts servers a few at a time in arrival order, and a
flood of warm starts would put the students who log in early behind all of them. Right before
its start, each student is checked again (still a student, still no server). A failed start is
logged with the hub's answer and does not stop the others.

**State**: which servers were warmed for which session, with their state and times, in a small
JSON file on the hub's state volume (``/srv/jupyterhub/warm.json``), written atomically after
each change, so a restart of the hub (or of this service) loses nothing: queued students are
queued again (unless their session's start + hold has passed), warmed servers are held and
released as before. A file that cannot be read or
parsed is set aside as ``warm.json.bad`` with an error in the log, and the service starts with
no warmed servers (those it had warmed are then left to the idle culler). Finished records stay
for the page and the activity rule, and are dropped ``warm.active_within_days`` + 1 day after
they ended.

**API and page** (through the hub's OAuth: people or tokens with
``access:services!service=warm``; then the course role of ``hub.permissions``):

- ``GET /services/warm/``: the staff page (instructors and TAs): the next session and its start,
  the window, the budget and how many servers fit, every warmed server with its state, and the
  last tick's result. No scripts. ``GET api/status``: the same as JSON.
- ``POST api/warm`` (an API token, not a login cookie; instructors, hub admins, the lab-admin
  token), body optionally ``{"session": N}``: warm for that session, or the next one, *now*,
  whatever the window (for operators, and for the burst harness). It answers with the students it
  queued (they start in the background; ``api/status`` shows them) and how many fit. A session
  whose start + hold has passed is refused (409).
- ``POST api/release`` (same rights): stop every unused warmed server now and cancel the queued
  ones; used ones are forgotten.

``warm.enabled: false`` stops the schedule (no warming in the window); ``api/warm`` still works
and warmed servers are still held and released. ``warm.memory_budget: "0"`` warms nobody.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import json
import logging
import math
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, urlparse
from zoneinfo import ZoneInfo

from jupyterhub.services.auth import HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from tornado import httpclient, ioloop, web

from hub.permissions import role_of
from hub.profiles import Profile, profiles_from_settings
from hub.roster import ROLE_GROUPS
from hub.services.base import ServiceHandler
from hub.settings import SIZE_RE

log = logging.getLogger("warm")

NAME = "warm"
PORT = 10106  # 10101 gpu-usage, 10102 roster, 10103 course, 10104 sandbox (loopback), 10105 formgrader, 10107 monitor
STUDENTS = ROLE_GROUPS["student"]
TICK_SECONDS = 30.0
SLACK = dt.timedelta(seconds=3)          # server activity this much after our last post means real use
OWN_ACTIVITY_MARGIN = dt.timedelta(minutes=5)  # a stop moves the user's last_activity a little after it ends
MAX_ATTEMPTS = 3                         # starts of one student for one session, by the schedule
WORKERS = 4
POLL_SECONDS = 2.0
CALLS_AT_ONCE = 8                        # activity posts and stops the hub handles at a time
HISTORY_EXTRA = dt.timedelta(days=1)
MAX_RECORDS = 5000
STATE_VERSION = 1

LIVE = ("queued", "starting", "ready")
TERMINAL = ("used", "stopped", "gone", "failed", "cancelled")
STATES = LIVE + TERMINAL
COUNTED = ("queued", "starting", "ready", "used")  # take memory (or will) for their session
STAFF_VIEW = ("instructor", "ta")
STAFF_MANAGE = ("instructor",)
UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


# -- small helpers -----------------------------------------------------------------------------

def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(when: dt.datetime | None) -> str | None:
    """UTC, ISO 8601 with Z, as the hub's API writes times."""
    if when is None:
        return None
    return when.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(text: Any) -> dt.datetime | None:
    """An ISO time from the hub or the state file (naive ones are UTC); None if absent or not a time."""
    if not text or not isinstance(text, str):
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def parse_size(text: str) -> int:
    """Bytes in a size like 512M, 1.5G or 0 (Docker's units: K = 1024)."""
    text = str(text).strip()
    if text == "0":
        return 0
    if not SIZE_RE.match(text):
        raise ValueError(f"{text!r} is not a size like 512M or 4G")
    return int(float(text[:-1]) * UNITS[text[-1]])


def size_text(n: int) -> str:
    for unit in "TGMK":
        if n and n % UNITS[unit] == 0:
            return f"{n // UNITS[unit]}{unit}"
    return str(n)


# -- settings ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """The ``warm.*`` settings and what they imply."""

    enabled: bool
    budget: int                     # bytes
    lead: dt.timedelta
    active_within: dt.timedelta
    hold: dt.timedelta
    session_start: dt.time          # in the calendar's time zone
    profile: Profile | None         # the warm profile (CPU, open to everyone)
    server_bytes: int               # its mem_limit
    active_server_limit: int = 0    # 0: none
    workers: int = WORKERS
    start_wait: float = 360.0       # seconds a worker waits for one server to become ready
    culler_timeout: int | None = None

    @property
    def fit(self) -> int:
        """How many warm servers the budget holds."""
        return fits(self.budget, self.server_bytes)


def warm_profile(profiles: Iterable[Profile]) -> Profile | None:
    """The profile warm servers get: the default one if it is a CPU profile open to everyone, else
    the first such profile; never a GPU one. None if there is none."""
    usable = [p for p in profiles if p.gpu == "none" and p.access == "all"]
    return next((p for p in usable if p.default), usable[0] if usable else None)


def plan_from_settings(settings) -> Plan:
    w = settings.get("warm")
    profile = warm_profile(profiles_from_settings(settings))
    hour, minute = (int(x) for x in w["session_start"].split(":"))
    at_once = int(settings.get("spawner.starts_at_once") or 0)
    return Plan(
        enabled=bool(w["enabled"]),
        budget=parse_size(w["memory_budget"]),
        lead=dt.timedelta(minutes=w["lead_minutes"]),
        active_within=dt.timedelta(days=w["active_within_days"]),
        hold=dt.timedelta(minutes=w["hold_minutes"]),
        session_start=dt.time(hour, minute),
        profile=profile,
        server_bytes=parse_size(profile.mem_limit) if profile else 0,
        active_server_limit=int(settings.get("hub.active_server_limit") or 0),
        workers=max(1, min(WORKERS, at_once)) if at_once else WORKERS,
        start_wait=float(settings.get("spawner.start_timeout") + settings.get("spawner.http_timeout") + 60),
        culler_timeout=settings.get("culler.timeout") if settings.get("culler.enabled") else None,
    )


# -- the calendar ------------------------------------------------------------------------------

class SessionStart(NamedTuple):
    number: int
    title: str
    start: dt.datetime  # aware, in the calendar's time zone


def session_start(calendar, number: int, at: dt.time) -> SessionStart:
    """When session ``number`` starts: ``at`` on its date, or the earliest release on that date of
    an assignment of that session (or of none), if earlier. KeyError for an unknown session."""
    session = calendar.sessions[number]
    tz = ZoneInfo(calendar.timezone)
    start = dt.datetime.combine(session.date, at, tzinfo=tz)
    for a in calendar.assignments.values():
        release = a.release.astimezone(tz)
        if a.session in (number, None) and release.date() == session.date and release < start:
            start = release
    return SessionStart(number, session.title, start)


def session_starts(calendar, at: dt.time) -> list[SessionStart]:
    """Every session's start, in time order."""
    return sorted((session_start(calendar, n, at) for n in calendar.sessions), key=lambda s: s.start)


def next_session(calendar, now: dt.datetime, at: dt.time) -> SessionStart | None:
    """The first session that starts after ``now``; None if the calendar has no more."""
    return next((s for s in session_starts(calendar, at) if s.start > now), None)


def in_window(now: dt.datetime, start: dt.datetime, lead: dt.timedelta) -> bool:
    return start - lead <= now < start


# -- records of warmed servers -----------------------------------------------------------------

@dataclass
class Entry:
    """One student's latest warm-up. Times: ``start`` is course time (the session's), the rest real."""

    session: int
    start: dt.datetime
    state: str = "queued"
    profile: str = ""
    by: str = "schedule"
    queued_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    ready_at: dt.datetime | None = None
    posted: dt.datetime | None = None        # the last activity this service posted (or its baseline)
    ended_at: dt.datetime | None = None
    active_before: dt.datetime | None = None  # the student's own last activity when chosen
    attempts: int = 0
    note: str = ""

    TIMES = ("start", "queued_at", "started_at", "ready_at", "posted", "ended_at", "active_before")

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in self.TIMES:
            value = getattr(self, key)
            data[key] = value.isoformat() if key == "start" and value else iso(value)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Entry:
        """ValueError if ``data`` is not a record this service wrote."""
        if not isinstance(data, dict):
            raise ValueError("not a mapping")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        session = values.get("session")
        if not isinstance(session, int) or isinstance(session, bool):
            raise ValueError(f"session {session!r} is not a number")
        if values.get("state") not in STATES:
            raise ValueError(f"state {values.get('state')!r} is not one of {', '.join(STATES)}")
        for key in cls.TIMES:
            raw = values.get(key)
            values[key] = parse_time(raw)
            if raw is not None and values[key] is None:
                raise ValueError(f"{key} {raw!r} is not a time")
        if values["start"] is None:
            raise ValueError("no start time")
        values["attempts"] = int(values.get("attempts") or 0)
        for key in ("profile", "by", "note"):
            values[key] = str(values.get(key) or "")
        return cls(**values)

    def end(self, state: str, real: dt.datetime, note: str = "") -> None:
        self.state = state
        self.ended_at = real
        if note:
            self.note = note


class StateFile:
    """The warmed servers, as JSON, written atomically (a temporary file, then a rename)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def load(self) -> tuple[dict[str, Entry], dict]:
        """(entries by user name, the last tick's result). A missing file is an empty state; one
        that cannot be read or parsed is set aside as ``<name>.bad`` with an error in the log."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}, {}
        except (OSError, UnicodeDecodeError) as exc:
            self._set_aside(f"cannot be read ({exc})")
            return {}, {}
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
                raise ValueError("it is not this service's state (no 'entries' mapping)")
            if data.get("version", STATE_VERSION) != STATE_VERSION:
                raise ValueError(f"it has version {data.get('version')!r}, this service writes {STATE_VERSION}")
        except ValueError as exc:
            self._set_aside(f"is not valid ({exc})")
            return {}, {}
        entries = {}
        for name, raw in data["entries"].items():
            try:
                entries[str(name)] = Entry.from_dict(raw)
            except (ValueError, TypeError) as exc:
                log.error("warm state %s: the record of %s is dropped, it is not valid (%s)", self.path, name, exc)
        last = data.get("last_tick")
        return entries, last if isinstance(last, dict) else {}

    def _set_aside(self, why: str) -> None:
        bad = self.path.with_name(self.path.name + ".bad")
        try:
            os.replace(self.path, bad)
            kept = f"it is kept as {bad}"
        except OSError as exc:
            kept = f"it could not be set aside ({exc})"
        log.error("warm state %s %s; %s. Starting with no warmed servers: those warmed before are no longer "
                  "held or released by this service (the idle culler stops them in time).", self.path, why, kept)

    def save(self, entries: dict[str, Entry], last_tick: dict) -> None:
        data = {"version": STATE_VERSION, "entries": {n: e.to_dict() for n, e in sorted(entries.items())},
                "last_tick": last_tick}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, default=str)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


# -- the decisions (pure) ----------------------------------------------------------------------

def server_of(user: dict | None) -> dict | None:
    """The user's default server model, or None."""
    return ((user or {}).get("servers") or {}).get("")


def has_server(user: dict) -> bool:
    """Any server, running or pending (start or stop)."""
    return bool(user.get("servers")) or bool(user.get("pending")) or bool(user.get("server"))


def fits(budget: int, server_bytes: int) -> int:
    return budget // server_bytes if budget > 0 and server_bytes > 0 else 0


def server_room(limit: int, active: int) -> int | None:
    """How many more servers may be started under ``hub.active_server_limit`` (None: no limit),
    keeping a tenth of the limit, at least one, free for everyone else."""
    if not limit:
        return None
    return max(0, limit - max(1, math.ceil(limit / 10)) - active)


def warm_slots(budget: int, server_bytes: int, already: int, room: int | None = None) -> int:
    """How many more students may be warmed: what the budget holds, less those already warmed for
    the session, and no more than ``room``."""
    n = max(0, fits(budget, server_bytes) - already)
    return n if room is None else min(n, room)


def own_activity(user: dict, entry: Entry | None, margin: dt.timedelta = OWN_ACTIVITY_MARGIN) -> dt.datetime | None:
    """The student's own last activity: the hub's, unless it is what an unused warm-up of this
    service caused (the spawn and the stop move it), in which case the one from before the warm-up."""
    last = parse_time(user.get("last_activity"))
    if entry is None or entry.state in ("used", "cancelled") or entry.live:
        return last  # a cancelled warm-up never started a server
    if entry.ended_at is not None and last is not None and last > entry.ended_at + margin:
        return last  # they came back after the warm-up ended
    if entry.queued_at is not None and last is not None and last < entry.queued_at:
        return last  # older than the warm-up: not caused by it
    return entry.active_before


def eligible(users: Iterable[dict], now: dt.datetime, active_within: dt.timedelta,
             entries: dict[str, Entry] | None = None, exclude: Iterable[str] = ()) -> list[tuple[str, dt.datetime]]:
    """Students (group ``students``) with no server, active within ``active_within`` of ``now``
    (their own activity, see ``own_activity``), not in ``exclude``: (name, last activity), most
    recent first (then by name)."""
    entries = entries or {}
    exclude = set(exclude)
    out = []
    for user in users:
        name = user.get("name")
        if not name or name in exclude or STUDENTS not in (user.get("groups") or ()) or has_server(user):
            continue
        last = own_activity(user, entries.get(name))
        if last is None or last < now - active_within or last > now + dt.timedelta(days=1):
            continue
        out.append((name, last))
    out.sort(key=lambda x: (-x[1].timestamp(), x[0]))
    return out


def choose_students(users: Iterable[dict], now: dt.datetime, active_within: dt.timedelta, slots: int,
                    entries: dict[str, Entry] | None = None, exclude: Iterable[str] = ()) -> list[str]:
    """The students to warm: the ``slots`` most recently active of ``eligible``."""
    return [name for name, _ in eligible(users, now, active_within, entries, exclude)[:max(0, slots)]]


def counted_for(entries: dict[str, Entry], session: int) -> int:
    """Servers warmed for ``session`` that take (or will take) memory."""
    return sum(1 for e in entries.values() if e.session == session and e.state in COUNTED)


def scheduled_exclusions(entries: dict[str, Entry], session: int) -> set[str]:
    """Whom the schedule does not warm for ``session``: anyone with a live warm-up, and anyone warmed
    for this session already, except failed starts with attempts left."""
    return {name for name, e in entries.items()
            if e.live or (e.session == session and not (e.state == "failed" and e.attempts < MAX_ATTEMPTS))}


def was_used(entry: Entry, server: dict, slack: dt.timedelta = SLACK) -> bool:
    """The server's activity is later than the last activity this service posted for it."""
    last = parse_time(server.get("last_activity"))
    return entry.posted is not None and last is not None and last > entry.posted + slack


def observe(entry: Entry, user: dict | None, slack: dt.timedelta = SLACK) -> str:
    """The state of a warm-up, judging by the hub's model of its student (None: not visible, i.e.
    no longer in the ``students`` group or no longer a user)."""
    if entry.state not in ("starting", "ready"):
        return entry.state
    if user is None:
        return "gone"
    server = server_of(user)
    if server is None or server.get("pending") == "stop":
        return "failed" if entry.state == "starting" and server is None else "gone"
    if not server.get("ready"):
        return "starting"
    return "used" if was_used(entry, server, slack) else "ready"


def release_actions(entries: dict[str, Entry], users: dict[str, dict], now: dt.datetime, hold: dt.timedelta,
                    slack: dt.timedelta = SLACK, force: bool = False) -> dict[str, str]:
    """What to do with each live warm-up whose session started more than ``hold`` ago (all of them
    with ``force``): ``stop`` an unused server, forget one that was ``used`` or is ``gone`` (or
    ``failed``), ``cancel`` one still queued. A server still starting waits, unless ``force``."""
    actions = {}
    for name, entry in entries.items():
        if not entry.live or not (force or now >= entry.start + hold):
            continue
        if entry.state == "queued":
            actions[name] = "cancel"
            continue
        state = observe(entry, users.get(name), slack)
        if state == "ready" or (force and state == "starting"):
            actions[name] = "stop"
        elif state in ("used", "gone", "failed"):
            actions[name] = state
    return actions


def to_hold(entries: dict[str, Entry], now: dt.datetime) -> list[str]:
    """The ready, unused warm-ups whose session has not started: their activity is posted."""
    return sorted(name for name, e in entries.items() if e.state == "ready" and now < e.start)


def prune(entries: dict[str, Entry], real: dt.datetime, active_within: dt.timedelta) -> list[str]:
    """Finished records no longer needed (ended more than ``active_within`` + a day ago; the oldest
    beyond MAX_RECORDS): removed from ``entries``, their names returned."""
    old = [n for n, e in entries.items()
           if not e.live and e.ended_at is not None and e.ended_at < real - active_within - HISTORY_EXTRA]
    for name in old:
        del entries[name]
    if len(entries) > MAX_RECORDS:
        done = sorted((n for n, e in entries.items() if not e.live),
                      key=lambda n: entries[n].ended_at or entries[n].start)
        for name in done[:len(entries) - MAX_RECORDS]:
            del entries[name]
            old.append(name)
    return old


# -- the hub's API -----------------------------------------------------------------------------

class HubError(RuntimeError):
    def __init__(self, method: str, path: str, code: int, body: bytes | str):
        self.code = code
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        try:
            text = json.loads(text).get("message") or text
        except (ValueError, AttributeError):
            pass
        super().__init__(f"hub API {method} {path}: {code} {str(text)[:300]}")


class HubAPI:
    """The hub's REST API with this service's token: ``call`` and the paged list of students."""

    def __init__(self, url: str, token: str, timeout: float = 60):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.client: httpclient.AsyncHTTPClient | None = None  # made on first use, on the running loop

    async def call(self, method: str, path: str, body=None, ok=(200, 201, 202, 204), headers=None):
        """(status, parsed JSON or None); HubError for any other status, OSError if unreachable."""
        request = httpclient.HTTPRequest(
            self.url + path, method=method, body=None if body is None else json.dumps(body),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json", **(headers or {})},
            allow_nonstandard_methods=True, request_timeout=self.timeout)
        if self.client is None:
            self.client = httpclient.AsyncHTTPClient()
        try:
            response = await self.client.fetch(request, raise_error=False)
        except httpclient.HTTPClientError as exc:  # a time-out: raised whatever raise_error says
            raise OSError(f"hub API {method} {path}: {exc}") from None
        if response.code == 599:
            raise OSError(f"hub API {method} {path}: {response.error}")
        if response.code not in ok:
            raise HubError(method, path, response.code, response.body or b"")
        try:
            return response.code, json.loads(response.body) if response.body else None
        except ValueError:
            return response.code, None

    async def students(self) -> dict[str, dict]:
        """Every user this service may see (RBAC: the ``students`` group), by name, in pages."""
        users, offset = {}, 0
        while True:
            _, page = await self.call("GET", f"/users?offset={offset}&limit=200",
                                      headers={"Accept": "application/jupyterhub-pagination+json"})
            items = page.get("items", []) if isinstance(page, dict) else (page or [])
            for user in items:
                users[user["name"]] = user
            following = (page.get("_pagination") or {}).get("next") if isinstance(page, dict) else None
            if not following or not items:
                return users
            offset = int(following["offset"])


# -- the service -------------------------------------------------------------------------------

class Refused(Exception):
    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


class Warmer:
    """Ticks, the start queue and its workers, and the state file."""

    def __init__(self, api, plan: Plan, calendar, state: StateFile, clock: Callable[[], dt.datetime],
                 real_now: Callable[[], dt.datetime] = utcnow, calendar_error: str = "", clock_note: str = "",
                 poll_seconds: float = POLL_SECONDS):
        self.api = api
        self.plan = plan
        self.calendar = calendar
        self.calendar_error = calendar_error
        self.state = state
        self.clock = clock
        self.real_now = real_now
        self.clock_note = clock_note
        self.poll_seconds = poll_seconds
        self.entries, self.last_tick = state.load()
        self.lock = asyncio.Lock()
        self.queue: asyncio.Queue[str] | None = None
        self.tasks: list[asyncio.Task] = []

    # -- running ------------------------------------------------------------------------------
    def start(self, tick_seconds: float | None = TICK_SECONDS) -> None:
        """Start the workers (and, unless ``tick_seconds`` is None, the ticks); queue again the
        students the state file holds as queued."""
        self.queue = asyncio.Queue()
        for name, entry in sorted(self.entries.items(), key=lambda x: x[1].queued_at or x[1].start):
            if entry.state == "queued":
                self.queue.put_nowait(name)
        self.tasks = [asyncio.ensure_future(self._worker(i)) for i in range(self.plan.workers)]
        if tick_seconds is not None:
            self.tasks.append(asyncio.ensure_future(self._ticker(tick_seconds)))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []

    async def drain(self) -> None:
        """Wait until the queue is empty and every worker idle (tests)."""
        if self.queue is not None:
            await self.queue.join()

    async def _ticker(self, every: float) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # one bad tick must not end the schedule
                log.exception("tick failed")
            await asyncio.sleep(every)

    def save(self) -> None:
        try:
            self.state.save(self.entries, self.last_tick)
        except OSError as exc:
            log.error("cannot write the warm state %s: %s", self.state.path, exc)

    def next_session(self, now: dt.datetime) -> SessionStart | None:
        if self.calendar is None:
            return None
        return next_session(self.calendar, now, self.plan.session_start)

    # -- one tick -----------------------------------------------------------------------------
    async def tick(self) -> dict:
        async with self.lock:
            now, real = self.clock(), self.real_now()
            result: dict[str, Any] = {"at": iso(real), "course_time": now.isoformat()}
            try:
                users = await self.api.students()
                result["seen"] = self._observe_all(users, real)
                result["released"] = await self._release(users, now, real, force=False)
                result["held"] = await self._hold(users, now, real)
                for entry in self.entries.values():
                    if entry.state == "ready" and entry.posted is None and now >= entry.start:
                        entry.posted = real  # ready after the start: the baseline for "used"
                upcoming = self.next_session(now)
                if upcoming is None:
                    result["note"] = self.calendar_error or "the calendar has no more sessions"
                elif not in_window(now, upcoming.start, self.plan.lead):
                    opens = upcoming.start - self.plan.lead
                    result["note"] = (f"session {upcoming.number} at {upcoming.start.isoformat()}: the window opens "
                                      f"at {opens.isoformat()}")
                elif not self.plan.enabled:
                    result["note"] = "in the window, but warm.enabled is false: nothing is started by the schedule"
                else:
                    result.update(self._queue(upcoming, users, now, real, by="schedule", explicit=False))
                    result["note"] = f"in the window of session {upcoming.number}"
            except (HubError, OSError) as exc:
                log.warning("tick: %s", exc)
                result["error"] = str(exc)
            dropped = prune(self.entries, real, self.plan.active_within)
            if dropped:
                log.info("dropped %d finished records", len(dropped))
            self.last_tick = result
            self.save()
            return result

    def _observe_all(self, users: dict[str, dict], real: dt.datetime) -> dict[str, list[str]]:
        """Bring every live warm-up's state up to date; the ones that finished, by their new state."""
        finished: dict[str, list[str]] = {}
        for name, entry in sorted(self.entries.items()):
            state = observe(entry, users.get(name))
            if state == entry.state:
                continue
            self._transition(name, entry, state, real)
            if state in TERMINAL:
                finished.setdefault(state, []).append(name)
        return finished

    def _transition(self, name: str, entry: Entry, state: str, real: dt.datetime, note: str = "") -> None:
        notes = {"used": "used by the student: theirs now", "gone": "stopped by someone else, or no longer a student",
                 "failed": "stopped while starting"}
        if state == "ready":
            entry.state, entry.ready_at = "ready", entry.ready_at or real
        elif state == "starting":
            entry.state = "starting"
        else:
            entry.end(state, real, note or notes.get(state, ""))
        why = f" ({entry.note})" if entry.note and state != "ready" else ""
        log.info("%s (session %d): %s%s", name, entry.session, state, why)

    async def _release(self, users: dict[str, dict], now: dt.datetime, real: dt.datetime, force: bool) -> dict:
        done: dict[str, list[str]] = {"stopped": [], "used": [], "gone": [], "failed": [], "cancelled": [],
                                      "errors": []}
        actions = release_actions(self.entries, users, now, self.plan.hold, force=force)
        gate = asyncio.Semaphore(CALLS_AT_ONCE)  # a stop can take the hub seconds: a few at a time

        async def stop(name: str, entry: Entry) -> None:
            async with gate:
                try:
                    await self.api.call("DELETE", f"/users/{quote(name)}/server", ok=(202, 204, 404))
                except (HubError, OSError) as exc:
                    log.error("could not stop %s's unused warm server: %s", name, exc)
                    entry.note = f"stop failed: {exc}"
                    done["errors"].append(name)
                    return
            entry.end("stopped", self.real_now(), "unused: released" if force else "unused: stopped after the hold")
            log.info("%s (session %d): stopped, unused", name, entry.session)
            done["stopped"].append(name)

        stops = []
        for name, action in sorted(actions.items()):
            entry = self.entries[name]
            if action == "cancel":
                entry.end("cancelled", real, "released before its turn to start")
                done["cancelled"].append(name)
            elif action == "stop":
                stops.append(stop(name, entry))
            else:
                self._transition(name, entry, action, real)
                done[action].append(name)
        await asyncio.gather(*stops)
        return {k: sorted(v) for k, v in done.items() if v}

    async def _hold(self, users: dict[str, dict], now: dt.datetime, real: dt.datetime) -> int:
        names = to_hold(self.entries, now)
        gate = asyncio.Semaphore(CALLS_AT_ONCE)

        async def one(name):
            async with gate:
                await self._post_activity(name, self.entries[name], real)

        await asyncio.gather(*(one(n) for n in names))
        return len(names)

    async def _post_activity(self, name: str, entry: Entry, real: dt.datetime) -> bool:
        try:
            await self.api.call("POST", f"/users/{quote(name)}/activity",
                                {"servers": {"": {"last_activity": iso(real)}}}, ok=(200, 201, 204))
        except (HubError, OSError) as exc:
            log.warning("could not post activity for %s's warm server: %s", name, exc)
            return False
        entry.posted = real
        return True

    def _queue(self, upcoming: SessionStart, users: dict[str, dict], now: dt.datetime, real: dt.datetime,
               by: str, explicit: bool) -> dict:
        """Choose and queue students for ``upcoming``; what was done, for the tick's or the API's answer."""
        plan = self.plan
        info: dict[str, Any] = {"session": upcoming.number, "start": upcoming.start.isoformat(), "fit": plan.fit,
                                "queued": []}
        if plan.profile is None:
            info["reason"] = "no CPU profile open to everyone: nothing to warm with"
            return info
        already = counted_for(self.entries, upcoming.number)
        active = sum(1 for u in users.values() if has_server(u))
        waiting = sum(1 for e in self.entries.values() if e.state == "queued")
        room = server_room(plan.active_server_limit, active + waiting)
        slots = warm_slots(plan.budget, plan.server_bytes, already, room)
        exclude = {n for n, e in self.entries.items() if e.live} if explicit else \
            scheduled_exclusions(self.entries, upcoming.number)
        candidates = eligible(users.values(), real, plan.active_within, self.entries, exclude)
        chosen = [name for name, _ in candidates[:slots]]
        info.update(already=already, candidates=len(candidates), left_out=len(candidates) - len(chosen))
        if room is not None:
            info["room_under_server_limit"] = room
        for name in chosen:
            previous = self.entries.get(name)
            attempts = previous.attempts if previous and previous.session == upcoming.number and \
                previous.state == "failed" and not explicit else 0
            self.entries[name] = Entry(session=upcoming.number, start=upcoming.start, state="queued",
                                       profile=plan.profile.name, by=by, queued_at=real,
                                       active_before=own_activity(users[name], previous), attempts=attempts)
            if self.queue is not None:
                self.queue.put_nowait(name)
        if chosen:
            log.info("session %d at %s: queued %d of %d recently active students (%d already warmed, %d fit): %s",
                     upcoming.number, upcoming.start.isoformat(), len(chosen), len(candidates), already, plan.fit,
                     ", ".join(chosen))
        info["queued"] = chosen
        return info

    # -- the workers --------------------------------------------------------------------------
    async def _worker(self, i: int) -> None:
        assert self.queue is not None
        while True:
            name = await self.queue.get()
            try:
                await self.start_one(name)
            except Exception:
                log.exception("warming %s failed", name)
                entry = self.entries.get(name)
                if entry is not None and entry.live and entry.state != "ready":
                    entry.end("failed", self.real_now(), "unexpected error (see the service's log)")
                    self.save()
            finally:
                self.queue.task_done()

    async def start_one(self, name: str) -> None:
        """Start one queued student's server and wait (bounded) until it is ready or failed."""
        entry = self.entries.get(name)
        if entry is None or entry.state != "queued":
            return
        now, real = self.clock(), self.real_now()
        if now >= entry.start + self.plan.hold:
            entry.end("cancelled", real, "the session's hold time passed before its turn")
            self.save()
            return
        try:
            code, user = await self.api.call("GET", f"/users/{quote(name)}", ok=(200, 404))
            if code == 404 or STUDENTS not in (user.get("groups") or ()):
                entry.end("cancelled", real, "no longer a student")
                self.save()
                return
            if has_server(user):
                entry.end("cancelled", real, "already has a server")
                self.save()
                return
            entry.attempts += 1
            await self.api.call("POST", f"/users/{quote(name)}/server", {"profile": entry.profile}, ok=(201, 202))
        except (HubError, OSError) as exc:
            entry.end("failed", self.real_now(), str(exc))
            log.error("%s (session %d): start %d failed: %s", name, entry.session, entry.attempts, exc)
            self.save()
            return
        entry.state, entry.started_at = "starting", self.real_now()
        log.info("%s (session %d): starting (profile %s)", name, entry.session, entry.profile)
        self.save()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.plan.start_wait
        while entry.state == "starting" and loop.time() < deadline:
            try:
                code, user = await self.api.call("GET", f"/users/{quote(name)}", ok=(200, 404))
            except (HubError, OSError) as exc:
                log.warning("%s: %s", name, exc)
                user, code = None, 0
            if code:
                state = observe(entry, user if code == 200 else None)
                if state != entry.state:
                    self._transition(name, entry, state, self.real_now(),
                                     "stopped while starting (see the hub's log)" if state == "failed" else "")
            if entry.state == "starting":
                await asyncio.sleep(self.poll_seconds)
        if entry.state == "ready" and entry.posted is None:
            real = self.real_now()
            if self.clock() < entry.start:
                await self._post_activity(name, entry, real)
            else:
                entry.posted = real  # after the start nothing is posted: this is the baseline for "used"
        elif entry.state == "starting":
            log.warning("%s (session %d): still starting after %.0f s; the ticks keep watching it",
                        name, entry.session, self.plan.start_wait)
        self.save()

    # -- the API's actions --------------------------------------------------------------------
    async def warm_now(self, session: int | None, who: str) -> dict:
        async with self.lock:
            now, real = self.clock(), self.real_now()
            if self.calendar is None:
                raise Refused(503, f"the course calendar could not be read: {self.calendar_error}")
            if session is None:
                upcoming = self.next_session(now)
                if upcoming is None:
                    raise Refused(409, "the calendar has no more sessions")
            else:
                try:
                    upcoming = session_start(self.calendar, session, self.plan.session_start)
                except KeyError:
                    raise Refused(404, f"the calendar has no session {session} "
                                       f"(it has {', '.join(map(str, sorted(self.calendar.sessions)))})") from None
                if now >= upcoming.start + self.plan.hold:
                    raise Refused(409, f"session {session} started at {upcoming.start.isoformat()}, more than "
                                       f"warm.hold_minutes ago: its warm servers would be stopped at once")
            users = await self.api.students()
            self._observe_all(users, real)
            info = self._queue(upcoming, users, now, real, by=f"api ({who})", explicit=True)
            info["title"] = upcoming.title
            log.info("warm requested by %s for session %d: queued %s", who, upcoming.number, info["queued"])
            self.save()
            return info

    async def release_now(self, who: str) -> dict:
        async with self.lock:
            now, real = self.clock(), self.real_now()
            users = await self.api.students()
            done = self._observe_all(users, real)
            for key, names in (await self._release(users, now, real, force=True)).items():
                done[key] = sorted(done.get(key, []) + names)
            log.info("release requested by %s: %s", who, done or "nothing to release")
            self.save()
            return done

    # -- what the page and api/status show ----------------------------------------------------
    def status(self) -> dict:
        now, plan = self.clock(), self.plan
        upcoming = self.next_session(now)
        session = None
        if upcoming is not None:
            session = {"number": upcoming.number, "title": upcoming.title, "start": upcoming.start.isoformat(),
                       "window_opens": (upcoming.start - plan.lead).isoformat(),
                       "in_window": in_window(now, upcoming.start, plan.lead),
                       "warmed": counted_for(self.entries, upcoming.number)}
        counts: dict[str, int] = {}
        for e in self.entries.values():
            counts[e.state] = counts.get(e.state, 0) + 1
        servers = [{"user": name, **e.to_dict()} for name, e in
                   sorted(self.entries.items(), key=lambda x: (x[1].live is False, -x[1].session, x[0]))]
        return {
            "enabled": plan.enabled,
            "now": now.isoformat(),
            "clock": self.clock_note,
            "calendar_error": self.calendar_error or None,
            "next_session": session,
            "lead_minutes": plan.lead.total_seconds() / 60,
            "hold_minutes": plan.hold.total_seconds() / 60,
            "active_within_days": plan.active_within.days,
            "budget": size_text(plan.budget),
            "profile": plan.profile.name if plan.profile else None,
            "server_memory": size_text(plan.server_bytes) if plan.profile else None,
            "fit": plan.fit,
            "active_server_limit": plan.active_server_limit,
            "queued_now": self.queue.qsize() if self.queue is not None else 0,
            "counts": counts,
            "servers": servers,
            "last_tick": self.last_tick,
        }


# -- the web app -------------------------------------------------------------------------------

class Base(ServiceHandler):
    def initialize(self, warmer: Warmer, operators: Iterable[str] = (), hub_auth=None):
        self.warmer = warmer
        self.operators = frozenset(operators)
        if hub_auth is not None:
            self.hub_auth = hub_auth

    def need_role(self, roles: tuple[str, ...]) -> str:
        role = role_of(self.current_user, self.operators)
        if role not in roles:
            raise web.HTTPError(403, f"this needs the role {' or '.join(roles)} "
                                     f"(you are {role or 'not on the roster'})")
        return role

    @property
    def who(self) -> str:
        return str((self.current_user or {}).get("name", "?"))


class StatusHandler(Base):
    @web.authenticated
    def get(self):
        self.need_role(STAFF_VIEW)
        self.write_json(self.warmer.status())


class WarmHandler(Base):
    @web.authenticated
    async def post(self):
        self.need_token()
        self.need_role(STAFF_MANAGE)
        session = None
        if self.request.body.strip():
            try:
                body = json.loads(self.request.body)
                session = body.get("session") if isinstance(body, dict) else body
                if session is not None and (not isinstance(session, int) or isinstance(session, bool)):
                    raise ValueError(f"session {session!r} is not a number")
            except (ValueError, AttributeError) as exc:
                raise web.HTTPError(400, f'expected nothing or {{"session": N}}: {exc}')
        try:
            self.write_json(await self.warmer.warm_now(session, self.who))
        except Refused as exc:
            raise web.HTTPError(exc.status, str(exc))
        except (HubError, OSError) as exc:
            raise web.HTTPError(502, f"the hub's API did not answer as expected: {exc}")


class ReleaseHandler(Base):
    @web.authenticated
    async def post(self):
        self.need_token()
        self.need_role(STAFF_MANAGE)
        try:
            self.write_json(await self.warmer.release_now(self.who))
        except (HubError, OSError) as exc:
            raise web.HTTPError(502, f"the hub's API did not answer as expected: {exc}")


def _cell(value) -> str:
    return f"<td>{html.escape('' if value is None else str(value))}</td>"


def _short(when: str | None) -> str:
    t = parse_time(when)
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else ""


def render_page(status: dict) -> str:
    s = status.get("next_session")
    if s:
        session = (f"<p>Next session: <b>{s['number']}</b> ({html.escape(s['title'])}), starts "
                   f"<b>{html.escape(s['start'])}</b>. Warm-up window from {html.escape(s['window_opens'])}"
                   f"{' <b>(open now)</b>' if s['in_window'] else ''}; {s['warmed']} warmed for it.</p>")
    else:
        error = status.get("calendar_error")
        session = f"<p>No next session{': ' + html.escape(error) if error else ''}.</p>"
    profile = (f"profile {html.escape(status['profile'])} at {html.escape(status['server_memory'])} each"
               if status.get("profile") else "no CPU profile open to everyone")
    limit = status.get("active_server_limit") or "none"
    clock = f" ({html.escape(status['clock'])})" if status.get("clock") else ""
    settings = (f"<p>Schedule {'on' if status['enabled'] else '<b>off</b> (warm.enabled: false)'}; course time "
                f"{html.escape(status['now'])}{clock}."
                f" Budget {html.escape(status['budget'])}: <b>{status['fit']}</b> servers fit ({profile}); "
                f"server limit {limit}. Starts {status['lead_minutes']:g} min before a session, for students "
                f"active within {status['active_within_days']} days; unused servers stop "
                f"{status['hold_minutes']:g} min after the start.</p>")
    counts = ", ".join(f"{n} {html.escape(k)}" for k, n in sorted(status["counts"].items())) or "none"
    rows = "".join(
        "<tr>" + _cell(e["user"]) + _cell(e["session"]) + f"<td class='{html.escape(e['state'])}'>"
        f"{html.escape(e['state'])}</td>" + _cell(_short(e["started_at"])) + _cell(_short(e["ready_at"]))
        + _cell(_short(e["posted"])) + _cell(_short(e["ended_at"])) + _cell(e["by"]) + _cell(e["note"]) + "</tr>"
        for e in status["servers"]
    ) or "<tr><td colspan='9'>No server has been warmed.</td></tr>"
    tick = status.get("last_tick") or {}
    tick_text = html.escape(json.dumps(tick, indent=1, default=str)) if tick else "No tick yet."
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Warm servers</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em .8em;text-align:left}"
        ".ready{color:#060}.used{color:#036}.failed,.gone{color:#a00}.stopped,.cancelled{color:#666}"
        "pre{background:#f4f4f4;padding:.5em}</style></head><body>"
        "<h1>Warm servers before class</h1>" + session + settings
        + f"<p>Records: {counts}.</p>"
        "<table><tr><th>Student</th><th>Session</th><th>State</th><th>Started</th><th>Ready</th>"
        "<th>Activity posted</th><th>Ended</th><th>By</th><th>Note</th></tr>" + rows + "</table>"
        f"<h2>Last tick</h2><pre>{tick_text}</pre>"
        "<p><a href='api/status'>JSON</a>. With an instructor's API token: <code>POST api/warm</code> "
        "(body <code>{\"session\": N}</code> or nothing: the next session) starts the warm-up now; "
        "<code>POST api/release</code> stops the unused warm servers now.</p></body></html>"
    )


class PageHandler(Base):
    @web.authenticated
    def get(self):
        self.need_role(STAFF_VIEW)
        self.finish(render_page(self.warmer.status()))


def make_app(prefix: str, warmer: Warmer, operators: Iterable[str] = (), hub_auth=None) -> web.Application:
    kw = {"warmer": warmer, "operators": tuple(operators), "hub_auth": hub_auth}
    return web.Application([
        (url_path_join(prefix, "api/status"), StatusHandler, kw),
        (url_path_join(prefix, "api/warm"), WarmHandler, kw),
        (url_path_join(prefix, "api/release"), ReleaseHandler, kw),
        (prefix.rstrip("/") + "/?", PageHandler, kw),
        (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
    ], cookie_secret=os.urandom(32))


# -- the hub's configuration ---------------------------------------------------------------------

def service_definition(settings) -> tuple[dict, dict]:
    """The hub-managed service and its role: the least scopes it needs, each limited to the
    ``students`` group (list and read them with their servers, start and stop their servers,
    post their servers' activity). It listens on port 10106: 10105 is the formgrader's."""
    from hub.config import service_bind_url

    service = {
        "name": NAME,
        "url": service_bind_url(settings, PORT),
        "command": [sys.executable, "-m", "hub.services.warm"],
        "environment": settings.process_environment(),
        "oauth_no_confirm": True,
        "display": True,
    }
    role = {
        "name": NAME,
        "description": "Warm capacity: start recently active students' servers before a session, keep them "
                       "from the idle culler until it starts, stop the unused ones afterwards.",
        "scopes": [f"{scope}!group={STUDENTS}" for scope in (
            "list:users", "read:users", "read:servers", "start:servers", "delete:servers", "users:activity")],
        "services": [NAME],
    }
    return service, role


def course_clock(settings) -> tuple[Callable[[], dt.datetime], str]:
    """The course clock, its offset file read afresh at every call; and a note for the page."""
    from hub.course.calendar import Clock

    enabled = bool(settings.get("grading.test_clock"))
    path = settings.course_root / "state" / "clock.json"
    warned = []

    def now() -> dt.datetime:
        try:
            return Clock(path, enabled).now()
        except OSError as exc:  # e.g. the course state folder is not readable
            if not warned:
                log.warning("cannot read the course clock %s (%s): using real time", path, exc)
                warned.append(True)
            return utcnow()

    return now, (f"test clock, offset from {path}" if enabled else "")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[warm %(levelname)s %(asctime)s] %(message)s")
    from hub.course.calendar import CalendarError, load_calendar
    from hub.settings import current

    lab = current(NAME)
    plan = plan_from_settings(lab)
    calendar, calendar_error = None, ""
    try:
        calendar = load_calendar(lab.course_src / "calendar.yaml")
    except CalendarError as exc:
        calendar_error = str(exc)
        log.error("%s", exc)
    clock, clock_note = course_clock(lab)
    api = HubAPI(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
    warmer = Warmer(api, plan, calendar, StateFile(lab.state_dir / "warm.json"), clock,
                    calendar_error=calendar_error, clock_note=clock_note)
    if plan.profile is None:
        log.error("no CPU profile is open to everyone: nothing will be warmed")
    if plan.culler_timeout and plan.culler_timeout < plan.hold.total_seconds():
        log.warning("culler.timeout (%d s) is shorter than warm.hold_minutes: the idle culler may stop unused "
                    "warm servers before this service does", plan.culler_timeout)
    if lab.get("culler.enabled") and lab.get("culler.max_age") and \
            lab.get("culler.max_age") < (plan.lead + plan.hold).total_seconds():
        log.warning("culler.max_age (%d s) is shorter than lead + hold: the culler stops warm servers by age",
                    lab.get("culler.max_age"))
    log.info("warm: schedule %s; budget %s (%d servers of %s, profile %s); %s before each session; hold %s",
             "on" if plan.enabled else "off", size_text(plan.budget), plan.fit, size_text(plan.server_bytes),
             plan.profile.name if plan.profile else "-", plan.lead, plan.hold)
    prefix = os.environ["JUPYTERHUB_SERVICE_PREFIX"]
    app = make_app(prefix, warmer, lab.get("auth.admin_users"))
    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    app.listen(url.port, url.hostname, max_body_size=64 * 1024)
    loop = ioloop.IOLoop.current()
    for sig in (signal.SIGTERM, signal.SIGINT):  # the hub stops its services with these
        signal.signal(sig, lambda *_: loop.add_callback_from_signal(loop.stop))
    loop.add_callback(warmer.start)
    loop.start()


if __name__ == "__main__":
    main()
