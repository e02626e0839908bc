"""GPU hours for course staff: a hub-managed service at ``/services/gpu-usage/``.

JupyterHub's ``extra_handlers`` are deprecated in favour of services, so staff pages are small
services behind the hub's OAuth (``HubOAuthenticated``): only people or tokens with
``access:services!service=gpu-usage`` (admins, the lab-admin token) get in. It reads the
allocator's usage table on the hub's state volume; ``?format=json`` gives the same as JSON.
"""

from __future__ import annotations

import html
import json
import os
import time

from jupyterhub.services.auth import HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from tornado import web

from hub.gpu import Allocator
from hub.services.base import ServiceHandler, serve


def _when(ts: float | None) -> str:
    return "running" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


class UsageHandler(ServiceHandler):
    def initialize(self, state_path: str):
        self.state_path = state_path

    @web.authenticated
    def get(self):
        allocator = Allocator([], self.state_path)
        rows, totals = allocator.usage(), allocator.hours_by_user()
        if self.get_argument("format", "") == "json":
            self.set_header("Content-Type", "application/json")
            self.write(json.dumps({"hours_by_user": totals, "periods": rows}))
            return
        body = "".join(
            f"<tr><td>{html.escape(user)}</td><td>{hours:.2f}</td></tr>" for user, hours in sorted(totals.items())
        ) or '<tr><td colspan="2">No GPU has been used yet.</td></tr>'
        periods = "".join(
            f"<tr><td>{html.escape(r['user'])}</td><td>{html.escape(r['device'])}</td>"
            f"<td>{html.escape(r['profile'])}</td><td>{_when(r['start'])}</td><td>{_when(r['end'])}</td>"
            f"<td>{r['hours']:.2f}</td></tr>"
            for r in reversed(rows)
        )
        self.write(
            "<!doctype html><html><head><meta charset='utf-8'><title>GPU hours</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em 1em;text-align:left}</style>"
            "</head><body><h1>GPU hours per student</h1>"
            f"<table><tr><th>Student</th><th>Hours</th></tr>{body}</table>"
            "<h2>Allocations</h2><table><tr><th>Student</th><th>Device</th><th>Profile</th>"
            f"<th>From</th><th>To</th><th>Hours</th></tr>{periods}</table>"
            "<p><a href='?format=json'>JSON</a></p></body></html>"
        )


def make_app(prefix: str, state_path: str) -> web.Application:
    return web.Application(
        [
            (prefix, UsageHandler, {"state_path": state_path}),
            (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
        ],
        cookie_secret=os.urandom(32),
    )


def main() -> None:
    from hub.settings import current
    serve(make_app(os.environ["JUPYTERHUB_SERVICE_PREFIX"], str(current("gpu-usage").gpu_state)))


if __name__ == "__main__":
    main()
