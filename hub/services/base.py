"""What every lab service's handlers share: how a request proves who sent it, the XSRF rule for
cookie-authenticated requests, and the headers every page and answer carries.

- **Token or cookie, told apart.** JupyterHub's ``HubOAuth`` checks an ``Authorization: token``
  header first and falls back to the login cookie when the token is not good. So the mere
  presence of the header proves nothing; ``need_token`` asks whether the token itself was
  accepted (``_token_authenticated``, set by ``HubOAuth``).
- **XSRF.** A cookie-authenticated request that is not a plain page view (any write, and any
  script's ``fetch``) must carry the service's XSRF token, as JupyterHub checks it for its own
  pages; nothing here switches that check off.
- **Headers.** A strict Content-Security-Policy (no scripts, no frames, nothing loaded from
  elsewhere), ``nosniff``, no framing and no referrer to other sites, on every answer.
- A request whose token is refused gets 403 with the reason, not a redirect to the login page.

Ours because these are the lab's rules for its own services; JupyterHub's ``HubOAuthenticated``
is the part they build on.
"""

from __future__ import annotations

import json
import os
import signal
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuthenticated
from tornado import ioloop, web

from hub.permissions import may, role_of, who_may

# Our services' pages have no scripts at all, and load nothing but their own inline styles.
PAGE_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def security_headers(handler: web.RequestHandler, csp: str = PAGE_CSP) -> None:
    handler.set_header("Content-Security-Policy", csp)
    handler.set_header("X-Content-Type-Options", "nosniff")
    handler.set_header("X-Frame-Options", "DENY")
    handler.set_header("Referrer-Policy", "same-origin")
    handler.set_header("Cross-Origin-Opener-Policy", "same-origin")
    handler.set_header("Cross-Origin-Resource-Policy", "same-origin")


class ServiceHandler(HubOAuthenticated, web.RequestHandler):
    operators: frozenset[str] = frozenset()

    def set_default_headers(self):
        security_headers(self)

    def get_login_url(self):
        # A request with a token that is not (or no longer) good gets 403, not the login page.
        if self.request.headers.get("Authorization"):
            raise web.HTTPError(403, "this token may not use this service (revoked, expired, or its owner "
                                     "is not on the course roster)")
        return super().get_login_url()

    @property
    def token_authenticated(self) -> bool:
        return bool(getattr(self, "_token_authenticated", False))

    def need_token(self) -> None:
        """Writes that automation makes (``make roster``, the tools) need a token that was accepted
        as such: a login cookie next to a bad token does not count."""
        if not self.token_authenticated:
            raise web.HTTPError(403, "use a valid API token (Authorization: token ...) for this request")

    @property
    def role(self) -> str | None:
        return role_of(self.current_user, self.operators)

    def need(self, action: str) -> str:
        role = self.role
        if not may(role, action):
            raise web.HTTPError(403, f"this needs the role {who_may(action)} (you are {role or 'not on the roster'})")
        return role

    def write_json(self, data, status: int = 200):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, indent=1, default=str))

    def write_error(self, status_code, **kwargs):
        reason = self._reason
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            reason = exc.log_message % exc.args if exc.args else exc.log_message
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": reason, "status": status_code}))


def serve(app: web.Application) -> None:
    """Listen where the hub says this service is (``JUPYTERHUB_SERVICE_URL``) until the hub stops
    it (SIGTERM, or SIGINT)."""
    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    app.listen(url.port, url.hostname)
    loop = ioloop.IOLoop.current()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: loop.add_callback_from_signal(loop.stop))
    loop.start()
