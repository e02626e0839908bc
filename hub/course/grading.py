"""Grading: nbgrader configured for the lab, autograding in sandboxes with N workers that can be
resumed, collecting, feedback, and the grades export. Runs as the ``grader`` user in the hub
container (``python -m hub.course.grading ...``; ``make autograde`` and friends call it, and so does
the course service's calendar).

nbgrader does the grading itself: it restores the original test cells, scores the outputs and
keeps the gradebook. We change one step: instead of its ``Execute`` preprocessor, which runs
student code in nbgrader's own process, ``SandboxExecute`` sends the notebook to the sandbox
runner (``hub.course.runner``), which runs it in a throw-away container (``hub.course.sandbox``).
The grader user has no Docker access; only the sandbox runner does. nbgrader's ``autograde`` is serial and, if stopped,
cannot tell a half-done submission from a done one; ``autograde_all`` runs one nbgrader
autograde per submission in N worker processes and keeps a ledger (submission timestamp, score,
reason) written after each one, so a rerun skips exactly what is done.

Commands::

    python -m hub.course.grading release ASSIGNMENT [--force]    generate, set the due date, release
    python -m hub.course.grading collect ASSIGNMENT [--before-due]
    python -m hub.course.grading autograde ASSIGNMENT [--workers N] [--force] [--collect]
    python -m hub.course.grading feedback ASSIGNMENT             generate and release feedback
    python -m hub.course.grading deadline ASSIGNMENT             what the calendar runs after the due time
    python -m hub.course.grading grades [--out FILE]             the grades CSV
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import multiprocessing
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from nbgrader.preprocessors import NbGraderPreprocessor

log = logging.getLogger("grading")


def settings():
    """The lab's settings (lab.yaml and the LAB_* environment), as every lab process loads them."""
    from ..settings import current
    return current("grading")


def coursedir_root() -> Path:
    return settings().course_root / "nbgrader"


def ledger_path(assignment: str) -> Path:
    return settings().course_root / "state" / "grading" / f"{assignment}.json"


def gradebook_url() -> str:
    return settings().gradebook_url


def lab_config(report: "SandboxReport | None" = None):
    """nbgrader's configuration for the lab: the course's own nbgrader_config.py (from the hub
    image, never from the writable course folder), then our paths, exchange and sandbox. With a
    ``report``, the sandbox step notes in it what the sandbox said of each notebook."""
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    c = Config()
    course_config = settings().course_src / "nbgrader_config.py"
    if course_config.is_file():
        c.merge(PyFileConfigLoader(course_config.name, str(course_config.parent)).load_config())
    c.CourseDirectory.root = str(coursedir_root())
    c.CourseDirectory.db_url = gradebook_url()
    c.LabExchange.root = str(settings().course_root / "exchange")
    c.ExchangeFactory.release_assignment = "hub.course.exchange.StaffReleaseAssignment"
    c.ExchangeFactory.collect = "hub.course.exchange.StaffCollect"
    c.ExchangeFactory.release_feedback = "hub.course.exchange.StaffReleaseFeedback"
    c.ExchangeFactory.list = "hub.course.exchange.StaffList"
    from nbconvert.preprocessors import ClearMetadataPreprocessor
    from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, IgnorePattern, LimitOutput,
                                        SaveAutoGrades)
    # Students' notebooks are rendered for staff (formgrader) and into feedback: inert HTML only.
    c.HTMLExporter.preprocessors = ["hub.course.formgrader.SanitizeStudentHTML"]
    executor = SandboxExecute if report is None else type("SandboxExecute", (SandboxExecute,), {"report": report})
    c.Autograde.autograde_preprocessors = [executor, IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
                                           SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
    return c


# -- the sandboxed executor ---------------------------------------------------------------------

@dataclass
class SandboxReport:
    """What the sandbox said of the notebooks of one submission: why a notebook was stopped (if
    it was) and where each one's time went (seconds)."""
    reasons: list[str] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)


