"""Roles hold everywhere, and the lab's boundaries hold: every staff endpoint of the course
service, the roster service and the formgrader answered for a student's, a TA's and an
instructor's own token, checked against the one table of ``hub.permissions``; the grader user
has no way to make root follow a link; logins cannot be planted; the demo providers listen
where the operator said."""

from __future__ import annotations

import re

import pytest
import requests
from playwright.sync_api import expect

from hub.permissions import COURSE_ENDPOINTS, may
from tests.browser.test_login import browser, new_page  # noqa: F401  (fixture)
from tests.conftest import INSTANCE, TEST_ROSTER, docker
from tests.security.conftest import A, ATTACKER, hub_exec

pytestmark = pytest.mark.security

PEOPLE = {"student": "s230002", "ta": "tahe", "instructor": "teacher"}


def tokens(lab) -> dict[str, str]:
    return {role: lab.user_token(name) for role, name in PEOPLE.items()}


def test_every_course_endpoint_follows_the_role_table(course):
    """Allowed: anything but 403 (an unknown assignment is 404, a bad body 400); refused: 403
    with the roles that may, for every endpoint of the table, for each role's own token."""
    seen = set()
    for role, token in tokens(course).items():
        for (method, path), action in COURSE_ENDPOINTS.items():
            url = path.replace("{a}", "no-such-assignment")
            body = b"not json" if method != "GET" else None
            r = course.course(method, url, token=token, data=body)
            if may(role, action):
                assert r.status_code != 403, (role, method, path, r.status_code, r.text[:200])
            else:
                assert r.status_code == 403, (role, method, path, r.status_code, r.text[:200])
                assert "this needs the role" in r.json()["error"]
            seen.add((method, path))
    assert seen == set(COURSE_ENDPOINTS)


def test_roster_and_formgrader_writes_follow_the_same_table(course):
    """The roster service and the formgrader's API say the same as the course service: only
    instructors change things; TAs read the formgrader; students reach neither."""
    people = tokens(course)
    roster = course.service_url("roster")
    formgrader = course.service_url("formgrader")
    for role, token in people.items():
        h = {"Authorization": f"token {token}"}
        imported = requests.post(f"{roster}/api/import", params={"dry_run": 1}, data=TEST_ROSTER.encode(),
                                 headers=h, timeout=60)
        assert (imported.status_code == 200) == may(role, "roster.import"), (role, imported.text[:200])
        read = requests.get(f"{formgrader}/formgrader/api/assignments", headers=h, timeout=60,
                            allow_redirects=False)
        assert (read.status_code == 200) == may(role, "course.view"), (role, read.status_code)
        write = requests.put(f"{formgrader}/formgrader/api/student/s240098", headers=h, timeout=60,
                             json={"first_name": "Role", "last_name": "Test"}, allow_redirects=False)
        assert (write.status_code == 200) == may(role, "course.manage"), (role, write.status_code, write.text[:200])
    # and the hub's own API: a TA or a student cannot put themselves among the instructors
    for role in ("student", "ta"):
        r = requests.post(f"{course.url}/hub/api/groups/instructors/users", json={"users": [PEOPLE[role]]},
                          headers={"Authorization": f"token {people[role]}"}, timeout=30)
        assert r.status_code in (403, 404), (role, r.status_code)
    assert course.api("GET", "/groups/instructors").json()["users"] == ["teacher"]


PROCESSES = """
import os, pwd
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode().strip()
        print(pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name, cmd)
    except (OSError, KeyError):
        pass
"""


def test_the_grader_cannot_lead_root_through_a_link(course):
    """The course service runs as the grader; only the sandbox runner is root and it keeps its
    token in a folder the grader cannot change. Links the grader plants on the course volume
    (to the hub's cookie secret) are never followed by root, across a hub restart."""
    ps = hub_exec("python3", "-c", PROCESSES).stdout
    owners = {cmd: user for user, cmd in (line.split(" ", 1) for line in ps.splitlines() if " " in line)}
    assert [u for c, u in owners.items() if "hub.course.service" in c] == ["grader"], ps
    assert [u for c, u in owners.items() if "hub.course.runner" in c] == ["root"], ps
    assert hub_exec("sh", "-c", "ln -sf /srv/jupyterhub/jupyterhub_cookie_secret /run/lab-sandbox/token",
                    user="grader", check=False).returncode != 0
    secret = "/srv/jupyterhub/jupyterhub_cookie_secret"
    before = hub_exec("sha256sum", secret).stdout
    plant = ("cd /srv/course && mkdir -p exchange && "
             f"ln -sfn {secret} exchange/events.jsonl && ln -sfn /srv/jupyterhub state/planted-link && "
             f"ln -sfn {secret} state/clock.json.tmp")
    hub_exec("sh", "-c", plant, user="grader")
    try:
        course.restart_hub()
        # A fetch appends to events.jsonl; the clock writes its file; root hands the volume over.
        r = course.course("GET", f"api/assignments/{A}/download", token=course.user_token(ATTACKER))
        assert r.status_code in (200, 500)
        course.set_clock("2027-01-06T12:00:00+01:00")
        assert hub_exec("sha256sum", secret).stdout == before
        owner = hub_exec("stat", "-c", "%U %a", secret).stdout.split()
        assert owner[0] == "root" and owner[1] == "600", owner
        assert hub_exec("stat", "-c", "%U", "/srv/jupyterhub").stdout.strip() == "root"
    finally:
        hub_exec("sh", "-c", "cd /srv/course && rm -f exchange/events.jsonl state/planted-link state/clock.json.tmp",
                 user="grader", check=False)
    assert course.course("GET", "api/assignments", token=course.user_token(ATTACKER)).status_code == 200


