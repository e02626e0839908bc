"""DTU login by CAS 3.0, and roster reloads that add and remove access while the hub keeps running."""

from urllib.parse import unquote

import pytest

from tests.browser.test_login import ARTIFACTS, browser, login_dtu, new_page  # noqa: F401  (fixture)
from tests.conftest import TEST_ROSTER, docker
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

OUTSIDER_LINE = "s239999,Otto Outsider,s239999@student.dtu.dk,,student\n"


@pytest.fixture
def restore_roster(lab):
    yield
    r = lab.import_roster(TEST_ROSTER)
    assert r.status_code == 200, r.text


def test_roster_reload_adds_and_removes_access_without_a_hub_restart(lab, browser, restore_roster):  # noqa: F811
    started = lab.compose("ps", "--format", "{{.Name}} {{.RunningFor}}", "hub").stdout
    # Someone added to the roster can log in at once.
    outsider = new_page(browser, 1200, 800)
    login_dtu(lab, outsider, "s239999")
    expect(outsider.get_by_role("heading", name="Not enrolled in this course")).to_be_visible()
    r = lab.import_roster(TEST_ROSTER + OUTSIDER_LINE)
    assert r.status_code == 200, r.text
    assert r.json()["changes"]["added"] == ["s239999"]
    login_dtu(lab, outsider, "s239999")
    expect(outsider.get_by_text("Choose the kind of server to start")).to_be_visible()
    assert "s239999" in lab.api("GET", "/groups/students").json()["users"]
    outsider.context.close()

    # Someone removed loses access at their next request; their server stops, their files stay.
    student = new_page(browser, 1200, 800)
    login_dtu(lab, student, "s230002")
    student.wait_for_url(f"{lab.url}/hub/**")
    lab.start("s230002", profile="cpu")
    student.goto(f"{lab.url}/hub/home")
    expect(student.get_by_text("Stop My Server")).to_be_visible()
    without = "".join(line + "\n" for line in (TEST_ROSTER + OUTSIDER_LINE).splitlines() if not line.startswith("s230002"))
    r = lab.import_roster(without)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["changes"]["removed"] == ["s230002"] and body["changes"]["added"] == []
    assert body["changes"]["removed"] == body["sync"]["access_removed"]
    assert body["sync"]["servers_stopped"] == ["s230002"]
    student.goto(f"{lab.url}/hub/home")
    expect(student.get_by_role("button", name="Log in with DTU")).to_be_visible()  # logged out
    login_dtu(lab, student, "s230002")
    expect(student.get_by_role("heading", name="Not enrolled in this course")).to_be_visible()
    student.screenshot(path=str(ARTIFACTS / "removed-from-roster.png"))
    assert not lab.api("GET", "/users/s230002").json().get("servers")
    assert "s230002" not in lab.api("GET", "/groups/students").json()["users"]
    assert f"{lab.instance}-home-s230002" in docker("volume", "ls", "-q").split()  # the home is kept
    # Back on the roster: back in.
    r = lab.import_roster(TEST_ROSTER)
    assert r.json()["changes"]["added"] == ["s230002"] and r.json()["changes"]["removed"] == ["s239999"]
    student.goto(f"{lab.url}/hub/spawn")
    if student.url.startswith(f"{lab.url}/hub/login"):
        login_dtu(lab, student, "s230002")
    expect(student.get_by_text("Choose the kind of server to start")).to_be_visible()
    student.context.close()
    assert lab.compose("ps", "--format", "{{.Name}} {{.RunningFor}}", "hub").stdout.split()[0] == started.split()[0]


@pytest.fixture
def cas_lab(lab):
    """The same lab with DTU login switched to CAS (hub restarted), switched back afterwards."""
    original = lab.settings_file.read_text()
    cas = original.replace("""    protocol: oidc
    oidc:
      client_id: mlops-lab-test
""", f"""    protocol: cas
    cas:
      server_url: {lab.cas_url}/cas/
      validate_url: http://idp:9402/cas/
    oidc:
      client_id: mlops-lab-test
""")
    assert cas != original
    lab.settings_file.write_text(cas)
    lab.restart_hub()
    try:
        yield lab
    finally:
        lab.settings_file.write_text(original)
        lab.restart_hub()


def test_dtu_login_by_cas(cas_lab, browser):  # noqa: F811
    """CAS 3.0: a deep link, then the DTU button, goes to the CAS login page; a DTU id typed in
    capitals is the same person, and the spawn form keeps the page the link asked for."""
    lab = cas_lab
    page = new_page(browser, 1200, 800)
    page.goto(f"{lab.url}/hub/user-redirect/lab/tree/00-welcome/welcome.ipynb")
    page.get_by_role("button", name="Log in with DTU").click()
    page.wait_for_url(f"{lab.cas_url}/cas/login?service=*")
    page.fill("#username", "S230003")
    page.fill("#password", "any password")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{lab.url}/hub/**")
    expect(page.get_by_text("Choose the kind of server to start")).to_be_visible()
    expect(page.get_by_text("s230003").first).to_be_visible()
    assert "/lab/tree/00-welcome/welcome.ipynb" in unquote(page.url), page.url
    assert "ticket" not in page.url  # the single-use ticket goes no further
    assert not lab.api("GET", "/users/s230003").json().get("servers")  # and starts nothing
    assert lab.api("GET", "/users/S230003").status_code == 404
    page.goto(f"{lab.url}/hub/logout")
    # Not on the roster: the same refusal page as with OpenID Connect.
    page.get_by_role("button", name="Log in with DTU").click()
    page.fill("#username", "s239999")
    page.fill("#password", "x")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Not enrolled in this course")).to_be_visible()
    # A forged or replayed ticket is refused by CAS, and the student is told to log in again.
    page.goto(f"{lab.url}/hub/dtu/login?ticket=ST-forged")
    expect(page.get_by_role("heading", name="Login not confirmed")).to_be_visible()
    page.context.close()
