"""The course service, hub-managed at ``/services/course/``: the assignment exchange, the
calendar that releases and grades on time, the course dashboard and the grades export. It runs
as the unprivileged ``grader`` user, who owns the course volume; only the sandbox runner
(``hub.services.sandbox``) runs as root.

Who may do what is decided by the hub token (every request) and the course role from the hub's
groups, by the one table of ``hub.permissions``; cookie-authenticated requests need XSRF
(``hub.services.base``):

- **Everyone enrolled** (their server's token carries ``access:services!service=course``):
  ``GET api/assignments`` (released ones only), ``GET api/assignments/A/download``,
  ``POST api/assignments/A/submit`` (a tar.gz; filed under the id the token proves, timestamped
  by the course clock, marked late after the due time), ``GET api/submissions`` (their own),
  ``GET api/submissions/A/ID/feedback`` (their own, once released). There is no request that
  names another student, so none can reach another's files.
- **Instructors and TAs**: ``dashboard`` (per assignment: fetched, submitted, late, graded, and
  the score distribution, as plots), ``api/status``, ``api/grades.csv``.
- **Instructors, hub admins and the lab-admin token**: ``POST api/assignments/A/ACTION`` with
  ACTION release | collect | autograde | feedback | deadline; ``PUT api/clock`` when
  ``grading.test_clock`` is on (tests move time forward instead of sleeping).

The grading work runs as the ``grader`` user too (``python -m hub.grading``), which has no
Docker access; the notebooks it grades go to the sandbox runner at ``127.0.0.1:10104/run``
(not reachable through the proxy, and guarded by a token only root and the grader group can
read), and run in a sandbox container (``hub.sandbox``).

Ours because nbgrader's exchange is not safe across containers (see ``hub.exchange``) and
nbgrader has no calendar, no sandbox and no dashboard.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse
from zoneinfo import ZoneInfo

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from tornado import ioloop, web

from hub import grading
from hub.coursecal import Calendar, CalendarError, Clock, load_calendar
from hub.exchange import MAX_UPLOAD, ExchangeRefused, ExchangeStore, id_to_time
from hub.permissions import may
from hub.services.base import ServiceHandler
from hub.services.sandbox import limits_from

log = logging.getLogger("course")

ACTIONS = ("release", "collect", "autograde", "feedback", "deadline")


class Course:
    """State shared by the handlers: paths, calendar, clock, store, jobs."""

    def __init__(self):
        from hub.config import service_url

        lab = grading.settings()
        self.root = lab.course_root
        self.src = lab.course_src
        self.settings = dict(lab.get("grading"))
        self.course_id = grading.lab_config().CourseDirectory.course_id
        self.operators = set(lab.get("auth.admin_users"))
        self.formgrader_url = service_url(lab, "formgrader")
        self.calendar: Calendar = load_calendar(self.src / "calendar.yaml", self.src / "source")
        self.store = ExchangeStore(self.root / "exchange")
        self.state_dir = self.root / "state"
        self.clock = Clock(self.state_dir / "clock.json", bool(self.settings.get("test_clock")))
        self.schedule_file = self.state_dir / "schedule.json"
        self.jobs: list[dict] = []
        self.queue: asyncio.Queue = asyncio.Queue()
        self.wake = asyncio.Event()
        self.limits = limits_from(self.settings)
        self.workers = lab.grading_workers
        # Unpacking uploads: a few at a time, off the event loop.
        self.uploads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="upload")

    # -- set-up -------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Folders on the course-data volume (this service runs as the grader user, who owns it);
        the sources of assignments not yet released (released ones keep the version students got)."""
        for sub in ("nbgrader/source", "exchange", "state/grading", "state/home"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for name in self.calendar.assignments:
            dest = self.root / "nbgrader" / "source" / name
            if self.store.is_released(name) and dest.is_dir():
                continue
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(self.src / "source" / name, dest)
        os.chmod(self.root / "state", 0o750)

    # -- schedule -----------------------------------------------------------------------------
    def schedule(self) -> dict:
        try:
            return json.loads(self.schedule_file.read_text())
        except (OSError, ValueError):
            return {}

    def save_schedule(self, data: dict) -> None:
        tmp = self.schedule_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.schedule_file)

    def due_jobs(self) -> list[tuple[str, str]]:
        """What the calendar says should have happened by now and has not."""
        if not self.settings.get("calendar", True):
            return []
        now = self.clock.now()
        grace = dt.timedelta(minutes=int(self.settings.get("grace_minutes", 0)))
        done = self.schedule()
        # Not again while queued or running, nor for 5 minutes after a failure (the log says why).
        recent = time.monotonic() - 300
        queued = {(j["assignment"], j["action"]) for j in self.jobs
                  if j["state"] in ("queued", "running") or (j["state"] == "failed" and j["failed_at"] > recent)}
        jobs = []
        for a in self.calendar.assignments.values():
            state = done.get(a.name, {})
            if now >= a.release and not state.get("released") and not self.store.is_released(a.name):
                jobs.append((a.name, "release"))
            elif now >= a.release and not state.get("released"):
                state["released"] = "before the calendar (by hand)"
                done[a.name] = state
                self.save_schedule(done)
            if (now >= a.due + grace and self.settings.get("auto_grade", True) and not state.get("deadline")
                    and (state.get("released") or self.store.is_released(a.name))):
                jobs.append((a.name, "deadline"))
        return [j for j in jobs if j not in queued]

    async def scheduler(self) -> None:
        while True:
            try:
                for assignment, action in self.due_jobs():
                    self.enqueue(assignment, action, "calendar")
            except Exception:
                log.exception("calendar check failed")
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=20)
            except asyncio.TimeoutError:
                pass

    def enqueue(self, assignment: str, action: str, who: str) -> dict:
        job = {"id": len(self.jobs) + 1, "assignment": assignment, "action": action, "by": who, "state": "queued",
               "queued_at": self.clock.now().isoformat(), "output": ""}
        self.jobs.append(job)
        self.queue.put_nowait(job)
        log.info("job %d: %s %s (by %s)", job["id"], action, assignment, who)
        return job

    async def runner(self) -> None:
        """One grading job at a time (each one grades in parallel inside)."""
        while True:
            job = await self.queue.get()
            job["state"] = "running"
            job["started_at"] = self.clock.now().isoformat()
            args = [job["action"], job["assignment"]]
            if job["action"] == "deadline" and not self.settings.get("auto_feedback", True):
                args.append("--no-feedback")
            if job["action"] == "autograde":
                args.append("--collect")
            code, output = await self.run_as_grader(args)
            job["output"] = output[-4000:]
            job["state"] = "done" if code == 0 else "failed"
            job["failed_at"] = time.monotonic()
            job["finished_at"] = self.clock.now().isoformat()
            if code == 0 and job["action"] in ("release", "deadline"):
                data = self.schedule()
                entry = data.setdefault(job["assignment"], {})
                entry["released" if job["action"] == "release" else "deadline"] = job["finished_at"]
                self.save_schedule(data)
            (log.info if code == 0 else log.error)("job %d: %s %s %s", job["id"], job["action"], job["assignment"],
                                                    job["state"])

    def grader_env(self) -> dict:
        """The grading CLI's environment: this service's own settings variables (the CLI loads the
        same settings), and nothing else of this process."""
        env = {name: value for name, value in os.environ.items() if name.startswith("LAB_")}
        return {**env, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.state_dir / "home"),
                "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}

    async def run_as_grader(self, args: list[str]) -> tuple[int, str]:
        """``python -m hub.grading ARGS``, as this service's own user (the grader)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub.grading", *args, env=self.grader_env(), cwd=str(self.state_dir / "home"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        lines = []
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            lines.append(line)
            log.info("%s", line)
        return await proc.wait(), "\n".join(lines)

    # -- the dashboard's numbers ----------------------------------------------------------------
    def overview(self) -> list[dict]:
        from nbgrader.api import Gradebook, MissingEntry

        fetched: dict[str, set] = {}
        for e in self.store.events():
            if e.get("event") == "fetch":
                fetched.setdefault(e["assignment"], set()).add(e["student"])
        rows = []
        url = grading.gradebook_url()
        try:
            if url.startswith("sqlite:") and not (self.root / "nbgrader" / "gradebook.db").is_file():
                raise FileNotFoundError("no gradebook yet")  # the grader creates it, not us (root)
            gb = Gradebook(url)
        except Exception as exc:  # no gradebook yet
            log.info("gradebook not readable yet: %s", exc)
            gb = None
        try:
            for a in self.calendar.assignments.values():
                subs = self.store.submissions(assignment=a.name)
                latest: dict[str, object] = {}
                for s in subs:
                    latest[s.student] = s
                scores, maximum = [], None
                if gb is not None:
                    try:
                        assignment = gb.find_assignment(a.name)
                        maximum = float(assignment.max_score)
                        scores = [float(s.score) for s in assignment.submissions]
                    except MissingEntry:
                        pass
                ledger = grading.read_ledger(a.name)
                rows.append({
                    "assignment": a.name, "title": a.title, "core": a.core,
                    "release": a.release.isoformat(), "due": a.due.isoformat(),
                    "released": self.store.is_released(a.name),
                    "fetched": len(fetched.get(a.name, ())), "submitted": len(latest),
                    "late": sum(1 for s in latest.values() if s.late), "graded": len(scores),
                    "max_score": maximum, "scores": scores,
                    "flagged": {k: v.get("reason") or f"failed: {v.get('errors') or 'see the log'}" for k, v in ledger.items()
                                if v.get("reason") or v.get("status") != "graded"},
                })
        finally:
            if gb is not None:
                gb.close()
        return rows


# -- handlers ---------------------------------------------------------------------------------------

class Base(ServiceHandler):
    def initialize(self, course: Course):
        self.course = course
        self.operators = course.operators

    @property
    def student(self) -> str:
        user = self.current_user
        if user.get("kind") != "user":
            raise web.HTTPError(403, "only people have assignments")
        self.need("exchange")
        return user["name"]

    def released(self, assignment: str):
        try:
            ExchangeStore.check(assignment=assignment)
        except ExchangeRefused as exc:
            raise web.HTTPError(400, str(exc))
        if not self.course.store.is_released(assignment):
            raise web.HTTPError(404, f"no released assignment {assignment}")
        return self.course.calendar.get(assignment)


class AssignmentsHandler(Base):
    @web.authenticated
    def get(self):
        out = []
        for name in self.course.store.released():
            entry = self.course.calendar.get(name)
            out.append({"course_id": self.course.course_id, "assignment_id": name,
                        "title": entry.title if entry else name,
                        "due": entry.due.isoformat() if entry else None,
                        "notebooks": self.course.store.notebooks(name),
                        "files": sorted(self.course.store.release_files(name))})
        self.write_json({"course_id": self.course.course_id, "now": self.course.clock.now().isoformat(),
                         "assignments": out})


class DownloadHandler(Base):
    @web.authenticated
    def get(self, assignment):
        self.released(assignment)
        from hub.exchange import pack
        data = pack(self.course.store.outbound(assignment))
        if self.current_user.get("kind") == "user":
            self.course.store.record("fetch", self.current_user["name"], assignment, self.course.clock.now())
        self.set_header("Content-Type", "application/gzip")
        self.finish(data)


@web.stream_request_body
class SubmitHandler(Base):
    """A submission streams into a temporary file, refused as soon as it passes the size limit
    (checked against Content-Length first, and again as it arrives), and is unpacked off the
    event loop, so a big or crafted upload never stalls anyone else's request."""

    upload = None

    async def prepare(self):
        if self.request.method != "POST":
            return
        if self.current_user is None:
            raise web.HTTPError(403, "log in, or use your server's API token")
        self.need_token()
        self.student  # noqa: B018 (enrolled?)
        try:
            length = int(self.request.headers.get("Content-Length", "0"))
        except ValueError:
            raise web.HTTPError(400, "bad Content-Length")
        if length > MAX_UPLOAD:
            raise web.HTTPError(413, f"the upload is larger than {MAX_UPLOAD // 2**20} MiB")
        # A little above the limit, so that data_received below refuses with its message first.
        self.request.connection.set_max_body_size(MAX_UPLOAD + 2**20)
        self.received = 0
        self.upload = tempfile.TemporaryFile(prefix="lab-upload-")

    def data_received(self, chunk: bytes):
        if self.upload is None:
            return
        self.received += len(chunk)
        if self.received > MAX_UPLOAD:
            raise web.HTTPError(413, f"the upload is larger than {MAX_UPLOAD // 2**20} MiB")
        self.upload.write(chunk)

    def on_finish(self):
        if self.upload is not None:
            self.upload.close()

    async def post(self, assignment):
        student = self.student
        entry = self.released(assignment)
        now = self.course.clock.now()
        self.upload.seek(0)
        try:
            sub = await ioloop.IOLoop.current().run_in_executor(
                self.course.uploads, self.course.store.submit, student, assignment, self.upload, now,
                entry.due if entry else None)
        except ExchangeRefused as exc:
            raise web.HTTPError(400, str(exc))
        log.info("%s submitted %s at %s%s%s", student, assignment, sub.timestamp, " (late)" if sub.late else "",
                 f"; left out: {', '.join(sub.ignored)}" if sub.ignored else "")
        self.write_json(sub.as_dict(), 201)


