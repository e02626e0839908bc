"""The course's assignment exchange: where released assignments, students' submissions and
their feedback live, on the course-data volume, and nbgrader's exchange plugins for the staff side.

nbgrader's default exchange is a shared folder that every student writes into as their own Unix
user: submissions are mode 0777 and "hidden by timestamp" (nbgrader#978), which gives no
privacy when every student container runs as the same UID, and none at all across hosts. The
ready-made replacements did not fit (ngshare-exchange pins jupyter-core<4.11.2; nbexchange
makes everyone an instructor). So the exchange is ours, in two halves:

- this store, only ever touched by the hub container: the course service (``hub.course.service``)
  files each student's uploads under the id their hub token proves, and only hands a student
  released assignments and their own submissions and feedback;
- student containers reach it only through the course service's HTTP API, with the client
  plugins of ``images/course/lab_exchange.py`` (fetch, submit, list, fetch feedback).

The staff side runs as the ``grader`` user in the hub container (formgrader, scheduled
grading, ``make autograde``) and uses the plugins below, which work on the store directly.

Layout under ``root`` (``/srv/course/exchange``)::

    outbound/<assignment>/...                     released files (nbgrader's release folder)
    inbound/<student>/<assignment>/<id>/...       one folder per submission, with meta.json
    feedback/<student>/<assignment>/<id>/<nb>.html
    events.jsonl                                  fetches, for the course dashboard
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nbgrader.exchange.abc import (Exchange, ExchangeCollect, ExchangeList, ExchangeReleaseAssignment,
                                   ExchangeReleaseFeedback)
from traitlets import Unicode

from hub.settings import USERNAME_RE

EXCHANGE_ROOT = "/srv/course/exchange"
STUDENT_RE = USERNAME_RE  # a student's folder is named by their hub user name
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}\.[0-9]{6}Z$")
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f %Z"
# A file in a submission: no hidden files, no control characters, nothing a shell or a path would read.
FILE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_. -]{0,127}$")
MAX_UPLOAD = 100 * 1024 * 1024      # one upload, compressed
MAX_UNPACKED = 400 * 1024 * 1024    # one upload, unpacked
MAX_FILES = 1000                    # entries in one upload
# All of one student's submissions together: repeated uploads cannot fill the course volume,
# in bytes or in files (inodes), and there is a most per assignment.
MAX_PER_STUDENT = 1024 * 1024 * 1024
MAX_FILES_PER_STUDENT = 20000
MAX_SUBMISSIONS = 100               # per student and assignment
IGNORE = {".ipynb_checkpoints", "__pycache__", "feedback", ".DS_Store"}


class ExchangeRefused(ValueError):
    """A request the exchange refuses; the message says why, for the student."""


def submission_id(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def id_to_time(sid: str) -> dt.datetime:
    return dt.datetime.strptime(sid, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=dt.timezone.utc)


def timestamp_text(when: dt.datetime) -> str:
    """nbgrader's timestamp.txt format (UTC)."""
    return when.astimezone(dt.timezone.utc).strftime(TIMESTAMP_FORMAT)


