"""What the GitHub and CAS test peers share: a threaded HTTP handler that logs with the peer's name
and answers with a body, a content type and extra headers."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler


class PeerHandler(BaseHTTPRequestHandler):
    peer = "peer"

    def log_message(self, fmt, *args):
        print(f"[{self.peer}] {self.address_string()} {fmt % args}", flush=True)

    def send(self, status: int, body: str | bytes, ctype: str = "application/json; charset=utf-8", headers=None):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
