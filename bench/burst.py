#!/usr/bin/env python3
"""The 9:00 burst: N students open the lab within a few minutes, played the way browsers do.

    bench/burst.py [-n 100] [--window 120] [--no-floor] [--keep] [--mini] [--warm]

Against the running lab (`make up`, demo mode: the bundled DTU provider signs the students in).
Each student, at their arrival time (spread evenly over the window):

1. opens the lab's front page and follows it to the login page;
2. clicks "Log in with DTU", is sent to the provider's authorize page, picks their account there
   (a form POST, as the button does), and follows the redirects back to the hub (OAuth code
   flow, cookies kept, nothing through the admin API);
3. submits the spawn form (CPU profile), follows the progress stream the pending page listens
   to until the server is ready, and opens JupyterLab (the server's own OAuth with the hub);
4. starts a kernel with the page's XSRF token, runs `sum(range(10))` over the kernel's
   websocket, and waits for the result; then stays idle until everyone is done.

The floor, in the same run: the same number of plain `docker run`s of the course image
(JupyterLab alone, no hub, no login), arriving the same way, each to the same cell's result.

With --mini (`make bench-burst-mini`, 300 students in 5 minutes by default), the lab's servers
run images/mini, a server of a few MB that speaks what the hub and a browser need (the hub's
OAuth, a kernel websocket that echoes), so that the load is on the hub, the proxy and the spawner;
the floor is then plain `docker run`s of that image.

Prints logins per second, p50/p95/max from the front page to the first cell's result (and per
phase), failures by phase and cause, the CPU and memory of the hub's container and of the proxy
in it, the memory and start CPU of a student's server, the largest age of netguard's heartbeat
seen during the burst, and the floor's figures with the ratio.

With --swarm (bench/burst_swarm.py sets it, with --docker for the manager's engine), the lab runs
on a swarm: the floor is then plain Swarm services of the same image, each until its task runs on
a worker (this process cannot reach the overlay network, so the floor sends no request), and a
server's own figures are not read (it runs on a worker).

With --warm, the lab's warm capacity is used as at 9:00 on a course day: the bench students are
marked as having used the lab yesterday (their hub activity), the warm service is asked to warm
for the next session now (``POST /services/warm/api/warm``, as an operator can), and the burst
starts once their servers are up; it prints how long that took. Each student then logs in and
lands in their running server. lab.yaml needs ``warm.enabled: true`` and a
``warm.memory_budget`` of at least N times the CPU profile's memory limit.

Before: the bench students (s98xxxx, "Bench Student n") are added to the roster through the
roster service, and their DTU accounts to the demo provider. After (unless --keep): their
servers are stopped, the roster is put back as it was, their hub users and home volumes removed.

Ours, not a load tool's (locust and the like): the students have to follow the lab's own OAuth
redirects across the hub's and each server's origins and speak Jupyter's kernel protocol, which
is what the lab's own tests already do with requests and websocket-client.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import html
import io
import json
import os
import re
import secrets
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urljoin, urlparse

import requests
import websocket

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.spawn import percentile, read_env  # noqa: E402

CODE, EXPECTED = "sum(range(10))", "45"
# How this process runs docker against the lab's engine (--docker: e.g. on a swarm's manager).
DOCKER = ["docker"]
MINI_MARK = "id='lab-mini'"  # images/mini/mini_server.py's page

# Student servers live on <name>.localhost, which Chromium resolves to loopback by itself; this
# process's clients get the same answer.
_getaddrinfo = socket.getaddrinfo


def _loopback(host, *args, **kwargs):
    if isinstance(host, str) and (host == "localhost" or host.endswith(".localhost")):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _loopback


class Failed(Exception):
    def __init__(self, phase: str, cause: str):
        super().__init__(f"{phase}: {cause}")
        self.phase, self.cause = phase, cause


def must(r: requests.Response, phase: str, ok=(200,)) -> requests.Response:
    if r.status_code not in ok:
        page = re.sub(r"(?s)<(head|script|style|nav)\b.*?</\1>", " ", r.text)  # what the page says, not its code
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))[:160]
        raise Failed(phase, f"HTTP {r.status_code} at {urlparse(r.url).path}: {text.strip()}")
    return r


def run_cell(ws_url: str, headers: list[str], timeout: float, code: str = CODE) -> str:
    """Run code in the kernel behind ws_url; its result, as the notebook would show it."""
    ws = websocket.create_connection(ws_url, header=headers, timeout=timeout)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "", "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False},
        }))
        deadline = time.monotonic() + timeout
        result = None
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            msg["msg_type"] = msg.get("msg_type") or msg["header"]["msg_type"]
            if msg["msg_type"] == "execute_result":
                result = msg["content"]["data"]["text/plain"]
            elif msg["msg_type"] == "error":
                return f"error: {msg['content']['ename']}"
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return result or "no result"
        return "no reply"
    finally:
        ws.close()


def follow_progress(s: requests.Session, url: str, person: str, timeout: float) -> str:
    """Follow the progress stream the spawn-pending page listens to; the server's URL once ready."""
    hub_xsrf = s.cookies.get("_xsrf", domain=urlparse(url).hostname)
    with s.get(f"{url}/hub/api/users/{person}/server/progress", params={"_xsrf": hub_xsrf},
               headers={"Accept": "text/event-stream"}, stream=True, timeout=timeout) as events:
        for line in must(events, "spawn").iter_lines(decode_unicode=True):
            if not line or not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if event.get("failed"):
                raise Failed("spawn", event.get("message", "failed")[:160])
            if event.get("ready"):
                return event["url"]
    raise Failed("spawn", "the progress stream ended before the server was ready")