class SandboxExecute(NbGraderPreprocessor):
    """nbgrader's Execute step, done by the sandbox runner in a sandbox container."""

    report: SandboxReport | None = None  # set on the class that lab_config(report) makes

    def preprocess(self, nb, resources):
        import nbformat
        import requests

        token = settings().sandbox_token_file.read_text().strip()
        meta = resources.get("nbgrader", {})
        label = f"{meta.get('assignment', '?')}/{meta.get('student', '?')}/{meta.get('notebook', '?')}"
        started = time.monotonic()
        response = requests.post(f"{settings().sandbox_url}/run", json={"notebook": nb, "label": label},
                                 headers={"Authorization": f"token {token}"}, timeout=3600)
        if response.status_code != 200:
            raise RuntimeError(f"the sandbox service answered {response.status_code}: {response.text[:300]}")
        data = response.json()
        if self.report is not None:
            self.report.timings.append({**(data.get("timing") or {}), "request": round(time.monotonic() - started, 3)})
            if data.get("reason"):
                self.report.reasons.append(f"{meta.get('notebook', '?')}: {data['reason']}")
        return nbformat.from_dict(data["notebook"]), resources


# -- staff operations ---------------------------------------------------------------------------

def api(report: SandboxReport | None = None):
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    config = lab_config(report)
    return NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)


def calendar():
    from .calendar import load_calendar
    return load_calendar(settings().course_src / "calendar.yaml")


def store():
    from .exchange import ExchangeStore
    return ExchangeStore(settings().course_root / "exchange")


def _check(result: dict, what: str) -> None:
    if not result.get("success"):
        raise RuntimeError(f"{what} failed:\n{(result.get('log') or '')[-2000:]}\n{(result.get('error') or '')[-2000:]}")


def release(assignment: str, force: bool = False) -> None:
    """Generate the student version from source, give the gradebook its due date, release it."""
    from nbgrader.api import Gradebook

    a = api()
    _check(a.generate_assignment(assignment, force=True, create=True), f"generating {assignment}")
    entry = calendar().get(assignment)
    if entry is not None:
        with Gradebook(gradebook_url()) as gb:
            gb.update_or_create_assignment(assignment, duedate=entry.due.astimezone(dt.timezone.utc).replace(tzinfo=None))
    if force:
        store().unrelease(assignment)
    _check(a.release_assignment(assignment), f"releasing {assignment}")
    log.info("released %s", assignment)


def collect(assignment: str, before_due: bool = False) -> list[str]:
    from nbgrader.coursedir import CourseDirectory

    before = None
    if before_due:
        entry = calendar().get(assignment)
        if entry is not None:
            before = entry.due + dt.timedelta(minutes=int(settings().get("grading.grace_minutes")))
    coursedir = CourseDirectory(config=lab_config())
    changed = store().collect_into(coursedir, assignment, before=before, log=log)
    log.info("collected %s: %d new or updated submission(s)", assignment, len(changed))
    return changed


def submitted(assignment: str) -> dict[str, str]:
    """student -> timestamp of their collected submission."""
    base = coursedir_root() / "submitted"
    out = {}
    for stamp in sorted(base.glob(f"*/{assignment}/timestamp.txt")):
        out[stamp.parent.parent.name] = stamp.read_text().strip()
    return out


def read_ledger(assignment: str) -> dict:
    path = ledger_path(assignment)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_ledger(assignment: str, ledger: dict) -> None:
    path = ledger_path(assignment)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ledger, indent=1, sort_keys=True))
    os.replace(tmp, path)


def first_errors(assignment: str, student: str) -> str:
    """The first error of each graded notebook, as the instructor log and the dashboard show it."""
    import nbformat

    found = []
    for path in sorted((coursedir_root() / "autograded" / student / assignment).glob("*.ipynb")):
        nb = nbformat.from_dict(json.loads(path.read_text(encoding="utf-8")))  # nbgrader wrote it: no validation
        for index, cell in enumerate(nb.cells):
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if errors:
                found.append(f"{path.stem}: cell {index}: {errors[0].get('ename')}: {str(errors[0].get('evalue'))[:200]}")
                break
    return "; ".join(found)


