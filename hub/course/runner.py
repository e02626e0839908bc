"""The sandbox runner: the one part of the course's grading that runs as root in the hub
container, because it starts containers (the Docker socket is root's).

It is deliberately small. It listens on ``127.0.0.1:10104`` (not routed by the proxy), takes a
notebook from the grader user's processes (``hub.course.grading``: scheduled grading, ``make
autograde``, the formgrader's buttons) with a token, runs it in a throw-away container
(``hub.course.sandbox``) and answers with the executed notebook. It opens no file of the course
volume by name, so the grader user (who owns that volume, and whose processes show students'
work to staff) has no path to root through it:

- the token is written into ``/run/lab-sandbox/`` (owned by root, readable by the grader group
  only), with ``O_NOFOLLOW``, never into a folder the grader can change;
- at start, files on the course volume that an older version left to root are given to the
  grader with ``os.fwalk`` and ``follow_symlinks=False``, which cannot be led out of the volume
  by a link or a folder swapped for one.

Everything else of the course service (exchange, calendar, pages) runs as the grader user
(``hub.course.service``). Ours because nbgrader has no sandbox.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import pwd
import secrets
import signal
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tornado import ioloop, web

from hub.course.sandbox import Limits, SwarmSandboxes, WarmPool, limits_from
from hub.settings import current

log = logging.getLogger("sandbox")

TOKEN_DIR = Path("/run/lab-sandbox")
TOKEN_FILE = TOKEN_DIR / "token"
PORT = 10104


def write_token(token: str, group: str = "grader") -> None:
    """The token, readable by root and the grader group only, in a folder only root can change."""
    gid = grp.getgrnam(group).gr_gid
    TOKEN_DIR.mkdir(mode=0o750, exist_ok=True)
    st = os.lstat(TOKEN_DIR)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
        raise SystemExit(f"{TOKEN_DIR} is not a folder owned by root: refusing to write the sandbox token there")
    os.chown(TOKEN_DIR, 0, gid)
    os.chmod(TOKEN_DIR, 0o750)
    tmp = TOKEN_DIR / f".token-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    os.chown(tmp, 0, gid)
    os.replace(tmp, TOKEN_FILE)


def give_volume_to_grader(root: Path, user: str = "grader") -> int:
    """Give what an older version left to root on the course volume to the grader, never
    following a link (fwalk keeps folder descriptors, so a swapped folder cannot lead out)."""
    entry = pwd.getpwnam(user)
    changed = 0
    if not root.is_dir() or root.is_symlink():
        return 0
    os.chown(root, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    for _dirpath, dirnames, filenames, dirfd in os.fwalk(root, follow_symlinks=False):
        for name in dirnames + filenames:
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                if st.st_uid != entry.pw_uid:
                    os.chown(name, entry.pw_uid, entry.pw_gid, dir_fd=dirfd, follow_symlinks=False)
                    changed += 1
            except FileNotFoundError:
                pass
    return changed


class RunHandler(web.RequestHandler):
    """POST /run with the token: run one notebook; the answer is the executed notebook, the
    reason it was stopped (if it was) and the seconds it took."""

    def initialize(self, runner: "Runner"):
        self.runner = runner

    def check_xsrf_cookie(self):
        pass  # no cookies here: the token is the only way in

    async def post(self):
        if not secrets.compare_digest(self.request.headers.get("Authorization", ""), f"token {self.runner.token}"):
            raise web.HTTPError(403)
        try:
            request = json.loads(self.request.body)
            import nbformat
            nb = nbformat.from_dict(request["notebook"])
        except (ValueError, KeyError, TypeError) as exc:
            raise web.HTTPError(400, f"expected {{\"notebook\": ..., \"label\": ...}}: {exc}")
        label = str(request.get("label", ""))[:200]
        result = await ioloop.IOLoop.current().run_in_executor(self.runner.pool, self.runner.run, nb, label)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"notebook": result.notebook, "reason": result.reason, "seconds": result.seconds,
                                "timing": result.timing}))


class Runner:
    """On one host, sandboxes on this host's engine, some started ahead of need (``WarmPool``);
    on a swarm, ``swarm_placement`` given, one Swarm service per notebook on the workers
    (``SwarmSandboxes``: a service cannot be started ahead of its notebook). Both kinds run a
    notebook, remove what an earlier runner left, describe themselves and close."""

    def __init__(self, image: str, limits: Limits, workers: int, instance: str, warm: int | None = None,
                 swarm_placement: list[str] | None = None):
        self.image = image
        self.limits = limits
        self.instance = instance
        self.token = secrets.token_hex(32)
        self.pool = ThreadPoolExecutor(max_workers=max(workers, 2), thread_name_prefix="sandbox")
        self.sandboxes: WarmPool | SwarmSandboxes
        if swarm_placement is not None:
            self.sandboxes = SwarmSandboxes(image, limits, instance, swarm_placement)
        else:  # as many sandboxes started ahead of need as notebooks are graded at once
            self.sandboxes = WarmPool(image, limits, size=workers if warm is None else warm, instance=instance)

    def run(self, nb, label: str):
        return self.sandboxes.run(nb, label)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[sandbox %(levelname)s %(asctime)s] %(message)s")
    if os.geteuid() != 0:
        sys.exit("the sandbox runner needs root (the Docker socket)")
    lab = current("sandbox")
    workers = lab.grading_workers
    swarm = lab.get("swarm.enabled")
    runner = Runner(lab.env["LAB_COURSE_IMAGE"], limits_from(lab.get("grading")), workers, lab.instance,
                    lab.get("grading.warm_sandboxes"), list(lab.get("swarm.placement")) if swarm else None)
    changed = give_volume_to_grader(lab.course_root)
    if changed:
        log.info("gave %d file(s) on the course volume to the grader user", changed)
    left = runner.sandboxes.remove_left()
    if left:
        log.info("removed %d sandbox container(s) an earlier runner left", left)
    write_token(runner.token)
    app = web.Application([(r"/run", RunHandler, {"runner": runner})])
    app.listen(PORT, "127.0.0.1", max_body_size=200 * 1024 * 1024)
    loop = ioloop.IOLoop.current()
    signal.signal(signal.SIGTERM, lambda *_: loop.add_callback_from_signal(loop.stop))
    log.info("sandbox runner on 127.0.0.1:%d: %d at once, %s; %s", PORT, max(workers, 2), runner.sandboxes.describe(),
             runner.limits.describe())
    try:
        loop.start()
    finally:
        runner.sandboxes.close()  # no kernel waits for a notebook that will not come


if __name__ == "__main__":
    main()
