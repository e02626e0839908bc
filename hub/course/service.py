"""The course service, hub-managed at ``/services/course/``: the assignment exchange, the
calendar that releases and grades on time, the course dashboard and the grades export. It runs
as the unprivileged ``grader`` user, who owns the course volume; only the sandbox runner
(``hub.course.runner``) runs as root.

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

The grading work runs as the ``grader`` user too (``python -m hub.course.grading``), which has no
Docker access; the notebooks it grades go to the sandbox runner at ``127.0.0.1:10104/run``
(not reachable through the proxy, and guarded by a token only root and the grader group can
read), and run in a sandbox container (``hub.course.sandbox``).

Ours because nbgrader's exchange is not safe across containers (see ``hub.course.exchange``) and
nbgrader has no calendar, no sandbox and no dashboard.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import sys
import tempfile
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from tornado import ioloop, web

from hub.course import grades, pages
from hub.course.calendar import CalendarError
from hub.course.exchange import MAX_UPLOAD, ExchangeRefused, ExchangeStore
from hub.course.state import ACTIONS, Course
from hub.permissions import may
from hub.services.base import ServiceHandler

log = logging.getLogger("course")


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
        from hub.course.exchange import pack
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
        text = await ioloop.IOLoop.current().run_in_executor(None, grades.grades_csv)
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="{self.course.course_id}-grades.csv"')
        self.finish(text)


class DashboardHandler(Base):
    @web.authenticated
    async def get(self):
        role = self.need("course.view")
        rows = await ioloop.IOLoop.current().run_in_executor(None, self.course.overview)
        grades = url_path_join(os.environ["JUPYTERHUB_SERVICE_PREFIX"], "api/grades.csv")
        self.finish(pages.dashboard(self.course, rows, self.current_user["name"], role, grades))


class HomeHandler(Base):
    """The service's page in the hub's Services menu: staff go to the dashboard; a student sees
    the released assignments, their own submissions (late ones marked) and what has feedback."""

    @web.authenticated
    def get(self):
        if may(self.role, "course.view"):
            self.redirect(url_path_join(os.environ["JUPYTERHUB_SERVICE_PREFIX"], "dashboard"))
            return
        self.finish(pages.my_assignments(self.course, self.student))


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