def breakdown(seconds: float, notebooks: list[dict]) -> dict:
    """Where one submission's time went: nbgrader's own work (files, the gradebook), waiting for a
    sandbox container, for its kernel, running the notebook, and the rest of the sandbox round trip."""
    total = lambda key: sum(float(t.get(key) or 0.0) for t in notebooks)  # noqa: E731
    sandbox = total("request")
    parts = {"nbgrader": seconds - sandbox, "container_start": total("container_start"),
             "kernel_start": total("kernel_wait"), "execute": total("execute")}
    parts["sandbox_other"] = sandbox - parts["container_start"] - parts["kernel_start"] - parts["execute"]
    return {k: round(max(0.0, v), 3) for k, v in parts.items()}


_ENGINES: dict = {}


def reuse_gradebook_engines() -> None:
    """nbgrader opens the gradebook with a new SQLAlchemy engine several times per submission,
    and an engine's compiled-statement cache starts empty: every query of every submission was
    compiled again (about 0.4 s of CPU per submission, measured with bench/autograde.py). A
    grading worker keeps one engine per gradebook URL, so the cache lasts. (nbgrader's Gradebook
    has no way to pass an engine in.)"""
    import nbgrader.api
    from sqlalchemy import create_engine, inspect

    def engine_for(url, **kwargs):
        key = (str(url), tuple(sorted(kwargs.items())))
        if key not in _ENGINES:
            _ENGINES[key] = create_engine(url, **kwargs)
        return _ENGINES[key]

    # Each Gradebook also lists the database's tables and checks that every one exists (about 15
    # queries, ten times per submission). Tables are never dropped while grading runs: with the
    # engine kept, a worker does that once per database.
    ready: dict = {}  # engine -> its table names, once its tables were made sure of

    class Tables:  # what nbgrader asks of sqlalchemy.inspect()
        def __init__(self, names: list[str]):
            self.get_table_names = lambda: names

    def inspect_once(engine):
        return Tables(ready[engine]) if engine in ready else inspect(engine)

    def create_all_once(bind, **kwargs):
        if bind not in ready:
            type(nbgrader.api.Base.metadata).create_all(nbgrader.api.Base.metadata, bind=bind, **kwargs)
            ready[bind] = inspect(bind).get_table_names()

    nbgrader.api.create_engine = engine_for
    nbgrader.api.inspect = inspect_once
    nbgrader.api.Base.metadata.create_all = create_all_once


def _preload() -> None:
    """What every submission's grading needs loaded (nbgrader, nbconvert, the settings): loaded
    once, in the process that then forks the workers, so a worker starts with it."""
    import nbgrader.apps  # noqa: F401
    import nbgrader.converters  # noqa: F401
    import nbgrader.preprocessors  # noqa: F401
    settings()
    check_cell_metadata_once_per_schema()


def check_cell_metadata_once_per_schema() -> None:
    """nbgrader checks each cell's nbgrader metadata with ``jsonschema.validate``, which first
    checks the schema itself against JSON Schema's metaschema, on every call: most of the CPU time
    of nbgrader's metadata check (measured with cProfile in a grading worker). The same check,
    with the schema checked once per process. (nbgrader has no setting for it.)"""
    from types import SimpleNamespace

    import jsonschema
    from jsonschema.exceptions import best_match
    from nbgrader.nbgraderformat import common

    checked: dict = {}

    def validate(instance, schema) -> None:  # jsonschema.validate, its schema check done once
        entry = checked.get(id(schema))
        if entry is None or entry[0] is not schema:
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
            entry = checked[id(schema)] = (schema, cls(schema))
        error = best_match(entry[1].iter_errors(instance))
        if error is not None:
            raise error

    common.jsonschema = SimpleNamespace(validate=validate)


