"""nbgrader's pluggable exchange for students' servers: fetch, submit, list and fetch feedback
through the lab's course service (``/services/course/``), authorised by this server's hub token.

nbgrader's Assignments panel (its lab extension and server extension) is unchanged; only the
exchange behind it is ours (selected in ``/opt/venv/etc/jupyter/nbgrader_config.py``). The
default exchange is a shared folder that every student can write and list, which gives no
privacy between containers that run as the same UID. Here, the student's container holds no
exchange at all: the service files each upload under the id the token proves and answers only
with released assignments and the student's own submissions and feedback.

Environment (set by the hub's spawner): ``LAB_COURSE_URL``, ``LAB_COURSE_HOST`` (the service's host name,
which the proxy routes by), ``JUPYTERHUB_API_TOKEN``.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import shutil
import tarfile

import requests
from nbgrader.exchange.abc import (ExchangeFetchAssignment, ExchangeFetchFeedback, ExchangeList,
                                   ExchangeSubmit)
from nbgrader.exchange.abc.exchange import Exchange
from traitlets import Unicode

IGNORE = {".ipynb_checkpoints", "__pycache__", "feedback", ".DS_Store"}


class LabExchangeClient(Exchange):
    url = Unicode(os.environ.get("LAB_COURSE_URL", "http://proxy:8000/services/course/"),
                  help="The course service, as this server reaches it.").tag(config=True)
    host = Unicode(os.environ.get("LAB_COURSE_HOST", ""),
                   help="The course service's host name: the proxy routes by it (every service has its own).").tag(config=True)
    max_upload_mb = Unicode("100").tag(config=True)

    def call(self, method: str, path: str, **kw) -> requests.Response:
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        url = self.url.rstrip("/") + "/" + path.lstrip("/")
        headers = {"Authorization": f"token {token}"}
        if self.host:
            headers["Host"] = self.host
        try:
            r = requests.request(method, url, headers=headers, timeout=300, **kw)
        except requests.RequestException as exc:
            self.fail(f"The course service cannot be reached ({exc}). Try again in a minute.")
        if r.status_code >= 400:
            try:
                message = r.json().get("error") or r.text
            except ValueError:
                message = r.text[:300]
            self.fail(f"The course service refused: {message}")
        return r

    def local_dir(self, assignment: str) -> str:
        return os.path.join(self.assignment_dir, assignment)

    def init_src(self):
        pass

    def init_dest(self):
        pass

    def copy_files(self):
        pass


def _extract(data: bytes, dest: str, only_missing: bool = False) -> list[str]:
    written = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            parts = m.name.split("/")
            if not m.isfile() or m.name.startswith("/") or ".." in parts:
                continue
            target = os.path.join(dest, *parts)
            if only_missing and os.path.exists(target):
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with tar.extractfile(m) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            written.append(target)
    return written


def _checksum(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.md5(fh.read()).hexdigest()


def _shown(sub: dict) -> str:
    """The timestamp the panel shows (and names the local feedback folder by); late ones say so."""
    return sub["timestamp"] + (" (late)" if sub.get("late") else "")


class LabFetchAssignment(LabExchangeClient, ExchangeFetchAssignment):
    def copy_files(self):
        assignment = self.coursedir.assignment_id
        dest = self.local_dir(assignment)
        if os.path.isdir(dest) and not self.replace_missing_files:
            self.fail(f"You already have a copy of {assignment} in {dest}: rename or remove it to fetch "
                      "it again, or fetch with --replace to bring back only missing files.")
        data = self.call("GET", f"api/assignments/{assignment}/download").content
        os.makedirs(dest, exist_ok=True)
        written = _extract(data, dest, only_missing=self.replace_missing_files)
        self.log.info("Fetched %s: %d file(s) into %s", assignment, len(written), dest)


class LabSubmit(LabExchangeClient, ExchangeSubmit):
    def copy_files(self):
        assignment = self.coursedir.assignment_id
        src = self.local_dir(assignment)
        if not os.path.isdir(src):
            self.fail(f"There is no folder {src}: fetch {assignment} first.")
        released = self.call("GET", "api/assignments").json()["assignments"]
        entry = next((a for a in released if a["assignment_id"] == assignment), None)
        if entry is None:
            self.fail(f"{assignment} is not released.")
        expected = entry["notebooks"]
        have = {os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(src, "*.ipynb"))}
        missing = sorted(set(expected) - have)
        if missing:
            message = f"Notebooks missing from {src}: {', '.join(missing)}"
            if self.strict:
                self.fail(message)
            self.log.warning(message)
        # A submission holds the assignment's own files (its notebooks and the data files it came
        # with); the course service keeps nothing else, so nothing else is sent.
        wanted = set(entry.get("files") or [f"{n}.ipynb" for n in expected])
        limit = self.coursedir.max_file_size * 1024
        buf = io.BytesIO()
        left_out = []
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for root, dirs, files in os.walk(src):
                dirs[:] = sorted(d for d in dirs if d not in IGNORE and not d.startswith("."))
                for name in sorted(files):
                    path = os.path.join(root, name)
                    rel = os.path.relpath(path, src)
                    if name in IGNORE or os.path.islink(path):
                        continue
                    if rel not in wanted:
                        left_out.append(rel)
                        continue
                    if os.path.getsize(path) > limit:
                        self.log.warning("Not submitting %s: larger than %d kB", path, self.coursedir.max_file_size)
                        continue
                    tar.add(path, arcname=rel, recursive=False)
        if left_out:
            self.log.info("Not submitted (not part of the assignment): %s", ", ".join(left_out[:20]))
        sub = self.call("POST", f"api/assignments/{assignment}/submit", data=buf.getvalue()).json()
        self.log.info("Submitted as: %s %s %s%s", sub["assignment_id"], sub["student_id"], sub["timestamp"],
                      " (after the due time: marked late)" if sub["late"] else "")


class LabFetchFeedback(LabExchangeClient, ExchangeFetchFeedback):
    def copy_files(self):
        assignment = self.coursedir.assignment_id
        subs = self.call("GET", "api/submissions", params={"assignment": assignment}).json()["submissions"]
        fetched = 0
        for sub in subs:
            if not sub["feedback"]:
                continue
            data = self.call("GET", f"api/submissions/{assignment}/{sub['id']}/feedback").content
            dest = os.path.join(self.local_dir(assignment), "feedback", _shown(sub))
            fetched += len(_extract(data, dest))
        if not fetched:
            self.log.warning("No feedback has been released for %s yet.", assignment)
        else:
            self.log.info("Fetched %d feedback file(s) for %s", fetched, assignment)


class LabList(LabExchangeClient, ExchangeList):
    def list_files(self):
        if self.inbound or self.cached:
            return self._submitted()
        return self._released()

    def remove_files(self):
        self.fail("Removing assignments is not possible in this course.")

    def _released(self):
        data = self.call("GET", "api/assignments").json()
        wanted = self.coursedir.assignment_id
        out = []
        for a in data["assignments"]:
            if wanted and a["assignment_id"] != wanted:
                continue
            local = self.local_dir(a["assignment_id"])
            info = {"course_id": a["course_id"], "assignment_id": a["assignment_id"], "title": a.get("title"),
                    "due": a.get("due")}
            if os.path.isdir(local):
                info["status"] = "fetched"
                info["path"] = os.path.abspath(local)
                info["notebooks"] = [{"notebook_id": os.path.splitext(os.path.basename(p))[0],
                                      "path": os.path.abspath(p)}
                                     for p in sorted(glob.glob(os.path.join(local, "*.ipynb")))]
            else:
                info["status"] = "released"
                info["path"] = a["assignment_id"]
                info["notebooks"] = [{"notebook_id": n, "path": f"{a['assignment_id']}/{n}.ipynb"}
                                     for n in a["notebooks"]]
            out.append(info)
            self.log.info("%s %s (%s)", a["course_id"], a["assignment_id"], info["status"])
        return out

    def _submitted(self):
        data = self.call("GET", "api/submissions",
                         params={"assignment": self.coursedir.assignment_id} if self.coursedir.assignment_id else {}).json()
        course = data["course_id"]
        grouped: dict[str, list] = {}
        for sub in data["submissions"]:
            local = self.local_dir(sub["assignment_id"])
            shown = _shown(sub)
            feedback_dir = os.path.join(local, "feedback", shown)
            notebooks = []
            for nb in sub["notebooks"]:
                path = os.path.join(feedback_dir, f"{nb}.html")
                has_local = os.path.isfile(path)
                notebooks.append({"notebook_id": nb, "path": path, "has_local_feedback": has_local,
                                  "has_exchange_feedback": nb in sub["feedback"],
                                  "local_feedback_path": path if has_local else None, "feedback_updated": False})
            has_local = bool(notebooks) and all(n["has_local_feedback"] for n in notebooks)
            info = {"course_id": course, "student_id": sub["student_id"], "assignment_id": sub["assignment_id"],
                    "timestamp": shown, "status": "submitted", "path": local, "late": sub["late"],
                    "notebooks": notebooks, "has_local_feedback": has_local,
                    "has_exchange_feedback": bool(notebooks) and all(n["has_exchange_feedback"] for n in notebooks),
                    "feedback_updated": False,
                    "local_feedback_path": os.path.abspath(feedback_dir) if has_local else None}
            grouped.setdefault(sub["assignment_id"], []).append(info)
            self.log.info("%s %s %s %s%s", course, sub["assignment_id"], shown,
                          "(feedback ready to be fetched)" if info["has_exchange_feedback"] else "(no feedback available)",
                          " (feedback already fetched)" if has_local else "")
        return [{"course_id": course, "student_id": subs[0]["student_id"], "assignment_id": name,
                 "status": "submitted", "submissions": subs} for name, subs in sorted(grouped.items())]