class SubmissionsHandler(Base):
    @web.authenticated
    def get(self):
        assignment = self.get_argument("assignment", None)
        try:
            subs = self.course.store.submissions(self.student, assignment)
        except ExchangeRefused as exc:
            raise web.HTTPError(400, str(exc))
        self.write_json({"course_id": self.course.course_id, "submissions": [s.as_dict() for s in subs]})


class FeedbackHandler(Base):
    @web.authenticated
    def get(self, assignment, sid):
        try:
            data = self.course.store.feedback_archive(self.student, assignment, sid)
        except ExchangeRefused as exc:
            raise web.HTTPError(404, str(exc))
        self.set_header("Content-Type", "application/gzip")
        self.finish(data)


class ActionHandler(Base):
    @web.authenticated
    def post(self, assignment, action):
        self.need_token()
        self.need("course.manage")
        if self.course.calendar.get(assignment) is None:
            raise web.HTTPError(404, f"no assignment {assignment} in the course calendar")
        job = self.course.enqueue(assignment, action, self.current_user["name"])
        self.write_json(job, 202)


class StatusHandler(Base):
    @web.authenticated
    def get(self):
        self.need("course.view")
        self.write_json({"now": self.course.clock.now().isoformat(), "schedule": self.course.schedule(),
                         "jobs": self.course.jobs[-50:], "assignments": self.course.overview()})


