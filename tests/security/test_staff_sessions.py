"""Attacks on staff, the way a student would make them: work that a TA opens in the formgrader,
a page of the student's own server that an instructor opens from a link, and requests a TA
makes in the formgrader that only instructors may. The victims are real Chromium sessions
logged in through the DTU button; each test checks what happened to grades, the roster and
the staff member's tokens, not just a status code."""

from __future__ import annotations

import textwrap
import time

import nbformat
import pytest
from playwright.sync_api import expect

from tests.browser.test_login import confirm_access
from tests.conftest import ARTIFACTS
from tests.security.conftest import A, ATTACKER, hub_exec, in_container, release_notebook, with_answer

pytestmark = pytest.mark.security

XSS_STUDENT = "s240022"
MARKDOWN = textwrap.dedent("""\
    # Notes by a student 7Q
    Visible words 7Q.
    <script>window.__xss = "script tag"</script>
    <img src="x" onerror="window.__xss = 'img onerror'">
    [a link](javascript:window.__xss='javascript link')
    <svg onload="window.__xss = 'svg onload'"><circle r="4"/></svg>
    <iframe srcdoc="<script>parent.__xss = 'iframe'</script>"></iframe>
    <a href="#" onmouseover="window.__xss = 'handler'">hover</a>
    <form action="https://example.invalid"><button>go</button></form>
    """)
OUTPUTS = textwrap.dedent("""\
    from IPython.display import HTML, Javascript, SVG, Markdown, display
    display(HTML('<b>output 7Q</b><img src="x" onerror="window.__xss = \\'html output\\'">'))
    display(Javascript("window.__xss = 'javascript output'"))
    display(SVG('<svg xmlns="http://www.w3.org/2000/svg" onload="window.__xss = \\'svg output\\'"></svg>'))
    display(Markdown('<img src="x" onerror="window.__xss = \\'markdown output\\'">'))
    print('<script>window.__xss = "stream"</script>')
    """)


# What the formgrader's own scripts do to read its API: a same-origin fetch with its XSRF token.
FETCH_JSON = """async (url) => {
    const xsrf = (document.cookie.match(/_xsrf=([^;]+)/) || [])[1] || "";
    const r = await fetch(url, {headers: {"X-XSRFToken": xsrf}});
    if (!r.ok) throw new Error(url + ": " + r.status);
    return await r.json();
}"""


def test_a_tas_browser_runs_nothing_a_student_wrote(course, staff_browser):
    """Scripts in a student's markdown, HTML, JavaScript, SVG and markdown outputs, graded and then
    opened by a TA in the formgrader, run nothing; the student's words are still shown."""
    release = release_notebook(course)
    cells = [nbformat.v4.new_markdown_cell(MARKDOWN), nbformat.v4.new_code_cell(OUTPUTS)]
    r = course.course("POST", f"api/assignments/{A}/submit", token=course.user_token(XSS_STUDENT),
                      data=with_answer(release, OUTPUTS, extra_cells=cells))
    assert r.status_code == 201, r.text
    graded = course.grader("autograde", A, "--collect", "--workers", "2")
    assert graded.returncode == 0, graded.stdout + graded.stderr

    page = staff_browser("tahe")
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    formgrader = course.service_url("formgrader")
    page.goto(f"{formgrader}/formgrader/gradebook/{A}/{A}")
    listed = page.evaluate(FETCH_JSON, f"{formgrader}/formgrader/api/submitted_notebooks/{A}/{A}")
    sub = next(s for s in listed if s["student"] == XSS_STUDENT)
    response = page.goto(f"{formgrader}/formgrader/submissions/{sub['id']}/")
    csp = response.headers["content-security-policy"]
    assert "script-src 'nonce-" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    expect(page.get_by_text("Visible words 7Q.")).to_be_visible()
    expect(page.get_by_text("output 7Q").first).to_be_visible()
    page.mouse.move(10, 10)
    for link in page.get_by_text("hover").all():
        link.hover()
    for link in page.get_by_text("a link").all():
        link.click()
    time.sleep(1)
    page.screenshot(path=str(ARTIFACTS / "security-formgrader-student-html.png"), full_page=True)
    assert page.evaluate("window.__xss") is None
    assert dialogs == []
    # the formgrader's own scripts still run (its navigation bar is built by them)
    assert page.evaluate("typeof window.jQuery") == "function"

    # The feedback made from the same notebook is inert too (the student opens it; staff may).
    made = course.grader("feedback", A)
    assert made.returncode == 0, made.stdout + made.stderr
    html = hub_exec("sh", "-c", f"cat /srv/course/nbgrader/feedback/{XSS_STUDENT}/{A}/{A}.html").stdout
    reader = staff_browser("tahe")
    reader.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    reader.set_content(html)
    expect(reader.get_by_text("Visible words 7Q.")).to_be_visible()
    for link in reader.get_by_text("hover").all():
        link.hover()
    time.sleep(1)
    assert reader.evaluate("window.__xss") is None and dialogs == []
    # The dashboard, where sandbox reasons and names are shown, runs no script and allows none.
    teacher = staff_browser("teacher")
    teacher.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    response = teacher.goto(f"{course.service_url('course')}/dashboard")
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    expect(teacher.locator(f"section[id='{A}']")).to_be_visible()
    assert teacher.evaluate("window.__xss") is None and dialogs == []


