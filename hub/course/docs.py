"""What people read about the course, generated from the calendar so it never disagrees with it:
the README in every student's home (``course/material/README.md``: the schedule, how to fetch,
validate and submit, hidden tests, the pass rule, where to get help), the header cell of each
assignment notebook (its session, module, release and due time, graded cells and points), and the
instructors' table of assignments in ``course/README.md``.

    python -m hub.course.docs            rewrite the README and the notebooks' header cells
    python -m hub.course.docs --check    exit 1, naming each file, if any is out of date

nbgrader has no notion of a course calendar, so this is ours; the unit tests keep the committed
files equal to what this writes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import nbformat

from .calendar import Calendar, load_calendar

COURSE = Path(__file__).resolve().parents[2] / "course"
README = Path("material") / "README.md"
# The instructors' map of the course (course/README.md): the table between these markers.
MAP_START = "<!-- assignments: written by python -m hub.course.docs from calendar.yaml and the notebooks -->"
MAP_END = "<!-- end of assignments -->"


def when(t: dt.datetime) -> str:
    return f"{t:%a} {t.day} {t:%b} {t:%H:%M}"


def graded_cells(nb) -> list[tuple[str, float]]:
    return [(c.metadata["nbgrader"]["grade_id"], c.metadata["nbgrader"].get("points", 0)) for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"]


def header(cal: Calendar, name: str, nb) -> str:
    a = cal.assignments[name]
    number = name.split("-", 1)[0]
    session = cal.sessions.get(a.session) if a.session else None
    cells = graded_cells(nb)
    total = sum(p for _, p in cells)
    kind = "core: counts towards passing" if a.core else "optional: does not count towards passing"
    lines = [f"# {number} · {a.title}", ""]
    if session:
        lines.append(f"**Session {session.number} · {session.title}** · module: {a.module or '–'} · {kind}  ")
    else:
        lines.append(f"Module: {a.module or '–'} · {kind}  ")
    lines += [
        f"Released {a.release:%A} {a.release.day} {a.release:%B %Y, %H:%M} · "
        f"**due {a.due:%A} {a.due.day} {a.due:%B %Y, %H:%M}** ({cal.timezone} time)",
        "",
        f"**Graded: {total:g} points** in {len(cells)} test cells: "
        + ", ".join(f"`{gid}` ({p:g})" for gid, p in cells) + ". "
        "Hidden tests run too when your work is graded, so passing the visible tests is not everything. "
        "Your last submission before the due time is graded on its own, offline, with the course "
        "image's packages only. See `README.md` in your home for how to fetch, validate and submit.",
    ]
    return "\n".join(lines)


def readme(cal: Calendar) -> str:
    core = [a for a in cal.assignments.values() if a.core]
    fraction = round(cal.core_min_fraction * 100)
    lines = [
        "# Welcome to 02476 Machine Learning Operations",
        "",
        "This is your own JupyterLab, in your own container, with PyTorch and the course's tools. "
        "Everything in your home folder is kept between sessions; stop your server from the hub's "
        "*Home* page when you are done (it is stopped for you after a while without use, your files stay).",
        "",
        f"The course has {len(cal.sessions)} sessions. Each session's assignments are released here at "
        "the start of the session and are due two weekdays later, at 23:59. "
        f"Times are {cal.timezone} time.",
        "",
        "## Schedule",
        "",
        "| session | assignment | module | released | due | |",
        "|---|---|---|---|---|---|",
    ]
    for a in sorted(cal.assignments.values(), key=lambda a: (a.release, a.name)):
        session = cal.sessions.get(a.session) if a.session else None
        label = f"{session.number} · {session.title}" if session else "–"
        lines.append(f"| {label} | `{a.name}` {a.title} | {a.module or '–'} | {when(a.release)} | "
                     f"**{when(a.due)}** | {'core' if a.core else 'optional'} |")
    lines += [
        "",
        "## How to fetch, validate and submit",
        "",
        "1. Open the **Nbgrader** menu, then **Assignment List**. Released assignments are listed there; "
        "click **Fetch**. The assignment appears as a folder in your home.",
        "2. Open its notebook. Its first cell says what is graded and when it is due. Write your answers "
        "where it says `YOUR CODE HERE` (remove the `raise NotImplementedError()`). Do not change or "
        "delete the test cells: they are put back from the original when your work is graded.",
        "3. Click **Validate** (in the notebook's toolbar, or in the Assignment List). It restarts the "
        "notebook's kernel, runs every cell and tells you which tests fail. It runs with the course "
        "image's packages only, as grading does: if your notebook needs a package you installed "
        "yourself with `pip`, validation says so.",
        "4. Click **Submit** in the Assignment List. You can submit as often as you like; the last "
        "submission before the due time is the one graded. A submission after the due time is kept "
        "and marked late, but it is not graded.",
        "5. After the due time your work is graded automatically. Then **Fetch Feedback** in the "
        "Assignment List shows your score and each test's output.",
        "",
        "## Hidden tests and how grading runs",
        "",
        "- Each graded test cell has visible tests, and **hidden tests** that are added when your work "
        "is graded. They check the same things on other inputs, so an answer that only fits the visible "
        "examples (a constant, a hard-coded expected value) scores 0. Write code that does the work.",
        "- Your notebook is graded **on its own**: only the `.ipynb` file, in a fresh container of the "
        "course image, **offline**, with 1 CPU, 1 GiB of memory and a time limit. Other files in your "
        "home and packages you installed yourself are not there. A cell stopped by a limit scores 0 and "
        "the feedback names the limit.",
        "- Warnings that libraries print do not cost points; errors in a test cell do.",
        "",
        "## Passing the course's assignments",
        "",
        f"The rule: **{cal.pass_description or 'every core assignment at the required fraction'}**. "
        f"There are {len(core)} core assignments; every assignment is worth the same number of points, "
        f"spread over several test cells, so {fraction} % means about half the work of each one. "
        "Optional assignments are there to learn from and do not count.",
        "",
        "## Where to get help",
        "",
        "- In the exercise sessions: ask a teaching assistant; they can open your server with you.",
        "- `00-welcome/welcome.ipynb` checks that PyTorch works in your server.",
        "- If your server does not start, the hub's page shows why; if it still fails, tell a teaching "
        "assistant or your instructor, with your student id.",
        "",
    ]
    return "\n".join(lines)


def course_map(cal: Calendar, points: dict[str, list[tuple[str, float]]]) -> str:
    lines = [MAP_START, "", "| assignment | session | module | core | released | due | graded cells (points) |",
             "|---|---|---|---|---|---|---|"]
    for a in sorted(cal.assignments.values(), key=lambda a: (a.release, a.name)):
        session = cal.sessions.get(a.session) if a.session else None
        cells = ", ".join(f"`{gid}` ({p:g})" for gid, p in points.get(a.name, []))
        lines.append(f"| `{a.name}` {a.title} | {f'{session.number} · {session.title}' if session else '–'} | "
                     f"{a.module or '–'} | {'yes' if a.core else 'no'} | {when(a.release)} | {when(a.due)} | {cells} |")
    return "\n".join(lines + ["", MAP_END])


def write(course: Path = COURSE, check: bool = False) -> tuple[list[str], list[str]]:
    """Rewrite (or with check, only compare) the README and the headers; returns the files that
    differed and the problems that stopped a file being written."""
    cal = load_calendar(course / "calendar.yaml")
    stale, problems = [], []
    text = readme(cal)
    path = course / README
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        stale.append(str(path))
        if not check:
            path.write_text(text, encoding="utf-8")
    points: dict[str, list[tuple[str, float]]] = {}
    for name in cal.assignments:
        path = course / "source" / name / f"{name}.ipynb"
        try:
            nb = nbformat.read(path, as_version=4)
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: cannot read: {exc}")
            continue
        points[name] = graded_cells(nb)
        cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "header"]
        want = header(cal, name, nb)
        if not cells:
            problems.append(f"{path}: no header cell (a locked markdown cell with grade_id 'header')")
            continue
        if cells[0].source != want:
            stale.append(str(path))
            if not check:
                cells[0].source = want
                nbformat.write(nb, path)
    path = course / "README.md"
    text = path.read_text(encoding="utf-8")
    if MAP_START not in text or MAP_END not in text:
        problems.append(f"{path}: no assignment table (the lines {MAP_START} and {MAP_END})")
    else:
        before, rest = text.split(MAP_START, 1)
        after = rest.split(MAP_END, 1)[1]
        new = before + course_map(cal, points) + after
        if new != text:
            stale.append(str(path))
            if not check:
                path.write_text(new, encoding="utf-8")
    return stale, problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hub.course.docs", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only report files that are out of date")
    p.add_argument("--course", type=Path, default=COURSE, help="the course folder (default: %(default)s)")
    args = p.parse_args(argv)
    stale, problems = write(args.course, check=args.check)
    for item in stale:
        print(("out of date: " if args.check else "written: ") + item)
    for item in problems:
        print(f"error: {item}", file=sys.stderr)
    return 1 if problems or (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
