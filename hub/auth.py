"""Log in with DTU or GitHub, as one student of the course roster.

The login page offers one button per identity provider, through ``jupyterhub-multiauthenticator``
(each provider's handlers live under its own prefix: ``/hub/dtu/...``, ``/hub/github/...``):

- DTU by OpenID Connect against DTU's Microsoft Entra ID tenant (OAuthenticator's generic
  client, user data from the ID token), or by CAS 3.0 against DTU's single sign-on (python-cas).
- GitHub by OAuthenticator's GitHub client (its URLs settable, as for GitHub Enterprise).

Each provider's identity is mapped to the person's DTU id through the roster (``hub.roster``):
a DTU login is its id (``S123456``, ``s123456@dtu.dk`` -> ``s123456``), a GitHub login is matched
by GitHub's numeric account id, which the roster import looked up for the roster's GitHub column. So both logins reach the same hub user, home and server.
Someone not on the roster, or a GitHub account the roster does not link, gets a page saying so
and what to do, not a bare 403. ``refresh_user`` re-checks the roster on every request, so a
person removed from the roster loses access at their next request without a hub restart.

The mapping and the CAS client are ours: no Jupyter package maps two providers to one roster
id, and the only JupyterHub CAS authenticator (jhub_cas_authenticator) is unmaintained.
"""

from __future__ import annotations

import asyncio
import html
import secrets
from urllib.parse import urlencode

import requests
from cas import CASClientV3
from jupyterhub.auth import Authenticator
from jupyterhub.handlers import BaseHandler
from multiauthenticator import MultiAuthenticator
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.github import GitHubOAuthenticator
from tornado import web
from traitlets import List, Unicode

from hub.roster import DEFAULT_ID_DOMAINS, DEFAULT_ID_PATTERN, Roster, RosterStore, normalize_id
from hub.settings import Settings


class LoginRefused(web.HTTPError):
    """A login we refuse on purpose: a 403 whose page explains why and what to do."""

    def __init__(self, title: str, text: str, html_message: str):
        super().__init__(403, reason=title)
        self.jupyterhub_message = text
        self.jupyterhub_html_message = html_message


