"""A GitHub test peer: GitHub's OAuth web flow and REST ``/user``, for the demo lab and the tests.

GitHub cannot run here, so this process speaks the exact wire protocol that OAuthenticator's
GitHub client uses, as GitHub Enterprise serves it under one host:

- ``GET /login/oauth/authorize`` (client_id, redirect_uri, state, scope): a sign-in page;
  ``POST`` there signs in and redirects to ``redirect_uri?code=...&state=...``.
- ``POST /login/oauth/access_token`` (client_id, client_secret, code, redirect_uri; as form
  fields or HTTP Basic): ``{"access_token", "token_type": "bearer", "scope"}`` as JSON when asked,
  else form-encoded; a bad code is GitHub's ``200 {"error": "bad_verification_code"}``.
- ``GET /api/v3/user`` (``Authorization: token|Bearer``): the user; else 401.
- ``GET /api/v3/users/LOGIN``: the public account of LOGIN, with its numeric ``id``; else 404.

Users and the one OAuth app come from the command line. Each account has a numeric id that
does not change; ``--reregistered LOGIN`` adds a second account that now holds LOGIN (as when
the first was renamed or deleted and someone else took the name), signed in with the button
"LOGIN (re-registered)", with another id. Never for real students.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import secrets
import threading
import time
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

from peer_base import PeerHandler

CODES: dict[str, dict] = {}
TOKENS: dict[str, str] = {}
LOCK = threading.Lock()


class Handler(PeerHandler):
    peer = "github-peer"
    server_version = "github-peer/1"
    users: dict[str, dict] = {}
    client_id = ""
    client_secret = ""

    def form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        if self.headers.get("Content-Type", "").startswith("application/json"):
            return {k: str(v) for k, v in json.loads(raw or "{}").items()}
        return {k: v[0] for k, v in parse_qs(raw).items()}

    def do_GET(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/login/oauth/authorize":
            if q.get("client_id") != self.client_id:
                return self.send(404, "<h1>404: unknown OAuth application (client_id)</h1>", "text/html")
            buttons = "".join(
                f'<button name="login" value="{html.escape(key)}" class="person">{html.escape(key)}</button> '
                for key in sorted(self.users))
            hidden = "".join(f'<input type="hidden" name="{k}" value="{html.escape(q.get(k, ""))}">'
                             for k in ("client_id", "redirect_uri", "state", "scope"))
            page = (f"<!doctype html><title>Sign in to GitHub (demo)</title><h1>Sign in to GitHub (demo)</h1>"
                    f"<p>Authorize <b>MLOps course lab</b> to know your GitHub login.</p>"
                    f"<form method=post>{hidden}<label>Username <input name=login_typed id=login></label>"
                    f"<button name=login value='' id=authorize>Authorize</button><p>{buttons}</p></form>")
            return self.send(200, page, "text/html; charset=utf-8")
        if url.path in ("/api/v3/user", "/user"):
            auth = self.headers.get("Authorization", "")
            token = auth.split(" ", 1)[1] if " " in auth else ""
            with LOCK:
                login = TOKENS.get(token)
            if not login:
                return self.send(401, json.dumps({"message": "Requires authentication",
                                                  "documentation_url": "https://docs.github.com/rest"}))
            return self.send(200, json.dumps(self.users[login]))
        if url.path.startswith("/api/v3/users/"):
            wanted = url.path.rsplit("/", 1)[1].lower()
            holders = [u for u in self.users.values() if u["login"] == wanted]
            if holders:  # the account that held the login when the roster was imported
                return self.send(200, json.dumps(holders[0]))
        return self.send(404, json.dumps({"message": "Not Found"}))

    def do_POST(self):
        url = urlparse(self.path)
        f = self.form()
        if url.path == "/login/oauth/authorize":
            login = f.get("login") or f.get("login_typed", "").strip()
            if login not in self.users:
                return self.send(200, "<h1>Incorrect username or password.</h1>", "text/html")
            code = secrets.token_hex(10)
            with LOCK:
                CODES[code] = {"login": login, "client_id": f.get("client_id"), "redirect_uri": f.get("redirect_uri"),
                               "expires": time.time() + 600}
            target = f["redirect_uri"] + ("&" if "?" in f["redirect_uri"] else "?") + urlencode(
                {"code": code, "state": f.get("state", "")})
            return self.send(302, "", "text/plain", {"Location": target})
        if url.path == "/login/oauth/access_token":
            client_id, secret = f.get("client_id"), f.get("client_secret")
            auth = self.headers.get("Authorization", "")
            if auth.lower().startswith("basic "):
                client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            if client_id != self.client_id or secret != self.client_secret:
                result = {"error": "incorrect_client_credentials",
                          "error_description": "The client_id and/or client_secret passed are incorrect."}
            else:
                with LOCK:
                    grant = CODES.pop(f.get("code", ""), None)
                if not grant or grant["expires"] < time.time() or grant["client_id"] != client_id:
                    result = {"error": "bad_verification_code",
                              "error_description": "The code passed is incorrect or expired."}
                else:
                    token = "gho_" + secrets.token_hex(18)
                    with LOCK:
                        TOKENS[token] = grant["login"]
                    result = {"access_token": token, "token_type": "bearer", "scope": ""}
            if "application/json" in self.headers.get("Accept", ""):
                return self.send(200, json.dumps(result))
            return self.send(200, urlencode(result), "application/x-www-form-urlencoded")
        return self.send(404, json.dumps({"message": "Not Found"}))


def account(login: str, key: str) -> dict:
    """A GitHub account; its id is fixed by ``key`` (so every start gives the same ids)."""
    number = 100000 + int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 900000
    return {"login": login, "id": number, "node_id": f"U_{number}", "type": "User",
            "name": login.replace("-", " ").title(), "email": None}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=9401)
    p.add_argument("--client", required=True, help="the OAuth app, as CLIENT_ID:CLIENT_SECRET")
    p.add_argument("--user", action="append", default=[], help="a GitHub login (repeat)")
    p.add_argument("--reregistered", action="append", default=[],
                   help="a login whose name another account has taken since the roster was imported")
    args = p.parse_args(argv)
    Handler.client_id, _, Handler.client_secret = args.client.partition(":")
    Handler.users = {login: account(login, login) for login in args.user}
    for login in args.reregistered:
        Handler.users[f"{login} (re-registered)"] = account(login, f"{login} (re-registered)")
    print(f"[github-peer] listening on :{args.port}, users: {', '.join(args.user)}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