def test_demo_providers_listen_where_the_lab_does(course):
    """LAB_HTTP_BIND=127.0.0.1 (as the test lab and Ansible hosts set it): the demo DTU and GitHub
    providers are published on the loopback address only, like the lab itself (its proxy); the
    hub publishes nothing."""
    for service in ("proxy", "idp"):
        ports = docker("port", f"{INSTANCE}-{service}-1").split("\n")
        bound = [line.split(" -> ")[1] for line in ports if " -> " in line]
        assert bound and all(b.startswith("127.0.0.1:") for b in bound), (service, bound)
    assert docker("port", f"{INSTANCE}-hub-1").strip() == ""


def test_a_cas_ticket_cannot_be_planted_in_someone_elses_browser(course, browser):  # noqa: F811
    """Login CSRF: an attacker signs in at CAS as themselves and sends the hub's login link with
    their ticket to a victim. The victim's browser did not start that login: refused, and the
    victim is not logged in as the attacker."""
    original = course.settings_file.read_text()
    cas = original.replace("    protocol: oidc\n", f"    protocol: cas\n    cas:\n      server_url: {course.cas_url}/cas/\n"
                           "      validate_url: http://idp:9402/cas/\n")
    assert cas != original
    course.settings_file.write_text(cas)
    course.restart_hub()
    try:
        attacker = requests.Session()
        r = attacker.get(f"{course.url}/hub/dtu/login", allow_redirects=False, timeout=30)
        assert r.status_code == 302 and "state%3D" in r.headers["Location"], r.headers.get("Location")
        service = requests.utils.unquote(re.search(r"service=([^&]+)", r.headers["Location"]).group(1))
        signed_in = attacker.post(f"{course.cas_url}/cas/login", allow_redirects=False, timeout=30,
                                  data={"service": service, "username": ATTACKER, "password": "x"})
        planted = signed_in.headers["Location"]
        assert "ticket=ST-" in planted and planted.startswith(f"{course.url}/hub/dtu/login")
        page = new_page(browser, 1200, 800)
        page.goto(planted)
        expect(page.get_by_role("heading", name="Login not confirmed")).to_be_visible()
        expect(page.get_by_text("This login was not started from this browser")).to_be_visible()
        page.goto(f"{course.url}/hub/home")
        expect(page.get_by_role("button", name="Log in with DTU")).to_be_visible()  # not logged in
        page.context.close()
        # The attacker's own browser, which started the login, is let in with the same kind of ticket.
        again = attacker.get(f"{course.url}/hub/dtu/login", allow_redirects=False, timeout=30)
        service = requests.utils.unquote(re.search(r"service=([^&]+)", again.headers["Location"]).group(1))
        ticket = attacker.post(f"{course.cas_url}/cas/login", allow_redirects=False, timeout=30,
                               data={"service": service, "username": ATTACKER, "password": "x"}).headers["Location"]
        done = attacker.get(ticket, allow_redirects=False, timeout=30)
        assert done.status_code == 302 and "login" not in done.headers["Location"], (done.status_code, done.text[:300])
    finally:
        course.settings_file.write_text(original)
        course.restart_hub()


def test_a_github_login_taken_over_by_another_account_is_refused(course, browser):  # noqa: F811
    """grace-hopper is on the roster. Another GitHub account now holds that login (the first was
    renamed, or deleted and registered again): it gets the 'not the account linked' page and no
    server; Grace's own account still reaches s230003."""
    from tests.browser.test_login import login_github
    page = new_page(browser, 1200, 800)
    login_github(course, page, "grace-hopper (re-registered)")
    expect(page.get_by_role("heading", name="GitHub account not linked")).to_be_visible()
    expect(page.get_by_text("it now belongs to another GitHub account")).to_be_visible()
    page.goto(f"{course.url}/hub/home")
    expect(page.get_by_role("button", name="Log in with GitHub")).to_be_visible()  # not logged in
    login_github(course, page, "grace-hopper")
    page.wait_for_url(f"{course.url}/hub/**")
    expect(page.get_by_text("s230003").first).to_be_visible()
    page.context.close()
    ids = {p["id"]: p.get("github_id") for p in
           course.session.get(f"{course.service_url('roster')}/api/roster", timeout=30).json()["people"]}
    assert isinstance(ids["s230003"], int) and isinstance(ids["s230001"], int)