def send_session_id_to_bare_host(s: requests.Session) -> None:
    """The hub's session-id cookie is for ``.localhost`` (the lab's host and every student's
    subdomain). Python's cookie jar files a bare host such as ``localhost`` under
    ``localhost.local`` and so never sends it that cookie, as a browser would; the hub then ties
    the spawn form's XSRF token to no session and refuses the form. Send it there too."""
    for cookie in list(s.cookies):
        if cookie.name == "jupyterhub-session-id" and cookie.domain.startswith(".") and "." not in cookie.domain[1:]:
            s.cookies.set(cookie.name, cookie.value, domain=cookie.domain[1:] + ".local", path=cookie.path)


# -- one student ------------------------------------------------------------------------------

def play_student(url: str, person: str, timeout: float, mini: bool = False) -> dict:
    """Front page to first cell result, as a browser; the time of each phase (seconds).

    mini: the lab's servers run images/mini (--mini): its page instead of JupyterLab's, and its
    echo kernel, which answers with the code it was sent (a fresh one per student)."""
    s = requests.Session()
    marks = {"start": time.perf_counter()}

    def mark(phase):
        marks[phase] = time.perf_counter()

    phase = "front page"
    try:
        login_page = must(s.get(f"{url}/", timeout=60), phase)
        link = re.search(r"href=['\"]([^'\"]+)['\"][^>]*>\s*Log in with DTU", login_page.text)
        if not link:
            raise Failed(phase, f"no 'Log in with DTU' on {urlparse(login_page.url).path}")
        mark("front page")
        phase = "login"
        authorize = must(s.get(urljoin(login_page.url, link.group(1)), timeout=60), phase)
        if "/oauth2/authorize" not in authorize.url:
            raise Failed(phase, f"not sent to the provider (at {authorize.url})")
        # The provider's button for an account posts its form with that account's sub.
        back = must(s.post(authorize.url, data={"sub": person}, timeout=timeout), phase)
        send_session_id_to_bare_host(s)
        mark("login")
        phase = "spawn"
        # A server that is up within the hub's slow_spawn_timeout (10 s) is opened at once, without
        # the pending page: the browser lands in it (through its OAuth) straight after login.
        landed = urlparse(back.url).path.startswith(f"/user/{person}/")
        if not landed and "/hub/spawn-pending/" not in back.url:
            # The spawn form (more than one profile to choose from): the CPU one. Its XSRF token is
            # a hidden field, or (JupyterHub 5) in the form's action.
            xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', back.text)
            action = re.search(r'<form[^>]*action="([^"]*)"', back.text)
            target = html.unescape(action.group(1)) if action else ""
            if not (xsrf or "_xsrf=" in target) or "/hub/spawn" not in back.url:
                raise Failed("login", f"neither the spawn form nor a starting server after login (at {back.url})")
            must(s.post(urljoin(back.url, target), data={"profile": "cpu", **({"_xsrf": xsrf.group(1)} if xsrf else {})},
                        timeout=timeout), phase)
        if landed:
            u = urlparse(back.url)
            ready_url = f"{u.scheme}://{u.netloc}/user/{person}/"
        else:
            ready_url = follow_progress(s, url, person, timeout)
        mark("spawn")
        phase = "open lab"
        lab = must(s.get(urljoin(url, ready_url) + "lab", timeout=120), phase)
        server = lab.url.split("/lab")[0]
        if (MINI_MARK if mini else "jupyter-config-data") not in lab.text:
            raise Failed(phase, f"not {'the minimal server' if mini else 'JupyterLab'} at {lab.url}")
        mark("open lab")
        phase = "kernel"
        host = urlparse(server).hostname
        token = s.cookies.get("_xsrf", domain=host) or ""
        k = must(s.post(f"{server}/api/kernels", json={"name": "python3"}, headers={"X-XSRFToken": token},
                        timeout=120), phase, ok=(201,))
        kernel = k.json()["id"]
        cookie = s.prepare_request(requests.Request("GET", f"{server}/api/kernels")).headers.get("Cookie", "")
        code, expected = (f"'{uuid.uuid4().hex}'",) * 2 if mini else (CODE, EXPECTED)
        # As JupyterLab opens it: a session id, and the XSRF token (a cookie-authenticated websocket needs it).
        result = run_cell(server.replace("http", "ws", 1) + f"/api/kernels/{kernel}/channels?session_id="
                          f"{uuid.uuid4().hex}&_xsrf={token}",
                          [f"Cookie: {cookie}"], timeout, code)  # websocket-client sends the page's Origin itself
        if result != expected:
            raise Failed(phase, f"the cell gave {result!r}")
        mark("first result")
        return {"ok": True, "marks": marks}
    except Failed as e:
        return {"ok": False, "phase": e.phase, "cause": e.cause, "marks": marks}
    except (requests.RequestException, websocket.WebSocketException, OSError, ValueError, KeyError) as e:
        return {"ok": False, "phase": phase, "cause": f"{type(e).__name__}: {str(e)[:120]}", "marks": marks}


