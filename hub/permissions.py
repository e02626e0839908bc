"""Who may do what in the course: the one table that the course service, the formgrader and
the roster service check, and that the hub's RBAC roles (``hub.config.course_roles``) follow.

A person's course role comes from the hub's user model, as every service sees it: the course
groups the roster service keeps (``hub.roster.ROLE_GROUPS``), or ``instructor`` for the
operators (``auth.admin_users``) and the ``lab-admin`` token. The model's groups come with
JupyterHub's identify scopes, so any token or login that reaches a service carries them.

Ours because the roles are the course's, not JupyterHub's: RBAC decides who reaches a service,
this table decides what they may do there.
"""

from __future__ import annotations

from collections.abc import Iterable

from hub.roster import ROLE_GROUPS

ADMIN_SERVICE = "lab-admin"

# action -> the roles that may do it
PERMISSIONS: dict[str, frozenset[str]] = {
    # A student's own work: released assignments, their submissions and feedback.
    "exchange": frozenset({"student", "ta", "instructor"}),
    # Read what the course is doing: dashboard, job status, grades export, the formgrader's pages.
    "course.view": frozenset({"ta", "instructor"}),
    # Change it: release, unrelease, collect, autograde, feedback, the deadline job, the test
    # clock, and in the formgrader every write (grades, comments, students, generate, release).
    "course.manage": frozenset({"instructor"}),
    # Import the roster (which decides who is staff).
    "roster.import": frozenset({"instructor"}),
}

# What each endpoint of the course service needs (tests walk this table).
COURSE_ENDPOINTS: dict[tuple[str, str], str] = {
    ("GET", "api/assignments"): "exchange",
    ("GET", "api/submissions"): "exchange",
    ("POST", "api/assignments/{a}/release"): "course.manage",
    ("POST", "api/assignments/{a}/collect"): "course.manage",
    ("POST", "api/assignments/{a}/autograde"): "course.manage",
    ("POST", "api/assignments/{a}/feedback"): "course.manage",
    ("POST", "api/assignments/{a}/deadline"): "course.manage",
    ("PUT", "api/clock"): "course.manage",
    ("GET", "api/status"): "course.view",
    ("GET", "api/grades.csv"): "course.view",
    ("GET", "dashboard"): "course.view",
}


def role_of(user: dict | None, operators: Iterable[str] = ()) -> str | None:
    """The course role of a hub user or service model, or None (not on the roster)."""
    if not user:
        return None
    name = user.get("name", "")
    if user.get("kind") == "service":
        return "instructor" if name == ADMIN_SERVICE else None
    if name in set(operators) or user.get("admin"):
        return "instructor"
    groups = set(user.get("groups") or ())
    for role in ("instructor", "ta", "student"):
        if ROLE_GROUPS[role] in groups:
            return role
    return None


def may(role: str | None, action: str) -> bool:
    return role is not None and role in PERMISSIONS[action]


def who_may(action: str) -> str:
    return " or ".join(sorted(PERMISSIONS[action]))
