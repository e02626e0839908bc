"""The course's nbgrader assignments, graded as the lab grades them: nbgrader's own
``autograde`` in the real course image, offline, in a container as confined as the grading
sandbox (read-only root, tmpfs home, one CPU). For each assignment (course/tools/gaming_check.py):

- the solution scores every point, hidden tests included;
- the released notebook, as students get it, scores 0 in every graded cell and holds no
  solution or hidden test;
- every gamed answer of course/gaming/<assignment>.yaml (constants, hard-coded expectations,
  identity checks, skipped work, monkeypatching) scores 0 in each cell it targets.

Assignments are graded two at a time (one per core; LAB_TEST_GRADING_WORKERS sets it) as the
tests ask for them."""

import json
import os
import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import ROOT, TAG, docker

pytestmark = pytest.mark.integration

COURSE_IMAGE = f"mlops-lab/course:{TAG}"
ASSIGNMENTS = sorted(p.name for p in (ROOT / "course" / "source").iterdir() if p.is_dir())


def autograde(assignment: str) -> dict:
    name = f"mlops-lab-test-course-{uuid.uuid4().hex[:8]}"
    docker("run", "-d", "--name", name, "--network", "none", "--read-only",
           "--tmpfs", "/tmp:size=1g", "--tmpfs", "/home/jovyan:size=256m,uid=1000,gid=1000",
           "--cpus", "1", "--memory", "2g", "--memory-swap", "2g", "--pids-limit", "256",
           "-v", f"{ROOT / 'course'}:/srv/course-src:ro", "--entrypoint", "sleep", COURSE_IMAGE, "infinity")
    try:
        r = subprocess.run(["docker", "exec", name, "sh", "-c",
                            f"cp -r /srv/course-src /tmp/course && cd /tmp/course && python tools/gaming_check.py {assignment}"],
                           capture_output=True, text=True, timeout=900)
        marker = "@@RESULT@@"
        if r.returncode or marker not in r.stdout:
            raise AssertionError(f"grading {assignment} failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return json.loads(r.stdout.split(marker, 1)[1])
    finally:
        docker("rm", "-f", name, check=False)


@pytest.fixture(scope="module")
def graded(request):
    """Grades the assignments this run selected, two at a time, in the order they are asked for."""
    wanted = [item.callspec.params["assignment"] for item in request.session.items
              if hasattr(item, "callspec") and "assignment" in item.callspec.params
              and item.module.__name__ == __name__]
    pool = ThreadPoolExecutor(max_workers=int(os.environ.get("LAB_TEST_GRADING_WORKERS", "2")))
    futures = {}
    lock = threading.Lock()
    for a in dict.fromkeys(wanted):
        futures[a] = pool.submit(autograde, a)

    def get(assignment):
        with lock:
            if assignment not in futures:
                futures[assignment] = pool.submit(autograde, assignment)
        return futures[assignment].result()

    yield get
    pool.shutdown(wait=False, cancel_futures=True)


def test_the_image_ships_no_sources_or_hidden_tests():
    """Students' containers get the material, never the assignments' sources."""
    names = " -o ".join(f"-name '{a}*'" for a in ASSIGNMENTS)
    found = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", COURSE_IMAGE, "-c",
                   f"find / -xdev \\( {names} \\) 2>/dev/null; "
                   "grep -rlE 'BEGIN (HIDDEN TESTS|SOLUTION)' /opt/course /home /srv /usr/local 2>/dev/null; true")
    assert found.strip() == ""


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_scores_full_and_release_nothing(graded, assignment):
    result = graded(assignment)
    cells = result["grade_cells"]
    assert sum(cells.values()) > 0
    solution = result["submissions"]["solution"]
    lost = {gid: s for gid, s in solution.items() if s["score"] != cells[gid]}
    assert not lost, f"the solution of {assignment} loses points: " + json.dumps(lost, indent=1)
    release = result["submissions"]["release"]
    scored = {gid: s["score"] for gid, s in release.items() if s["score"]}
    assert not scored, f"the release of {assignment} scores without any work: {scored}"
    assert not result["release_leaks"], f"the release of {assignment} holds: {result['release_leaks']}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_gamed_answers_score_nothing(graded, assignment):
    result = graded(assignment)
    assert result["gamed"], f"course/gaming/{assignment}.yaml holds no gamed answers"
    beaten = []
    for student, g in result["gamed"].items():
        for gid in g["targets"]:
            s = result["submissions"][student][gid]
            if s["score"]:
                beaten.append(f"{g['name']!r} scores {s['score']:g} on {gid}")
    assert not beaten, f"{assignment}: gamed answers that score: " + "; ".join(beaten)


def _notebook(*cells):
    """A notebook whose cells are (source, graded) pairs; graded cells are worth a point."""
    out = []
    for i, (source, grade) in enumerate(cells):
        out.append({"cell_type": "code", "execution_count": None, "outputs": [], "source": source,
                    "metadata": {"nbgrader": {"grade": grade, "grade_id": f"c{i}", "locked": grade,
                                              "solution": not grade, "schema_version": 3, "task": False,
                                              **({"points": 1} if grade else {})}}})
    return json.dumps({"cells": out, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                 "language": "python"}},
                       "nbformat": 4, "nbformat_minor": 5})


def test_validate_runs_as_grading_does():
    """A student's Validate (nbgrader validate in their server) runs the grading kernel: a
    library's warning on stderr does not fail a test, and a package the student installed with
    pip --user, which grading lacks, fails with a message that says so. The student's own
    kernel still imports it."""
    name = f"mlops-lab-test-validate-{uuid.uuid4().hex[:8]}"
    docker("run", "-d", "--name", name, "--network", "none", "--entrypoint", "sleep", COURSE_IMAGE, "infinity")
    try:
        site = docker("exec", name, "python", "-m", "site", "--user-site").strip()
        warn = _notebook(("import warnings, logging\nwarnings.warn('this API is deprecated')\n"
                          "logging.getLogger('lib').warning('a log line on stderr')", False),
                         ("import sys\nprint('progress 50%', file=sys.stderr)\nassert 1 + 1 == 2", True))
        mine = _notebook(("import fancylib\nvalue = fancylib.VALUE", False), ("assert value == 42", True))
        script = (f"mkdir -p {site}/fancylib && echo 'VALUE = 42' > {site}/fancylib/__init__.py && "
                  "cd /tmp && cat > warn.ipynb && printf '%s' \"$MINE\" > mine.ipynb && "
                  "nbgrader validate warn.ipynb; echo @@@@; nbgrader validate mine.ipynb; echo @@@@; "
                  "python -c 'import fancylib; print(\"own kernel:\", fancylib.VALUE)'")
        r = subprocess.run(["docker", "exec", "-i", "-e", f"MINE={mine}", name, "sh", "-c", script], input=warn,
                           capture_output=True, text=True, timeout=300)
        warn_out, mine_out, own = r.stdout.split("@@@@")
        assert "Success! Your notebook passes all the tests." in warn_out, warn_out + r.stderr
        assert "only your own pip install has it, grading does not" in mine_out and "fancylib" in mine_out, mine_out + r.stderr
        assert "own kernel: 42" in own
    finally:
        docker("rm", "-f", name, check=False)
