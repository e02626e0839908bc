#!/usr/bin/env python3
"""Autograde benchmark: our parallel sandboxed grader against nbgrader's plain serial autograde.

    bench/autograde.py [-m 40] [--workers N] [--assignment 04-project-cli] [--instance mlops-lab]

Against the running lab (`make up`), in a scratch course folder of its own on the course-data
volume (the course's real gradebook and exchange are not touched):

1. M synthetic submissions of the assignment: every other one is the solution, the others leave
   an answer undone, so both passing and failing tests run.
2. Ours: `python -m hub.course.grading autograde` as the grader user in the hub, N workers, every
   notebook in its own sandbox container (no network, limits).
3. Baseline: nbgrader's own `nbgrader autograde --force`, serial, in one course-image container
   (no sandbox per submission), on an identical copy of the folder.
4. Floor, in the same run: an empty notebook in a sandbox, once with no sandbox started ahead
   (container and kernel start, nothing else) and once with one (what a warm sandbox costs).

Prints each rate (submissions per minute), the ratio, the floor, where a submission's time went
in ours (loading nbgrader, nbgrader's own work, waiting for a container and a kernel, running the
notebook, the rest of the round trip) and the CPU time per submission of each grader (from the
host's control groups: the hub container, the sandboxes, Docker and the rest outside
containers), checks that both graders gave the same scores, and removes the scratch folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PREPARE = r'''
import json, os, shutil, sys, datetime as dt
from pathlib import Path
import nbformat
root, assignment, m = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
src = Path("/srv/lab/course/source") / assignment
(root / "state" / "grading").mkdir(parents=True)
(root / "exchange").mkdir()
shutil.copytree(src, root / "nbgrader" / "source" / assignment)
from hub.course import grading  # its settings give it the scratch course: LAB_COURSE_ROOT
assert grading.coursedir_root() == root / "nbgrader", grading.coursedir_root()
api = grading.api()
result = api.generate_assignment(assignment, force=True, create=True)
assert result["success"], result
source = nbformat.read(src / f"{assignment}.ipynb", as_version=4)
release = nbformat.read(root / "nbgrader" / "release" / assignment / f"{assignment}.ipynb", as_version=4)
for i in range(m):
    nb = nbformat.from_dict(json.loads(json.dumps(release)))
    if i % 2 == 0:  # the solution: the source's answer cells, markers removed
        answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in source.cells
                   if c.metadata.get("nbgrader", {}).get("solution")}
        for c in nb.cells:
            gid = c.metadata.get("nbgrader", {}).get("grade_id")
            if gid in answers:
                c.source = "\n".join(l for l in answers[gid].splitlines() if "### " not in l)
    folder = root / "nbgrader" / "submitted" / f"bench{i:03d}" / assignment
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / f"{assignment}.ipynb")
    (folder / "timestamp.txt").write_text("2027-01-05 10:00:00.000000 UTC")
shutil.copytree(root / "nbgrader", root / "serial")
for p in [root / "serial", *(root / "serial").rglob("*")]:
    os.chmod(p, 0o777 if p.is_dir() else 0o666)
'''

SCORES = r'''
import json, sys
from nbgrader.api import Gradebook
out = {}
with Gradebook("sqlite:///" + sys.argv[1]) as gb:
    for s in gb.assignment_submissions(sys.argv[2]):
        out[s.student.id] = s.score
print(json.dumps(out))
'''

FLOOR = r'''
import json, time, requests, nbformat
from hub.settings import current
lab = current("bench")
token = lab.sandbox_token_file.read_text().strip()
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("pass")])
out = []
for _ in range(2):  # the first may find no sandbox started ahead of it; the second does
    t = time.monotonic()
    r = requests.post(f"{lab.sandbox_url}/run", json={"notebook": nb, "label": "bench/floor"},
                      headers={"Authorization": f"token {token}"}, timeout=600)
    r.raise_for_status()
    out.append(time.monotonic() - t)
    time.sleep(5)  # time for the next one to start
print(json.dumps(out))
'''

LEDGER = r'''
import json, sys
from hub.course import grading
print(json.dumps(grading.read_ledger(sys.argv[1])))
'''


def cpu_seconds(hub_id: str) -> dict | None:
    """CPU time used so far (all cores, seconds): the whole host, all containers together (removed
    ones included: a control group's usage counts its children's), the hub's container. From the
    cgroup v1 cpuacct hierarchy Docker uses here; None where there is none to read."""
    base = Path("/sys/fs/cgroup/cpuacct")
    try:
        read = lambda p: int((base / p / "cpuacct.usage").read_text()) / 1e9  # noqa: E731
        return {"host": read("."), "containers": read("docker"), "hub": read(f"docker/{hub_id}")}
    except (OSError, ValueError):
        return None


def cpu_used(before: dict | None, after: dict | None) -> dict | None:
    return None if before is None or after is None else {k: after[k] - before[k] for k in before}


def run(*cmd: str, timeout: float = 3600, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd[:8])}...\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", type=int, default=40, help="synthetic submissions (default 40)")
    p.add_argument("--workers", type=int, default=0, help="our grader's workers (default: the lab's grading.workers, as make autograde)")
    p.add_argument("--assignment", default="04-project-cli")
    p.add_argument("--instance", default=os.environ.get("LAB_INSTANCE", "mlops-lab"))
    p.add_argument("--tag", default=os.environ.get("LAB_IMAGE_TAG") or (ROOT / "VERSION").read_text().strip())
    args = p.parse_args()
    hub = f"{args.instance}-hub-1"
    volume = f"{args.instance}_course-data"
    hub_id = run("docker", "inspect", "-f", "{{.Id}}", hub).stdout.strip()
    scratch = f"bench-{uuid.uuid4().hex[:8]}"
    root = f"/srv/course/{scratch}"
    grader = ["docker", "exec", "-u", "grader", "-w", "/srv/course/state/home", "-e", f"LAB_COURSE_ROOT={root}", hub]
    try:
        print(f"[bench] preparing {args.m} submissions of {args.assignment} in {root}", file=sys.stderr)
        run(*grader, "python", "-c", PREPARE, root, args.assignment, str(args.m))
        cores = int(run("docker", "exec", hub, "nproc").stdout.strip())

        cold, warm = json.loads(run("docker", "exec", hub, "python", "-c", FLOOR).stdout.strip())

        t, cpu0 = time.monotonic(), cpu_seconds(hub_id)
        r = run(*grader, "python", "-m", "hub.course.grading", "autograde", args.assignment,
                *(["--workers", str(args.workers)] if args.workers else []))
        ours_s, ours_cpu = time.monotonic() - t, cpu_used(cpu0, cpu_seconds(hub_id))
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        assert summary["graded_now"] == args.m, summary
        workers = summary["workers"]
        book = json.loads(run(*grader, "python", "-c", LEDGER, args.assignment).stdout)

        t, cpu0 = time.monotonic(), cpu_seconds(hub_id)
        run("docker", "run", "--rm", "--network", "none", "-v", f"{volume}:/srv/course", "-w", f"{root}/serial",
            "--entrypoint", "nbgrader", f"mlops-lab/course:{args.tag}", "autograde", args.assignment, "--force",
            f"--CourseDirectory.root={root}/serial", "--CourseDirectory.course_id=bench",
            f"--CourseDirectory.db_url=sqlite:///{root}/serial/gradebook.db")
        serial_s, serial_cpu = time.monotonic() - t, cpu_used(cpu0, cpu_seconds(hub_id))

        ours = json.loads(run(*grader, "python", "-c", SCORES, f"{root}/nbgrader/gradebook.db", args.assignment).stdout)
        theirs = json.loads(run(*grader, "python", "-c", SCORES, f"{root}/serial/gradebook.db", args.assignment).stdout)
        same = ours == theirs
    finally:
        subprocess.run(["docker", "exec", hub, "rm", "-rf", root], capture_output=True)
    rate = lambda s: args.m / s * 60  # noqa: E731
    print(f"autograde of {args.m} submissions of {args.assignment} ({cores} cores on the hub's host)")
    print(f"  ours, {workers} workers, one sandbox per notebook: {ours_s:7.1f} s  {rate(ours_s):6.1f} submissions/min")
    print(f"  nbgrader autograde, serial, no sandbox:         {serial_s:7.1f} s  {rate(serial_s):6.1f} submissions/min")
    print(f"  ratio (ours / serial rate): {serial_s / ours_s:.2f}x")
    print(f"  floor, in this run: an empty notebook in a sandbox: {cold:.2f} s when none was started ahead, "
          f"{warm:.2f} s when one was (so at most {workers * 60 / warm:.0f} submissions/min with {workers} workers)")
    print(f"  where one submission's time went in ours (mean of {len(book)}; the workers overlap):")
    print(f"    {'loading nbgrader before the workers fork (once)':<58} {summary['worker_start']:6.2f} s")
    names = {"nbgrader": "nbgrader: files, gradebook writes, scoring", "container_start": "waiting for a sandbox container",
             "kernel_start": "waiting for its kernel", "execute": "running the notebook",
             "sandbox_other": "sandbox round trip (send, result, remove)"}
    for key, label in names.items():
        values = [e.get("timing", {}).get(key, 0.0) for e in book.values()]
        print(f"    {label:<58} {sum(values) / max(1, len(values)):6.2f} s")
    if ours_cpu and serial_cpu:
        per = lambda v: v / args.m  # noqa: E731
        print("  CPU time per submission (all cores; the host's whole CPU, measured by its control groups):")
        print(f"    ours: {per(ours_cpu['host']):.2f} s = hub container (workers: nbgrader; sandbox runner) "
              f"{per(ours_cpu['hub']):.2f} + sandbox containers {per(ours_cpu['containers'] - ours_cpu['hub']):.2f}"
              f" + outside containers (Docker engine, the rest) {per(ours_cpu['host'] - ours_cpu['containers']):.2f}")
        print(f"    serial: {per(serial_cpu['host']):.2f} s = its container "
              f"{per(serial_cpu['containers'] - serial_cpu['hub']):.2f} + outside containers "
              f"{per(serial_cpu['host'] - serial_cpu['containers']):.2f}")
    else:
        print("  CPU time per submission: not measured (no cgroup v1 cpuacct hierarchy on this host)")
    print(f"  scores identical: {same} ({sum(1 for v in ours.values() if v)} of {len(ours)} passed something)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