def arrivals(n: int, window: float, play) -> list[dict]:
    """Start play(i) for each i at i * window / n seconds; wait for all (each bounded by its own timeouts)."""
    results: list[dict | None] = [None] * n
    t0 = time.perf_counter()

    def one(i):
        delay = t0 + i * window / max(n, 1) - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        try:
            results[i] = play(i)
        except Exception as e:  # a harness bug must not hide as a missing student
            results[i] = {"ok": False, "phase": "harness", "cause": f"{type(e).__name__}: {e}"[:160],
                          "marks": {"start": time.perf_counter()}}

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# -- the floor: plain docker run ---------------------------------------------------------------

def floor_server(image: str, network: str, name: str, timeout: float, mini: bool = False) -> dict:
    token = secrets.token_hex(16)
    marks = {"start": time.perf_counter()}
    if mini:  # the minimal server with no hub: no login, at the root
        run = ["-e", "LAB_MINI_NO_LOGIN=1", "-e", "JUPYTERHUB_SERVICE_PREFIX=/", image]
    else:
        run = ["--entrypoint", "jupyter", image, "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser",
               f"--IdentityProvider.token={token}"]
    try:
        subprocess.run([*DOCKER, "run", "-d", "--name", name, "--network", network, *run], check=True,
                       capture_output=True, timeout=120)
        ip = ""
        auth = {"Authorization": f"token {token}"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not ip:
                nets = json.loads(subprocess.run([*DOCKER, "inspect", "-f", "{{json .NetworkSettings.Networks}}",
                                                  name], capture_output=True, text=True).stdout or "{}")
                ip = (nets.get(network) or {}).get("IPAddress", "")
            try:
                if ip and requests.get(f"http://{ip}:8888/api/status", headers=auth, timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        else:
            return {"ok": False, "phase": "start", "cause": "no answer", "marks": marks}
        kernel = requests.post(f"http://{ip}:8888/api/kernels", json={"name": "python3"}, headers=auth,
                               timeout=120).json()["id"]
        code, expected = (f"'{uuid.uuid4().hex}'",) * 2 if mini else (CODE, EXPECTED)
        result = run_cell(f"ws://{ip}:8888/api/kernels/{kernel}/channels", [f"Authorization: token {token}"],
                          timeout, code)
        marks["first result"] = time.perf_counter()
        return {"ok": result == expected, "phase": "kernel", "cause": result, "marks": marks}
    except (subprocess.SubprocessError, requests.RequestException, websocket.WebSocketException, OSError) as e:
        return {"ok": False, "phase": "start", "cause": f"{type(e).__name__}: {str(e)[:120]}", "marks": marks}


def floor_service(image: str, network: str, name: str, timeout: float) -> dict:
    """The floor on a swarm: a plain Swarm service of the image on a worker, until its task runs."""
    marks = {"start": time.perf_counter()}
    try:
        subprocess.run([*DOCKER, "service", "create", "-d", "-q", "--name", name, "--network", network,
                        "--restart-condition", "none", "--constraint", "node.role == worker",
                        "-e", "LAB_MINI_NO_LOGIN=1", "-e", "JUPYTERHUB_SERVICE_PREFIX=/", image],
                       check=True, capture_output=True, timeout=120)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = subprocess.run([*DOCKER, "service", "ps", "--format", "{{.CurrentState}}", name],
                                   capture_output=True, text=True, timeout=60).stdout
            if state.startswith("Running"):
                marks["first result"] = time.perf_counter()
                return {"ok": True, "phase": "start", "cause": "", "marks": marks}
            if state.split(" ")[0] in ("Failed", "Rejected", "Complete", "Shutdown"):
                return {"ok": False, "phase": "start", "cause": state.strip()[:120], "marks": marks}
            time.sleep(0.3)
        return {"ok": False, "phase": "start", "cause": "not running", "marks": marks}
    except subprocess.SubprocessError as e:
        return {"ok": False, "phase": "start", "cause": f"{type(e).__name__}: {str(e)[:120]}", "marks": marks}


# -- what the host sees ------------------------------------------------------------------------

def cgroup(kind: str, cid: str, name: str) -> int | None:
    try:
        return int(Path(f"/sys/fs/cgroup/{kind}/docker/{cid}/{name}").read_text())
    except (OSError, ValueError):
        return None


def container_id(name: str) -> str:
    return subprocess.run([*DOCKER, "inspect", "-f", "{{.Id}}", name], capture_output=True, text=True).stdout.strip()


class Watcher:
    """Samples, every second, the hub's and the proxy's containers' memory and netguard's heartbeat age."""

    def __init__(self, instance: str, swarm: bool = False):
        self.ids = {"hub": container_id(f"{instance}-hub-1"), "proxy": container_id(f"{instance}-proxy-1")}
        mount = subprocess.run([*DOCKER, "volume", "inspect", "-f", "{{.Mountpoint}}",
                                f"{instance}_netguard-state"], capture_output=True, text=True).stdout.strip()
        self.heartbeat = Path(mount) / "heartbeat.json" if mount and not swarm else None  # (one host only)
        self.peak = {"hub": 0, "proxy": 0}
        self.heartbeat_age = 0.0
        self.stop = threading.Event()

    def cpu(self) -> dict:
        return {k: (cgroup("cpuacct", cid, "cpuacct.usage") or 0) / 1e9 for k, cid in self.ids.items() if cid}

    def run(self):
        while not self.stop.wait(1.0):
            for k, cid in self.ids.items():
                if cid:
                    self.peak[k] = max(self.peak[k], cgroup("memory", cid, "memory.usage_in_bytes") or 0)
            if self.heartbeat:
                try:
                    age = time.time() - json.loads(self.heartbeat.read_text())["at"]
                except (OSError, ValueError, KeyError):
                    age = float("inf")
                self.heartbeat_age = max(self.heartbeat_age, age)


# -- the run -----------------------------------------------------------------------------------

class Lab:
    def __init__(self, url: str, token: str, idp: str, instance: str):
        self.url, self.idp, self.instance = url, idp, instance
        self.leftovers: list[str] = []
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"token {token}"

    def roster_api(self, method: str, path: str, **kw) -> requests.Response:
        # Each service has an origin of its own: roster--service.<lab host>.
        u = urlparse(self.url)
        return self.api.request(method, f"{u.scheme}://roster--service.{u.netloc}/services/roster/{path}",
                                timeout=600, **kw)

    def roster_csv(self, people: list[dict]) -> bytes:
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["id", "name", "email", "github", "role"])
        for p in people:
            w.writerow([p["id"], p["name"], p["email"], p.get("github") or "", p["role"]])
        return out.getvalue().encode()

    def enrol(self, students: list[str]) -> list[dict]:
        """Add the bench students to the roster and the demo provider; the roster as it was."""
        for _ in range(60):  # the hub may still be starting its services
            r = self.roster_api("GET", "api/roster")
            if r.status_code not in (502, 503):
                break
            time.sleep(2)
        if r.status_code != 200:
            sys.exit(f"burst: the roster service answered {r.status_code}: {r.text[:200]}")
        # Bench students an interrupted run left behind are removed along with this run's.
        before = [p for p in r.json()["people"] if not p["name"].startswith("Bench Student ")]
        self.leftovers = [p["id"] for p in r.json()["people"] if p["name"].startswith("Bench Student ")]
        if self.leftovers:
            print(f"burst: {len(self.leftovers)} bench students from an earlier run are removed too", flush=True)
        for sid in students:
            claims = {"sub": sid, "preferred_username": f"{sid}@dtu.dk", "name": f"Bench Student {sid[-4:]}",
                      "email": f"{sid}@student.dtu.dk"}
            r = requests.put(f"{self.idp}/users/{sid}", json=claims, timeout=30)
            if r.status_code != 204:
                sys.exit(f"burst: the demo DTU provider at {self.idp} refused the bench accounts "
                         f"({r.status_code}); is lab.yaml's auth.demo true?")
        bench = [{"id": sid, "name": f"Bench Student {sid[-4:]}", "email": f"{sid}@student.dtu.dk",
                  "role": "student"} for sid in students]
        r = self.roster_api("POST", "api/import", params={"filename": "bench-roster.csv"},
                            data=self.roster_csv(before + bench))
        if r.status_code != 200:
            sys.exit(f"burst: the roster import was refused: {r.text[:400]}")
        return before

    def warm_service(self, method: str, path: str, **kw) -> requests.Response:
        u = urlparse(self.url)
        return self.api.request(method, f"{u.scheme}://warm--service.{u.netloc}/services/warm/{path}",
                                timeout=300, **kw)

    def warm(self, students: list[str], timeout: float) -> float:
        """As on a course morning: the students used the lab yesterday; the warm service starts
        their servers before the session. Returns the seconds until all were up."""
        r = self.warm_service("GET", "api/status")
        if r.status_code != 200:
            sys.exit(f"burst --warm: the warm service answered {r.status_code} ({r.text[:200]}); "
                     "is warm.enabled true in lab.yaml?")
        fit = r.json()["fit"]
        if fit < len(students):
            sys.exit(f"burst --warm: warm.memory_budget ({r.json()['budget']}) fits {fit} servers of "
                     f"{r.json()['server_memory']}, not {len(students)}: raise it in lab.yaml, then make up")
        yesterday = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).isoformat()
        with ThreadPoolExecutor(16) as pool:
            for got in pool.map(lambda sid: self.api.post(f"{self.url}/hub/api/users/{sid}/activity",
                                                          json={"last_activity": yesterday}, timeout=60), students):
                if got.status_code != 200:
                    sys.exit(f"burst --warm: could not set a bench student's activity: {got.status_code} {got.text[:200]}")
        t0 = time.perf_counter()
        r = self.warm_service("POST", "api/warm", json={})
        if r.status_code != 200:
            sys.exit(f"burst --warm: api/warm answered {r.status_code}: {r.text[:300]}")
        wanted = set(students)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            servers = {e["user"]: e["state"] for e in self.warm_service("GET", "api/status").json()["servers"]
                       if e["user"] in wanted}
            ready = sum(1 for state in servers.values() if state == "ready")
            failed = [u for u, state in servers.items() if state not in ("queued", "starting", "ready")]
            if ready + len(failed) == len(wanted):
                if failed:
                    print(f"burst --warm: {len(failed)} warm starts failed (e.g. {failed[0]}); the burst goes on",
                          flush=True)
                return time.perf_counter() - t0
            time.sleep(2)
        sys.exit(f"burst --warm: {ready} of {len(wanted)} warm servers up after {timeout:.0f} s")

    def clean_up(self, students: list[str], roster: list[dict]) -> None:
        students = [sid for sid in self.leftovers if sid not in students] + students
        print(f"burst: removing {len(students)} bench students, their servers and homes", flush=True)
        # The hub answers a stop after up to 10 s; hundreds of them, one after the other, take an hour.
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda sid: self.api.delete(f"{self.url}/hub/api/users/{sid}/server", timeout=120),
                          students))
        r = self.roster_api("POST", "api/import", params={"filename": "roster.csv"}, data=self.roster_csv(roster))
        if r.status_code != 200:
            print(f"burst: could not put the roster back: {r.text[:400]}", file=sys.stderr)

        def remove(sid):
            for _ in range(120):
                got = self.api.get(f"{self.url}/hub/api/users/{sid}", timeout=30)
                if got.status_code == 404 or not got.json().get("servers"):
                    break
                time.sleep(1)
            self.api.delete(f"{self.url}/hub/api/users/{sid}", timeout=30)
            subprocess.run([*DOCKER, "volume", "rm", "-f", f"{self.instance}-home-{sid}"], capture_output=True)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(remove, students))