class CourseAuthenticator(MultiAuthenticator):
    """The hub's authenticator: the providers' buttons, and the roster that decides who gets in."""

    roster_file = Unicode(str(Settings.roster_file), config=True, help="The stored roster (JSON).")
    contact = Unicode("the course's instructors", config=True,
                      help="Who to ask about enrolment and GitHub links, as shown on refusal pages.")
    id_pattern = Unicode(DEFAULT_ID_PATTERN, config=True, help="What a DTU id looks like.")
    id_domains = List(Unicode(), list(DEFAULT_ID_DOMAINS), config=True,
                      help="Domains accepted after an id in a login like s123456@dtu.dk.")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.store = RosterStore(self.roster_file)
        for sub in self._authenticators:
            sub.course = self

    @property
    def roster(self) -> Roster | None:
        return self.store.load()

    def is_operator(self, name: str) -> bool:
        return name in self.admin_users

    def enrolled(self, name: str) -> bool:
        roster = self.roster
        return self.is_operator(name) or bool(roster and name in roster.people)

    def not_enrolled(self, who: str, via: str) -> LoginRefused:
        contact = html.escape(self.contact)
        text = (f"You signed in with {via} as {who}, but {who} is not enrolled in this course. "
                f"If you take the course, ask {self.contact} to add you to the course roster.")
        page = (f"<p>You signed in with {html.escape(via)} as <b>{html.escape(who)}</b>, but "
                f"<b>{html.escape(who)}</b> is <b>not enrolled in this course</b>.</p>"
                f"<p>If you take the course, ask {contact} to add you to the course roster. "
                "Nothing is lost: your work here is kept while you are off the roster.</p>")
        return LoginRefused("Not enrolled in this course", text, page)

    def github_not_linked(self, login: str, renamed: bool = False) -> LoginRefused:
        contact = html.escape(self.contact)
        if renamed:
            text = (f"The GitHub account {login} is not the account linked to this course: its login was linked "
                    f"when the roster was imported, and it now belongs to another GitHub account. Log in with DTU, "
                    f"or ask {self.contact} to import the roster again.")
            page = (f"<p>The GitHub account <b>{html.escape(login)}</b> is <b>not the account linked</b> to this "
                    "course: the login was linked when the roster was imported, and it now belongs to another "
                    "GitHub account (renamed, or deleted and registered again).</p>"
                    f"<ul><li>Log in with <b>DTU</b> instead.</li><li>If this is your account, ask {contact} to "
                    "import the roster again.</li></ul><p><a href='/hub/login'>Back to the login page</a></p>")
            return LoginRefused("GitHub account not linked", text, page)
        text = (f"The GitHub account {login} is not linked to anyone in this course. "
                f"Log in with DTU instead, or ask {self.contact} to add your GitHub login to the course roster.")
        page = (f"<p>The GitHub account <b>{html.escape(login)}</b> is <b>not linked</b> to anyone in this course.</p>"
                "<p>To get linked:</p><ul>"
                "<li>Log in with <b>DTU</b> instead; that always works for enrolled students.</li>"
                f"<li>Or ask {contact} to add your GitHub login <code>{html.escape(login)}</code> to your line "
                "of the course roster. After that, <b>Log in with GitHub</b> takes you to the same server "
                "and files as your DTU login.</li></ul><p><a href='/hub/login'>Back to the login page</a></p>")
        return LoginRefused("GitHub account not linked", text, page)

    async def authenticate(self, handler, data=None):
        return None  # logins go through the providers' own handlers, never the form

    async def refresh_user(self, user, handler=None):
        # Called on each request (auth_refresh_age): off the roster means logged out at once.
        if not self.enrolled(user.name):
            self.log.info("%s is not on the course roster: access refused until re-enrolled", user.name)
            if handler is not None and not hasattr(handler, "_token_authenticated"):
                # JupyterHub 6.1.1's refresh_auth reads this flag, which only token-authenticated
                # requests set; without it a cookie request fails with AttributeError instead of
                # clearing the login cookie. False is what a cookie request means.
                handler._token_authenticated = False
            return False
        return True

    def get_custom_html(self, base_url):
        buttons = []
        for sub in self._authenticators:
            url = sub.login_url(base_url)
            buttons.append(
                f'<a role="button" class="btn btn-jupyter btn-lg lab-login-{sub.url_scope.strip("/")}" '
                # JupyterHub's login page hands the template ``next`` already URL-encoded.
                f"href='{url}{{% if next is defined and next|length %}}?next={{{{next}}}}{{% endif %}}'>"
                f"Log in with {html.escape(sub.login_service)}</a>"
            )
        return (
            "<div class='service-login lab-login'>"
            "<h1>MLOps course lab</h1>"
            "<div class='d-grid gap-3 col-md-6 mx-auto'>" + "\n".join(buttons) + "</div>"
            "<p class='text-muted mt-3'>Both logins lead to the same server and files. "
            "GitHub works once your GitHub login is on the course roster.</p>"
            "</div>"
        )


class RosterMixin:
    """For a provider's authenticator: turn the provider's identity into the roster's DTU id."""

    course: CourseAuthenticator
    via = ""

    def person_id(self, raw: str) -> str:
        raise NotImplementedError

    async def authenticate(self, handler, data=None, **kwargs):
        model = await super().authenticate(handler, data, **kwargs)
        if model is None:
            return None
        if isinstance(model, str):
            model = {"name": model}
        model["name"] = self.person_id(model["name"])
        return model

    def check_allowed(self, username, authentication=None):
        return self.course.enrolled(username)


