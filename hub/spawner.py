"""The lab's DockerSpawner: one container per student from the pinned course image.

DockerSpawner does the container work (named home volume, limits, removal on stop,
``allowed_images``). This subclass adds one thing it lacks: when a student's container exits
while starting, JupyterHub 6.1 answers a bare 500 (``InvalidStateError: Exception is not set``)
because nothing fails the spawn until the HTTP wait times out. ``start`` here keeps watching
the container until its server port answers; if the container exits first, it collects the
container's last log lines, logs them for the operator, removes the container and fails the
spawn with a message that shows them to the student.
"""

from __future__ import annotations

import asyncio
import html
import re
import time

from dockerspawner import DockerSpawner
from tornado import web
from traitlets import Int, Unicode

LOG_TAIL_LINES = 15
# The hub's username pattern (see hub.config); such names are already valid Docker names.
DOCKER_SAFE_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def docker_name(username: str) -> str:
    """Name Docker objects after the user as is (``mlops-lab-home-s230001``).

    DockerSpawner's default escaping turns every '-' into '-2d' so that arbitrary names cannot
    collide; the hub only admits names that are valid Docker names already, so leaving them
    unchanged is collision-free and keeps volume names readable for operators and backups.
    Anything else still gets DockerSpawner's escaping.
    """
    if DOCKER_SAFE_USERNAME.fullmatch(username):
        return username
    return DockerSpawner._escape(username)


class ContainerExited(web.HTTPError):
    """A student's container exited before its server answered."""

    def __init__(self, container: str, exit_code: int | None, log_tail: str):
        self.container = container
        self.exit_code = exit_code
        self.log_tail = log_tail
        message = (
            f"Your server's container ({container}) stopped while starting"
            f" (exit code {exit_code}). Its last log lines:\n{log_tail or '(no output)'}"
        )
        super().__init__(500, message, reason="Server failed to start")
        # JupyterHub shows these to the user on its error and progress pages.
        self.jupyterhub_message = message
        self.jupyterhub_html_message = (
            f"<p>Your server's container stopped while starting (exit code {exit_code})."
            f" Its last log lines:</p><pre>{html.escape(log_tail or '(no output)')}</pre>"
            "<p>Try again. If it fails again, tell the course staff and quote these lines.</p>"
        )

    def __str__(self) -> str:
        return self.log_message


class CourseSpawner(DockerSpawner):
    """DockerSpawner with the lab's defaults and start-up failure reporting."""

    lab_instance = Unicode(
        "mlops-lab",
        config=True,
        help="Name of the lab instance; labels containers so the lab's tools can find them.",
    )

    log_tail_lines = Int(
        LOG_TAIL_LINES,
        config=True,
        help="How many of a failed container's last log lines to show the student and log.",
    )

    async def container_log_tail(self) -> str:
        """Return the container's last log lines (stdout and stderr), or '' if it is gone."""
        try:
            raw = await self.docker("logs", self.container_id, tail=self.log_tail_lines)
        except Exception as e:  # the container may already be gone
            self.log.debug("No logs for %s: %s", self.container_name, e)
            return ""
        return raw.decode("utf-8", "replace").strip()

    async def _wait_for_port_or_exit(self, ip: str, port: int) -> None:
        """Return once ip:port accepts a connection; raise ContainerExited if the container stops."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            container = await self.get_object()
            state = (container or {}).get("State", {})
            if not container or not state.get("Running"):
                exit_code = state.get("ExitCode")
                tail = await self.container_log_tail()
                self.log.error(
                    "Container %s for %s exited while starting (exit code %s); last log lines:\n%s",
                    self.container_name, self.user.name, exit_code, tail or "(no output)",
                )
                if container:
                    await self.remove_object()
                self.object_id = ""
                raise ContainerExited(self.container_name, exit_code, tail)
            try:
                _reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout=2)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.5)
                continue
            writer.close()
            return
        # Running but silent: let JupyterHub's own http_timeout handling report it.
        self.log.warning("Server of %s did not open port %s within %ss", self.user.name, port, self.start_timeout)

    async def start(self):
        ip, port = await super().start()
        await self._wait_for_port_or_exit(ip, port)
        return ip, port
