"""Warm capacity before class (hub.services.warm) against the real lab: shortly before a session
of the course calendar (the test clock is moved there), the servers of two students who used the
lab earlier are started; one of them logs in through the DTU button and lands in their running
server without a spawn, and works in it; the other's server is kept from the idle culler until the
session starts (its activity is kept fresh by the service: the test lab's culler timeout is an
hour, too long to wait for) and is stopped once the hold after the start has passed, while the
used one is kept. Students cannot call the service.

The test lab needs ``warm.enabled: true`` and a budget of at least two CPU servers (4G)."""

import datetime as dt
import html
import re
import subprocess
import time
from urllib.parse import urljoin, urlparse

import pytest
import requests

from tests.conftest import INSTANCE, docker_json, wait_for

pytestmark = pytest.mark.integration

USED, UNUSED = "s230002", "s230003"  # on the test roster as students; s230001 is left to the browser tests


def call(lab, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
    """The warm service through the proxy, with the lab-admin token or ``token``."""
    return requests.request(method, f"{lab.service_url('warm')}/{path}", timeout=120,
                            headers={"Authorization": f"token {token or lab.token}"}, **kw)


def status(lab) -> dict:
    r = call(lab, "GET", "api/status")
    assert r.status_code == 200, f"the warm service: {r.status_code} {r.text[:300]} (is warm.enabled on?)"
    return r.json()


def records(lab) -> dict[str, dict]:
    return {s["user"]: s for s in status(lab)["servers"]}



def server(lab, name: str) -> dict | None:
    return lab.api("GET", f"/users/{name}").json().get("servers", {}).get("")


def container(lab, name: str) -> dict:
    return docker_json("inspect", f"{INSTANCE}-{name}")[0]


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def login_dtu(lab, person: str) -> tuple[requests.Session, requests.Response]:
    """Log in as a browser does, with requests: the login page's DTU button, the provider's page
    (its form posts the account's sub), and every redirect back, cookies kept."""
    s = requests.Session()
    page = s.get(f"{lab.url}/hub/login", timeout=60)
    link = re.search(r"href=['\"]([^'\"]+)['\"][^>]*>\s*Log in with DTU", page.text)
    assert link, page.text[:500]
    authorize = s.get(urljoin(page.url, html.unescape(link.group(1))), timeout=60)
    assert "/oauth2/authorize" in authorize.url, authorize.url
    back = s.post(authorize.url, data={"sub": person}, timeout=240)
    assert back.status_code == 200, (back.status_code, back.url)
    return s, back


@pytest.fixture
def session_ahead(lab):
    """Both students used the lab earlier (servers now stopped), so they are the most recently
    active; yields the next session (number, start, lead, hold) as the warm service sees it.
    Afterwards the warm servers are released and every server of the students warmed is stopped."""
    for name in (USED, UNUSED):
        if lab.api("GET", f"/users/{name}").json().get("servers"):
            lab.stop(name)
    first = status(lab)
    assert first["fit"] >= 2 and first["profile"], f"the test lab's warm budget must hold two servers: {first}"
    for name in (USED, UNUSED):
        lab.start(name, profile="cpu")
        assert lab.server_api(name, "GET", "/contents").status_code == 200
        lab.stop(name)
    if status(lab)["next_session"] is None:  # a clock left after the last session by an earlier run
        lab.set_clock("2027-01-03T12:00:00+01:00")
    s = status(lab)
    nxt = s["next_session"]
    assert nxt, s
    start = dt.datetime.fromisoformat(nxt["start"])
    warmed = set()
    try:
        yield {"number": nxt["number"], "start": start, "lead": s["lead_minutes"], "hold": s["hold_minutes"],
               "warmed": warmed}
    finally:
        warmed |= set(records(lab))
        r = call(lab, "POST", "api/release")
        assert r.status_code == 200, r.text
        for name in sorted(warmed | {USED, UNUSED}):
            if lab.api("GET", f"/users/{name}").json().get("servers"):
                lab.stop(name)  # later tests expect these students' spawn forms


def test_recent_students_find_their_server_running_at_the_start(lab, session_ahead):
    start, lead, hold = session_ahead["start"], session_ahead["lead"], session_ahead["hold"]

    # 1. Inside the window (lead - 5 minutes before the start): both servers are started.
    lab.set_clock((start - dt.timedelta(minutes=lead - 5)).isoformat())
    wait_for(lambda: all((server(lab, n) or {}).get("ready") for n in (USED, UNUSED)),
             "the warm service started both students' servers", timeout=300)
    rec = wait_for(lambda: (r := records(lab)) and all(r.get(n, {}).get("state") == "ready" for n in (USED, UNUSED))
                   and r, "both warm servers recorded as ready", timeout=120)
    assert rec[USED]["session"] == session_ahead["number"] and rec[USED]["by"] == "schedule"
    for name in (USED, UNUSED):
        info = container(lab, name)
        assert info["Config"]["Labels"].get("mlops-lab.profile") == "cpu"     # never a GPU profile
        assert info["HostConfig"]["Memory"] == 2 * 1024**3
    s = status(lab)
    assert s["next_session"]["in_window"] and s["next_session"]["warmed"] >= 2

    # 2. Held until the start: the service keeps the unused server's activity fresh, so the idle
    #    culler (which stops a server idle for culler.timeout) leaves it alone.
    held_id = container(lab, UNUSED)["Id"]
    first = utc(server(lab, UNUSED)["last_activity"])
    later = wait_for(lambda: (t := utc(server(lab, UNUSED)["last_activity"])) > first and t,
                     "the warm service posted activity for the waiting server", timeout=120)
    assert abs((dt.datetime.now(dt.timezone.utc) - later).total_seconds()) < 90
    assert container(lab, UNUSED)["Id"] == held_id and server(lab, UNUSED)["ready"]

    # 3. The student logs in: they land in their running server, which was not started again.
    before = server(lab, USED)
    used_id = container(lab, USED)["Id"]
    browser, landed = login_dtu(lab, USED)
    assert urlparse(landed.url).path.startswith(f"/user/{USED}/"), landed.url
    assert not any("/hub/spawn" in urlparse(r.url).path for r in landed.history), [r.url for r in landed.history]
    assert server(lab, USED)["started"] == before["started"] and container(lab, USED)["Id"] == used_id
    # ... and works in it, until the service sees that the server is theirs.
    def used():
        assert browser.get(f"{lab.user_url(USED)}/api/contents", timeout=60).status_code == 200
        return records(lab)[USED]["state"] == "used"
    wait_for(used, "the warm service saw the student's own activity", timeout=180)

    # 4. Students cannot call the service: not with their server's token, nor their own API token.
    server_token = subprocess.run(["docker", "exec", f"{INSTANCE}-{USED}", "printenv", "JUPYTERHUB_API_TOKEN"],
                                  capture_output=True, text=True, check=True).stdout.strip()
    for token in (server_token, lab.user_token(USED)):
        assert call(lab, "POST", "api/warm", token=token).status_code == 403
        assert call(lab, "POST", "api/release", token=token).status_code == 403
        assert call(lab, "GET", "api/status", token=token).status_code == 403
    assert call(lab, "GET", "api/status", token=lab.user_token("teacher")).status_code == 200
    assert call(lab, "POST", "api/warm", token=lab.user_token("tahe")).status_code == 403

    # 5. Past the start and the hold: the unused server is stopped, the used one kept.
    lab.set_clock((start + dt.timedelta(minutes=hold + 1)).isoformat())
    wait_for(lambda: server(lab, UNUSED) is None, "the unused warm server was stopped", timeout=180)
    rec = wait_for(lambda: (r := records(lab)) and r[UNUSED]["state"] == "stopped" and r,
                   "the unused warm server recorded as stopped", timeout=120)
    assert rec[USED]["state"] == "used"
    assert server(lab, USED)["ready"] and container(lab, USED)["Id"] == used_id
    assert browser.get(f"{lab.user_url(USED)}/api/contents", timeout=60).status_code == 200
    # The service does not stop it later either.
    time.sleep(35)
    assert server(lab, USED) and container(lab, USED)["Id"] == used_id