class ClockHandler(Base):
    @web.authenticated
    def put(self):
        self.need_token()
        self.need("course.manage")
        try:
            when = dt.datetime.fromisoformat(json.loads(self.request.body)["now"])
            self.course.clock.set(when)
        except PermissionError as exc:
            raise web.HTTPError(403, str(exc))
        except (ValueError, KeyError, TypeError) as exc:
            raise web.HTTPError(400, f"expected {{\"now\": \"2027-01-07T00:00:00+01:00\"}}: {exc}")
        log.info("test clock set to %s by %s", when.isoformat(), self.current_user["name"])
        self.course.wake.set()
        self.write_json({"now": self.course.clock.now().isoformat()})


class GradesHandler(Base):
    @web.authenticated
    async def get(self):
        self.need("course.view")
        text = await ioloop.IOLoop.current().run_in_executor(None, grading.grades_csv)
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="{self.course.course_id}-grades.csv"')
        self.finish(text)


def _bars(values: list[tuple[str, int]], total: int, width: int = 260) -> str:
    """A small horizontal bar chart (SVG) of counts out of ``total``."""
    rows = []
    top = max(total, max((v for _, v in values), default=0), 1)
    for i, (label, value) in enumerate(values):
        w = int(width * value / top)
        y = i * 18
        rows.append(f'<text x="0" y="{y + 12}" font-size="11">{html.escape(label)}</text>'
                    f'<rect x="70" y="{y + 2}" width="{w}" height="12" fill="#990000"><title>{value}</title></rect>'
                    f'<text x="{74 + w}" y="{y + 12}" font-size="11">{value}</text>')
    return (f'<svg role="img" aria-label="counts" width="{width + 110}" height="{len(values) * 18}">'
            + "".join(rows) + "</svg>")