def _file_size(data) -> int | None:
    try:
        return os.fstat(data.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


def safe_extract(data: bytes | BinaryIO, dest: Path, allowed: set[str] | None = None) -> tuple[list[str], list[str]]:
    """Unpack a student's tar.gz upload, one member at a time as it is read (never the whole index
    first): regular files and folders only, no absolute paths or '..', no links or devices, within
    the size and count limits. With ``allowed``, only those relative paths are kept; the others
    are skipped and named. Returns (kept files, skipped files). On any refusal ``dest`` is removed."""
    if isinstance(data, (bytes, bytearray)):
        size = len(data)
        data = io.BytesIO(data)
    else:
        size = _file_size(data)
    if size is not None and size > MAX_UPLOAD:
        raise ExchangeRefused(f"the upload is larger than {MAX_UPLOAD // 2**20} MiB")
    if dest.exists():
        raise ExchangeRefused("a submission with this id is being stored: try again")
    dest.mkdir(parents=True)
    try:
        return _extract_members(data, dest, allowed)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _extract_members(data: BinaryIO, dest: Path, allowed: set[str] | None) -> tuple[list[str], list[str]]:
    files: list[str] = []
    skipped: list[str] = []
    seen: set[str] = set()
    count = total = 0
    try:
        with tarfile.open(fileobj=data, mode="r|gz") as tar:
            for m in tar:
                count += 1
                if count > MAX_FILES:
                    raise ExchangeRefused(f"the upload has more than {MAX_FILES} entries")
                name = m.name[2:] if m.name.startswith("./") else m.name
                parts = Path(name).parts
                if name.startswith("/") or ".." in parts or not parts:
                    raise ExchangeRefused(f"the upload holds a path outside its folder: {m.name!r}")
                if not (m.isfile() or m.isdir()):
                    raise ExchangeRefused(f"the upload holds a link or special file: {m.name!r}")
                rel = "/".join(parts)
                if m.isdir():
                    continue  # folders are made for the files kept
                if allowed is not None and rel not in allowed:
                    skipped.append(rel)  # not part of the assignment: left out, and named
                    continue
                if any(not FILE_RE.match(p) for p in parts):
                    raise ExchangeRefused(f"the upload holds a file name that is not allowed: {m.name!r} "
                                          "(letters, digits, '.', '_', '-' and spaces only)")
                if rel in seen:
                    raise ExchangeRefused(f"the upload holds {rel!r} twice")
                seen.add(rel)
                if m.size > MAX_UPLOAD:
                    raise ExchangeRefused(f"{rel} is larger than {MAX_UPLOAD // 2**20} MiB")
                total += m.size
                if total > MAX_UNPACKED:
                    raise ExchangeRefused(f"the upload unpacks to more than {MAX_UNPACKED // 2**20} MiB")
                target = dest.joinpath(*parts)
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                except (FileExistsError, NotADirectoryError):
                    raise ExchangeRefused(f"the upload holds {rel!r} where a file and a folder have the same name")
                with tar.extractfile(m) as src, os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(src, out)
                files.append(rel)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ExchangeRefused(f"the upload is not a tar.gz archive ({exc})") from None
    except OSError as exc:
        if isinstance(exc, (FileExistsError, NotADirectoryError, IsADirectoryError)):
            raise ExchangeRefused(f"the upload holds a file and a folder of the same name ({exc.filename})") from None
        if "gzip" in str(exc).lower() or "compressed" in str(exc).lower():
            raise ExchangeRefused(f"the upload is not a tar.gz archive ({exc})") from None
        raise
    return sorted(files), sorted(skipped)


def pack(folder: Path, only: tuple[str, ...] | None = None) -> bytes:
    """A tar.gz of ``folder``'s files (relative paths), without meta.json and nbgrader's clutter."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if path.is_symlink() or not path.is_file() or rel.name == "meta.json" or IGNORE & set(rel.parts):
                continue
            if only is not None and rel.name not in only:
                continue
            info = tar.gettarinfo(str(path), arcname=str(rel))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


@dataclass
class Submission:
    student: str
    assignment: str
    id: str
    timestamp: str
    late: bool
    notebooks: list[str]
    feedback: list[str]
    ignored: list[str] = ()

    def as_dict(self) -> dict:
        return {"student_id": self.student, "assignment_id": self.assignment, "id": self.id,
                "timestamp": self.timestamp, "late": self.late, "notebooks": self.notebooks,
                "feedback": self.feedback, "ignored": list(self.ignored)}


class ExchangeStore:
    """The exchange's files. Every name that comes from a request is checked here."""

    def __init__(self, root: str | Path = EXCHANGE_ROOT):
        self.root = Path(root)

    # -- names ---------------------------------------------------------------------------------
    @staticmethod
    def check(student: str | None = None, assignment: str | None = None, sid: str | None = None) -> None:
        if student is not None and not STUDENT_RE.match(student):
            raise ExchangeRefused(f"not a student id: {student!r}")
        if assignment is not None and not NAME_RE.match(assignment):
            raise ExchangeRefused(f"not an assignment name: {assignment!r}")
        if sid is not None and not ID_RE.match(sid):
            raise ExchangeRefused(f"not a submission id: {sid!r}")

    def outbound(self, assignment: str) -> Path:
        self.check(assignment=assignment)
        return self.root / "outbound" / assignment

    def inbound(self, student: str, assignment: str, sid: str | None = None) -> Path:
        self.check(student, assignment, sid)
        base = self.root / "inbound" / student / assignment
        return base / sid if sid else base

    def feedback_dir(self, student: str, assignment: str, sid: str) -> Path:
        self.check(student, assignment, sid)
        return self.root / "feedback" / student / assignment / sid

    # -- released assignments ------------------------------------------------------------------
    def released(self) -> list[str]:
        base = self.root / "outbound"
        return sorted(p.name for p in base.iterdir() if p.is_dir() and NAME_RE.match(p.name)) if base.is_dir() else []

    def is_released(self, assignment: str) -> bool:
        return self.outbound(assignment).is_dir()

    def notebooks(self, assignment: str) -> list[str]:
        return sorted(p.stem for p in self.outbound(assignment).glob("*.ipynb"))

    def release(self, assignment: str, release_dir: Path, force: bool = False) -> None:
        dest = self.outbound(assignment)
        if not release_dir.is_dir():
            raise ExchangeRefused(f"{release_dir} does not exist: generate the assignment first")
        if dest.exists():
            if not force:
                raise ExchangeRefused(f"{assignment} is already released (force to replace it)")
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{assignment}-", dir=dest.parent))
        shutil.copytree(release_dir, tmp, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*IGNORE))
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)

    def unrelease(self, assignment: str) -> None:
        shutil.rmtree(self.outbound(assignment), ignore_errors=True)

    # -- submissions ---------------------------------------------------------------------------
    def release_files(self, assignment: str) -> set[str]:
        """The relative paths a submission of ``assignment`` may hold: what the release has."""
        base = self.outbound(assignment)
        return {str(p.relative_to(base)) for p in base.rglob("*")
                if p.is_file() and not p.is_symlink() and p.name != "meta.json"}

    def usage(self, student: str) -> tuple[int, int]:
        """Bytes and files of all of ``student``'s submissions."""
        self.check(student=student)
        base = self.root / "inbound" / student
        size = files = 0
        if base.is_dir():
            for dirpath, dirnames, filenames in os.walk(base):
                files += len(filenames) + len(dirnames)
                for f in filenames:
                    try:
                        size += os.lstat(os.path.join(dirpath, f)).st_size
                    except OSError:
                        pass
        return size, files

    def submit(self, student: str, assignment: str, data: bytes | BinaryIO, when: dt.datetime,
               due: dt.datetime | None) -> Submission:
        """File an upload as ``student``'s submission of ``assignment``. Only the files the release
        has are kept (the others are named in ``ignored``); limits are checked before and while
        unpacking. Blocking: the course service calls it off its event loop."""
        if not self.is_released(assignment):
            raise ExchangeRefused(f"{assignment} is not released")
        sid = submission_id(when)
        folder = self.inbound(student, assignment, sid)
        with self._lock(student):
            previous = len(self.submissions(student, assignment))
            if previous >= MAX_SUBMISSIONS:
                raise ExchangeRefused(f"you have submitted {assignment} {previous} times, the most is "
                                      f"{MAX_SUBMISSIONS}: ask the course's teachers")
            used, nfiles = self.usage(student)
            if used >= MAX_PER_STUDENT or nfiles >= MAX_FILES_PER_STUDENT:
                raise ExchangeRefused(f"your submissions use {used // 2**20} MiB in {nfiles} files, the most is "
                                      f"{MAX_PER_STUDENT // 2**20} MiB and {MAX_FILES_PER_STUDENT} files: "
                                      "ask the course's teachers")
            allowed = self.release_files(assignment)
            staging = folder.parent / f".{sid}.partial"
            files, ignored = safe_extract(data, staging, allowed)
            try:
                notebooks = sorted(Path(f).stem for f in files if f.endswith(".ipynb") and "/" not in f)
                if not notebooks:
                    wanted = ", ".join(sorted(f for f in allowed if f.endswith(".ipynb")))
                    raise ExchangeRefused(f"the submission has no notebook of {assignment} (expected: {wanted})")
                size = sum((staging / f).stat().st_size for f in files)
                if used + size > MAX_PER_STUDENT or nfiles + len(files) > MAX_FILES_PER_STUDENT:
                    raise ExchangeRefused(f"this submission would take your submissions past "
                                          f"{MAX_PER_STUDENT // 2**20} MiB or {MAX_FILES_PER_STUDENT} files: "
                                          "ask the course's teachers")
                late = bool(due and when > due)
                meta = {"timestamp": timestamp_text(when), "late": late, "files": files, "notebooks": notebooks,
                        "ignored": ignored[:50]}
                (staging / "meta.json").write_text(json.dumps(meta))
                os.replace(staging, folder)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return self.submission(student, assignment, sid)

    _locks: dict[str, threading.Lock] = {}
    _locks_guard = threading.Lock()

    def _lock(self, student: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(f"{self.root}/{student}", threading.Lock())

    def submission(self, student: str, assignment: str, sid: str) -> Submission:
        folder = self.inbound(student, assignment, sid)
        meta = json.loads((folder / "meta.json").read_text())
        fb = self.feedback_dir(student, assignment, sid)
        feedback = sorted(p.stem for p in fb.glob("*.html")) if fb.is_dir() else []
        return Submission(student, assignment, sid, meta["timestamp"], meta["late"], meta["notebooks"], feedback,
                          meta.get("ignored", []))

    def submissions(self, student: str | None = None, assignment: str | None = None) -> list[Submission]:
        base = self.root / "inbound"
        out = []
        students = [student] if student else (sorted(p.name for p in base.iterdir()) if base.is_dir() else [])
        for s in students:
            if not STUDENT_RE.match(s):
                continue
            sbase = base / s
            names = [assignment] if assignment else (sorted(p.name for p in sbase.iterdir()) if sbase.is_dir() else [])
            for a in names:
                folder = self.inbound(s, a)
                if not folder.is_dir():
                    continue
                for sub in sorted(folder.iterdir()):
                    if ID_RE.match(sub.name) and (sub / "meta.json").is_file():
                        out.append(self.submission(s, a, sub.name))
        return out

    def latest(self, student: str, assignment: str, before: dt.datetime | None = None) -> Submission | None:
        subs = [s for s in self.submissions(student, assignment) if before is None or id_to_time(s.id) <= before]
        return subs[-1] if subs else None

    # -- feedback ------------------------------------------------------------------------------
    def put_feedback(self, student: str, assignment: str, sid: str, html_files: list[Path]) -> None:
        dest = self.feedback_dir(student, assignment, sid)
        dest.mkdir(parents=True, exist_ok=True)
        for f in html_files:
            shutil.copyfile(f, dest / f.name)
            os.chmod(dest / f.name, 0o644)

    def feedback_archive(self, student: str, assignment: str, sid: str) -> bytes:
        folder = self.feedback_dir(student, assignment, sid)
        if not folder.is_dir() or not any(folder.glob("*.html")):
            raise ExchangeRefused("no feedback has been released for this submission")
        return pack(folder)

    # -- events --------------------------------------------------------------------------------
    def record(self, event: str, student: str, assignment: str, when: dt.datetime) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"event": event, "student": student, "assignment": assignment,
                           "time": when.astimezone(dt.timezone.utc).isoformat()})
        with open(self.root / "events.jsonl", "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def events(self) -> list[dict]:
        path = self.root / "events.jsonl"
        if not path.is_file():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def collect_into(self, coursedir, assignment: str, before: dt.datetime | None = None,
                     students: list[str] | None = None, log=None) -> list[str]:
        """Copy each student's latest submission (up to ``before``) into nbgrader's submitted folder,
        with its timestamp.txt; a submission already collected is not copied again. Returns the
        students whose submission changed."""
        changed = []
        base = self.root / "inbound"
        names = students if students is not None else (sorted(p.name for p in base.iterdir()) if base.is_dir() else [])
        for student in names:
            if not STUDENT_RE.match(student):
                continue
            sub = self.latest(student, assignment, before)
            if sub is None:
                continue
            dest = Path(coursedir.format_path(coursedir.submitted_directory, student, assignment))
            stamp = dest / "timestamp.txt"
            if stamp.is_file() and stamp.read_text().strip() == sub.timestamp:
                continue
            tmp = dest.parent / f".{assignment}.collecting"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.inbound(student, assignment, sub.id), tmp,
                            ignore=shutil.ignore_patterns("meta.json", *IGNORE))
            (tmp / "timestamp.txt").write_text(sub.timestamp)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
            changed.append(student)
            if log:
                log.info("collected %s's submission of %s from %s%s", student, assignment, sub.timestamp,
                         " (late)" if sub.late else "")
        return changed


    def publish_feedback(self, coursedir, assignment: str, student: str | None = None, log=None) -> list[str]:
        """Publish generated feedback (nbgrader's feedback folder) to the submissions it was made for."""
        released = []
        base = Path(coursedir.root) / coursedir.feedback_directory
        for folder in sorted(base.glob(f"{student or '*'}/{assignment}")):
            who = folder.parent.name
            stamp = folder / "timestamp.txt"
            if not stamp.is_file() or not STUDENT_RE.match(who):
                continue
            timestamp = stamp.read_text().strip()
            match = [s for s in self.submissions(who, assignment) if s.timestamp == timestamp]
            if not match:
                if log:
                    log.warning("feedback for %s/%s: no submission with timestamp %s", who, assignment, timestamp)
                continue
            self.put_feedback(who, assignment, match[-1].id, sorted(folder.glob("*.html")))
            released.append(who)
            if log:
                log.info("released feedback on %s's submission of %s (%s)", who, assignment, timestamp)
        return released


