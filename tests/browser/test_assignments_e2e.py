"""An assignment's whole life, in a real browser: the calendar releases it, a student fetches it
in JupyterLab's Assignments panel, edits the notebook and submits; the deadline passes on the
test clock (nobody sleeps), the course service collects, autogrades in sandboxes and releases
feedback; the student fetches the feedback and sees the score; the instructor sees it on the
course dashboard, in the formgrader and in the grades export."""

import csv
import io
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.test_login import ARTIFACTS, browser, login_dtu, new_page  # noqa: F401  (fixture)
from tests.conftest import assignment_points

pytestmark = pytest.mark.browser

A = "06-reproducibility"
STUDENT = "s230003"
# Part of the work: seed_everything (test_seed's 3 points); the rest is left undone.
ANSWER = ("def seed_everything(seed: int) -> None: random.seed(seed); np.random.seed(seed); torch.manual_seed(seed); "
          "os.environ['PYTHONHASHSEED'] = str(seed)")
POINTS = assignment_points(A)


def show_assignments_tab(page):
    """Bring the Assignments panel to the front, as a student would: open it from the Nbgrader
    menu if it has no tab, click its tab, and do that again if it does not stay in front
    (JupyterLab, still restoring the first-login layout, can bring the README forward again just
    after the click: what failed CI twice)."""
    tab = page.locator("#jp-main-dock-panel .lm-TabBar-tab", has_text="Assignments").first
    heading = page.get_by_text("Released assignments", exact=True)
    for attempt in range(4):
        if not tab.is_visible():
            page.locator(".lm-MenuBar-itemLabel", has_text="Nbgrader").click()
            page.locator(".lm-Menu-itemLabel", has_text="Assignment List").click()
            expect(tab).to_be_visible(timeout=30_000)
        tab.click()
        try:
            expect(heading).to_be_visible(timeout=10_000)
            return
        except AssertionError:
            page.screenshot(path=str(ARTIFACTS / f"assignments-not-in-front-{attempt}.png"))
    raise AssertionError("the Assignments panel did not come to the front after 4 clicks on its tab "
                         f"(screenshots: {ARTIFACTS}/assignments-not-in-front-*.png)")


