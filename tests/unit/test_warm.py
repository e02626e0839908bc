"""Warm capacity before class (hub.services.warm): when a session starts, whom to warm within the
budget, when a warmed server counts as used, what is held and what is stopped; the state file
(atomic, and a broken one is set aside with a clear log line, not a crash); a whole schedule
against an in-memory hub; and who may call the service's API."""

import asyncio
import datetime as dt
import json
import logging
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from jupyterhub.scopes import scope_definitions
from jupyterhub.services.auth import HubOAuth
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from hub.course.calendar import Assignment, Calendar, Session, load_calendar
from hub.profiles import Profile
from hub.services import warm
from hub.services.warm import (Entry, HubError, Plan, StateFile, Warmer, choose_students, in_window,
                               next_session, observe, own_activity, parse_size, plan_from_settings, prune,
                               release_actions, server_room, session_start, session_starts, to_hold, warm_profile,
                               warm_slots, was_used)
from hub.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
CPH = ZoneInfo("Europe/Copenhagen")
UTC = dt.timezone.utc
NINE = dt.time(9, 0)
REAL = dt.datetime(2026, 5, 1, 12, 0, tzinfo=UTC)  # the hub's real time in these tests
G = 1024**3


def course_calendar():
    return load_calendar(ROOT / "course" / "calendar.yaml")


def small_calendar(assignments=()):
    """Two sessions; assignments given as (name, session, release)."""
    sessions = {1: Session(1, dt.date(2027, 1, 4), "One"), 2: Session(2, dt.date(2027, 1, 5), "Two")}
    items = {name: Assignment(name, name, release, release + dt.timedelta(days=2), True, session)
             for name, session, release in assignments}
    return Calendar("Europe/Copenhagen", items, 0.5, "", sessions)


def cpu(name="cpu", default=True, access="all", mem="2G", gpu="none"):
    return Profile(name, name.upper(), "", gpu, access, mem, 1.0, None, default)


def plan(**kw):
    values = dict(enabled=True, budget=4 * G, lead=dt.timedelta(minutes=20), active_within=dt.timedelta(days=3),
                  hold=dt.timedelta(minutes=30), session_start=NINE, profile=cpu(), server_bytes=2 * G,
                  workers=2, start_wait=30.0)
    values.update(kw)
    return Plan(**values)


def student(name, last=None, servers=None, groups=("students",)):
    return {"name": name, "kind": "user", "groups": list(groups), "last_activity": warm.iso(last),
            "servers": servers or {}}


def at(hours_ago=0.0, days_ago=0.0, base=REAL):
    return base - dt.timedelta(hours=hours_ago, days=days_ago)


# -- sizes, profiles, settings ----------------------------------------------------------------

@pytest.mark.parametrize("text, size", [("0", 0), ("512M", 512 * 1024**2), ("64G", 64 * G), ("1.5G", int(1.5 * G)),
                                        ("2T", 2 * 1024**4)])