def _start_worker() -> None:
    """A forked worker's start: its own gradebook engines (a database connection must not cross
    a fork)."""
    _ENGINES.clear()
    reuse_gradebook_engines()


def _grade_one(assignment: str, student: str) -> dict:
    """Worker: nbgrader autograde of one submission (its notebooks run in the sandbox)."""
    from nbgrader.api import Gradebook, MissingEntry

    report = SandboxReport()
    started = time.monotonic()
    result = api(report).autograde(assignment, student, force=True, create=True)
    seconds = time.monotonic() - started
    entry = {"status": "graded" if result.get("success") else "failed", "reason": "; ".join(report.reasons),
             "seconds": round(seconds, 2), "score": None, "max_score": None,
             "timing": breakdown(seconds, report.timings)}
    if not result.get("success"):
        text = (result.get("error") or result.get("log") or "").strip().splitlines()
        entry["reason"] = entry["reason"] or (text[-1] if text else "nbgrader autograde failed")
    else:
        entry["errors"] = first_errors(assignment, student)
        try:
            with Gradebook(gradebook_url()) as gb:
                sub = gb.find_submission(assignment, student)
                entry["score"], entry["max_score"] = float(sub.score), float(sub.max_score)
        except MissingEntry:
            pass
    return entry


def autograde_all(assignment: str, workers: int = 0, force: bool = False, progress: bool = False,
                  on_done=None) -> dict:
    """Autograde every collected submission of ``assignment`` that the ledger does not already
    hold for the same submission; ``workers`` processes at once (0: grading.workers)."""
    from nbgrader.api import Gradebook

    workers = workers or settings().grading_workers
    subs = submitted(assignment)
    ledger = read_ledger(assignment)
    todo = [s for s in sorted(subs) if force or ledger.get(s, {}).get("timestamp") != subs[s]
            or ledger[s].get("status") != "graded"]
    done_before = len(subs) - len(todo)
    if done_before:
        log.info("%s: %d of %d submission(s) already graded; grading the other %d",
                 assignment, done_before, len(subs), len(todo))
    with Gradebook(gradebook_url()):  # create the gradebook's tables once, before the workers
        pass
    bar = None
    if progress:
        from tqdm import tqdm
        tqdm.monitor_interval = 0  # no monitor thread: the workers are forked from this process
        bar = tqdm(total=len(subs), initial=done_before, desc=f"autograde {assignment}", unit="submission",
                   file=sys.stderr, dynamic_ncols=True)
    failed = 0
    worker_start = 0.0
    if todo:
        # Long-lived workers, forked from this process once it has loaded nbgrader: each starts
        # with nothing left to import and grades many submissions. (Forking is safe here: this is
        # a command's own process, with no other thread and no open database connection.)
        t = time.monotonic()
        _preload()
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context,
                                 initializer=_start_worker) as pool:
            worker_start = round(time.monotonic() - t, 2)
            futures = {pool.submit(_grade_one, assignment, s): s for s in todo}
            for future in as_completed(futures):
                student = futures[future]
                try:
                    entry = future.result()
                except Exception as exc:  # the worker itself broke: retried on the next run
                    entry = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "score": None,
                             "max_score": None, "seconds": None}
                entry.update(timestamp=subs[student], graded_at=dt.datetime.now(dt.timezone.utc).isoformat())
                ledger[student] = entry
                write_ledger(assignment, ledger)
                if entry["status"] != "graded":
                    failed += 1
                message = f"{assignment}/{student}: {entry['status']}"
                if entry["score"] is not None:
                    message += f", {entry['score']:g} of {entry['max_score']:g} points"
                if entry["reason"]:
                    message += f" ({entry['reason']})"
                elif entry.get("errors") and not entry["score"]:
                    message += f" (first error: {entry['errors']})"
                (log.warning if entry["reason"] else log.info)(message)
                if bar is not None:
                    bar.update(1)
                    if entry["reason"]:
                        bar.write(message)
                if on_done:
                    on_done(student, entry)
    if bar is not None:
        bar.close()
    return {"assignment": assignment, "submissions": len(subs), "graded_now": len(todo) - failed,
            "already_graded": done_before, "failed": failed, "workers": workers, "worker_start": worker_start}


