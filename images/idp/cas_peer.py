"""A CAS 3.0 test peer standing in for DTU's single sign-on (auth.dtu.dk), for the demo lab and
the tests. It speaks the protocol python-cas uses:

- ``GET /cas/login?service=URL``: a sign-in page (DTU id and password); ``POST`` there signs in
  and redirects to ``URL?ticket=ST-...`` (``&ticket=`` when URL has a query).
- ``GET /cas/p3/serviceValidate?ticket=...&service=URL``: the CAS 3.0 XML answer,
  ``cas:authenticationSuccess`` with ``cas:user`` and ``cas:attributes``, or
  ``cas:authenticationFailure`` (``INVALID_TICKET``, ``INVALID_SERVICE``, ``INVALID_REQUEST``).
  A ticket is good once, for the service it was issued to, for 60 seconds.

Known users come from the command line (case-insensitive; ``cas:user`` is the id as typed, as
many CAS servers answer); any non-empty password is accepted. Never for real students.
"""

from __future__ import annotations

import argparse
import html
import secrets
import threading
import time
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse
from xml.sax.saxutils import escape

from peer_base import PeerHandler

TICKETS: dict[str, dict] = {}
LOCK = threading.Lock()
NS = 'xmlns:cas="http://www.yale.edu/tp/cas"'


def failure(code: str, text: str) -> str:
    return (f"<cas:serviceResponse {NS}>\n  <cas:authenticationFailure code=\"{code}\">{escape(text)}"
            "</cas:authenticationFailure>\n</cas:serviceResponse>\n")


def success(user: str, attributes: dict[str, str]) -> str:
    attrs = "".join(f"\n      <cas:{k}>{escape(v)}</cas:{k}>" for k, v in attributes.items())
    return (f"<cas:serviceResponse {NS}>\n  <cas:authenticationSuccess>\n    <cas:user>{escape(user)}</cas:user>\n"
            f"    <cas:attributes>{attrs}\n    </cas:attributes>\n  </cas:authenticationSuccess>\n</cas:serviceResponse>\n")


class Handler(PeerHandler):
    peer = "cas-peer"
    server_version = "cas-peer/1"
    users: set[str] = set()

    def login_page(self, service: str, error: str = "") -> str:
        return ("<!doctype html><title>DTU single sign-on (demo CAS)</title><h1>DTU single sign-on (demo CAS)</h1>"
                + (f"<p class=error>{html.escape(error)}</p>" if error else "")
                + f"<form method=post><input type=hidden name=service value=\"{html.escape(service)}\">"
                "<label>DTU id <input name=username id=username></label> "
                "<label>Password <input type=password name=password id=password></label> "
                "<button id=signin>Sign in</button></form>"
                f"<p>Demo users: {html.escape(', '.join(sorted(self.users)))} (any password)</p>")

    def do_GET(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/cas/login":
            if not q.get("service"):
                return self.send(400, "<h1>CAS: the service parameter is required</h1>", "text/html")
            return self.send(200, self.login_page(q["service"]), "text/html; charset=utf-8")
        if url.path in ("/cas/p3/serviceValidate", "/cas/serviceValidate"):
            ticket, service = q.get("ticket", ""), q.get("service", "")
            if not ticket or not service:
                body = failure("INVALID_REQUEST", "ticket and service are required")
            else:
                with LOCK:
                    grant = TICKETS.pop(ticket, None)
                if not grant or grant["expires"] < time.time():
                    body = failure("INVALID_TICKET", f"Ticket {ticket} not recognized")
                elif grant["service"] != service:
                    body = failure("INVALID_SERVICE", f"Ticket {ticket} was not issued for {service}")
                else:
                    user = grant["user"]
                    body = success(user, {"mail": f"{user}@dtu.dk", "displayName": user,
                                          "authenticationDate": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            return self.send(200, body, "application/xml; charset=utf-8")
        return self.send(404, "not found", "text/plain")

    def do_POST(self):
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        f = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        if url.path != "/cas/login":
            return self.send(404, "not found", "text/plain")
        service, user = f.get("service", ""), f.get("username", "").strip()
        # Like many CAS servers, ids are case-insensitive and cas:user is the id as typed.
        if user.lower() not in self.users or not f.get("password"):
            return self.send(200, self.login_page(service, "The DTU id or password is wrong."), "text/html; charset=utf-8")
        ticket = "ST-" + secrets.token_hex(16)
        with LOCK:
            TICKETS[ticket] = {"user": user, "service": service, "expires": time.time() + 60}
        target = service + ("&" if "?" in service else "?") + urlencode({"ticket": ticket})
        return self.send(302, "", "text/plain", {"Location": target})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=9402)
    p.add_argument("--user", action="append", default=[], help="a DTU id (repeat)")
    args = p.parse_args(argv)
    Handler.users = {u.lower() for u in args.user}
    print(f"[cas-peer] listening on :{args.port}, users: {', '.join(args.user)}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
