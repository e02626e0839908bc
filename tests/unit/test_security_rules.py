"""The security rules that need no Docker: the role table, the ID token checks, the sanitiser
for students' HTML and the nonce CSP of staff pages."""

import asyncio
import time

import jwt
import nbformat
import pytest

from hub.auth import DTUOIDCAuthenticator, LoginRefused
from hub.course.formgrader import SanitizeStudentHTML, add_nonces, clean_html, staff_page_csp
from hub.permissions import COURSE_ENDPOINTS, PERMISSIONS, may, role_of

TENANT = "f81f9b5a-3e36-4a1e-9f8d-4b5f2e1c0d11"
ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"


def test_roles_come_from_the_hubs_groups_and_operators():
    assert role_of({"kind": "user", "name": "s1", "groups": ["students"]}) == "student"
    assert role_of({"kind": "user", "name": "t", "groups": ["students", "tas"]}) == "ta"
    assert role_of({"kind": "user", "name": "i", "groups": ["instructors"]}) == "instructor"
    assert role_of({"kind": "user", "name": "op", "groups": []}, operators={"op"}) == "instructor"
    assert role_of({"kind": "user", "name": "x", "groups": []}) is None
    assert role_of({"kind": "service", "name": "lab-admin"}) == "instructor"
    assert role_of({"kind": "service", "name": "idle-culler"}) is None
    assert role_of(None) is None


def test_the_table_gives_tas_reading_and_instructors_changing():
    assert may("ta", "course.view") and not may("ta", "course.manage") and not may("ta", "roster.import")
    assert may("instructor", "course.manage") and may("instructor", "roster.import")
    assert may("student", "exchange") and not may("student", "course.view")
    assert not may(None, "exchange")
    assert set(COURSE_ENDPOINTS.values()) <= set(PERMISSIONS)
    assert all(action == "course.manage" for (method, _), action in COURSE_ENDPOINTS.items() if method != "GET")


def id_token(**claims) -> str:
    base = {"iss": ISSUER, "aud": "lab", "tid": TENANT, "preferred_username": "s230001@dtu.dk",
            "exp": int(time.time()) + 300}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, "a key the hub does not check: " + "x" * 32, algorithm="HS256")


def authenticator():
    return DTUOIDCAuthenticator(client_id="lab", userdata_from_id_token=True, expected_issuer=ISSUER,
                                expected_tenant=TENANT)


def test_an_id_token_from_dtus_tenant_is_accepted():
    claims = asyncio.run(authenticator().token_to_user({"id_token": id_token()}))
    assert claims["preferred_username"] == "s230001@dtu.dk"


@pytest.mark.parametrize("claims", [
    {"iss": "https://login.microsoftonline.com/another-tenant/v2.0"},
    {"tid": "00000000-0000-0000-0000-000000000000"},
    {"tid": None},
    {"iss": None},
])
def test_an_id_token_from_another_issuer_or_tenant_is_refused(claims):
    with pytest.raises(LoginRefused) as refused:
        asyncio.run(authenticator().token_to_user({"id_token": id_token(**claims)}))
    assert refused.value.status_code == 403
    assert "not issued by DTU for this lab" in refused.value.jupyterhub_message


def test_no_expected_issuer_means_no_login():
    a = DTUOIDCAuthenticator(client_id="lab", userdata_from_id_token=True)
    with pytest.raises(LoginRefused):
        asyncio.run(a.token_to_user({"id_token": id_token()}))


@pytest.mark.parametrize("html", [
    "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", '<a href="javascript:alert(1)">x</a>',
    "<svg onload=alert(1)>", '<iframe srcdoc="<script>alert(1)</script>">', "<object data=x>",
    '<a href="data:text/html,<script>alert(1)</script>">x</a>', '<img src="data:image/svg+xml;base64,PHN2Zz4=">',
    '<div style="background:url(javascript:alert(1))">x</div>', "<math><mtext><script>alert(1)</script>",
    '<form action="https://evil"><button>x</button></form>', '<base href="https://evil/">',
])
def test_the_sanitiser_leaves_no_script_link_or_frame(html):
    out = clean_html(html).lower()
    for bad in ("<script", "onerror", "onload", "javascript:", "<iframe", "<svg", "<object", "<form", "<base",
                "data:text", "data:image/svg"):
        assert bad not in out, (html, out)