def expect_in_panel(page, locator, timeout: int = 60_000) -> None:
    """``expect(locator).to_be_visible()`` for something in the Assignments panel, bringing the
    panel to the front again while JupyterLab's layout restore can still hide it (it did, just
    after the panel had come to the front: what failed CI)."""
    for attempt in range(4):
        show_assignments_tab(page)
        try:
            expect(locator).to_be_visible(timeout=timeout // 4)
            return
        except AssertionError:
            page.screenshot(path=str(ARTIFACTS / f"assignments-hidden-{attempt}.png"))
    expect(locator).to_be_visible(timeout=1_000)  # fails, with Playwright's account of the page


def click_in_panel(page, assignment: str, button: str) -> None:
    """Click ``button`` in the assignment's row of the Assignments panel. If the row has no such
    button (the list still loading, or an error from the exchange), the panel's refresh button,
    as a student would; if it never comes, fail with what the panel showed."""
    target = page.locator(".list_item", has_text=assignment).get_by_role("button", name=button, exact=True).first
    shown = []
    for attempt in range(3):
        try:
            show_assignments_tab(page)
            expect(target).to_be_visible(timeout=60_000)
            break
        except AssertionError:
            page.screenshot(path=str(ARTIFACTS / f"assignments-no-{button.lower().replace(' ', '-')}-{attempt}.png"))
            shown.append(" | ".join(t.strip() for t in page.locator("#released_assignments_list, #fetched_assignments_list,"
                                                                      " #submitted_assignments_list").all_inner_texts()))
            refresh = page.locator("#refresh_assignments_list")
            if refresh.is_visible():
                refresh.click()
    else:
        raise AssertionError(f"no {button!r} button for {assignment} in the Assignments panel; it showed: {shown}; "
                             f"the browser's console: {getattr(page, 'lab_console', [])[-10:]}")
    target.click()


@pytest.fixture
def stopped_afterwards(lab):
    yield
    if lab.api("GET", f"/users/{STUDENT}").json().get("servers"):
        lab.stop(STUDENT)  # the login tests expect this student's spawn form


def test_fetch_edit_submit_grade_feedback_export(lab, browser, stopped_afterwards):  # noqa: F811
    lab.set_clock("2027-01-06T10:00:00+01:00")
    lab.wait_course(lambda s: s["schedule"].get(A, {}).get("released"), f"the release of {A}")

    page = new_page(browser)
    page.lab_console = []
    page.on("console", lambda m: page.lab_console.append(f"{m.type}: {m.text}"[:300]))
    login_dtu(lab, page, STUDENT)
    expect(page.get_by_text("Choose the kind of server to start")).to_be_visible()
    page.get_by_label("CPU", exact=False).first.check()
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(f"**/user/{STUDENT}/lab**", timeout=240_000)
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=120_000)
    # The first login shows the course README; JupyterLab has restored its layout once it is there.
    expect(page.locator(".jp-RenderedMarkdown", has_text="How to fetch, validate and submit").first).to_be_visible(
        timeout=60_000)

    # Fetch in the Assignments panel
    show_assignments_tab(page)
    row = page.locator(".list_item", has_text=A).first
    expect_in_panel(page, row)
    page.screenshot(path=str(ARTIFACTS / "assignments-released.png"))
    click_in_panel(page, A, "Fetch")
    expect_in_panel(page, page.locator(".list_item", has_text=A).get_by_role("button", name="Submit"))

    # Open the notebook and edit the first answer
    page.goto(f"{lab.user_url(STUDENT)}/lab/tree/{A}/{A}.ipynb")
    cell = page.locator(".jp-Cell", has_text="def seed_everything").first
    expect(cell).to_be_visible(timeout=60_000)
    cell.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.type(ANSWER)
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    expect(page.locator(".jp-mod-current .jp-mod-dirty")).to_have_count(0, timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "assignment-edited.png"))

    # Submit from the panel
    show_assignments_tab(page)
    click_in_panel(page, A, "Submit")
    expect_in_panel(page, page.locator(".list_item", has_text="2026").or_(page.locator(".list_item", has_text="2027")).first)
    page.screenshot(path=str(ARTIFACTS / "assignment-submitted.png"))
    mine = lab.course("GET", "api/submissions", token=lab.user_token(STUDENT)).json()["submissions"]
    assert [s["assignment_id"] for s in mine] == [A] and mine[0]["late"] is False

    # The deadline passes on the test clock: collect, autograde in sandboxes, feedback
    lab.set_clock("2027-01-09T00:30:00+01:00")
    status = lab.wait_course(lambda s: s["schedule"].get(A, {}).get("deadline"), f"grading of {A}", timeout=600)
    job = [j for j in status["jobs"] if j["assignment"] == A and j["action"] == "deadline"][-1]
    assert job["by"] == "calendar" and job["state"] == "done", job
    assert f"{A}/{STUDENT}: graded, 3 of {POINTS:g} points" in job["output"], job["output"]

    # The student fetches the feedback in the panel and reads the score
    page.reload()
    expect(page.locator(".lm-MenuBar-itemLabel", has_text="Nbgrader")).to_be_visible(timeout=120_000)
    show_assignments_tab(page)
    click_in_panel(page, A, "Fetch Feedback")
    expect_in_panel(page, page.get_by_text("(view feedback)").first)
    page.screenshot(path=str(ARTIFACTS / "assignment-feedback-fetched.png"))
    stamp = mine[0]["timestamp"]
    feedback = new_page(browser)
    feedback.context.add_cookies(page.context.cookies())
    feedback.goto(f"{lab.user_url(STUDENT)}/files/{A}/feedback/{stamp}/{A}.html")
    expect(feedback.get_by_text(f"{A} (Score: 3.0 / {float(POINTS)})")).to_be_visible()
    feedback.screenshot(path=str(ARTIFACTS / "assignment-feedback.png"), full_page=False)

    # A submission after the due time is accepted and marked late, in the panel and on the
    # student's page of the course service (the graded, on-time one stays as it was).
    click_in_panel(page, A, "Submit")
    expect_in_panel(page, page.get_by_text("(late)").first)
    page.goto(f"{lab.url}/hub/home")  # the hub's Services menu leads to the course service's page
    page.get_by_role("button", name="Services").click()
    page.get_by_role("link", name="course", exact=True).click()
    page.wait_for_url(f"{lab.service_url('course')}/**")
    expect(page.get_by_role("heading", name=f"My assignments ({STUDENT})")).to_be_visible()
    expect(page.locator("li", has_text="(late)")).to_have_count(1)
    expect(page.locator("li", has_text="feedback ready")).to_have_count(1)
    page.screenshot(path=str(ARTIFACTS / "my-assignments.png"))

    # The instructor: dashboard, formgrader, grades export
    teacher = new_page(browser)
    login_dtu(lab, teacher, "teacher")
    teacher.goto(f"{lab.service_url('course')}/dashboard")
    section = teacher.locator(f"section[id='{A}']")
    expect(section).to_contain_text("Students who fetched, submitted, submitted late, were graded")
    expect(section.locator("svg[aria-label='score distribution'] rect")).to_have_count(10)
    expect(section.locator("svg[aria-label='counts'] text", has_text="late")).to_have_count(1)
    teacher.screenshot(path=str(ARTIFACTS / "course-dashboard.png"), full_page=True)
    teacher.get_by_role("link", name="Formgrader").click()  # on its own origin
    teacher.wait_for_url(f"{lab.service_url('formgrader')}/**")
    expect(teacher.get_by_text("Manage Assignments").first).to_be_visible(timeout=60_000)
    expect(teacher.get_by_text(A).first).to_be_visible()
    teacher.screenshot(path=str(ARTIFACTS / "formgrader.png"))
    # The export: the dashboard's "Grades (CSV)" link downloads it.
    teacher.go_back()
    with teacher.expect_download() as download:
        teacher.get_by_role("link", name="Grades (CSV)").click()
    assert download.value.suggested_filename == "mlops-02476-grades.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    row = next(r for r in rows if r["student_id"] == STUDENT)
    assert row[f"{A} (of {POINTS:g})"] == "3"
    assert row["result"] == "not passed"  # the other core modules have 0 points
