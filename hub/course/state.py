"""The course service's state: paths, calendar, clock, exchange store, the grading jobs and
the numbers the dashboard shows. The handlers (``hub.course.service``) and the pages
(``hub.course.pages``) read it; only the calendar's scheduler and the job runner change it."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from hub.course import grading
from hub.course.calendar import Calendar, Clock, load_calendar
from hub.course.exchange import ExchangeStore
from hub.course.sandbox import limits_from

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
        """``python -m hub.course.grading ARGS``, as this service's own user (the grader)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub.course.grading", *args, env=self.grader_env(), cwd=str(self.state_dir / "home"),
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
