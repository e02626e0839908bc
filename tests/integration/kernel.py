"""Run code in a JupyterLab kernel over its real websocket protocol, through the hub's proxy."""

from __future__ import annotations

import json
import time
import uuid

import websocket


def execute(lab, user: str, code: str, timeout: float = 180) -> dict:
    """Start a kernel on ``user``'s server, run ``code``, return {'stdout', 'error'}; shut the kernel down."""
    r = lab.server_api(user, "POST", "/kernels", json={"name": "python3"})
    assert r.status_code == 201, r.text
    kernel_id = r.json()["id"]
    ws_url = lab.user_url(user).replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
    ws = websocket.create_connection(ws_url, header=[f"Authorization: token {lab.token}"], timeout=timeout)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": user, "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False},
        }))
        stdout, error = [], None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "stream":
                stdout.append(msg["content"]["text"])
            elif kind == "error":
                error = f"{msg['content']['ename']}: {msg['content']['evalue']}"
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                return {"stdout": "".join(stdout), "error": error}
        raise AssertionError(f"no reply from the kernel within {timeout}s; output so far: {''.join(stdout)}")
    finally:
        ws.close()
        lab.server_api(user, "DELETE", f"/kernels/{kernel_id}")
