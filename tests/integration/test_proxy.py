"""The proxy in its own container: a student's busy kernel stays connected through a hub restart,
and after a proxy restart the routes come back by themselves (no hub restart, no admin call)."""

import json
import threading
import time
import uuid

import pytest
import requests
import websocket

from tests.integration.kernel import execute

pytestmark = pytest.mark.integration

# Prints a numbered line every half second for about 40 seconds.
TICKS = 80
BUSY = f"import time\nfor i in range({TICKS}):\n    print('tick', i, flush=True)\n    time.sleep(0.5)\n"


def test_a_busy_kernel_stays_connected_through_a_hub_restart(lab):
    name = lab.new_user("busy")
    lab.start(name)
    try:
        r = lab.server_api(name, "POST", "/kernels", json={"name": "python3"})
        assert r.status_code == 201, r.text
        ws_url = lab.user_url(name).replace("http", "ws", 1) + f"/api/kernels/{r.json()['id']}/channels"
        ws = websocket.create_connection(ws_url, header=[f"Authorization: token {lab.token}"], timeout=120)
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": name, "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": BUSY, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False},
        }))
        ticks: list[str] = []
        done = threading.Event()

        def read():
            try:
                while not done.is_set():
                    msg = json.loads(ws.recv())
                    if msg.get("parent_header", {}).get("msg_id") != msg_id:
                        continue
                    if msg["msg_type"] == "stream":
                        ticks.extend(line for line in msg["content"]["text"].splitlines() if line)
                    elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                        done.set()
            except Exception as e:  # the connection dropped: recorded, and the test fails below
                ticks.append(f"DISCONNECTED: {e!r}")
                done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 20
        while not ticks and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ticks, "the kernel printed nothing"
        # The hub goes away and comes back while the kernel prints.
        lab.compose("restart", "hub")
        hub_was_down = False
        for _ in range(40):
            try:
                requests.get(f"{lab.url}/hub/health", timeout=2).raise_for_status()
            except requests.RequestException:
                hub_was_down = True
                break
            time.sleep(0.25)
        assert done.wait(120), f"the kernel did not finish; got {ticks[-3:]}"
        ws.close()
        assert ticks == [f"tick {i}" for i in range(TICKS)], ticks[-3:]
        assert hub_was_down, "the hub's restart was not seen"
        lab.wait_hub()
    finally:
        lab.stop(name)


def test_routes_come_back_by_themselves_after_a_proxy_restart(lab):
    name = lab.new_user("route")
    lab.start(name)
    try:
        assert lab.server_api(name, "GET", "/status").status_code == 200
        lab.compose("restart", "proxy")
        # The new proxy starts with no routes; it asks the hub for them once it listens.
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            try:
                status = lab.server_api(name, "GET", "/status")
                if status.status_code == 200 and status.headers.get("content-type", "").startswith("application/json"):
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        assert status is not None and status.status_code == 200, "the student's route did not come back"
        assert "the hub sent its routes" in lab.compose("logs", "--tail", "20", "proxy").stdout
        assert execute(lab, name, "print(6 * 7)")["stdout"].strip() == "42"
    finally:
        lab.stop(name)