# -- nbgrader's pluggable exchange, staff side (formgrader and the grading tools) -----------------

class LabExchange(Exchange):
    root = Unicode(EXCHANGE_ROOT, help="The exchange store on the course-data volume.").tag(config=True)

    @property
    def store(self) -> ExchangeStore:
        return ExchangeStore(self.root)

    def init_src(self):
        pass

    def init_dest(self):
        pass

    def copy_files(self):
        pass


class StaffReleaseAssignment(LabExchange, ExchangeReleaseAssignment):
    def copy_files(self):
        assignment = self.coursedir.assignment_id
        src = Path(self.coursedir.format_path(self.coursedir.release_directory, ".", assignment))
        try:
            self.store.release(assignment, src, force=self.force)
        except ExchangeRefused as exc:
            self.fail(str(exc))
        self.log.info("released %s to students", assignment)


class StaffCollect(LabExchange, ExchangeCollect):
    def copy_files(self):
        self.store.collect_into(self.coursedir, self.coursedir.assignment_id, log=self.log)


class StaffReleaseFeedback(LabExchange, ExchangeReleaseFeedback):
    def copy_files(self):
        student = self.coursedir.student_id if self.coursedir.student_id not in ("", "*") else None
        self.store.publish_feedback(self.coursedir, self.coursedir.assignment_id, student, log=self.log)


class StaffList(LabExchange, ExchangeList):
    """What the formgrader asks: which assignments are released, and who submitted."""

    def list_files(self):
        course = self.coursedir.course_id
        if self.inbound or self.cached:
            subs = self.store.submissions(assignment=self.coursedir.assignment_id or None)
            return [{"course_id": course, "student_id": s.student, "assignment_id": s.assignment,
                     "status": "submitted", "timestamp": s.timestamp, "submissions": []} for s in subs]
        return [{"course_id": course, "assignment_id": a, "status": "released", "path": "", "notebooks": []}
                for a in self.store.released()
                if not self.coursedir.assignment_id or a == self.coursedir.assignment_id]

    def remove_files(self):
        if self.inbound or self.cached:
            self.fail("removing submissions is not supported")
        for a in self.store.released():
            if not self.coursedir.assignment_id or a == self.coursedir.assignment_id:
                self.store.unrelease(a)
                self.log.info("unreleased %s", a)
        return []