class DTUIdentityMixin(RosterMixin):
    via = "DTU"

    def person_id(self, raw: str) -> str:
        try:
            pid = normalize_id(raw, self.course.id_pattern, self.course.id_domains)
        except ValueError:
            raise self.course.not_enrolled(raw, self.via)
        if not self.course.enrolled(pid):
            raise self.course.not_enrolled(pid, self.via)
        return pid


class DTUOIDCAuthenticator(DTUIdentityMixin, GenericOAuthenticator):
    """DTU by OpenID Connect (Microsoft Entra ID): the id comes from a claim of the ID token,
    by default ``preferred_username`` (``s123456@dtu.dk``). The token must name the expected
    issuer, be issued to this hub (``aud``) and, for Entra, come from DTU's tenant (``tid``):
    a token from another tenant of the same multi-tenant endpoint is refused."""

    login_service = "DTU"
    expected_issuer = Unicode("", config=True, help="The ID token's iss claim must equal this.")
    expected_tenant = Unicode("", config=True, help="The ID token's tid claim must equal this (Entra).")

    async def token_to_user(self, token_info):
        claims = await super().token_to_user(token_info)
        problems = []
        if not self.expected_issuer:
            problems.append("no expected issuer is configured")
        elif claims.get("iss") != self.expected_issuer:
            problems.append(f"issuer {claims.get('iss')!r} is not {self.expected_issuer!r}")
        aud = claims.get("aud")
        if self.client_id not in (aud if isinstance(aud, list) else [aud]):
            problems.append(f"audience {aud!r} is not this hub ({self.client_id!r})")
        if self.expected_tenant and claims.get("tid") != self.expected_tenant:
            problems.append(f"tenant {claims.get('tid')!r} is not {self.expected_tenant!r}")
        if problems:
            self.log.warning("DTU ID token refused: %s", "; ".join(problems))
            raise LoginRefused("Login not confirmed",
                               "The DTU login could not be confirmed for this course (the identity token was "
                               "not issued by DTU for this lab). Please log in again.",
                               "<p>The DTU login could not be confirmed for this course: the identity token "
                               "was not issued by DTU for this lab.</p><p><a href='/hub/login'>Log in again</a>.</p>")
        return claims


class CASLoginHandler(BaseHandler):
    """``/hub/dtu/login``: send the browser to CAS, then validate the ticket it comes back with.

    CAS has no state parameter, so a ticket for someone else's login could be planted in a
    victim's browser (login CSRF). The hub puts a fresh random ``state`` into the service URL and
    into a signed cookie of this browser; a ticket counts only when it comes back to the browser
    that started that login (CAS validates the service URL, state included, with the ticket)."""

    STATE_COOKIE = "lab-cas-state"

    def append_query_parameters(self, url, exclude=None):
        # The ticket is single-use and must not travel on: JupyterHub would carry it to /hub/spawn,
        # where query parameters are spawn options and start a server.
        return super().append_query_parameters(url, exclude=[*(exclude or ["next"]), "ticket", "state"])

    async def get(self):
        auth = self.authenticator
        next_url = self.get_argument("next", "")
        ticket = self.get_argument("ticket", "")
        cookie_path = self.request.path
        if not ticket:
            state = secrets.token_urlsafe(24)
            self.set_secure_cookie(self.STATE_COOKIE, state, expires_days=None, path=cookie_path, httponly=True,
                                   samesite="lax", secure=self.request.protocol == "https")
            service = auth.service_url(next_url, state)
            self.redirect(CASClientV3(service_url=service, server_url=auth.cas_server_url).get_login_url())
            return
        state = self.get_argument("state", "")
        expected = self.get_secure_cookie(self.STATE_COOKIE, max_age_days=1)
        self.clear_cookie(self.STATE_COOKIE, path=cookie_path)
        if not state or expected is None or not secrets.compare_digest(expected.decode(), state):
            self.log.warning("CAS login refused: the ticket did not come back to the browser that asked for it")
            raise LoginRefused(
                "Login not confirmed",
                "This login was not started from this browser, or it took too long. Please log in again.",
                "<p>This login was not started from this browser, or it took too long.</p>"
                "<p><a href='/hub/login'>Log in again</a>.</p>")
        user = await self.login_user({"ticket": ticket, "service": auth.service_url(next_url, state)})
        if user is None:
            raise web.HTTPError(403, "login refused")
        self.redirect(self.get_next_url(user))


