"""Logging in, in a real browser: DTU (OpenID Connect and CAS) and GitHub reach the same person's
server; people off the roster and unlinked GitHub accounts get pages that say what to do; TAs
reach students' servers and students reach only their own."""


import pytest
from playwright.sync_api import expect, sync_playwright

from tests.conftest import ARTIFACTS, docker

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-gpu", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def new_page(browser, width=1400, height=900):
    """A page in a fresh browser context: its own cookies, as a separate person's browser."""
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.set_default_timeout(60_000)
    return page


def login_dtu(lab, page, person: str) -> None:
    """The login page's DTU button, then the DTU (OpenID Connect) provider's page."""
    page.goto(f"{lab.url}/hub/login")
    page.get_by_role("button", name="Log in with DTU").click()
    page.wait_for_url(f"{lab.idp_url}/oauth2/authorize*")
    page.get_by_role("button", name=person, exact=True).click()


def login_github(lab, page, login: str) -> None:
    page.goto(f"{lab.url}/hub/login")
    page.get_by_role("button", name="Log in with GitHub").click()
    page.wait_for_url(f"{lab.github_url}/login/oauth/authorize*")
    page.get_by_role("button", name=login, exact=True).click()


def confirm_access(page) -> None:
    """JupyterHub asks staff to confirm access to someone else's server: click Authorize if asked."""
    authorize = page.get_by_role("button", name="Authorize")
    try:
        authorize.wait_for(timeout=15_000)
        authorize.click()
    except Exception:
        pass


def test_dtu_and_github_logins_reach_the_same_server_and_home(lab, browser):
    """The same student logs in through DTU, then through GitHub: same hub user, server and home file."""
    page = new_page(browser)
    page.goto(f"{lab.url}/hub/login")
    expect(page.get_by_role("button", name="Log in with DTU")).to_be_visible()
    expect(page.get_by_role("button", name="Log in with GitHub")).to_be_visible()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "login-page.png"))
    login_dtu(lab, page, "s230001")
    # Back at the hub: the spawn form offers the profiles open to a student, with GPU availability.
    expect(page.get_by_text("Choose the kind of server to start")).to_be_visible()
    expect(page.get_by_text("GPU (shared)")).to_be_visible()
    expect(page.get_by_text("3 of 3 GPU slots free")).to_be_visible()
    expect(page.get_by_text("GPU (whole)")).to_have_count(0)  # instructors only
    page.screenshot(path=str(ARTIFACTS / "spawn-form.png"))
    page.get_by_label("CPU", exact=False).first.check()
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**/user/s230001/lab**", timeout=240_000)
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=120_000)
    expect(page.locator(".jp-DirListing-content").get_by_text("00-welcome")).to_be_visible()
    # A student sees the Assignments tools, not the instructors' ones.
    expect(page.get_by_text("Create Assignment")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-launcher.png"))
    # A file in the home, written while logged in through DTU (JupyterLab's contents API).
    xsrf = next(c["value"] for c in page.context.cookies() if c["name"] == "_xsrf")
    status = page.evaluate("""async (xsrf) => (await fetch("/user/s230001/api/contents/from-dtu.txt", {
        method: "PUT", headers: {"Content-Type": "application/json", "X-XSRFToken": xsrf},
        body: JSON.stringify({type: "file", format: "text", content: "written after the DTU login"})})).status""", xsrf)
    assert status in (200, 201)
    page.goto(f"{lab.url}/hub/logout")
    expect(page.get_by_role("button", name="Log in with GitHub")).to_be_visible()

    login_github(lab, page, "ada-lovelace")
    page.wait_for_url("**/user/s230001/**", timeout=120_000)
    page.goto(f"{lab.user_url('s230001')}/files/from-dtu.txt")
    expect(page.get_by_text("written after the DTU login")).to_be_visible()
    assert lab.api("GET", "/users/ada-lovelace").status_code == 404  # no second user
    page.context.close()


def test_person_off_the_roster_is_told_they_are_not_enrolled(lab, browser):
    page = new_page(browser, 1200, 800)
    login_dtu(lab, page, "s239999")
    expect(page.get_by_role("heading", name="Not enrolled in this course")).to_be_visible()
    expect(page.get_by_text("not enrolled in this course", exact=True)).to_be_visible()
    expect(page.get_by_text("ask the 02476 teachers to add you to the course roster")).to_be_visible()
    expect(page.get_by_text("Traceback")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "not-enrolled.png"))
    assert "/user/" not in page.url
    user = lab.api("GET", "/users/s239999")  # exists only if an earlier test enrolled them for a while
    assert user.status_code == 404 or (not user.json()["servers"] and not user.json()["groups"])
    page.context.close()


def test_unlinked_github_account_is_told_how_to_get_linked(lab, browser):
    page = new_page(browser, 1200, 800)
    login_github(lab, page, "octo-unlinked")
    expect(page.get_by_role("heading", name="GitHub account not linked")).to_be_visible()
    expect(page.get_by_text("is not linked to anyone in this course")).to_be_visible()
    expect(page.get_by_text("Log in with DTU instead")).to_be_visible()
    expect(page.get_by_text("to your line of the course roster")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "github-not-linked.png"))
    assert lab.api("GET", "/users/octo-unlinked").status_code == 404
    page.context.close()


def test_ta_opens_a_students_server_and_students_cannot(lab, browser):
    """A TA reaches a student's JupyterLab; a student gets 403 at another student's."""
    if not lab.api("GET", "/users/s230001").json().get("servers"):
        lab.start("s230001", profile="cpu")
    ta = new_page(browser)
    login_dtu(lab, ta, "tahe")
    ta.wait_for_url(f"{lab.url}/hub/**")
    ta.goto(f"{lab.user_url('s230001')}/lab")
    confirm_access(ta)
    ta.wait_for_url("**/user/s230001/lab**")
    expect(ta.locator("#jp-main-dock-panel")).to_be_visible(timeout=120_000)
    expect(ta.locator(".jp-DirListing-content").get_by_text("00-welcome")).to_be_visible()
    ta.screenshot(path=str(ARTIFACTS / "ta-in-student-server.png"))
    ta.context.close()

    student = new_page(browser, 1200, 800)
    login_dtu(lab, student, "s230002")
    student.wait_for_url(f"{lab.url}/hub/**")
    response = student.goto(f"{lab.user_url('s230001')}/lab")
    expect(student.get_by_text("403")).to_be_visible()
    assert "/user/s230001/lab" not in student.url or response.status == 403
    expect(student.locator("#jp-main-dock-panel")).to_have_count(0)
    student.context.close()


def test_failed_start_shows_the_reason(lab, browser):
    """A server that cannot start shows the student its container's own last log lines."""
    volume = f"{lab.instance}-home-s230003"
    docker("volume", "create", volume)
    docker("run", "--rm", "--user", "0", "--entrypoint", "sh", "-v", f"{volume}:/h", lab.course_image,
           "-c", "chown 0:0 /h && chmod 0755 /h && rm -rf /h/.lab && touch /h/owned-by-root")  # as if never seeded
    page = new_page(browser, 1200, 800)
    login_dtu(lab, page, "s230003")
    page.get_by_role("button", name="Start").click()
    expect(page.get_by_text("is not writable by uid 1000").first).to_be_visible(timeout=120_000)
    expect(page.get_by_text("InvalidStateError")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "failed-start.png"))
    page.context.close()
