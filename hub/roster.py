"""The course roster: who is enrolled, with which role, and which GitHub login is theirs.

The operator imports a CSV file, either our own format::

    id,name,email,github,role
    s230001,Ada Lovelace,s230001@student.dtu.dk,ada-l,student

or a DTU Learn (Brightspace) class-list export, whose columns are ``Username``/``OrgDefinedId``,
``First Name``, ``Last Name``, ``Email`` and ``Role``. The whole file is checked before anything
is stored; every problem is reported as ``FILE:LINE: field: message`` and a file with any
problem changes nothing. The checked roster is stored as JSON on the hub's state volume, where
the hub's authenticator and the roster service read it.

No Jupyter library keeps a course roster that maps two identity providers to one person
(nbgrader's student table has no GitHub login, and OAuthenticator's allow lists hold one
provider's user names), so this module is ours.
"""

from __future__ import annotations

import csv
import grp
import io
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_ID_PATTERN = r"^(s[0-9]{6}|[a-z]{2,8})$"
DEFAULT_ID_DOMAINS = ("dtu.dk", "student.dtu.dk")
ROLES = ("student", "ta", "instructor")
# The hub group of each role; RBAC roles are granted to the groups (hub.config.course_roles).
READER_GROUP = "grader"  # may read the stored roster (hub image: the course's grader user)
ROLE_GROUPS = {"student": "students", "ta": "tas", "instructor": "instructors"}

# Role names, as our own format and DTU Learn (Brightspace, English and Danish) write them.
ROLE_ALIASES = {
    "student": "student", "students": "student", "studerende": "student", "learner": "student",
    "ta": "ta", "tas": "ta", "teaching assistant": "ta", "teaching assistants": "ta",
    "teachingassistant": "ta", "hjælpelærer": "ta", "instruktor": "ta", "assistant": "ta",
    "instructor": "instructor", "teacher": "instructor", "lecturer": "instructor",
    "underviser": "instructor", "course responsible": "instructor", "kursusansvarlig": "instructor",
    "course coordinator": "instructor", "coordinator": "instructor",
}

# Header names (lower-case, without spaces, '_' or '-') for each field, in order of preference.
COLUMN_ALIASES = {
    "id": ("id", "dtuid", "studentid", "username", "userid", "orgdefinedid", "studienummer", "studentnumber"),
    "name": ("name", "fullname", "displayname", "navn"),
    "first_name": ("firstname", "givenname", "fornavn"),
    "last_name": ("lastname", "surname", "familyname", "efternavn"),
    "email": ("email", "emailaddress", "mail", "e-mail"),
    "github": ("github", "githublogin", "githubusername", "githubuser", "githubaccount"),
    "role": ("role", "courserole", "rolle"),
}

GITHUB_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$")
EMAIL_RE = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")