def _histogram(scores: list[float], maximum: float | None, bins: int = 10) -> str:
    """Score distribution (SVG): the share of the points each graded submission got, in 10 bins."""
    if not scores or not maximum:
        return '<svg role="img" aria-label="no scores yet" width="220" height="60"><text x="0" y="30" font-size="11">no scores yet</text></svg>'
    counts = [0] * bins
    for s in scores:
        counts[min(bins - 1, int(bins * s / maximum))] += 1
    top = max(counts)
    bar_w, h = 20, 60
    parts = []
    for i, c in enumerate(counts):
        bh = int(h * c / top)
        parts.append(f'<rect x="{i * (bar_w + 2)}" y="{h - bh}" width="{bar_w}" height="{bh}" fill="#1f4e79">'
                     f'<title>{i * 100 // bins}-{(i + 1) * 100 // bins} %: {c}</title></rect>')
    parts.append(f'<text x="0" y="{h + 12}" font-size="10">0 %</text>'
                 f'<text x="{bins * (bar_w + 2) - 30}" y="{h + 12}" font-size="10">100 %</text>')
    return (f'<svg role="img" aria-label="score distribution" width="{bins * (bar_w + 2)}" height="{h + 14}">'
            + "".join(parts) + "</svg>")


class DashboardHandler(Base):
    @web.authenticated
    async def get(self):
        role = self.need("course.view")
        rows = await ioloop.IOLoop.current().run_in_executor(None, self.course.overview)
        prefix = os.environ["JUPYTERHUB_SERVICE_PREFIX"]
        out = []
        for r in rows:
            status = "released" if r["released"] else "not released"
            of_points = f" (of {r['max_score']:g} points)" if r["max_score"] else ""
            flagged = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>"
                              for k, v in sorted(r["flagged"].items()))
            out.append(
                f'<section class="assignment" id="{html.escape(r["assignment"])}">'
                f'<h2>{html.escape(r["assignment"])}: {html.escape(r["title"])}'
                f'{" (core)" if r["core"] else " (optional)"}</h2>'
                f'<p>Release {html.escape(r["release"][:16].replace("T", " "))}, due '
                f'{html.escape(r["due"][:16].replace("T", " "))}; {status}.</p>'
                f'<div class="plots"><figure>{_bars([("fetched", r["fetched"]), ("submitted", r["submitted"]), ("late", r["late"]), ("graded", r["graded"])], r["submitted"])}'
                f'<figcaption>Students who fetched, submitted, submitted late, were graded</figcaption></figure>'
                f'<figure>{_histogram(r["scores"], r["max_score"])}<figcaption>Score distribution'
                f'{of_points}'
                f'</figcaption></figure></div>'
                + (f"<details open><summary>Flagged by the sandbox</summary><ul>{flagged}</ul></details>" if flagged else "")
                + "</section>")
        page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Course dashboard</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}} .plots{{display:flex;gap:3em}}