def summary(label: str, results: list[dict], elapsed: float) -> list[float]:
    done = [r for r in results if r["ok"]]
    totals = [r["marks"]["first result"] - r["marks"]["start"] for r in done]
    print(f"\n{label}: {len(done)} of {len(results)} reached a cell's result in {elapsed:.0f} s")
    if totals:
        print(f"  front page to first result   p50 {percentile(totals, 50):6.1f} s   p95 "
              f"{percentile(totals, 95):6.1f} s   max {max(totals):6.1f} s")
    phases = ["front page", "login", "spawn", "open lab", "first result"]
    for a, b in zip(["start"] + phases, phases):
        spans = [r["marks"][b] - r["marks"][a] for r in done if a in r["marks"] and b in r["marks"]]
        if spans and len(spans) == len(done) and label.startswith("lab"):
            print(f"    {b:26s} p50 {percentile(spans, 50):6.1f} s   p95 {percentile(spans, 95):6.1f} s   "
                  f"max {max(spans):6.1f} s")
    causes = Counter(f"{r['phase']}: {r['cause']}" for r in results if not r["ok"])
    for cause, count in causes.most_common():
        print(f"  FAILED {count:3d}x  {cause}")
    return totals


def server_figures(instance: str, students: list[str]) -> None:
    mem, cpu = [], []
    for sid in students:
        cid = subprocess.run([*DOCKER, "inspect", "-f", "{{.Id}}", f"{instance}-{sid}"], capture_output=True,
                             text=True).stdout.strip()
        if not cid:
            continue
        stat = Path(f"/sys/fs/cgroup/memory/docker/{cid}/memory.stat")
        if stat.exists():
            rss = dict(line.split() for line in stat.read_text().splitlines())
            mem.append((int(rss["total_rss"]) + int(rss.get("total_shmem", 0))) / 2**20)
        usage = cgroup("cpuacct", cid, "cpuacct.usage")
        if usage:
            cpu.append(usage / 1e9)
    if mem:
        print(f"  a student's server, idle with one kernel: memory (RSS) mean {statistics.mean(mem):.0f} MiB,"
              f" max {max(mem):.0f} MiB; CPU to start and run the cell: mean {statistics.mean(cpu):.1f} s")


