"""The grades export: one row per student, each assignment's score, the total and the pass rule
of course/calendar.yaml, from nbgrader's gradebook and the roster (names, e-mails)."""

from __future__ import annotations

import csv
import io

from hub.course.grading import calendar, gradebook_url, settings


def roster_people() -> dict:
    try:
        from ..roster import Roster
        return Roster.from_json(settings().roster_file.read_text()).people
    except (OSError, ValueError, AttributeError):
        return {}


def grades_rows() -> tuple[list[str], list[list]]:
    """The export: one row per student, each assignment's score, total, and the pass rule."""
    from nbgrader.api import Gradebook, MissingEntry

    cal = calendar()
    people = roster_people()
    students = {pid for pid, p in people.items() if p.role == "student"}
    with Gradebook(gradebook_url()) as gb:
        maxima = {}
        for name in cal.assignments:
            try:
                maxima[name] = float(gb.find_assignment(name).max_score)
            except MissingEntry:
                maxima[name] = None
        students |= {s.id for s in gb.students}
        header = ["student_id", "name", "email"]
        header += [f"{n} (of {maxima[n]:g})" if maxima[n] else f"{n} (not released)" for n in cal.assignments]
        header += ["total", "core modules passed", "result"]
        rows = []
        for sid in sorted(students):
            person = people.get(sid)
            row = [sid, getattr(person, "name", "") or "", getattr(person, "email", "") or ""]
            fractions, total = {}, 0.0
            for name in cal.assignments:
                try:
                    score = float(gb.find_submission(name, sid).score)
                except MissingEntry:
                    score = 0.0 if maxima[name] else None
                row.append("" if score is None else f"{score:g}")
                total += score or 0.0
                if maxima[name]:
                    fractions[name] = (score or 0.0) / maxima[name]
            core = [a for a in cal.assignments.values() if a.core]
            passed_core = sum(1 for a in core if fractions.get(a.name, 0.0) >= cal.core_min_fraction)
            row += [f"{total:g}", f"{passed_core} of {len(core)}", "passed" if cal.passed(fractions) else "not passed"]
            rows.append(row)
    return header, rows


def grades_csv() -> str:
    header, rows = grades_rows()
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
