"""The roster service, hub-managed at ``/services/roster/``: import the course roster without a
hub restart, and keep the hub's users and groups in step with it.

API (a token with ``access:services!service=roster``: instructors, hub admins, the lab-admin
token; ``make roster FILE=...`` calls it):

- ``POST api/import?filename=roster.csv[&dry_run=1]``, body: the CSV file. The whole file is
  checked first; on any problem the answer is 400 with every problem as ``FILE:LINE: field:
  message`` and nothing changes. Otherwise the roster is stored and synced, and the answer lists
  what changed: added, removed, role changed, GitHub link changed.
- ``GET api/roster``: the stored roster. ``POST api/sync``: sync the hub with it again.

Syncing, through the hub's REST API: every person gets a hub user and exactly one course group
(``students``, ``tas``, ``instructors``, which carry the RBAC roles). People no longer on the
roster leave the course groups, their running server is stopped and their tokens revoked, so
they lose access at their next request; their user, home volume and files are kept.

This is ours because JupyterHub has no roster import; it only calls the hub's public REST API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from urllib.parse import quote, urlparse

from jupyterhub.services.auth import HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from tornado import httpclient, ioloop, web

from hub.services.base import ServiceHandler
from hub.roster import (ROLE_GROUPS, Roster, RosterError, RosterStore, diff,
                        parse_roster)

log = logging.getLogger("roster")


class HubAPI:
    """The hub's REST API with this service's token."""

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.token = token
        self.client = httpclient.AsyncHTTPClient()

    async def call(self, method: str, path: str, body=None, ok=(200, 201, 202, 204)) -> tuple[int, object]:
        request = httpclient.HTTPRequest(
            self.url + path, method=method, headers={"Authorization": f"token {self.token}",
                                                     "Content-Type": "application/json"},
            body=None if body is None else json.dumps(body), allow_nonstandard_methods=True, request_timeout=60,
        )
        response = await self.client.fetch(request, raise_error=False)
        if response.code not in ok:
            raise RuntimeError(f"hub API {method} {path}: {response.code} {response.body[:300]!r}")
        data = json.loads(response.body) if response.body else None
        return response.code, data


class Syncer:
    def __init__(self, api: HubAPI, operators: set[str]):
        self.api = api
        self.operators = operators

    async def group_members(self, group: str) -> set[str]:
        code, data = await self.api.call("GET", f"/groups/{group}", ok=(200, 404))
        if code == 404:
            await self.api.call("POST", f"/groups/{group}")
            return set()
        return set(data["users"])

    async def sync(self, roster: Roster, previous: Roster | None = None) -> dict:
        """Make the hub's users and course groups match the roster; return what was done."""
        wanted = {group: set() for group in ROLE_GROUPS.values()}
        for person in roster.people.values():
            wanted[ROLE_GROUPS[person.role]].add(person.id)
        members = {group: await self.group_members(group) for group in ROLE_GROUPS.values()}
        names = sorted(roster.people)
        for i in range(0, len(names), 200):
            await self.api.call("POST", "/users", {"usernames": names[i:i + 200]}, ok=(201, 409))
        for group in ROLE_GROUPS.values():
            add = sorted(wanted[group] - members[group])
            drop = sorted(members[group] - wanted[group])
            if add:
                await self.api.call("POST", f"/groups/{group}/users", {"users": add})
            if drop:
                await self.api.call("DELETE", f"/groups/{group}/users", {"users": drop})
        was_enrolled = set().union(*members.values()) | (set(previous.people) if previous else set())
        removed = sorted(was_enrolled - set(roster.people) - self.operators)
        stopped, revoked = [], 0
        for name in removed:
            code, user = await self.api.call("GET", f"/users/{quote(name)}", ok=(200, 404))
            if code == 404:
                continue
            for server in user.get("servers", {}):
                path = f"/users/{quote(name)}/server" if server == "" else f"/users/{quote(name)}/servers/{quote(server)}"
                await self.api.call("DELETE", path, ok=(202, 204, 400, 404))
                stopped.append(name)
            _, tokens = await self.api.call("GET", f"/users/{quote(name)}/tokens")
            for token in tokens.get("api_tokens", []):
                await self.api.call("DELETE", f"/users/{quote(name)}/tokens/{token['id']}", ok=(204, 404))
                revoked += 1
        log.info("roster synced: %d people, removed %s, stopped %s, %d tokens revoked",
                 len(roster.people), removed, stopped, revoked)
        return {"people": len(roster.people), "access_removed": removed, "servers_stopped": stopped,
                "tokens_revoked": revoked}


