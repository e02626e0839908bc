"""Autogrades one assignment the way the lab grades it, with nbgrader's own ``autograde``, for
three kinds of submission, and prints every graded cell's score as JSON:

- ``solution``: the instructor's solution, as a student who did the work would submit it;
- ``release``: the released notebook untouched;
- ``gamed-NN``: each gamed answer of ``course/gaming/<assignment>.yaml``, the solution with the
  named solution cells replaced.

Run inside the course image, from a writable copy of the course folder:
``python tools/gaming_check.py ASSIGNMENT``. The suite (tests/integration/test_course_assignments.py)
runs it offline and checks the scores; course authors run it the same way while writing an
assignment. nbgrader has no notion of gamed answers, hence this script.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

MARKER = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*$")


def meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def solved(source_nb, release_nb):
    """The release notebook with every solution cell holding the instructor's answer."""
    answers = {meta(c)["grade_id"]: "\n".join(line for line in c.source.splitlines() if not MARKER.match(line))
               for c in source_nb.cells if meta(c).get("solution")}
    nb = nbformat.from_dict(json.loads(json.dumps(release_nb)))
    for cell in nb.cells:
        if meta(cell).get("solution"):
            cell.source = answers[meta(cell)["grade_id"]]
    return nb


def load_gamed(path: Path, solution_ids: set[str], grade_ids: set[str]) -> list[dict]:
    if not path.is_file():
        return []
    data = yaml.safe_load(path.read_text()) or {}
    gamed = data.get("gamed") or []
    problems = []
    for i, g in enumerate(gamed, 1):
        where = f"{path}: gamed[{i}] ({g.get('name', '?')})"
        for cid in g.get("cells") or {}:
            if cid not in solution_ids:
                problems.append(f"{where}: cells.{cid}: not a solution cell (have {sorted(solution_ids)})")
        for cid in g.get("targets") or []:
            if cid not in grade_ids:
                problems.append(f"{where}: targets: {cid} is not a graded cell (have {sorted(grade_ids)})")
        if not g.get("cells") or not g.get("targets"):
            problems.append(f"{where}: needs cells and targets")
    if problems:
        sys.exit("\n".join(problems))
    return gamed


def main(assignment: str) -> None:
    root = Path.cwd()
    r = subprocess.run(["nbgrader", "generate_assignment", assignment, "--force"], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"generate_assignment failed:\n{r.stdout}{r.stderr}")
    name = f"{assignment}.ipynb"
    source_nb = nbformat.read(root / "source" / assignment / name, as_version=4)
    release_nb = nbformat.read(root / "release" / assignment / name, as_version=4)
    solution_ids = {meta(c)["grade_id"] for c in source_nb.cells if meta(c).get("solution")}
    grade_ids = [meta(c)["grade_id"] for c in source_nb.cells if meta(c).get("grade")]
    gamed = load_gamed(root / "gaming" / f"{assignment}.yaml", solution_ids, set(grade_ids))

    submissions = {"solution": solved(source_nb, release_nb), "release": release_nb}
    for i, g in enumerate(gamed, 1):
        nb = solved(source_nb, release_nb)
        for cell in nb.cells:
            gid = meta(cell).get("grade_id")
            if meta(cell).get("solution") and gid in g["cells"]:
                cell.source = g["cells"][gid]
        submissions[f"gamed-{i:02d}"] = nb
    for student, nb in submissions.items():
        folder = root / "submitted" / student / assignment
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, folder / name)
    r = subprocess.run(["nbgrader", "autograde", assignment, "--create", "--force"], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"autograde failed:\n{r.stdout[-4000:]}{r.stderr[-4000:]}")

    from nbgrader.api import Gradebook

    text = "".join(c.source for c in release_nb.cells)
    result = {"grade_cells": {}, "submissions": {}, "gamed": {},
              "release_leaks": [m for m in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS") if m in text]}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        for gid in grade_ids:
            result["grade_cells"][gid] = gb.find_grade_cell(gid, assignment, assignment).max_score
        for student in submissions:
            graded = nbformat.read(root / "autograded" / student / assignment / name, as_version=4)
            errors = {}
            for cell in graded.cells:
                gid = meta(cell).get("grade_id")
                if gid in result["grade_cells"]:
                    text = [o.get("ename", "") + ": " + o.get("evalue", "") if o.output_type == "error" else o.get("text", "")
                            for o in cell.get("outputs", []) if o.output_type == "error" or o.get("name") == "stderr"]
                    errors[gid] = "\n".join(text)[-600:]
            result["submissions"][student] = {
                gid: {"score": gb.find_grade(gid, assignment, assignment, student).score, "output": errors.get(gid, "")}
                for gid in grade_ids}
    result["gamed"] = {f"gamed-{i:02d}": {"name": g.get("name", ""), "targets": g["targets"]}
                       for i, g in enumerate(gamed, 1)}
    print("@@RESULT@@" + json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
