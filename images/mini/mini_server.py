"""A minimal single-user server for load tests of the hub, the proxy and the spawner.

    python3 mini_server.py      (configured, as jupyterhub-singleuser is, by the hub's JUPYTERHUB_* variables)

`bench/burst.py --mini` plays hundreds of students against a lab whose servers run this instead
of JupyterLab, so that what is measured is the hub, the proxy and DockerSpawner, not JupyterLab's
own start (which `bench/burst.py` without --mini measures). It speaks what the hub and a browser
need from a server, with the same checks:

- it listens on JUPYTERHUB_SERVICE_URL under JUPYTERHUB_SERVICE_PREFIX (the hub waits for it there);
- it reports activity to JUPYTERHUB_ACTIVITY_URL at start and every 5 minutes (the idle culler reads it);
- a browser without its cookie is sent through the hub's OAuth (authorize with a state kept in a
  cookie, code exchanged for a token with the server's own client secret, the token's owner
  and scopes checked against JUPYTERHUB_USER and JUPYTERHUB_OAUTH_ACCESS_SCOPES), then gets a
  session cookie for this server's path;
- `POST api/kernels` makes an "echo kernel", and its `channels` websocket answers an
  execute_request with busy, an execute_result whose text is the request's code, and idle.

Ours, with the standard library only (no Jupyter packages): the point is a server that costs a few
MB of memory and almost no CPU to start, which jupyterhub-singleuser cannot be.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import secrets
import signal
import struct
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

ENV = os.environ
PREFIX = ENV.get("JUPYTERHUB_SERVICE_PREFIX", "/")
USER = ENV.get("JUPYTERHUB_USER", "")
TOKEN = ENV.get("JUPYTERHUB_API_TOKEN", "")
CLIENT_ID = ENV.get("JUPYTERHUB_CLIENT_ID", "")
CALLBACK = ENV.get("JUPYTERHUB_OAUTH_CALLBACK_URL", PREFIX + "oauth_callback")
API_URL = ENV.get("JUPYTERHUB_API_URL", "http://hub:8081/hub/api").rstrip("/")
PUBLIC_HUB = (ENV.get("JUPYTERHUB_PUBLIC_HUB_URL") or
              ENV.get("JUPYTERHUB_HOST", "") + ENV.get("JUPYTERHUB_BASE_URL", "/") + "hub/")
ACCESS_SCOPES = set(json.loads(ENV.get("JUPYTERHUB_OAUTH_ACCESS_SCOPES") or "[]"))
# The bench's floor runs this image with no hub at all (a plain docker run): no login there.
NO_LOGIN = ENV.get("LAB_MINI_NO_LOGIN") == "1" and not TOKEN
COOKIE = "mini-session"
STATE_COOKIE = "mini-oauth-state"
STARTED = datetime.now(timezone.utc).isoformat()
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

sessions: set[str] = set()
states: dict[str, str] = {}  # state -> where to go after login
kernels: set[str] = set()
lock = threading.Lock()


def hub_call(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def report_activity() -> None:
    url = ENV.get("JUPYTERHUB_ACTIVITY_URL")
    while url:
        now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        body = json.dumps({"servers": {ENV.get("JUPYTERHUB_SERVER_NAME", ""): {"last_activity": now}},
                           "last_activity": now}).encode()
        try:
            status, _ = hub_call("POST", url, body, {"Authorization": f"token {TOKEN}",
                                                     "Content-Type": "application/json"})
            if status >= 400:
                print(f"mini: the hub refused the activity report ({status})", file=sys.stderr, flush=True)
        except OSError as e:
            print(f"mini: activity report failed: {e}", file=sys.stderr, flush=True)
        time.sleep(300)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lab-mini/1"

    def log_message(self, fmt, *args):  # one line per request would be most of its CPU
        pass

    def send(self, status: int, body: bytes = b"", ctype: str = "text/plain", headers: dict | None = None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def cookie(self, name: str) -> str:
        jar = SimpleCookie(self.headers.get("Cookie", ""))
        return jar[name].value if name in jar else ""

    def logged_in(self) -> bool:
        if NO_LOGIN:
            return True
        with lock:
            return self.cookie(COOKIE) in sessions

    def start_login(self):
        state = secrets.token_urlsafe(16)
        with lock:
            states[state] = self.path
        query = urlencode({"client_id": CLIENT_ID, "redirect_uri": CALLBACK, "response_type": "code",
                           "state": state})
        self.send(302, headers={"Location": f"{PUBLIC_HUB}api/oauth2/authorize?{query}",
                                "Set-Cookie": f"{STATE_COOKIE}={state}; Path={PREFIX}; HttpOnly; SameSite=Lax"})

    def finish_login(self, query: dict):
        state = (query.get("state") or [""])[0]
        with lock:
            next_url = states.pop(state, None)
        if not state or state != self.cookie(STATE_COOKIE) or next_url is None:
            return self.send(403, b"OAuth state does not match this browser's\n")
        form = urlencode({"client_id": CLIENT_ID, "client_secret": TOKEN, "grant_type": "authorization_code",
                          "code": (query.get("code") or [""])[0], "redirect_uri": CALLBACK}).encode()
        status, body = hub_call("POST", f"{API_URL}/oauth2/token", form,
                                {"Content-Type": "application/x-www-form-urlencoded"})
        if status != 200:
            return self.send(403, f"the hub refused the OAuth code ({status})\n".encode())
        access = json.loads(body)["access_token"]
        status, body = hub_call("GET", f"{API_URL}/user", headers={"Authorization": f"token {access}"})
        model = json.loads(body) if status == 200 else {}
        # As jupyterhub-singleuser: the token must carry one of this server's access scopes.
        allowed = ACCESS_SCOPES & set(model.get("scopes", [])) if ACCESS_SCOPES else model.get("name") == USER
        if not allowed:
            return self.send(403, f"{model.get('name', 'this account')} may not use {USER}'s server\n".encode())
        session = secrets.token_urlsafe(24)
        with lock:
            sessions.add(session)
        self.send(302, headers={"Location": next_url,
                                "Set-Cookie": f"{COOKIE}={session}; Path={PREFIX}; HttpOnly; SameSite=Lax"})

    def do_GET(self):
        u = urlparse(self.path)
        if not u.path.startswith(PREFIX):
            return self.send(404, b"not here\n")
        rest = u.path[len(PREFIX):]
        if rest in ("api", "api/"):  # as jupyter_server: the version, without login
            return self.send(200, b'{"version": "mini"}', "application/json")
        if rest == "oauth_callback":
            return self.finish_login(parse_qs(u.query))
        if not self.logged_in():
            if rest.startswith("api/"):
                return self.send(403, b'{"message": "not logged in"}', "application/json")
            return self.start_login()
        if rest == "api/status":
            with lock:
                count = len(kernels)
            return self.send(200, json.dumps({"kernels": count, "started": STARTED}).encode(), "application/json")
        if rest.startswith("api/kernels/") and rest.endswith("/channels"):
            kernel = rest.split("/")[2]
            with lock:
                known = kernel in kernels
            if not known or self.headers.get("Upgrade", "").lower() != "websocket":
                return self.send(404 if not known else 400, b"no such kernel channel\n")
            return self.echo_kernel()
        page = f"<!doctype html><title>lab-mini</title><p id='lab-mini'>{USER}'s minimal server</p>"
        self.send(200, page.encode(), "text/html")

    def do_POST(self):
        u = urlparse(self.path)
        if u.path != f"{PREFIX}api/kernels":
            return self.send(404, b"not here\n")
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.logged_in():
            return self.send(403, b'{"message": "not logged in"}', "application/json")
        kernel = str(uuid.uuid4())
        with lock:
            kernels.add(kernel)
        self.send(201, json.dumps({"id": kernel, "name": "echo"}).encode(), "application/json")

    # -- the echo kernel's websocket (RFC 6455: text frames, masked from the client) --

    def echo_kernel(self):
        accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + WS_GUID).encode())
                                  .digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.close_connection = True
        while True:
            frame = self.read_frame()
            if frame is None:
                return
            try:
                msg = json.loads(frame)
            except ValueError:
                continue
            if msg.get("header", {}).get("msg_type") != "execute_request":
                continue
            parent = msg["header"]
            for msg_type, content in (
                ("status", {"execution_state": "busy"}),
                ("execute_result", {"execution_count": 1, "metadata": {},
                                    "data": {"text/plain": str(msg.get("content", {}).get("code", ""))}}),
                ("status", {"execution_state": "idle"}),
            ):
                msg_id = uuid.uuid4().hex
                self.write_frame(json.dumps({  # as jupyter_server sends them: msg_id and msg_type on top too
                    "header": {"msg_id": msg_id, "msg_type": msg_type, "session": parent.get("session"),
                               "username": USER, "version": "5.3"},
                    "msg_id": msg_id, "msg_type": msg_type,
                    "parent_header": parent, "metadata": {}, "content": content, "channel": "iopub"}))

    def read_frame(self) -> str | None:
        head = self.rfile.read(2)
        if len(head) < 2:
            return None
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length == 126:
            length = struct.unpack(">H", self.rfile.read(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", self.rfile.read(8))[0]
        if length > 1 << 20:
            return None
        mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
        if opcode == 8:
            return None
        return data.decode("utf-8", "replace") if opcode == 1 else ""

    def write_frame(self, text: str):
        data = text.encode()
        head = bytes([0x81]) + (bytes([len(data)]) if len(data) < 126 else
                                bytes([126]) + struct.pack(">H", len(data)) if len(data) < 1 << 16 else
                                bytes([127]) + struct.pack(">Q", len(data)))
        self.wfile.write(head + data)
        self.wfile.flush()


def wait_for_guard() -> None:
    """As the course image's lab-start does on a swarm (LAB_GUARD_WAIT): serve nothing before
    nodeguard's mark is in /etc/lab/guard, so a burst on a swarm pays what a real start pays."""
    wait = float(ENV.get("LAB_GUARD_WAIT") or 0)
    deadline = time.monotonic() + wait
    while wait and not os.path.exists("/etc/lab/guard/in-force"):
        if time.monotonic() > deadline:
            sys.exit(f"mini: nodeguard did not guard this server within {wait:g} s")
        time.sleep(0.25)


def main() -> None:
    wait_for_guard()
    bind = urlparse(ENV.get("JUPYTERHUB_SERVICE_URL", "http://0.0.0.0:8888/"))
    server = ThreadingHTTPServer((bind.hostname or "0.0.0.0", bind.port or 8888), Handler)
    server.daemon_threads = True
    # PID 1 in its container: without a handler SIGTERM would be ignored, and every stop would wait
    # for Docker's SIGKILL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    threading.Thread(target=report_activity, daemon=True).start()
    print(f"mini: {USER}'s server on {bind.hostname}:{bind.port}{PREFIX}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
