"""The course service's HTML pages: the staff dashboard (counts and score distributions as
inline SVG, no script) and a student's own list of assignments. Plain functions of the course's
state, so they render the same in tests as in the service; every value from the course or a
person is escaped."""

from __future__ import annotations

import html
from zoneinfo import ZoneInfo

from hub.course.exchange import id_to_time


def _bars(values: list[tuple[str, int]], total: int, width: int = 260) -> str:
    """A small horizontal bar chart (SVG) of counts out of ``total``."""
    rows = []
    top = max(total, max((v for _, v in values), default=0), 1)
    for i, (label, value) in enumerate(values):
        w = int(width * value / top)
        y = i * 18
        rows.append(f'<text x="0" y="{y + 12}" font-size="11">{html.escape(label)}</text>'
                    f'<rect x="70" y="{y + 2}" width="{w}" height="12" fill="#990000"><title>{value}</title></rect>'
                    f'<text x="{74 + w}" y="{y + 12}" font-size="11">{value}</text>')
    return (f'<svg role="img" aria-label="counts" width="{width + 110}" height="{len(values) * 18}">'
            + "".join(rows) + "</svg>")


def _histogram(scores: list[float], maximum: float | None, bins: int = 10) -> str:
    """Score distribution (SVG): the share of the points each graded submission got, in 10 bins."""
    if not scores or not maximum:
        return '<svg role="img" aria-label="no scores yet" width="220" height="60"><text x="0" y="30" font-size="11">no scores yet</text></svg>'
    counts = [0] * bins
    for s in scores:
        counts[min(bins - 1, int(bins * s / maximum))] += 1
    top = max(counts)
    bar_w, h = 20, 60
    parts = []
    for i, c in enumerate(counts):
        bh = int(h * c / top)
        parts.append(f'<rect x="{i * (bar_w + 2)}" y="{h - bh}" width="{bar_w}" height="{bh}" fill="#1f4e79">'
                     f'<title>{i * 100 // bins}-{(i + 1) * 100 // bins} %: {c}</title></rect>')
    parts.append(f'<text x="0" y="{h + 12}" font-size="10">0 %</text>'
                 f'<text x="{bins * (bar_w + 2) - 30}" y="{h + 12}" font-size="10">100 %</text>')
    return (f'<svg role="img" aria-label="score distribution" width="{bins * (bar_w + 2)}" height="{h + 14}">'
            + "".join(parts) + "</svg>")


def dashboard(course, rows: list[dict], user: str, role: str, grades_url: str) -> str:
    """The staff dashboard: per assignment, who fetched, submitted, submitted late and was graded,
    the score distribution, and what the sandbox flagged."""
    out = []
    for r in rows:
        status = "released" if r["released"] else "not released"
        of_points = f" (of {r['max_score']:g} points)" if r["max_score"] else ""
        flagged = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>"
                          for k, v in sorted(r["flagged"].items()))
        out.append(
            f'<section class="assignment" id="{html.escape(r["assignment"])}">'
            f'<h2>{html.escape(r["assignment"])}: {html.escape(r["title"])}'
            f'{" (core)" if r["core"] else " (optional)"}</h2>'
            f'<p>Release {html.escape(r["release"][:16].replace("T", " "))}, due '
            f'{html.escape(r["due"][:16].replace("T", " "))}; {status}.</p>'
            f'<div class="plots"><figure>{_bars([("fetched", r["fetched"]), ("submitted", r["submitted"]), ("late", r["late"]), ("graded", r["graded"])], r["submitted"])}'
            f'<figcaption>Students who fetched, submitted, submitted late, were graded</figcaption></figure>'
            f'<figure>{_histogram(r["scores"], r["max_score"])}<figcaption>Score distribution'
            f'{of_points}'
            f'</figcaption></figure></div>'
            + (f"<details open><summary>Flagged by the sandbox</summary><ul>{flagged}</ul></details>" if flagged else "")
            + "</section>")
    now = course.clock.now().astimezone(ZoneInfo(course.calendar.timezone)).strftime("%Y-%m-%d %H:%M %Z")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Course dashboard</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}} .plots{{display:flex;gap:3em}}
figure{{margin:0}} figcaption{{font-size:12px;color:#444}} section{{border-top:1px solid #ccc;padding:.5em 0}}</style>
</head><body><h1>Course dashboard: {html.escape(course.course_id)}</h1>
<p>Course time: {html.escape(now)}.
You are {html.escape(user)} ({html.escape(role)}).
<a href="{html.escape(course.formgrader_url)}formgrader">Formgrader</a> ·
<a href="{html.escape(grades_url)}">Grades (CSV)</a></p>
{''.join(out)}</body></html>"""


def my_assignments(course, student: str) -> str:
    """A student's page: the released assignments, their own submissions (late ones marked) and
    which have feedback."""
    tz = ZoneInfo(course.calendar.timezone)
    subs = course.store.submissions(student)
    rows = []
    for name in course.store.released():
        entry = course.calendar.get(name)
        mine = [s for s in subs if s.assignment == name]
        done = "".join(
            f"<li>{html.escape(id_to_time(s.id).astimezone(tz).strftime('%a %d %b %H:%M:%S'))}"
            f"{' <strong>(late)</strong>' if s.late else ''}"
            f"{' · feedback ready: use Fetch Feedback in the Assignments panel' if s.feedback else ''}</li>"
            for s in mine) or "<li>not submitted</li>"
        due = entry.due.astimezone(tz).strftime("%a %d %b %H:%M") if entry else "no due time"
        rows.append(f"<tr><td><b>{html.escape(name)}</b><br>{html.escape(entry.title if entry else '')}</td>"
                    f"<td>{html.escape(due)}</td><td><ul>{done}</ul></td></tr>")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>My assignments</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}} td{{vertical-align:top;padding:.4em 1em .4em 0;
border-top:1px solid #ddd}} ul{{margin:0;padding-left:1.2em}}</style></head><body>
<h1>My assignments ({html.escape(student)})</h1>
<p>Fetch, submit and fetch feedback in JupyterLab: menu <i>Nbgrader</i> → <i>Assignment List</i>.
You may submit as often as you like; the last submission before the due time is graded.</p>
<table><tr><th>Assignment</th><th>Due</th><th>Your submissions</th></tr>{''.join(rows)}</table>
</body></html>"""