def docker_call_figures(instance: str, since: float) -> None:
    """The spawner's Docker call summaries (hub.spawner.DockerCalls) the hub logged during the run."""
    logs = subprocess.run([*DOCKER, "logs", "--since", str(int(since)), f"{instance}-hub-1"], capture_output=True,
                          text=True)
    found = re.findall(r"Docker calls in the last \d+ s: (\d+) .*?waited for a thread p50 (\d+) p95 (\d+) "
                       r"max (\d+) ms; took p50 (\d+) p95 (\d+)", logs.stdout + logs.stderr)
    if not found:
        print("  the spawner's Docker calls: no summary in the hub's log (a run shorter than a minute?)")
        return
    minutes = [tuple(map(int, f)) for f in found]
    print(f"  the spawner's Docker calls: {sum(m[0] for m in minutes)} in {len(minutes)} logged minutes; "
          f"waiting for a thread, worst minute: p95 {max(m[2] for m in minutes)} ms, max {max(m[3] for m in minutes)}"
          f" ms; a call's p95, worst minute: {max(m[5] for m in minutes)} ms")


def hub_server_image(instance: str) -> str:
    """LAB_SERVER_IMAGE as the running hub has it (empty: the course image)."""
    env = subprocess.run([*DOCKER, "inspect", "-f", "{{json .Config.Env}}", f"{instance}-hub-1"],
                         capture_output=True, text=True).stdout
    for item in json.loads(env or "[]"):
        if item.startswith("LAB_SERVER_IMAGE="):
            return item.split("=", 1)[1]
    return ""


