"""A newcomer in a real browser: log in through the demo identity provider, land in JupyterLab."""

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


def test_demo_login_lands_in_own_jupyterlab(lab, browser):
    """Log in as a demo person: the login page says it is a demo, and the JupyterLab launcher appears."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(f"{lab.url}/hub/login")
    expect(page.get_by_text("demo identity provider").first).to_be_visible()
    page.get_by_text("Sign in with the demo identity provider").click()
    # The demo identity provider's own page: pick a demo person.
    page.wait_for_url(f"{lab.idp_url}/oauth2/authorize*")
    page.get_by_role("button", name="s230002").click()
    # Back at the hub: the spawn form offers the profiles open to a student, with GPU availability.
    expect(page.get_by_text("Choose the kind of server to start")).to_be_visible()
    expect(page.get_by_text("GPU (shared)")).to_be_visible()
    expect(page.get_by_text("3 of 3 GPU slots free")).to_be_visible()
    expect(page.get_by_text("GPU (whole)")).to_have_count(0)  # instructors only
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "spawn-form.png"))
    page.get_by_label("CPU", exact=False).first.check()
    page.get_by_role("button", name="Start").click()
    # The server spawns, then JupyterLab loads.
    page.wait_for_url("**/user/s230002/lab**", timeout=240_000)
    launcher = page.locator(".jp-Launcher")
    expect(launcher).to_be_visible(timeout=120_000)
    expect(page.locator(".jp-DirListing-content").get_by_text("00-welcome")).to_be_visible()
    # A student sees the Assignments tools, not the instructors' ones.
    expect(page.get_by_text("Create Assignment")).to_have_count(0)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-launcher.png"))
    page.close()


def test_failed_start_shows_the_reason(lab, browser):
    """A server that cannot start shows the student its container's own last log lines."""
    volume = f"{lab.instance}-home-s230001"
    docker("volume", "create", volume)
    docker("run", "--rm", "--user", "0", "--entrypoint", "sh", "-v", f"{volume}:/h", lab.course_image,
           "-c", "chown 0:0 /h && chmod 0755 /h && touch /h/owned-by-root")
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.set_default_timeout(60_000)
    page.goto(f"{lab.url}/hub/login")
    page.get_by_text("Sign in with the demo identity provider").click()
    page.get_by_role("button", name="s230001").click()
    page.get_by_role("button", name="Start").click()
    expect(page.get_by_text("is not writable by uid 1000")).to_be_visible(timeout=120_000)
    expect(page.get_by_text("InvalidStateError")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "failed-start.png"))
    page.close()


def test_person_not_on_the_list_is_refused(lab, browser):
    """Someone the lab does not know gets a refusal, not a server."""
    page = browser.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{lab.url}/hub/oauth_login")
    page.wait_for_url(f"{lab.idp_url}/oauth2/authorize*")
    page.get_by_placeholder("sub").fill("intruder")
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_load_state()
    expect(page.get_by_text("403")).to_be_visible()
    assert "/user/intruder" not in page.url
    page.close()