def test_writes_in_the_formgrader_are_for_instructors(course, staff_browser):
    """A TA's formgrader refuses collect, release, unrelease, feedback and grade edits, with a
    message; the instructor's same session may write."""
    formgrader = course.service_url("formgrader")
    ta = staff_browser("tahe")
    ta.goto(f"{formgrader}/formgrader/manage_assignments")
    expect(ta.get_by_text(A).first).to_be_visible()
    assignments = ta.evaluate(FETCH_JSON, f"{formgrader}/formgrader/api/assignments")
    requests_made = [("POST", f"api/assignment/{A}/collect"), ("POST", f"api/assignment/{A}/release"),
                     ("POST", f"api/assignment/{A}/unrelease"), ("POST", f"api/assignment/{A}/generate_feedback"),
                     ("POST", f"api/assignment/{A}/release_feedback"), ("PUT", "api/grade/any-grade-id"),
                     ("PUT", "api/comment/any-comment-id"), ("PUT", "api/student/s230001"),
                     ("POST", f"api/submission/{A}/s230001/autograde"), ("PUT", f"api/assignment/{A}")]
    script = """async ([base, calls]) => {
        const xsrf = (document.cookie.match(/_xsrf=([^;]+)/) || [])[1] || "";
        const out = [];
        for (const [method, path] of calls) {
            const r = await fetch(base + "/formgrader/" + path, {method, headers: {"X-XSRFToken": xsrf,
                "Content-Type": "application/json"}, body: JSON.stringify({first_name: "Mallory", manual_score: 99})});
            out.push([r.status, (await r.text()).slice(0, 300)]);
        }
        return out;
    }"""
    results = ta.evaluate(script, [formgrader, requests_made])
    for (method, path), (status, text) in zip(requests_made, results):
        assert status == 403, (method, path, status, text)
        assert "only instructor may change" in text, text
    assert A in [a["name"] for a in assignments]  # reading stays open to TAs
    teacher = staff_browser("teacher")
    teacher.goto(f"{formgrader}/formgrader/manage_students")
    [(status, text)] = teacher.evaluate(script, [formgrader, [("PUT", "api/student/s240099")]])
    assert status == 200, text
    # the TA's attempts changed nothing: no assignment was unreleased or collected by them
    assert A in [a["assignment_id"] for a in course.course("GET", "api/assignments").json()["assignments"]]
    assert "formgrader: tahe (ta) may not POST" in course.compose("logs", "hub").stdout