def main() -> int:
    env = read_env()
    tag = env.get("LAB_IMAGE_TAG") or (ROOT / "VERSION").read_text().strip()
    instance = env.get("LAB_INSTANCE", "mlops-lab")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=100, help="students (default 100)")
    p.add_argument("--window", type=float, default=120, help="seconds over which they arrive (default 120)")
    p.add_argument("--url", default=os.environ.get("LAB_URL") or f"http://localhost:{env.get('LAB_HTTP_PORT', '8000')}")
    p.add_argument("--idp", default=f"http://127.0.0.1:{env.get('LAB_IDP_PORT', '9400')}")
    p.add_argument("--token", default=os.environ.get("LAB_ADMIN_API_TOKEN") or env.get("LAB_ADMIN_API_TOKEN"))
    p.add_argument("--mini", action="store_true",
                   help="the lab's servers run images/mini (make bench-burst-mini sets the lab up so): "
                        "the hub, proxy and spawner under load, not JupyterLab")
    p.add_argument("--image", help="the floor's image (default: the course image, or the mini one with --mini)")
    p.add_argument("--network", default=env.get("LAB_NETWORK") or instance)
    p.add_argument("--instance", default=instance)
    p.add_argument("--timeout", type=float, default=600, help="per student (default 600 s)")
    p.add_argument("--no-floor", action="store_true", help="skip the plain docker run floor")
    p.add_argument("--keep", action="store_true", help="leave the bench students' servers running")
    p.add_argument("--docker", default="docker", help="the command that runs docker against the lab's engine "
                   "(default: docker; bench/burst_swarm.py: docker exec <manager> docker)")
    p.add_argument("--swarm", action="store_true", help="the lab runs on a swarm (bench/burst_swarm.py sets it)")
    p.add_argument("--warm", action="store_true",
                   help="the warm service starts the students' servers before they arrive (needs warm.enabled)")
    a = p.parse_args()
    DOCKER[:] = shlex.split(a.docker)
    if not a.token:
        p.error("no admin token: set LAB_ADMIN_API_TOKEN in .env (make up creates one) or pass --token")
    if not 1 <= a.n <= 9999:
        p.error("-n: between 1 and 9999 students")
    a.image = a.image or f"mlops-lab/{'mini' if a.mini else 'course'}:{tag}"
    serving = hub_server_image(a.instance)
    if a.mini and serving != a.image:
        sys.exit(f"burst --mini: the lab's servers run {serving or 'the course image'}, not {a.image}; "
                 "make bench-burst-mini starts the lab with it (and puts it back after)")
    if not a.mini and serving:
        sys.exit(f"burst: the lab's servers run {serving} (LAB_SERVER_IMAGE, a load test); use --mini, or make up")

    print(f"burst: {a.n} students within {a.window:.0f} s, lab {a.url}, image {a.image}, "
          f"{os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB",
          flush=True)
    run = f"{secrets.randbelow(100):02d}"
    floor_totals = None
    if not a.no_floor:
        names = [f"burst-floor-{run}-{i:04d}" for i in range(a.n)]
        t0 = time.perf_counter()
        if a.swarm:
            try:
                floor = arrivals(a.n, a.window, lambda i: floor_service(a.image, a.network, names[i], a.timeout))
            finally:
                for at in range(0, len(names), 50):
                    subprocess.run([*DOCKER, "service", "rm", *names[at:at + 50]], capture_output=True)
            label = "floor: plain Swarm services of the same image, until each task runs on a worker"
        else:
            try:
                floor = arrivals(a.n, a.window, lambda i: floor_server(a.image, a.network, names[i], a.timeout, a.mini))
            finally:
                subprocess.run([*DOCKER, "rm", "-f", *names], capture_output=True)
            label = f"floor: plain docker run, {'the minimal server' if a.mini else 'JupyterLab'} alone, to the cell's result"
        floor_totals = summary(label, floor, time.perf_counter() - t0)

    lab = Lab(a.url, a.token, a.idp, a.instance)
    students = [f"s98{run[-1]}{i:03d}" if a.n <= 1000 else f"s9{i:05d}" for i in range(a.n)]
    roster = lab.enrol(students)
    if a.warm:
        try:
            took = lab.warm(students, a.timeout * 4)
        except SystemExit:
            lab.clean_up(students, roster)
            raise
        print(f"warm: {a.n} servers started by the warm service before the first arrival, in {took:.0f} s", flush=True)
    watcher = Watcher(a.instance, a.swarm)
    sampler = threading.Thread(target=watcher.run, daemon=True)
    try:
        cpu0 = watcher.cpu()
        sampler.start()
        t0, wall0 = time.perf_counter(), time.time()
        results = arrivals(a.n, a.window, lambda i: play_student(a.url, students[i], a.timeout, a.mini))
        elapsed = time.perf_counter() - t0
        watcher.stop.set()
        cpu1 = watcher.cpu()
        logins = sorted(r["marks"]["login"] for r in results if "login" in r["marks"])
        totals = summary(f"lab: front page, DTU login, spawn, {'minimal server' if a.mini else 'JupyterLab'}, "
                         "kernel, cell", results, elapsed)
        if len(logins) > 1:
            print(f"  logins per second: {(len(logins) - 1) / (logins[-1] - logins[0]):.2f} "
                  f"(arrivals: {a.n / a.window:.2f} per second)")
        used = {k: cpu1[k] - cpu0.get(k, 0) for k in cpu1}
        print(f"  hub container (hub and its services): CPU {used['hub']:.0f} s, memory peak "
              f"{watcher.peak['hub'] / 2**20:.0f} MiB")
        if "proxy" in used:
            print(f"  proxy container (configurable-http-proxy): CPU {used['proxy']:.0f} s, memory peak "
                  f"{watcher.peak['proxy'] / 2**20:.0f} MiB")
        if watcher.heartbeat:
            from hub.netguard import TOLERANCE
            print(f"  netguard heartbeat: largest age seen {watcher.heartbeat_age:.1f} s (the hub's tolerance: "
                  f"{TOLERANCE:.0f} s)")
        docker_call_figures(a.instance, wall0)
        if not a.swarm:  # (on a swarm, the servers run on the workers)
            server_figures(a.instance, students)
        if floor_totals and totals:
            print(f"\nratio lab/floor: p50 {percentile(totals, 50) / percentile(floor_totals, 50):.2f}x   "
                  f"p95 {percentile(totals, 95) / percentile(floor_totals, 95):.2f}x")
        return 0 if all(r["ok"] for r in results) else 1
    finally:
        watcher.stop.set()
        if not a.keep:
            lab.clean_up(students, roster)


if __name__ == "__main__":
    sys.exit(main())
