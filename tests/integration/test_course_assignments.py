"""The course's nbgrader assignments, in the real course image, offline: for each one the
solution passes every test (hidden ones included), and the released version, as students get
it, fails every test without their work and contains no solution or hidden test."""

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, TAG, docker

pytestmark = pytest.mark.integration

COURSE_IMAGE = f"mlops-lab/course:{TAG}"
ASSIGNMENTS = sorted(p.name for p in (ROOT / "course" / "source").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def course():
    """A course-image container without network, the course folder copied in, every assignment generated."""
    name = f"mlops-lab-test-course-{uuid.uuid4().hex[:8]}"
    docker("run", "-d", "--name", name, "--network", "none", "--entrypoint", "sleep",
           "-v", f"{ROOT / 'course'}:/srv/course-src:ro", COURSE_IMAGE, "infinity")
    try:
        docker("exec", name, "cp", "-r", "/srv/course-src", "/tmp/course")
        for assignment in ASSIGNMENTS:
            r = subprocess.run(["docker", "exec", "-w", "/tmp/course", name, "nbgrader", "generate_assignment",
                                assignment, "--force"], capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr
        yield name
    finally:
        docker("rm", "-f", name, check=False)


def validate(container, path, invert=False):
    cmd = ["docker", "exec", "-w", "/tmp/course", container, "nbgrader", "validate", *(["--invert"] if invert else []), path]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_the_image_ships_no_sources_or_hidden_tests():
    """Students' containers get the material, never the assignments' sources."""
    names = " -o ".join(f"-name '{a}*'" for a in ASSIGNMENTS)
    found = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", COURSE_IMAGE, "-c",
                   f"find / -xdev \\( {names} \\) 2>/dev/null; grep -rl 'a planted bug was not caught' /opt /home 2>/dev/null; true")
    assert found.strip() == ""


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_passes_and_release_fails(course, assignment):
    notebook = f"{assignment}/{assignment}.ipynb"
    solution = validate(course, f"source/{notebook}")
    assert "Success! Your notebook passes all the tests." in solution.stdout, solution.stdout[-3000:] + solution.stderr[-2000:]

    released = json.loads(docker("exec", course, "cat", f"/tmp/course/release/{notebook}"))
    text = "".join("".join(c["source"]) for c in released["cells"])
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
    assert "raise NotImplementedError()" in text
    graded = [c for c in released["cells"] if c["metadata"].get("nbgrader", {}).get("grade")]
    assert graded and sum(c["metadata"]["nbgrader"]["points"] for c in graded) > 0

    release = validate(course, f"release/{notebook}", invert=True)
    assert "Success! The notebook does not pass any tests." in release.stdout, release.stdout[-3000:] + release.stderr[-2000:]