EVIL_PAGE = """<!doctype html><html><body><h1>My project (please have a look!)</h1><pre id="out"></pre>
<script>
const out = {};
const base = location.protocol + "//" + location.host.replace(/^[^.]+\\./, "");
const svc = (name) => location.protocol + "//" + name + "--service." + location.host.replace(/^[^.]+\\./, "") + "/services/" + name;
async function attempt(name, url, init) {
  try { const r = await fetch(url, Object.assign({credentials: "include"}, init || {}));
        out[name] = r.type === "opaque" ? "opaque" : r.status + " " + (await r.text()).slice(0, 80); }
  catch (e) { out[name] = "blocked: " + e.name; }
}
(async () => {
  out.origin = location.origin;
  await attempt("grades", svc("course") + "/api/grades.csv");
  await attempt("roster", svc("roster") + "/api/import?filename=x.csv", {method: "POST", mode: "no-cors",
      headers: {"Content-Type": "text/plain"}, body: "id,name,email,github,role\\n__ATTACKER__,Me,me@x.dk,,instructor\\n"});
  await attempt("token", base + "/hub/api/users/teacher/tokens", {method: "POST", mode: "no-cors",
      headers: {"Content-Type": "text/plain"}, body: "{}"});
  await attempt("hub_page", base + "/hub/token");
  try { out.cookies = document.cookie; } catch (e) { out.cookies = e.name; }
  document.getElementById("out").textContent = JSON.stringify(out);
  document.title = "done";
})();
</script></body></html>""".replace("__ATTACKER__", ATTACKER)


def test_a_students_page_cannot_act_for_the_staff_member_who_opens_it(course, attacker, staff_browser):
    """An instructor opens a student's link to a page in their own server. The page is on the
    student's own origin: it cannot read the grades, import a roster that makes the student an
    instructor, or make the instructor a token."""
    in_container(ATTACKER, "import json\nopen('evil.html', 'w').write(%r)\nprint(json.dumps({}))" % EVIL_PAGE)
    tokens_before = {t["id"] for t in course.api("GET", "/users/teacher/tokens").json()["api_tokens"]}
    teacher = staff_browser("teacher")
    teacher.goto(f"{course.user_url(ATTACKER)}/files/evil.html")
    confirm_access(teacher)
    expect(teacher.get_by_role("heading", name="My project")).to_be_visible(timeout=60_000)
    teacher.wait_for_function("document.title === 'done'", timeout=60_000)
    teacher.screenshot(path=str(ARTIFACTS / "security-student-page.png"))
    import json
    out = json.loads(teacher.locator("#out").text_content())
    assert out["origin"] == f"http://{ATTACKER}.localhost:{course.url.rsplit(':', 1)[1]}"
    assert out["grades"].startswith("blocked"), out  # another origin: the browser does not let it read
    assert out["hub_page"].startswith("blocked"), out
    assert "jupyterhub" not in out["cookies"], out
    # and on the server side nothing happened
    roster = course.session.get(f"{course.service_url('roster')}/api/roster", timeout=30).json()
    assert next(p for p in roster["people"] if p["id"] == ATTACKER)["role"] == "student"
    assert "s230001" not in course.api("GET", "/groups/instructors").json()["users"]
    # Opening the student's server gave the teacher an OAuth token for that server only; no token
    # was made through the hub's API (which notes them "Requested via api").
    new = [t for t in course.api("GET", "/users/teacher/tokens").json()["api_tokens"] if t["id"] not in tokens_before]
    assert all(not (t.get("note") or "").startswith("Requested via api") for t in new), new
    assert all(set(t["scopes"]) <= {f"access:servers!server={ATTACKER}/", "read:users:name!user",
                                    "read:users:groups!user", f"access:servers!server={ATTACKER}"} | {
        s for s in t["scopes"] if s.startswith("read:users:")} for t in new), new