figure{{margin:0}} figcaption{{font-size:12px;color:#444}} section{{border-top:1px solid #ccc;padding:.5em 0}}</style>
</head><body><h1>Course dashboard: {html.escape(self.course.course_id)}</h1>
<p>Course time: {html.escape(self.course.clock.now().astimezone(ZoneInfo(self.course.calendar.timezone)).strftime("%Y-%m-%d %H:%M %Z"))}.
You are {html.escape(self.current_user["name"])} ({role}).
<a href="{html.escape(self.course.formgrader_url)}formgrader">Formgrader</a> ·
<a href="{url_path_join(prefix, 'api/grades.csv')}">Grades (CSV)</a></p>
{''.join(out)}</body></html>"""
        self.finish(page)


class HomeHandler(Base):
    """The service's page in the hub's Services menu: staff go to the dashboard; a student sees
    the released assignments, their own submissions (late ones marked) and what has feedback."""

    @web.authenticated
    def get(self):
        prefix = os.environ["JUPYTERHUB_SERVICE_PREFIX"]
        if may(self.role, "course.view"):
            self.redirect(url_path_join(prefix, "dashboard"))
            return
        tz = ZoneInfo(self.course.calendar.timezone)
        subs = self.course.store.submissions(self.student)
        rows = []
        for name in self.course.store.released():
            entry = self.course.calendar.get(name)
            mine = [s for s in subs if s.assignment == name]
            done = "".join(
                f"<li>{html.escape(id_to_time(s.id).astimezone(tz).strftime('%a %d %b %H:%M:%S'))}"
                f"{' <strong>(late)</strong>' if s.late else ''}"
                f"{' · feedback ready: use Fetch Feedback in the Assignments panel' if s.feedback else ''}</li>"
                for s in mine) or "<li>not submitted</li>"
            due = entry.due.astimezone(tz).strftime("%a %d %b %H:%M") if entry else "no due time"
            rows.append(f"<tr><td><b>{html.escape(name)}</b><br>{html.escape(entry.title if entry else '')}</td>"
                        f"<td>{html.escape(due)}</td><td><ul>{done}</ul></td></tr>")
        self.finish(f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>My assignments</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}} td{{vertical-align:top;padding:.4em 1em .4em 0;
border-top:1px solid #ddd}} ul{{margin:0;padding-left:1.2em}}</style></head><body>
<h1>My assignments ({html.escape(self.student)})</h1>
<p>Fetch, submit and fetch feedback in JupyterLab: menu <i>Nbgrader</i> → <i>Assignment List</i>.
You may submit as often as you like; the last submission before the due time is graded.</p>
<table><tr><th>Assignment</th><th>Due</th><th>Your submissions</th></tr>{''.join(rows)}</table>
</body></html>""")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[course %(levelname)s %(asctime)s] %(message)s")
    try:
        course = Course()
    except CalendarError as exc:
        log.error("%s", exc)
        sys.exit(1)
    course.prepare()
    # Ask the hub about a token at least every 10 s (default 5 min): someone taken off the roster
    # loses the exchange at once, not minutes later.
    HubOAuth.instance(cache_max_age=10)
    prefix = os.environ["JUPYTERHUB_SERVICE_PREFIX"]
    kw = {"course": course}
    name = r"([A-Za-z0-9][A-Za-z0-9_.-]{0,63})"
    app = web.Application([
        (url_path_join(prefix, "api/assignments"), AssignmentsHandler, kw),
        (url_path_join(prefix, f"api/assignments/{name}/download"), DownloadHandler, kw),
        (url_path_join(prefix, f"api/assignments/{name}/submit"), SubmitHandler, kw),
        (url_path_join(prefix, f"api/assignments/{name}/({'|'.join(ACTIONS)})"), ActionHandler, kw),
        (url_path_join(prefix, "api/submissions"), SubmissionsHandler, kw),
        (url_path_join(prefix, f"api/submissions/{name}/([0-9T.Z]+)/feedback"), FeedbackHandler, kw),
        (url_path_join(prefix, "api/status"), StatusHandler, kw),
        (url_path_join(prefix, "api/clock"), ClockHandler, kw),
        (url_path_join(prefix, "api/grades.csv"), GradesHandler, kw),
        (url_path_join(prefix, "dashboard"), DashboardHandler, kw),
        (prefix.rstrip("/") + "/?", HomeHandler, kw),
        (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
    ], cookie_secret=os.urandom(32))
    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    # Request bodies: small everywhere (JSON); the submit handler raises its own limit per request.
    app.listen(url.port, url.hostname, max_body_size=1024 * 1024)
    loop = ioloop.IOLoop.current()
    signal.signal(signal.SIGTERM, lambda *_: loop.add_callback_from_signal(loop.stop))
    loop.add_callback(course.scheduler)
    loop.add_callback(course.runner)
    log.info("course %s: %d assignments in the calendar; %d grading workers; sandbox %s; test clock %s",
             course.course_id, len(course.calendar.assignments), course.workers, course.limits.describe(),
             "on" if course.clock.enabled else "off")
    loop.start()


if __name__ == "__main__":
    main()