def test_a_notebook_is_made_inert_but_keeps_its_words():
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("# Title\nSome *words*.\n<script>x()</script>"))
    code = nbformat.v4.new_code_cell("x")
    code.outputs = [nbformat.v4.new_output("display_data", data={
        "text/html": "<b>bold</b><img src=x onerror=x()>", "application/javascript": "x()",
        "image/svg+xml": "<svg onload=x()/>", "text/plain": "plain"})]
    nb.cells.append(code)
    nb, _ = SanitizeStudentHTML().preprocess(nb, {})
    assert "<em>words</em>" in nb.cells[0].source and "<script" not in nb.cells[0].source
    data = nb.cells[1].outputs[0]["data"]
    assert data["text/html"] == "<b>bold</b><img>" and set(data) == {"text/html", "text/plain"}


def test_only_the_pages_own_scripts_get_the_nonce():
    page = (b"<html><head><script src=a.js></script><SCRIPT>var x</SCRIPT></head><body><nav><script>t()</script>"
            b'</nav><div id="notebook-container"><script>evil()</script></div></body></html>')
    out = add_nonces(page, "N0NCE")
    assert out.count(b'nonce="N0NCE"') == 3 and b"<script>evil()</script>" in out
    csp = staff_page_csp("N0NCE")
    assert "script-src 'nonce-N0NCE'" in csp and "'unsafe-inline'" not in csp.split("style-src")[0]
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp


@pytest.fixture(scope="module")
def github_peer():
    """The GitHub test peer as its own process, with one roster login and a re-registered one."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    idp = Path(__file__).resolve().parents[2] / "images" / "idp"
    proc = subprocess.Popen([sys.executable, str(idp / "github_peer.py"), "--port", str(port), "--client", "c:s",
                             "--user", "ada-lovelace", "--user", "grace-hopper", "--reregistered", "grace-hopper"],
                            cwd=idp, env={"PYTHONPATH": str(idp), "PATH": "/usr/bin:/bin"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "the GitHub peer did not start"
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/api/v3"
    proc.terminate()
    proc.wait(10)


ROSTER_CSV = (b"id,name,email,github,role\ns230001,Ada,a@dtu.dk,ada-lovelace,student\n"
              b"s230003,Grace,g@dtu.dk,grace-hopper,student\ns230002,Alan,t@dtu.dk,,student\n")


def test_the_roster_import_looks_up_github_ids_and_refuses_unknown_logins(github_peer):
    from hub.roster import RosterError, parse_roster
    from hub.services.roster import GitHubIds

    ids = GitHubIds(github_peer)
    roster = parse_roster(ROSTER_CSV, "roster.csv")
    assert asyncio.run(ids.resolve(roster, None, "roster.csv")) == 2
    ada, grace = roster.people["s230001"], roster.people["s230003"]
    assert ada.github_id and grace.github_id and ada.github_id != grace.github_id
    assert roster.people["s230002"].github_id is None
    again = parse_roster(ROSTER_CSV, "roster.csv")
    assert asyncio.run(GitHubIds("http://127.0.0.1:9/unreachable").resolve(again, roster, "roster.csv")) == 0
    assert again.people["s230001"].github_id == ada.github_id  # unchanged logins: no look-up
    typo = parse_roster(ROSTER_CSV.replace(b"ada-lovelace", b"ada-lovelase"), "roster.csv")
    with pytest.raises(RosterError) as refused:
        asyncio.run(ids.resolve(typo, roster, "roster.csv"))
    assert refused.value.problems == ["roster.csv:2: github: GitHub has no account named 'ada-lovelase'"]
    with pytest.raises(RosterError, match="cannot be reached"):
        asyncio.run(GitHubIds("http://127.0.0.1:9/unreachable").resolve(typo, None, "roster.csv"))


def test_a_github_login_is_linked_by_its_account_id(github_peer, tmp_path):
    """The account that holds a roster login now, but is not the one looked up at import, is refused."""
    from types import SimpleNamespace

    from hub.auth import CourseGitHubAuthenticator
    from hub.roster import parse_roster
    from hub.services.roster import GitHubIds

    roster = parse_roster(ROSTER_CSV, "roster.csv")
    asyncio.run(GitHubIds(github_peer).resolve(roster, None, "roster.csv"))
    course = SimpleNamespace(roster=roster, github_not_linked=lambda login, renamed=False: LoginRefused(
        "GitHub account not linked", "renamed" if renamed else "unlinked", ""))
    github = CourseGitHubAuthenticator()
    github.course = course
    assert github.person_for("grace-hopper", roster.people["s230003"].github_id) == "s230003"
    assert github.person_for("any-new-name", roster.people["s230003"].github_id) == "s230003"  # renamed: still her
    with pytest.raises(LoginRefused) as refused:
        github.person_for("grace-hopper", 123456789)  # the re-registered account
    assert refused.value.jupyterhub_message == "renamed"
    with pytest.raises(LoginRefused) as refused:
        github.person_for("octo-unlinked", 42)
    assert refused.value.jupyterhub_message == "unlinked"