def feedback(assignment: str) -> list[str]:
    from nbgrader.coursedir import CourseDirectory

    if not any((coursedir_root() / "autograded").glob(f"*/{assignment}")):
        log.info("no autograded submissions of %s: no feedback to release", assignment)
        return []
    a = api()
    _check(a.generate_feedback(assignment, force=True), f"generating feedback for {assignment}")
    released = store().publish_feedback(CourseDirectory(config=lab_config()), assignment, log=log)
    log.info("feedback released for %s: %d student(s)", assignment, len(released))
    return released


def deadline(assignment: str, auto_feedback: bool, workers: int) -> dict:
    """After the due time (plus grace): collect what came in on time, autograde, feedback."""
    collect(assignment, before_due=True)
    summary = autograde_all(assignment, workers=workers)
    if auto_feedback:
        summary["feedback_released"] = len(feedback(assignment))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hub.course.grading", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("release", help="generate, set the due date and release an assignment")
    p.add_argument("assignment")
    p.add_argument("--force", action="store_true", help="replace an assignment already released")
    p = sub.add_parser("collect", help="collect the latest submissions")
    p.add_argument("assignment")
    p.add_argument("--before-due", action="store_true", help="only submissions up to the due time (plus grace)")
    p = sub.add_parser("autograde", help="autograde collected submissions in sandboxes, N at once")
    p.add_argument("assignment")
    p.add_argument("--workers", type=int, default=0,
                   help="parallel workers (default: lab.yaml's grading.workers, whose 0 means one per core, plus one)")
    p.add_argument("--force", action="store_true", help="grade again what the ledger says is done")
    p.add_argument("--collect", action="store_true", help="collect the latest submissions first")
    p = sub.add_parser("feedback", help="generate and release feedback")
    p.add_argument("assignment")
    p = sub.add_parser("deadline", help="collect on-time submissions, autograde, feedback (the calendar's job)")
    p.add_argument("assignment")
    p.add_argument("--no-feedback", action="store_true")
    p.add_argument("--workers", type=int, default=0, help="parallel workers (default: grading.workers)")
    p = sub.add_parser("grades", help="the grades CSV: every student, every assignment, pass/not passed")
    p.add_argument("--out", help="write to this file (default: stdout)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[grading] %(message)s", stream=sys.stderr)
    # nbgrader's gradebook code trips SQLAlchemy's autoflush warnings on every autograde; they are noise.
    warnings.filterwarnings("ignore", message=".*not in session.*")
    from .exchange import ExchangeRefused, ExchangeStore
    try:
        if args.command in ("release", "collect", "autograde", "feedback", "deadline"):
            ExchangeStore.check(assignment=args.assignment)
            if calendar().get(args.assignment) is None and not (coursedir_root() / "source" / args.assignment).is_dir():
                raise ExchangeRefused(f"no assignment {args.assignment!r} in course/calendar.yaml or the course's source")
        if args.command == "release":
            release(args.assignment, force=args.force)
        elif args.command == "collect":
            collect(args.assignment, before_due=args.before_due)
        elif args.command == "autograde":
            if args.collect:
                collect(args.assignment)
            summary = autograde_all(args.assignment, workers=args.workers, force=args.force, progress=True)
            print(json.dumps(summary))
        elif args.command == "feedback":
            feedback(args.assignment)
        elif args.command == "deadline":
            print(json.dumps(deadline(args.assignment, not args.no_feedback, args.workers)))
        elif args.command == "grades":
            from hub.course.grades import grades_csv
            text = grades_csv()
            if args.out:
                Path(args.out).write_text(text)
            else:
                sys.stdout.write(text)
    except (ExchangeRefused, RuntimeError) as exc:
        print(f"[grading] ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