class CASAuthenticator(Authenticator):
    """CAS 3.0: ``/login`` at the CAS server, then ``/p3/serviceValidate`` from the hub."""

    cas_server_url = Unicode(config=True, help="The CAS server as browsers reach it (ends in /).")
    cas_validate_url = Unicode("", config=True, help="The CAS server as the hub reaches it; default: cas_server_url.")
    cas_service_url = Unicode(config=True, help="This hub's CAS login URL, as browsers reach it.")

    def service_url(self, next_url: str = "", state: str = "") -> str:
        params = {k: v for k, v in (("next", next_url), ("state", state)) if v}
        return self.cas_service_url + (f"?{urlencode(params)}" if params else "")

    def login_url(self, base_url):
        return base_url.rstrip("/") + "/login"

    def get_handlers(self, app):
        return [(r"/login", CASLoginHandler)]

    async def authenticate(self, handler, data=None):
        server = (self.cas_validate_url or self.cas_server_url).rstrip("/") + "/"
        client = CASClientV3(service_url=data["service"], server_url=server)
        try:
            user, attributes, _ = await asyncio.to_thread(client.verify_ticket, data["ticket"])
        except requests.RequestException as e:
            self.log.error("CAS ticket validation at %s failed: %s", server, e)
            raise web.HTTPError(502, reason="Single sign-on unreachable") from e
        if not user:
            self.log.warning("CAS refused a ticket for service %s", data["service"])
            raise LoginRefused(
                "Login not confirmed",
                "The single sign-on did not confirm your login (the ticket was refused or expired). Please log in again.",
                "<p>The single sign-on did not confirm your login: the ticket was refused or has expired.</p>"
                "<p><a href='/hub/login'>Log in again</a>.</p>",
            )
        return {"name": user, "auth_state": {"cas_attributes": attributes or {}}}


class DTUCASAuthenticator(DTUIdentityMixin, CASAuthenticator):
    """DTU by CAS at auth.dtu.dk: the CAS user is a student number or staff initials."""

    login_service = "DTU"


class CourseGitHubAuthenticator(RosterMixin, GitHubOAuthenticator):
    """GitHub, for students whose GitHub account is in the roster. The account is matched by
    GitHub's numeric id (looked up when the roster was imported), never by its login alone: a
    login can be renamed, deleted and registered again by someone else."""

    login_service = "GitHub"
    via = "GitHub"

    async def authenticate(self, handler, data=None, **kwargs):
        model = await GitHubOAuthenticator.authenticate(self, handler, data, **kwargs)
        if model is None:
            return None
        user = (model.get("auth_state") or {}).get(self.user_auth_state_key) or {}
        model["name"] = self.person_for(model["name"], user.get("id"))
        return model

    def person_for(self, login: str, account_id) -> str:
        roster = self.course.roster
        person = roster.by_github_id(int(account_id)) if roster and account_id is not None else None
        if person is not None:
            return person.id
        claimed = roster.by_github(login) if roster else None
        if claimed is not None:
            self.log.warning("GitHub login %s (account %s) is on the roster for %s with account %s: refused",
                             login, account_id, claimed.id, claimed.github_id)
            raise self.course.github_not_linked(login, renamed=True)
        raise self.course.github_not_linked(login)

    def person_id(self, raw: str) -> str:  # every GitHub login goes through person_for
        raise NotImplementedError
