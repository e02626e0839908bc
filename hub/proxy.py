"""The proxy's container: configurable-http-proxy, started here rather than by the hub.

With the proxy in a container of its own, a hub restart (an upgrade, a settings change, a crash)
leaves every student's open notebook connected: the routes live in the proxy, which keeps
serving them while the hub is away. JupyterHub supports this (``ConfigurableHTTPProxy.should_start
= False``); what it leaves to the deployment is the two things this module does:

- **The proxy's API token.** The hub writes it (``ensure_tokens``, at each start, kept when
  present) on a volume only the two share; the proxy waits for it, bounded, and starts
  configurable-http-proxy with it. Operators set no secret for it.
- **Routes after a proxy restart.** configurable-http-proxy keeps its routes in memory, so a new
  proxy starts empty. Once it listens, this asks the hub to send it every route again
  (``POST /hub/api/proxy``, with a token limited to the ``proxy`` scope, from the same volume),
  retried until the hub answers. The hub also checks its routes every
  ``JupyterHub.last_activity_interval`` on its own.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

TOKENS = Path(os.environ.get("LAB_PROXY_TOKENS", "/run/lab-proxy"))
AUTH_TOKEN = "auth-token"    # configurable-http-proxy's API token (the hub and the proxy)
SYNC_TOKEN = "sync-token"    # the proxy-sync service's hub API token (scope: proxy)
PORT, API_PORT = 8000, 8001


def ensure_tokens(folder: Path = TOKENS) -> dict[str, str]:
    """For the hub: both tokens, made once (readable by root only) and kept across restarts."""
    tokens = {}
    for name in (AUTH_TOKEN, SYNC_TOKEN):
        path = folder / name
        if not path.exists() or not path.read_text().strip():
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            os.replace(tmp, path)
        tokens[name] = path.read_text().strip()
    return tokens


def wait_for_tokens(folder: Path, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            tokens = {name: (folder / name).read_text().strip() for name in (AUTH_TOKEN, SYNC_TOKEN)}
            if all(tokens.values()):
                return tokens
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"[proxy] no tokens in {folder} after {timeout:.0f} s: the hub writes them when it "
                     "starts (is the hub running, with the proxy-tokens volume?)")
        time.sleep(1)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def ask_hub_for_routes(hub_api: str, token: str, timeout: float, alive=lambda: True) -> bool:
    """POST /hub/api/proxy until the hub answers (it may be restarting too); True once it did."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(f"{hub_api}/proxy", method="POST", data=b"",
                                     headers={"Authorization": f"token {token}"})
    while time.monotonic() < deadline and alive():
        try:
            with urllib.request.urlopen(request, timeout=30):
                print("[proxy] the hub sent its routes", flush=True)
                return True
        except urllib.error.HTTPError as e:
            print(f"[proxy] the hub refused to send its routes: {e.code} {e.reason}", file=sys.stderr, flush=True)
            return False
        except OSError:
            time.sleep(2)
    print("[proxy] the hub did not answer; it adds the routes itself when it starts", flush=True)
    return False


def main() -> None:
    tokens = wait_for_tokens(TOKENS, timeout=300)
    hub = os.environ.get("LAB_HUB_API_URL", "http://hub:8081/hub/api")
    cmd = ["configurable-http-proxy", "--ip", "0.0.0.0", "--port", str(PORT),
           "--api-ip", "0.0.0.0", "--api-port", str(API_PORT),
           "--error-target", hub.rsplit("/api", 1)[0] + "/error", "--log-level", "info",
           "--host-routing"]  # every student's server on its own origin (the hub's subdomain_host)
    proxy = subprocess.Popen(cmd, env=dict(os.environ, CONFIGPROXY_AUTH_TOKEN=tokens[AUTH_TOKEN]))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: proxy.send_signal(s))
    for _ in range(300):
        if proxy.poll() is not None or listening(API_PORT):
            break
        time.sleep(0.2)
    if proxy.poll() is None:
        ask_hub_for_routes(hub, tokens[SYNC_TOKEN], timeout=120, alive=lambda: proxy.poll() is None)
    sys.exit(proxy.wait())


if __name__ == "__main__":
    main()