class RosterError(ValueError):
    """A roster file was refused; ``problems`` lists each as ``FILE:LINE: field: message``."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("roster refused, nothing changed:\n  " + "\n  ".join(problems))


def normalize_id(raw: str, pattern: str = DEFAULT_ID_PATTERN, domains=DEFAULT_ID_DOMAINS) -> str:
    """A DTU id as the hub uses it: ``' S123456 '``, ``#s123456`` and ``s123456@dtu.dk`` all
    become ``s123456``. Raise ValueError saying what is wrong."""
    value = raw.strip().lower()
    if value.startswith("#"):  # Brightspace prefixes user names with '#' in some exports
        value = value[1:]
    if "@" in value:
        local, _, domain = value.partition("@")
        if domain not in domains:
            raise ValueError(f"{raw.strip()!r} is not a DTU id (the domain must be one of: {', '.join(domains)})")
        value = local
    if not value:
        raise ValueError("is empty")
    if not re.fullmatch(pattern, value):
        raise ValueError(f"{raw.strip()!r} is not a DTU id (a student number like s123456 or staff initials)")
    return value


def normalize_github(raw: str) -> str:
    """A GitHub login, lower-cased (GitHub logins are case-insensitive); '' when empty."""
    value = raw.strip()
    if value.startswith("@"):
        value = value[1:]
    for prefix in ("https://github.com/", "http://github.com/", "github.com/"):
        if value.lower().startswith(prefix):
            value = value[len(prefix):].rstrip("/")
    if not value:
        return ""
    if not GITHUB_RE.fullmatch(value):
        raise ValueError(f"{raw.strip()!r} is not a GitHub login (letters, digits and single hyphens, at most 39)")
    return value.lower()


def normalize_role(raw: str) -> str:
    value = " ".join(raw.strip().lower().split())
    if not value:
        raise ValueError("is empty (one of: student, ta, instructor)")
    if value not in ROLE_ALIASES:
        raise ValueError(f"{raw.strip()!r} is not a role (one of: student, ta, instructor)")
    return ROLE_ALIASES[value]


@dataclass
class Person:
    id: str
    name: str
    email: str
    role: str
    github: str = ""
    # GitHub's numeric account id for ``github``, looked up at import: a login can be renamed,
    # deleted and registered again by someone else; the id cannot.
    github_id: int | None = None
    line: int = 0


@dataclass
class Roster:
    people: dict[str, Person] = field(default_factory=dict)
    source: str = ""
    encoding: str = "utf-8"
    imported_at: float = 0.0

    def by_github(self, login: str) -> Person | None:
        login = login.lower()
        for person in self.people.values():
            if person.github and person.github == login:
                return person
        return None

    def by_github_id(self, account_id: int) -> Person | None:
        for person in self.people.values():
            if person.github and person.github_id is not None and person.github_id == account_id:
                return person
        return None

    def with_role(self, role: str) -> list[str]:
        return sorted(p.id for p in self.people.values() if p.role == role)

    def to_json(self) -> str:
        people = [{k: v for k, v in asdict(p).items() if k != "line"} for p in self.people.values()]
        return json.dumps({"version": 1, "source": self.source, "encoding": self.encoding,
                           "imported_at": self.imported_at, "people": people}, indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Roster":
        data = json.loads(text)
        people = {p["id"]: Person(**p) for p in data["people"]}
        return cls(people=people, source=data.get("source", ""), encoding=data.get("encoding", "utf-8"),
                   imported_at=data.get("imported_at", 0.0))


def _decode(data: bytes, name: str) -> tuple[str, str]:
    """Text and encoding of a roster file: UTF-8 (with or without BOM), UTF-16 with BOM (Excel's
    "Unicode text") or Windows-1252 (older DTU Learn and Excel exports)."""
    if data.startswith(b"PK\x03\x04"):
        raise RosterError([f"{name}:1: file: this is an Excel workbook (.xlsx), not CSV; save it as CSV UTF-8"])
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as e:
            raise RosterError([f"{name}: file: starts with a UTF-16 byte-order mark but is not UTF-16 ({e.reason})"])
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise RosterError([f"{name}:{line}: file: contains NUL bytes: not a text CSV file (UTF-16 without a BOM?);"
                           " save it as CSV UTF-8"])
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), "windows-1252"
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise RosterError([f"{name}:{line}: file: byte 0x{data[e.start]:02x} is neither UTF-8 nor Windows-1252;"
                           " save the file as CSV UTF-8"])


def _header_key(cell: str) -> str:
    return re.sub(r"[\s_\-]+", "", cell.strip().lower().lstrip("\ufeff"))


def parse_roster(data: bytes, name: str = "roster.csv", id_pattern: str = DEFAULT_ID_PATTERN,
                 id_domains=DEFAULT_ID_DOMAINS) -> Roster:
    """Check a whole roster file; return the roster or raise RosterError listing every problem."""
    text, encoding = _decode(data, name)
    if not text.strip():
        raise RosterError([f"{name}:1: file: is empty (expected a header line: id,name,email,github,role)"])
    first_line = text.splitlines()[0]
    delimiter = max(",;\t", key=first_line.count) if any(d in first_line for d in ",;\t") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    problems: list[str] = []
    try:
        header = next(reader)
    except csv.Error as e:
        raise RosterError([f"{name}:1: header: not valid CSV ({e})"])
    keys = [_header_key(h) for h in header]
    columns: dict[str, int] = {}
    for fld, aliases in COLUMN_ALIASES.items():
        for alias in aliases:
            if alias in keys:
                columns[fld] = keys.index(alias)
                break
    if "id" not in columns:
        problems.append(f"{name}:1: header: no id column (one of: id, Username, OrgDefinedId); found: {', '.join(header)}")
    if "name" not in columns and not ("first_name" in columns and "last_name" in columns):
        problems.append(f"{name}:1: header: no name column (name, or First Name and Last Name); found: {', '.join(header)}")
    if "email" not in columns:
        problems.append(f"{name}:1: header: no email column (email or Email); found: {', '.join(header)}")
    if problems:
        raise RosterError(problems)

    people: dict[str, Person] = {}
    github_line: dict[str, tuple[int, str]] = {}

    def cell(row: list[str], fld: str) -> str:
        i = columns.get(fld)
        return row[i] if i is not None and i < len(row) else ""

    try:
        for row in reader:
            line = reader.line_num
            if not any(c.strip() for c in row):
                continue
            if len(row) <= max(columns.values()):
                problems.append(f"{name}:{line}: row: has {len(row)} fields, the header has {len(header)}")
                continue
            try:
                pid = normalize_id(cell(row, "id"), id_pattern, id_domains)
            except ValueError as e:
                problems.append(f"{name}:{line}: id: {e}")
                continue
            if "name" in columns:
                full_name = " ".join(cell(row, "name").split())
            else:
                full_name = " ".join(f"{cell(row, 'first_name')} {cell(row, 'last_name')}".split())
            if not full_name:
                problems.append(f"{name}:{line}: name: is empty for {pid}")
            email = cell(row, "email").strip()
            if not EMAIL_RE.fullmatch(email):
                problems.append(f"{name}:{line}: email: {email!r} is not an e-mail address" if email
                                else f"{name}:{line}: email: is empty for {pid}")
            role = "student"
            if "role" in columns:
                try:
                    role = normalize_role(cell(row, "role"))
                except ValueError as e:
                    problems.append(f"{name}:{line}: role: {e}")
            github = ""
            try:
                github = normalize_github(cell(row, "github"))
            except ValueError as e:
                problems.append(f"{name}:{line}: github: {e}")
            if pid in people:
                problems.append(f"{name}:{line}: id: {pid} is listed twice (first on line {people[pid].line})")
                continue
            if github:
                if github in github_line:
                    first, other = github_line[github]
                    problems.append(f"{name}:{line}: github: {github!r} is claimed by {pid} and by {other} (line {first})")
                else:
                    github_line[github] = (line, pid)
            people[pid] = Person(id=pid, name=full_name, email=email, role=role, github=github, line=line)
    except csv.Error as e:
        problems.append(f"{name}:{reader.line_num}: row: not valid CSV ({e})")
    if not people and not problems:
        problems.append(f"{name}:2: file: has a header but nobody is listed")
    if problems:
        raise RosterError(problems)
    return Roster(people=people, source=name, encoding=encoding, imported_at=time.time())


@dataclass
class RosterChanges:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    role_changed: list[tuple[str, str, str]] = field(default_factory=list)
    github_changed: list[tuple[str, str, str]] = field(default_factory=list)
    details_changed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "added": self.added,
            "removed": self.removed,
            "role_changed": [{"id": i, "from": a, "to": b} for i, a, b in self.role_changed],
            "github_changed": [{"id": i, "from": a, "to": b} for i, a, b in self.github_changed],
            "details_changed": self.details_changed,
        }

    def summary(self) -> str:
        lines = [f"added: {len(self.added)}" + (f" ({', '.join(self.added)})" if self.added else ""),
                 f"removed: {len(self.removed)}" + (f" ({', '.join(self.removed)})" if self.removed else "")]
        lines.append(f"role changed: {len(self.role_changed)}"
                     + "".join(f"\n  {i}: {a} -> {b}" for i, a, b in self.role_changed))
        lines.append(f"GitHub link changed: {len(self.github_changed)}"
                     + "".join(f"\n  {i}: {a or '(none)'} -> {b or '(none)'}" for i, a, b in self.github_changed))
        lines.append(f"name or e-mail changed: {len(self.details_changed)}")
        return "\n".join(lines)


def diff(old: Roster | None, new: Roster) -> RosterChanges:
    before = old.people if old else {}
    changes = RosterChanges()
    changes.added = sorted(set(new.people) - set(before))
    changes.removed = sorted(set(before) - set(new.people))
    for pid in sorted(set(before) & set(new.people)):
        a, b = before[pid], new.people[pid]
        if a.role != b.role:
            changes.role_changed.append((pid, a.role, b.role))
        if a.github != b.github:
            changes.github_changed.append((pid, a.github, b.github))
        if (a.name, a.email) != (b.name, b.email):
            changes.details_changed.append(pid)
    return changes


class RosterStore:
    """The stored roster (JSON on the hub volume), re-read whenever the file changes, so a new
    import takes effect in the hub at the next login or request without a restart."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._roster: Roster | None = None

    def load(self) -> Roster | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._roster = None, None
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._roster = Roster.from_json(self.path.read_text(encoding="utf-8"))
            self._stamp = stamp
        return self._roster

    def save(self, roster: Roster) -> None:
        """Replace the stored roster atomically (a reader sees the old or the new one, never half)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".roster-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(roster.to_json())
        self.share(tmp)
        os.replace(tmp, self.path)

    def share(self, path: str | os.PathLike | None = None) -> None:
        """Readable by root and the course's grader processes (grades export), nobody else."""
        path = path or self.path
        try:
            os.chmod(path, 0o640)
            if os.geteuid() == 0:
                os.chown(path, 0, grp.getgrnam(READER_GROUP).gr_gid, follow_symlinks=False)
        except (KeyError, FileNotFoundError):
            pass