class GitHubIds:
    """GitHub's numeric account id of each roster GitHub login (``GET {api}/users/{login}``).

    A GitHub login can be renamed, deleted and registered again by someone else; the numeric id
    stays with the account. So the roster stores the id found at import, and a GitHub login is
    linked by it. A login unchanged since the last import keeps its id without a look-up."""

    def __init__(self, api_url: str, token: str = ""):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.client = httpclient.AsyncHTTPClient()

    async def lookup(self, login: str) -> int | None:
        headers = {"Accept": "application/vnd.github+json", "User-Agent": "mlops-lab-roster"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = await self.client.fetch(f"{self.api_url}/users/{quote(login)}", headers=headers,
                                               raise_error=False, request_timeout=30)
        except OSError as exc:
            raise RosterError([f"github: GitHub's API at {self.api_url} cannot be reached to look up the GitHub "
                               f"logins' account ids ({exc}); nothing changed, try again"]) from None
        if response.code == 404:
            return None
        if response.code != 200:
            hint = (" (GitHub's rate limit: set LAB_GITHUB_API_TOKEN in .env)"
                    if response.code in (403, 429) else "")
            raise RosterError([f"github: GitHub's API answered {response.code} looking up {login!r}{hint}; "
                               "nothing changed, try again"])
        return int(json.loads(response.body)["id"])

    async def resolve(self, roster: Roster, previous: Roster | None, filename: str) -> int:
        """Fill in each person's github_id; return how many were looked up. Unknown logins are
        problems with their line; nothing is stored while any remains."""
        problems, looked_up = [], 0
        for person in sorted(roster.people.values(), key=lambda p: p.line):
            if not person.github:
                continue
            old = previous.people.get(person.id) if previous else None
            if old is not None and old.github == person.github and old.github_id is not None:
                person.github_id = old.github_id
                continue
            person.github_id = await self.lookup(person.github)
            looked_up += 1
            if person.github_id is None:
                problems.append(f"{filename}:{person.line}: github: GitHub has no account named {person.github!r}")
        if problems:
            raise RosterError(problems)
        return looked_up


class RosterService:
    def __init__(self, store: RosterStore, syncer: Syncer, id_pattern: str, id_domains: tuple[str, ...],
                 github: GitHubIds | None = None):
        self.store = store
        self.syncer = syncer
        self.id_pattern = id_pattern
        self.id_domains = id_domains
        self.github = github
        self.lock = asyncio.Lock()

    async def import_file(self, data: bytes, filename: str, dry_run: bool) -> dict:
        async with self.lock:
            roster = parse_roster(data, filename, self.id_pattern, self.id_domains)  # RosterError: nothing changes
            previous = self.store.load()
            if self.github is not None:
                await self.github.resolve(roster, previous, filename)
            changes = diff(previous, roster)
            result = {"dry_run": dry_run, "file": filename, "encoding": roster.encoding, "people": len(roster.people),
                      "changes": changes.as_dict(), "summary": changes.summary()}
            if not dry_run:
                self.store.save(roster)
                result["sync"] = await self.syncer.sync(roster, previous)
            log.info("roster %s from %s (%s):\n%s", "checked" if dry_run else "imported", filename,
                     roster.encoding, changes.summary())
            return result

    async def link_github(self, roster: Roster, previous: Roster | None, filename: str) -> bool:
        """Look up GitHub ids at start (the demo roster, an older stored one); retried for a while,
        since the demo GitHub may start after this service. False if they could not be had."""
        if self.github is None:
            return False
        for attempt in range(30):
            try:
                await self.github.resolve(roster, previous, filename)
                return True
            except RosterError as e:
                log.warning("GitHub ids of %s not looked up yet: %s", filename, "; ".join(e.problems))
                await asyncio.sleep(2)
        return False

    async def sync_stored(self) -> dict:
        async with self.lock:
            roster = self.store.load()
            if roster is None:
                return {"people": 0, "note": "no roster imported yet"}
            return await self.syncer.sync(roster)

    async def startup(self, demo_file: str) -> None:
        """Import the demo roster in demo mode when none is stored, then sync (once the hub answers)."""
        self.store.share()  # a roster stored by an older version: readable by the grader group too
        if demo_file and self.store.load() is None:
            roster = parse_roster(Path(demo_file).read_bytes(), "demo-roster.csv", self.id_pattern, self.id_domains)
            await self.link_github(roster, None, "demo-roster.csv")
            self.store.save(roster)
            log.info("demo mode: imported the demo roster (%d people)", len(roster.people))
        stored = self.store.load()
        if stored is not None and any(p.github and p.github_id is None for p in stored.people.values()):
            # A roster stored before GitHub logins were linked by id: look the ids up once.
            async with self.lock:
                if await self.link_github(stored, None, "the stored roster"):
                    self.store.save(stored)
        for attempt in range(60):
            try:
                await self.sync_stored()
                return
            except (OSError, RuntimeError, httpclient.HTTPClientError) as e:
                log.info("waiting for the hub's API to sync the roster (%s)", e)
                await asyncio.sleep(2)
        log.error("could not sync the roster with the hub at start")


class BaseAPIHandler(ServiceHandler):
    def initialize(self, service: RosterService):
        self.service = service
        self.operators = service.syncer.operators


class ImportHandler(BaseAPIHandler):
    @web.authenticated
    async def post(self):
        self.need_token()
        self.need("roster.import")
        filename = os.path.basename(self.get_argument("filename", "roster.csv")) or "roster.csv"
        dry_run = self.get_argument("dry_run", "0").lower() in ("1", "true", "yes")
        who = self.current_user.get("name")
        try:
            result = await self.service.import_file(self.request.body, filename, dry_run)
        except RosterError as e:
            log.warning("roster import by %s refused:\n  %s", who, "\n  ".join(e.problems))
            self.write_json({"problems": e.problems, "summary": "roster refused, nothing changed"}, 400)
            return
        log.info("roster import by %s", who)
        self.write_json(result)


class SyncHandler(BaseAPIHandler):
    @web.authenticated
    async def post(self):
        self.need_token()
        self.need("roster.import")
        self.write_json(await self.service.sync_stored())


class RosterHandler(BaseAPIHandler):
    @web.authenticated
    def get(self):
        self.need("roster.import")
        roster = self.service.store.load()
        if roster is None:
            self.write_json({"people": [], "source": None})
            return
        self.write_json(json.loads(roster.to_json()))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[roster %(levelname)s %(asctime)s] %(message)s")
    prefix = os.environ["JUPYTERHUB_SERVICE_PREFIX"]
    from hub.config import github_api
    from hub.settings import current

    lab = current("roster")
    store = RosterStore(str(lab.roster_file))
    syncer = Syncer(HubAPI(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"]),
                    set(lab.get("auth.admin_users")))
    api = github_api(lab)
    github = GitHubIds(api, lab.env["LAB_GITHUB_API_TOKEN"] or "") if api else None
    service = RosterService(store, syncer, lab.get("auth.id_pattern"), tuple(lab.get("auth.id_domains")), github)
    app = web.Application([
        (url_path_join(prefix, "api/import"), ImportHandler, {"service": service}),
        (url_path_join(prefix, "api/sync"), SyncHandler, {"service": service}),
        (url_path_join(prefix, "api/roster"), RosterHandler, {"service": service}),
        (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
    ], cookie_secret=os.urandom(32))
    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    app.listen(url.port, url.hostname, max_body_size=16 * 1024 * 1024)
    loop = ioloop.IOLoop.current()
    signal.signal(signal.SIGTERM, lambda *_: loop.add_callback_from_signal(loop.stop))
    loop.add_callback(service.startup, str(lab.demo_roster) if lab.demo else "")
    loop.start()


if __name__ == "__main__":
    main()
