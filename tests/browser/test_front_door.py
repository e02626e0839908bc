"""Every way into the lab, in Chromium, from where people start: the lab's address with each
login button, a deep link to a notebook before and after logging in, a second tab, logging out
and in again, and a session whose cookies have expired. Each ends in the person's own JupyterLab
at the page they asked for; the first login opens the course README."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.test_login import browser, new_page  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser

NOTEBOOK = "00-welcome/welcome.ipynb"


@pytest.fixture
def stopped_afterwards(lab):
    people = []
    yield people
    for name in people:
        if lab.api("GET", f"/users/{name}").json().get("servers"):
            lab.stop(name)


def pick_person(lab, page, button: str, person: str) -> None:
    """On the lab's login page: a login button, then the person at the identity provider."""
    expect(page.get_by_role("button", name=f"Log in with {button}")).to_be_visible()
    page.get_by_role("button", name=f"Log in with {button}").click()
    page.wait_for_url(re.compile(r"/(oauth2|login/oauth)/authorize"))
    page.get_by_role("button", name=person, exact=True).click()


def start_cpu_server(page) -> None:
    expect(page.get_by_text("Choose the kind of server to start")).to_be_visible()
    page.get_by_label("CPU", exact=False).first.check()
    page.get_by_role("button", name="Start").click()


def own_lab(lab, page, user: str, path: str = "lab") -> None:
    """The page is the user's own JupyterLab, on their own host, at ``path``."""
    page.wait_for_url(f"{lab.user_url(user)}/{path}**", timeout=240_000)
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=120_000)


def notebook_open(page) -> None:
    """The welcome notebook is the open tab, its kernel-backed notebook shown."""
    expect(page.locator(".lm-TabBar-tab.jp-mod-current", has_text="welcome.ipynb").first).to_be_visible(timeout=60_000)
    expect(page.locator(".jp-NotebookPanel:visible .jp-Notebook").first).to_be_visible()


def test_front_page_second_tab_deep_link_logout_and_expiry(lab, browser, stopped_afterwards):  # noqa: F811
    user = "s230002"
    stopped_afterwards.append(user)
    # The server has been started once already (by staff, or ahead of class) but the student has
    # never visited: their first login still opens the README.
    if not lab.api("GET", f"/users/{user}").json().get("servers"):
        lab.start(user, profile="cpu")
    lab.stop(user)
    page = new_page(browser)
    page.goto(f"{lab.url}/")
    pick_person(lab, page, "DTU", user)
    start_cpu_server(page)
    own_lab(lab, page, user)
    # The first login opens the course README, rendered, with the schedule from the calendar.
    readme = page.locator(".jp-RenderedMarkdown", has_text="How to fetch, validate and submit")
    expect(readme.first).to_be_visible(timeout=60_000)
    expect(readme.first.get_by_text("01-pytorch-training")).to_be_visible()

    # A second tab at the lab's address goes straight to the running lab.
    tab = page.context.new_page()
    tab.goto(f"{lab.url}/")
    own_lab(lab, tab, user)
    tab.close()

    # A deep link, logged in: the notebook opens.
    page.goto(f"{lab.url}/hub/user-redirect/lab/tree/{NOTEBOOK}")
    own_lab(lab, page, user, f"lab/tree/{NOTEBOOK}")
    notebook_open(page)

    # Log out, then in again from the front page.
    page.goto(f"{lab.url}/hub/logout")
    page.goto(f"{lab.url}/")
    pick_person(lab, page, "DTU", user)
    own_lab(lab, page, user)

    # The session's cookies expire (the browser drops them): the same deep link asks for a login
    # and then opens the notebook.
    page.context.clear_cookies()
    page.goto(f"{lab.url}/hub/user-redirect/lab/tree/{NOTEBOOK}")
    pick_person(lab, page, "DTU", user)
    own_lab(lab, page, user, f"lab/tree/{NOTEBOOK}")
    notebook_open(page)
    page.context.close()


def test_deep_link_before_login_with_github_then_front_page(lab, browser, stopped_afterwards):  # noqa: F811
    """A link to a notebook, sent before the student ever logged in: GitHub login, the spawn form,
    then the notebook. After logging out, the front page's GitHub button leads back to the lab."""
    user = "s230003"
    stopped_afterwards.append(user)
    page = new_page(browser)
    page.goto(f"{lab.url}/hub/user-redirect/lab/tree/{NOTEBOOK}")
    pick_person(lab, page, "GitHub", "grace-hopper")
    start_cpu_server(page)
    own_lab(lab, page, user, f"lab/tree/{NOTEBOOK}")
    notebook_open(page)

    page.goto(f"{lab.url}/hub/logout")
    page.goto(f"{lab.url}/")
    pick_person(lab, page, "GitHub", "grace-hopper")
    own_lab(lab, page, user)
    page.context.close()