def test_sizes_are_read_in_dockers_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "4GB", "G", "-1G", "four"])
def test_a_bad_size_is_refused(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_the_warm_profile_is_a_cpu_profile_open_to_everyone():
    gpu = cpu("gpu-shared", default=True, gpu="shared", mem="16G")
    staff_cpu = cpu("big", default=False, access=["group:instructors"], mem="8G")
    plain, other = cpu("cpu", default=False), cpu("cpu-2", default=False)
    assert warm_profile([gpu, staff_cpu, plain, other]) == plain          # the default is a GPU one
    assert warm_profile([plain, cpu("mine", default=True)]).name == "mine"  # the default, when it is CPU
    assert warm_profile([gpu, staff_cpu]) is None


def test_plan_from_the_operators_settings(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text("warm:\n  enabled: true\n  memory_budget: 64G\n  lead_minutes: 15\n  session_start: '08:30'\n"
                    "spawner:\n  mem_limit: 3G\n  starts_at_once: 2\nhub:\n  active_server_limit: 50\n")
    p = plan_from_settings(load_settings(path, environ={}))
    assert p.enabled and p.budget == 64 * G
    assert p.profile.name == "cpu" and p.server_bytes == 3 * G and p.fit == 21  # the cpu profile inherits 3G
    assert p.lead == dt.timedelta(minutes=15) and p.session_start == dt.time(8, 30)
    assert p.hold == dt.timedelta(minutes=30) and p.active_within == dt.timedelta(days=3)
    assert p.active_server_limit == 50 and p.workers == 2
    defaults = plan_from_settings(load_settings(tmp_path / "none.yaml", environ={}))
    assert not defaults.enabled and defaults.budget == 0 and defaults.fit == 0


# -- the calendar ------------------------------------------------------------------------------

def test_sessions_of_the_course_start_at_nine_copenhagen_time():
    cal = course_calendar()
    starts = session_starts(cal, NINE)
    assert [s.number for s in starts] == sorted(cal.sessions)
    assert starts[0].start == dt.datetime(2027, 1, 4, 9, 0, tzinfo=CPH)
    assert starts[0].start.astimezone(UTC) == dt.datetime(2027, 1, 4, 8, 0, tzinfo=UTC)
    # An assignment released at 9:00 makes a later session_start irrelevant; an earlier one wins.
    assert session_start(cal, 3, dt.time(10, 0)).start == dt.datetime(2027, 1, 6, 9, 0, tzinfo=CPH)
    assert session_start(cal, 3, dt.time(8, 30)).start == dt.datetime(2027, 1, 6, 8, 30, tzinfo=CPH)


def test_an_earlier_release_of_the_sessions_own_assignment_moves_its_start():
    cal = small_calendar([
        ("early", 1, dt.datetime(2027, 1, 4, 8, 15, tzinfo=CPH)),        # session 1's own, that day: counts
        ("other", 2, dt.datetime(2027, 1, 4, 7, 0, tzinfo=CPH)),         # another session's: does not
        ("loose", None, dt.datetime(2027, 1, 5, 8, 45, tzinfo=CPH)),     # no session, on session 2's day: counts
        ("day-before", 2, dt.datetime(2027, 1, 4, 8, 0, tzinfo=CPH)),    # session 2's, but not on its day
    ])
    assert session_start(cal, 1, NINE).start == dt.datetime(2027, 1, 4, 8, 15, tzinfo=CPH)
    assert session_start(cal, 2, NINE).start == dt.datetime(2027, 1, 5, 8, 45, tzinfo=CPH)
    with pytest.raises(KeyError):
        session_start(cal, 7, NINE)


def test_the_next_session_and_its_window():
    cal = small_calendar()
    one = dt.datetime(2027, 1, 4, 9, 0, tzinfo=CPH)
    assert next_session(cal, one - dt.timedelta(days=30), NINE).number == 1
    assert next_session(cal, one - dt.timedelta(seconds=1), NINE).number == 1
    assert next_session(cal, one, NINE).number == 2  # started: the next one is next
    assert next_session(cal, dt.datetime(2027, 1, 5, 9, 0, tzinfo=CPH), NINE) is None
    lead = dt.timedelta(minutes=20)
    assert not in_window(one - dt.timedelta(minutes=21), one, lead)
    assert in_window(one - lead, one, lead)
    assert in_window(one - dt.timedelta(seconds=1), one, lead)
    assert not in_window(one, one, lead)


# -- whom to warm ------------------------------------------------------------------------------

def test_recently_active_students_without_a_server_most_recent_first():
    running = {"": {"ready": True, "pending": None, "last_activity": warm.iso(at(0.1))}}
    pending = {"": {"ready": False, "pending": "spawn"}}
    users = [
        student("s3", at(3)), student("s1", at(1)), student("s2", at(2)),
        student("old", at(days_ago=4)),                      # not active within 3 days
        student("never"),                                     # never active
        student("busy", at(0.5), servers=running),            # has a server
        student("coming", at(0.5), servers=pending),          # is starting one
        student("ta", at(0.2), groups=("tas",)),              # not a student
        student("gone", at(0.2), groups=()),                  # left the roster
        student("s0", at(0.9)),
    ]
    week = dt.timedelta(days=3)
    assert choose_students(users, REAL, week, 10) == ["s0", "s1", "s2", "s3"]
    assert choose_students(users, REAL, week, 2) == ["s0", "s1"]
    assert choose_students(users, REAL, week, 0) == []
    assert choose_students(users, REAL, week, 10, exclude={"s1"}) == ["s0", "s2", "s3"]
    assert choose_students(users, REAL, dt.timedelta(hours=2.5), 10) == ["s0", "s1", "s2"]
    # Equally recent: by name, so the choice does not depend on the hub's order.
    assert choose_students([student("b", at(1)), student("a", at(1))], REAL, week, 1) == ["a"]


def test_the_budget_counts_what_is_warmed_and_the_server_limit_keeps_room():
    assert warm_slots(64 * G, 2 * G, 0) == 32
    assert warm_slots(64 * G, 2 * G, 30) == 2
    assert warm_slots(64 * G, 2 * G, 40) == 0
    assert warm_slots(5 * G, 2 * G, 0) == 2          # only whole servers
    assert warm_slots(0, 2 * G, 0) == 0              # "0": nobody
    assert warm_slots(64 * G, 0, 0) == 0
    assert warm_slots(64 * G, 2 * G, 0, room=5) == 5
    assert server_room(0, 100) is None               # no limit
    assert server_room(100, 80) == 10                # a tenth stays free
    assert server_room(100, 95) == 0
    assert server_room(5, 2) == 2                    # at least one stays free


def test_activity_caused_by_an_unused_warm_up_does_not_make_a_student_active():
    start = dt.datetime(2027, 1, 6, 9, 0, tzinfo=CPH)
    before = at(days_ago=2)
    stopped = Entry(1, start, state="stopped", queued_at=at(1), ended_at=at(0.5), active_before=before)
    # The hub's last_activity is the stop (or the spawn): the activity from before counts.
    assert own_activity(student("s", at(0.49)), stopped) == before
    assert own_activity(student("s", at(0.8)), stopped) == before
    # They came back after it ended, or their activity is older than the warm-up: theirs.
    assert own_activity(student("s", at(0.2)), stopped) == at(0.2)
    assert own_activity(student("s", at(2)), stopped) == at(2)
    # A used warm server was theirs; a cancelled one never started.
    assert own_activity(student("s", at(0.49)), Entry(1, start, state="used", ended_at=at(0.5))) == at(0.49)
    assert own_activity(student("s", at(0.49)), Entry(1, start, state="cancelled", queued_at=at(1),
                                                      ended_at=at(0.5), active_before=before)) == at(0.49)
    # So a student warmed three days ago and never back is not warmed again.
    users = [student("s", at(0.49))]
    assert choose_students(users, REAL, dt.timedelta(days=3), 5, {"s": stopped}) == ["s"]
    old = Entry(1, start, state="stopped", queued_at=at(1), ended_at=at(0.5), active_before=at(days_ago=5))
    assert choose_students(users, REAL, dt.timedelta(days=3), 5, {"s": old}) == []


# -- used, held, released ----------------------------------------------------------------------

def ready(last):
    return {"": {"ready": True, "pending": None, "last_activity": warm.iso(last)}}


def test_a_warm_server_is_used_when_its_activity_is_later_than_what_was_posted():
    start = dt.datetime(2027, 1, 6, 9, 0, tzinfo=CPH)
    posted = at(0.1)
    e = Entry(3, start, state="ready", posted=posted)
    assert not was_used(e, ready(posted)["" ])
    assert not was_used(e, ready(posted + dt.timedelta(seconds=2))[""])     # within the slack
    assert was_used(e, ready(posted + dt.timedelta(seconds=10))[""])
    assert not was_used(Entry(3, start, state="ready"), ready(posted)[""])   # nothing posted yet
    assert observe(e, student("s", servers=ready(posted))) == "ready"
    assert observe(e, student("s", servers=ready(posted + dt.timedelta(minutes=1)))) == "used"
    assert observe(e, student("s")) == "gone"                                # stopped by someone
    assert observe(e, None) == "gone"                                        # not visible: off the roster
    assert observe(e, student("s", servers={"": {"ready": False, "pending": "stop"}})) == "gone"
    starting = Entry(3, start, state="starting")
    assert observe(starting, student("s", servers={"": {"ready": False, "pending": "spawn"}})) == "starting"
    assert observe(starting, student("s", servers=ready(posted))) == "ready"
    assert observe(starting, student("s")) == "failed"
    assert observe(Entry(3, start, state="stopped"), student("s")) == "stopped"  # finished: unchanged


def test_what_is_held_and_what_is_released():
    start = dt.datetime(2027, 1, 6, 9, 0, tzinfo=CPH)
    hold = dt.timedelta(minutes=30)
    posted = at(0.1)
    entries = {
        "unused": Entry(3, start, state="ready", posted=posted),
        "used": Entry(3, start, state="ready", posted=posted),
        "gone": Entry(3, start, state="ready", posted=posted),
        "slow": Entry(3, start, state="starting"),
        "waiting": Entry(3, start, state="queued"),
        "done": Entry(3, start, state="stopped"),
        "later": Entry(4, start + dt.timedelta(days=1), state="ready", posted=posted),
    }
    users = {"unused": student("unused", servers=ready(posted)),
             "used": student("used", servers=ready(posted + dt.timedelta(minutes=5))),
             "gone": student("gone"),
             "slow": student("slow", servers={"": {"ready": False, "pending": "spawn"}}),
             "later": student("later", servers=ready(posted))}
    assert to_hold(entries, start - dt.timedelta(minutes=1)) == ["gone", "later", "unused", "used"]
    assert to_hold(entries, start) == ["later"]
    assert release_actions(entries, users, start + hold - dt.timedelta(seconds=1), hold) == {}
    assert release_actions(entries, users, start + hold, hold) == {
        "unused": "stop", "used": "used", "gone": "gone", "waiting": "cancel"}
    forced = release_actions(entries, users, start - dt.timedelta(minutes=10), hold, force=True)
    assert forced == {"unused": "stop", "used": "used", "gone": "gone", "slow": "stop", "waiting": "cancel",
                      "later": "stop"}


def test_finished_records_are_pruned_after_the_activity_window():
    start = dt.datetime(2027, 1, 6, 9, 0, tzinfo=CPH)
    entries = {"old": Entry(1, start, state="stopped", ended_at=at(days_ago=5)),
               "recent": Entry(1, start, state="used", ended_at=at(days_ago=1)),
               "live": Entry(1, start, state="ready")}
    assert prune(entries, REAL, dt.timedelta(days=3)) == ["old"]
    assert set(entries) == {"recent", "live"}


# -- the state file ----------------------------------------------------------------------------

def test_the_state_file_round_trips_and_is_written_atomically(tmp_path):
    start = dt.datetime(2027, 1, 6, 9, 0, tzinfo=CPH)
    path = tmp_path / "state" / "warm.json"
    entries = {"s1": Entry(3, start, state="ready", profile="cpu", queued_at=at(1), posted=at(0.5), attempts=1,
                           active_before=at(days_ago=1)),
               "s2": Entry(3, start, state="failed", note="hub API POST: 500", attempts=2, ended_at=at(0.2))}
    StateFile(path).save(entries, {"at": "x"})
    assert [p.name for p in path.parent.iterdir()] == ["warm.json"]  # no temporary file left
    loaded, last = StateFile(path).load()
    assert loaded == entries and last == {"at": "x"}
    assert loaded["s1"].start.utcoffset() == dt.timedelta(hours=1)
    assert json.loads(path.read_text())["entries"]["s1"]["posted"].endswith("Z")


@pytest.mark.parametrize("content, why", [
    ("{not json", "is not valid"),
    ('["a", "list"]', "no 'entries' mapping"),
    ('{"version": 99, "entries": {}}', "version 99"),
    (b"\xff\xfe\x00garbage", "cannot be read"),
])
def test_a_broken_state_file_is_set_aside_with_a_clear_log_line(tmp_path, caplog, content, why):
    path = tmp_path / "warm.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with caplog.at_level(logging.ERROR, logger="warm"):
        entries, last = StateFile(path).load()
    assert entries == {} and last == {}
    message = caplog.text
    assert str(path) in message and why in message and "Starting with no warmed servers" in message
    assert not path.exists() and (tmp_path / "warm.json.bad").read_bytes()[:4] == (
        content if isinstance(content, bytes) else content.encode())[:4]
    StateFile(path).save({}, {})  # and the service carries on writing
    assert StateFile(path).load() == ({}, {})


def test_a_bad_record_is_dropped_and_the_others_kept(tmp_path, caplog):
    path = tmp_path / "warm.json"
    good = Entry(3, dt.datetime(2027, 1, 6, 9, 0, tzinfo=CPH), state="ready").to_dict()
    path.write_text(json.dumps({"version": 1, "entries": {
        "ok": good, "badstate": {**good, "state": "exploded"}, "badtime": {**good, "posted": "yesterday"},
        "nosession": {**good, "session": "three"}, "notadict": 7}}))
    with caplog.at_level(logging.ERROR, logger="warm"):
        entries, _ = StateFile(path).load()
    assert list(entries) == ["ok"]
    for name in ("badstate", "badtime", "nosession", "notadict"):
        assert f"the record of {name} is dropped" in caplog.text


# -- a whole schedule against an in-memory hub -------------------------------------------------

class FakeHub:
    """The few hub API calls the service makes, over a dict of users, with RBAC's view: only
    members of ``students`` are visible. Servers become ready on the ``ready_after``-th look."""

    def __init__(self, clocks, users):
        self.clocks = clocks
        self.users = {u["name"]: u for u in users}
        self.calls = []
        self.fail_start = set()
        self.ready_after = 1
        self.looks = {}

    def visible(self, name):
        u = self.users.get(name)
        return u if u and "students" in u["groups"] else None

    def look(self, name):
        server = self.users[name]["servers"].get("")
        if server and server["pending"] == "spawn":
            self.looks[name] = self.looks.get(name, 0) + 1
            if self.looks[name] >= self.ready_after:
                server.update(ready=True, pending=None)

    async def students(self):
        self.calls.append(("GET", "/users"))
        for name in list(self.users):
            if self.visible(name):
                self.look(name)
        return {n: json.loads(json.dumps(u)) for n, u in self.users.items() if self.visible(n)}

    async def call(self, method, path, body=None, ok=(200, 201, 202, 204), headers=None):
        self.calls.append((method, path, body))
        parts = path.strip("/").split("/")
        name, what = parts[1], (parts[2] if len(parts) > 2 else "")
        user = self.visible(name)
        now = warm.iso(self.clocks.real)

        def answer(code, data=None):
            if code not in ok:
                raise HubError(method, path, code, json.dumps({"message": f"status {code}"}))
            return code, data

        if user is None:
            return answer(404)
        if method == "GET" and not what:
            self.look(name)
            return answer(200, json.loads(json.dumps(user)))
        if method == "POST" and what == "server":
            if name in self.fail_start:
                return answer(500)
            if user["servers"]:
                return answer(400)
            user["servers"][""] = {"ready": False, "pending": "spawn", "started": now, "last_activity": now,
                                   "user_options": body}
            user["last_activity"] = now  # as JupyterHub does at a spawn
            return answer(202)
        if method == "DELETE" and what == "server":
            user["servers"].pop("", None)
            user["last_activity"] = now  # and at a stop
            return answer(204)
        if method == "POST" and what == "activity":
            server = user["servers"].get("")
            if server is None:
                return answer(400)
            posted = body["servers"][""]["last_activity"]
            if warm.parse_time(posted) > warm.parse_time(server["last_activity"]):
                server["last_activity"] = posted
            return answer(200)
        raise AssertionError(f"unexpected call {method} {path}")

    def use(self, name):
        """The student works in their server: it reports activity now."""
        self.users[name]["servers"][""]["last_activity"] = warm.iso(self.clocks.real)
        self.users[name]["last_activity"] = warm.iso(self.clocks.real)

    def started(self):
        return [c[1].split("/")[2] for c in self.calls if c[0] == "POST" and c[1].endswith("/server")]

    def stopped(self):
        return [c[1].split("/")[2] for c in self.calls if c[0] == "DELETE"]


class Clocks:
    def __init__(self, course, real):
        self.course, self.real = course, real

    def advance(self, **kw):
        self.course += dt.timedelta(**kw)
        self.real += dt.timedelta(**kw)


S3 = dt.datetime(2027, 1, 6, 9, 0, tzinfo=CPH)  # session 3 of the course calendar


def make_warmer(tmp_path, users, **plan_kw):
    clocks = Clocks(S3 - dt.timedelta(hours=1), REAL)
    hub = FakeHub(clocks, users)
    w = Warmer(hub, plan(**plan_kw), course_calendar(), StateFile(tmp_path / "warm.json"),
               lambda: clocks.course, lambda: clocks.real, poll_seconds=0)
    return w, hub, clocks


def run(coro_fn):
    return asyncio.run(coro_fn())


def roster():
    return [student("s1", at(1)), student("s2", at(2)), student("s3", at(3)), student("s4", at(days_ago=10)),
            student("ta", at(0.1), groups=("tas",))]


def test_the_schedule_warms_holds_and_releases(tmp_path):
    w, hub, clocks = make_warmer(tmp_path, roster())

    async def scenario():
        w.start(tick_seconds=None)
        result = await w.tick()                                   # an hour before: outside the window
        assert result["note"].startswith("session 3 at 2027-01-06T09:00:00+01:00: the window opens")
        assert hub.started() == []
        clocks.advance(minutes=45)                                # 15 minutes before: in the window
        result = await w.tick()
        assert result["queued"] == ["s1", "s2"] and result["fit"] == 2 and result["left_out"] == 1
        await w.drain()
        assert hub.started() == ["s1", "s2"]
        assert all(c[2] == {"profile": "cpu"} for c in hub.calls if c[0] == "POST" and c[1].endswith("/server"))
        assert {n: e.state for n, e in w.entries.items()} == {"s1": "ready", "s2": "ready"}
        assert w.entries["s1"].posted is not None                 # held from the moment it is ready
        clocks.advance(minutes=1)
        result = await w.tick()
        assert "queued" in result and result["queued"] == []      # the budget holds two: nobody else
        assert result["held"] == 2
        assert hub.users["s2"]["servers"][""]["last_activity"] == warm.iso(clocks.real)
        clocks.advance(minutes=1)
        hub.use("s1")                                             # s1 logs in and works
        clocks.advance(seconds=30)
        result = await w.tick()
        assert w.entries["s1"].state == "used" and result["held"] == 1 and result["seen"] == {"used": ["s1"]}
        activity_posts = [c[1] for c in hub.calls if c[1].endswith("/activity")]
        assert activity_posts[-1] == "/users/s2/activity"
        assert result["queued"] == []                             # a used one still takes its memory
        clocks.advance(minutes=20)                                # 9:07: started; nothing posted any more
        result = await w.tick()
        assert result["held"] == 0 and hub.stopped() == []
        clocks.advance(minutes=24)                                # 9:31: past the hold
        result = await w.tick()
        assert result["released"] == {"stopped": ["s2"]}
        assert hub.stopped() == ["s2"] and "" in hub.users["s1"]["servers"]   # the used one is kept
        assert w.entries["s2"].state == "stopped" and w.entries["s1"].state == "used"
        await w.tick()
        assert hub.stopped() == ["s2"]                            # once
        await w.stop()

    run(scenario)
    saved, _ = StateFile(tmp_path / "warm.json").load()
    assert {n: e.state for n, e in saved.items()} == {"s1": "used", "s2": "stopped"}


def test_the_next_session_warms_by_the_students_own_activity(tmp_path):
    """s2's warm server went unused, and the spawn and stop moved the hub's last_activity: the next
    session counts s2's activity from before, so a student who stopped coming stops being warmed."""
    w, hub, clocks = make_warmer(tmp_path, roster(), budget=6 * G)

    async def scenario():
        w.start(tick_seconds=None)
        clocks.advance(minutes=45)
        assert (await w.tick())["queued"] == ["s1", "s2", "s3"]
        await w.drain()
        clocks.advance(minutes=76)
        await w.tick()
        assert sorted(hub.stopped()) == ["s1", "s2", "s3"]
        hub.users["s1"]["last_activity"] = warm.iso(clocks.real + dt.timedelta(hours=6))  # s1 comes back
        clocks.course = S3 + dt.timedelta(days=1) - dt.timedelta(minutes=10)  # session 4's window
        clocks.real += dt.timedelta(days=2, hours=22, minutes=30)             # s2's own activity: 3 days old
        result = await w.tick()
        # s2 and s3: the hub's last_activity is the stop, two days ago; their own is three days old.
        assert result["session"] == 4 and result["queued"] == ["s1"]
        await w.stop()

    run(scenario)


def test_a_failed_start_does_not_stop_the_others_and_is_not_retried_for_ever(tmp_path, caplog):
    w, hub, clocks = make_warmer(tmp_path, roster())
    hub.fail_start.add("s1")

    async def scenario():
        w.start(tick_seconds=None)
        clocks.advance(minutes=45)
        with caplog.at_level(logging.ERROR, logger="warm"):
            await w.tick()
            await w.drain()
        assert "s1 (session 3): start 1 failed: hub API POST /users/s1/server: 500" in caplog.text
        assert w.entries["s1"].state == "failed" and w.entries["s2"].state == "ready"
        for _ in range(5):                                         # later ticks in the window
            clocks.advance(seconds=30)
            await w.tick()
            await w.drain()
        assert hub.started().count("s1") == warm.MAX_ATTEMPTS
        assert w.entries["s1"].attempts == warm.MAX_ATTEMPTS
        assert w.entries["s3"].state == "ready"                    # the slot went to the next student
        await w.stop()

    run(scenario)


def test_whoever_got_a_server_or_left_the_roster_before_their_turn_is_skipped(tmp_path):
    w, hub, clocks = make_warmer(tmp_path, roster(), budget=6 * G)

    async def scenario():
        clocks.advance(minutes=45)
        await w.tick()                                             # queued, no workers yet
        assert {n: e.state for n, e in w.entries.items()} == {"s1": "queued", "s2": "queued", "s3": "queued"}
        hub.users["s1"]["servers"][""] = {"ready": True, "pending": None, "last_activity": warm.iso(clocks.real)}
        hub.users["s2"]["groups"] = []                             # taken off the roster
        w.start(tick_seconds=None)
        await w.drain()
        assert hub.started() == ["s3"]
        assert w.entries["s1"].state == "cancelled" and w.entries["s1"].note == "already has a server"
        assert w.entries["s2"].state == "cancelled" and w.entries["s2"].note == "no longer a student"
        await w.stop()

    run(scenario)


def test_queued_students_survive_a_restart(tmp_path):
    w, hub, clocks = make_warmer(tmp_path, roster())

    async def first():
        clocks.advance(minutes=45)
        await w.tick()                                             # queued, then the service stops

    run(first)
    again = Warmer(hub, w.plan, course_calendar(), StateFile(tmp_path / "warm.json"), lambda: clocks.course,
                   lambda: clocks.real, poll_seconds=0)
    assert {n: e.state for n, e in again.entries.items()} == {"s1": "queued", "s2": "queued"}

    async def second():
        again.start(tick_seconds=None)
        await again.drain()
        await again.stop()

    run(second)
    assert hub.started() == ["s1", "s2"]


def test_the_server_limit_leaves_room(tmp_path):
    users = roster() + [student(f"x{i}", at(0.01), servers=ready(at(0.01))) for i in range(7)]
    w, hub, clocks = make_warmer(tmp_path, users, budget=64 * G, active_server_limit=10)

    async def scenario():
        clocks.advance(minutes=45)
        result = await w.tick()
        assert result["room_under_server_limit"] == 2 and result["queued"] == ["s1", "s2"]

    run(scenario)


def test_warm_now_and_release_now(tmp_path):
    w, hub, clocks = make_warmer(tmp_path, roster(), budget=6 * G, enabled=False)

    async def scenario():
        w.start(tick_seconds=None)
        clocks.advance(minutes=45)
        result = await w.tick()
        assert "queued" not in result and "warm.enabled is false" in result["note"]
        assert hub.started() == []                                 # the schedule is off
        clocks.course = S3 - dt.timedelta(hours=5)                 # far outside the window
        info = await w.warm_now(None, "teacher")
        assert info["session"] == 3 and info["queued"] == ["s1", "s2", "s3"] and info["fit"] == 3
        await w.drain()
        assert w.entries["s1"].by == "api (teacher)"
        clocks.advance(seconds=30)
        hub.use("s2")
        clocks.advance(seconds=30)
        done = await w.release_now("teacher")
        assert done == {"stopped": ["s1", "s3"], "used": ["s2"]}
        with pytest.raises(warm.Refused) as refused:
            await w.warm_now(42, "teacher")
        assert refused.value.status == 404
        clocks.course = S3 + dt.timedelta(hours=2)
        with pytest.raises(warm.Refused) as refused:
            await w.warm_now(3, "teacher")
        assert refused.value.status == 409
        info = await w.warm_now(3 + 1, "teacher")                  # the next day's session
        assert info["session"] == 4
        await w.stop()

    run(scenario)


def test_the_course_clock_is_read_afresh(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text("grading:\n  test_clock: true\n")
    settings = load_settings(path, environ={"LAB_COURSE_ROOT": str(tmp_path / "course")})
    now, note = warm.course_clock(settings)
    assert "test clock" in note
    assert abs((now() - dt.datetime.now(UTC)).total_seconds()) < 5
    state = tmp_path / "course" / "state"
    state.mkdir(parents=True)
    (state / "clock.json").write_text(json.dumps({"offset": 86400 * 30}))
    assert abs((now() - dt.datetime.now(UTC)).total_seconds() - 86400 * 30) < 5
    (state / "clock.json").write_text(json.dumps({"offset": -3600}))
    assert abs((now() - dt.datetime.now(UTC)).total_seconds() + 3600) < 5


def test_the_hub_client_reads_every_page_of_students_and_reports_refusals():
    """HubAPI against a small stand-in for the hub's REST API: pages of two, the token sent."""
    from tornado import web

    people = [student(f"s{i}", at(i)) for i in range(5)]
    seen = []

    class Users(web.RequestHandler):
        def get(self):
            seen.append((self.request.headers.get("Authorization"), self.request.headers.get("Accept")))
            offset, limit = int(self.get_argument("offset")), min(2, int(self.get_argument("limit")))
            following = {"offset": offset + limit, "limit": limit} if offset + limit < len(people) else None
            self.write({"items": people[offset:offset + limit],
                        "_pagination": {"offset": offset, "limit": limit, "total": len(people), "next": following}})

    class Server(web.RequestHandler):
        def post(self, name):
            self.set_status(403)
            self.write({"status": 403, "message": f"Action is not authorized with current scopes for {name}"})

    async def main():
        sock, port = bind_unused_port()
        server = HTTPServer(web.Application([(r"/hub/api/users", Users), (r"/hub/api/users/([^/]+)/server", Server)]))
        server.add_sockets([sock])
        api = warm.HubAPI(f"http://127.0.0.1:{port}/hub/api/", "secret")
        students = await api.students()
        with pytest.raises(HubError) as refused:
            await api.call("POST", "/users/s1/server", {"profile": "cpu"})
        closed = warm.HubAPI("http://127.0.0.1:9/hub/api", "secret", timeout=5)
        with pytest.raises(OSError):
            await closed.students()
        server.stop()
        return students, refused.value

    students, refused = asyncio.run(main())
    assert list(students) == [f"s{i}" for i in range(5)]
    assert len(seen) == 3 and seen[0] == ("token secret", "application/jupyterhub-pagination+json")
    assert refused.code == 403 and "not authorized with current scopes for s1" in str(refused)


# -- the hub's configuration -------------------------------------------------------------------

def test_the_service_and_its_least_scopes(tmp_path):
    settings = load_settings(tmp_path / "none.yaml", environ={})
    service, role = warm.service_definition(settings)
    assert service["name"] == "warm" and service["url"] == f"http://hub:{warm.PORT}"
    assert service["command"][1:] == ["-m", "hub.services.warm"]
    assert service["oauth_no_confirm"] is True and service["display"] is True
    assert "LAB_ADMIN_API_TOKEN" not in service["environment"]
    assert role["services"] == ["warm"]
    assert sorted(role["scopes"]) == sorted(f"{s}!group=students" for s in (
        "list:users", "read:users", "read:servers", "start:servers", "delete:servers", "users:activity"))
    for scope in role["scopes"]:
        assert scope.split("!")[0] in scope_definitions, scope   # JupyterHub knows it
    from hub.config import service_bind_url
    taken = {service_bind_url(settings, p) for p in (10101, 10102, 10103, 10104, 10105)}
    assert service["url"] not in taken


# -- the web app: who may do what --------------------------------------------------------------

MODELS = {
    "student-token": {"kind": "user", "name": "s230001", "groups": ["students"], "admin": False,
                      "scopes": ["access:services!service=course"]},
    "student-with-access": {"kind": "user", "name": "s230002", "groups": ["students"], "admin": False,
                            "scopes": ["access:services!service=warm"]},
    "ta-token": {"kind": "user", "name": "tahe", "groups": ["tas"], "admin": False,
                 "scopes": ["access:services!service=warm"]},
    "teacher-token": {"kind": "user", "name": "teacher", "groups": ["instructors"], "admin": False,
                      "scopes": ["access:services!service=warm"]},
    "admin-token": {"kind": "service", "name": "lab-admin", "scopes": ["access:services"]},
}


class FakeAuth(HubOAuth):
    """HubOAuth with the hub's answer to each token from MODELS (no hub needed)."""

    async def _answer(self, token):
        model = MODELS.get(token)
        return json.loads(json.dumps(model)) if model else None

    def user_for_token(self, token, use_cache=True, session_id="", *, sync=True):
        return self._answer(token)


def serve(tmp_path, requests):
    """Run the app and make ``requests`` [(method, path, token, body)]; return [(status, body)]."""
    w, hub, clocks = make_warmer(tmp_path, roster())
    auth = FakeAuth(api_token="x", api_url="http://127.0.0.1:9/hub/api", access_scopes={"access:services!service=warm"},
                    oauth_client_id="service-warm", oauth_redirect_uri="http://warm/services/warm/oauth_callback")
    app = warm.make_app("/services/warm/", w, operators=("operator",), hub_auth=auth)

    async def main():
        sock, port = bind_unused_port()
        server = HTTPServer(app)
        server.add_sockets([sock])
        w.start(tick_seconds=None)
        client = AsyncHTTPClient()
        out = []
        for method, path, token, body in requests:
            headers = {"Authorization": f"token {token}"} if token else {}
            r = await client.fetch(f"http://127.0.0.1:{port}/services/warm/{path}", method=method, headers=headers,
                                   body=body if method == "POST" else None, raise_error=False, follow_redirects=False)
            out.append((r.code, r.body.decode()))
        await w.stop()
        server.stop()
        return out

    return asyncio.run(main()), hub


def test_only_instructors_tokens_may_warm_or_release(tmp_path):
    calls = [("POST", "api/warm", t, b"") for t in
             ("student-token", "student-with-access", "ta-token", "not-a-token", "teacher-token")]
    calls += [("POST", "api/release", t, b"") for t in ("student-token", "ta-token", "admin-token")]
    calls += [("POST", "api/warm", "admin-token", b'{"session": "three"}')]
    results, hub = serve(tmp_path, calls)
    codes = [code for code, _ in results]
    assert codes[:4] == [403, 403, 403, 403], results[:4]
    assert "you are ta" in results[2][1]
    assert codes[4] == 200 and json.loads(results[4][1])["session"] == 3
    assert codes[5:8] == [403, 403, 200]
    assert codes[8] == 400 and "is not a number" in results[8][1]
    # Only the teacher's warm and the admin's release reached the hub (each lists the students once).
    assert len([c for c in hub.calls if c[:2] == ("GET", "/users")]) == 2
    assert json.loads(results[7][1]) == {"stopped": ["s1", "s2"]}


def test_staff_see_the_page_and_status_students_do_not(tmp_path):
    calls = [("GET", "", "ta-token", None), ("GET", "api/status", "teacher-token", None),
             ("GET", "api/status", "student-with-access", None), ("GET", "api/status", "student-token", None),
             ("GET", "api/status", None, None)]
    results, _ = serve(tmp_path, calls)
    page, status = results[0], results[1]
    assert page[0] == 200 and "Warm servers before class" in page[1] and "<script" not in page[1]
    assert "Next session: <b>3</b>" in page[1] and "<b>2</b> servers fit" in page[1]
    data = json.loads(status[1])
    assert status[0] == 200 and data["next_session"]["number"] == 3 and data["fit"] == 2
    assert data["budget"] == "4G" and data["profile"] == "cpu" and data["servers"] == []
    assert results[2][0] == 403 and results[3][0] == 403
    assert results[4][0] in (302, 403)                              # no token: off to the hub's login


def test_the_page_shows_each_warm_server_and_escapes_names():
    start = S3
    status = {"enabled": True, "now": "2027-01-06T08:45:00+01:00", "clock": "", "calendar_error": None,
              "next_session": {"number": 3, "title": "<Reproducibility>", "start": start.isoformat(),
                               "window_opens": (start - dt.timedelta(minutes=20)).isoformat(), "in_window": True,
                               "warmed": 1},
              "lead_minutes": 20, "hold_minutes": 30, "active_within_days": 3, "budget": "4G", "profile": "cpu",
              "server_memory": "2G", "fit": 2, "active_server_limit": 0, "queued_now": 0,
              "counts": {"ready": 1},
              "servers": [{"user": "s1<b>", **Entry(3, start, state="ready", note="<i>x</i>").to_dict()}],
              "last_tick": {"at": "2026-05-01T12:00:00Z", "queued": ["s1"]}}
    page = warm.render_page(status)
    assert "&lt;Reproducibility&gt;" in page and "s1&lt;b&gt;" in page and "&lt;i&gt;x&lt;/i&gt;" in page
    assert "(open now)" in page and "<td class='ready'>ready</td>" in page and "<script" not in page
