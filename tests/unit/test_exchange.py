"""The exchange store: what a student's upload may contain, where it is filed, what a student
can ask for, and collecting the latest submission for nbgrader."""

import datetime as dt
import io
import json
import tarfile
from types import SimpleNamespace

import pytest

from hub.course.exchange import ExchangeRefused, ExchangeStore, safe_extract
from hub.course.sandbox import MARKER, parse_output

UTC = dt.timezone.utc


def tar(entries: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):  # (type, linkname)
                info.type, info.linkname = data
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def store(tmp_path):
    s = ExchangeStore(tmp_path / "exchange")
    release = tmp_path / "release" / "a1"
    release.mkdir(parents=True)
    (release / "a1.ipynb").write_text("{}")
    (release / "data").mkdir()
    (release / "data" / "x.csv").write_text("0")
    s.release("a1", release)
    return s


@pytest.mark.parametrize("entries, message", [
    ({"../b/x.ipynb": b"{}"}, "outside its folder"),
    ({"/etc/x.ipynb": b"{}"}, "outside its folder"),
    ({"a1.ipynb": (tarfile.SYMTYPE, "/srv/course/nbgrader/gradebook.db")}, "link or special file"),
    ({"a1.ipynb": (tarfile.LNKTYPE, "../../other")}, "link or special file"),
    ({"notes.txt": b"no notebook"}, "no notebook"),
])
def test_bad_uploads_are_refused_and_nothing_is_stored(store, entries, message):
    with pytest.raises(ExchangeRefused, match=message):
        store.submit("s230001", "a1", tar(entries), dt.datetime(2027, 1, 5, tzinfo=UTC), None)
    assert store.submissions("s230001") == []
    assert not any(p.name.endswith(".partial") for p in store.root.rglob("*"))


def test_not_a_tarball(store):
    with pytest.raises(ExchangeRefused, match="not a tar.gz"):
        store.submit("s230001", "a1", b"plain bytes", dt.datetime(2027, 1, 5, tzinfo=UTC), None)


@pytest.mark.parametrize("student, assignment", [("../s230002", "a1"), ("s230001", "../outbound"),
                                                 ("S230001", "a1"), ("s230001", "a1/../../x")])
def test_names_from_requests_are_checked(store, student, assignment):
    with pytest.raises(ExchangeRefused):
        store.inbound(student, assignment)


def test_unreleased_assignment_is_refused(store):
    with pytest.raises(ExchangeRefused, match="not released"):
        store.submit("s230001", "a2", tar({"a2.ipynb": b"{}"}), dt.datetime(2027, 1, 5, tzinfo=UTC), None)


def test_submissions_are_timestamped_marked_late_and_kept_per_student(store):
    due = dt.datetime(2027, 1, 6, 22, 59, tzinfo=UTC)
    first = store.submit("s230001", "a1", tar({"a1.ipynb": b"{}"}), dt.datetime(2027, 1, 5, 10, tzinfo=UTC), due)
    late = store.submit("s230001", "a1", tar({"a1.ipynb": b"{}", "data/x.csv": b"1"}),
                        dt.datetime(2027, 1, 7, 10, tzinfo=UTC), due)
    store.submit("s230002", "a1", tar({"a1.ipynb": b"{}"}), dt.datetime(2027, 1, 5, 11, tzinfo=UTC), due)
    assert (first.late, late.late) == (False, True)
    assert first.timestamp == "2027-01-05 10:00:00.000000 UTC"
    assert [s.id for s in store.submissions("s230001")] == [first.id, late.id]
    assert [s.student for s in store.submissions("s230002")] == ["s230002"]
    assert store.latest("s230001", "a1", before=due).id == first.id
    assert store.latest("s230001", "a1").id == late.id
    with pytest.raises(ExchangeRefused, match="no feedback"):
        store.feedback_archive("s230001", "a1", first.id)


def test_collect_copies_the_latest_on_time_submission_once(store, tmp_path):
    due = dt.datetime(2027, 1, 6, 22, 59, tzinfo=UTC)
    on_time = store.submit("s230001", "a1", tar({"a1.ipynb": b'{"v": 1}'}), dt.datetime(2027, 1, 5, tzinfo=UTC), due)
    store.submit("s230001", "a1", tar({"a1.ipynb": b'{"v": 2}'}), dt.datetime(2027, 1, 8, tzinfo=UTC), due)
    root = tmp_path / "course"
    coursedir = SimpleNamespace(root=str(root), submitted_directory="submitted",
                                format_path=lambda kind, student, assignment: str(root / kind / student / assignment))
    assert store.collect_into(coursedir, "a1", before=due) == ["s230001"]
    folder = root / "submitted" / "s230001" / "a1"
    assert json.loads((folder / "a1.ipynb").read_text()) == {"v": 1}
    assert (folder / "timestamp.txt").read_text() == on_time.timestamp
    assert not (folder / "meta.json").exists()
    assert store.collect_into(coursedir, "a1", before=due) == []  # already collected
    assert store.collect_into(coursedir, "a1") == ["s230001"]  # by hand: the latest, late one
    assert json.loads((folder / "a1.ipynb").read_text()) == {"v": 2}


def test_safe_extract_keeps_folders(tmp_path):
    files, skipped = safe_extract(tar({"a1.ipynb": b"{}", "data/x.csv": b"1"}), tmp_path / "out")
    assert files == ["a1.ipynb", "data/x.csv"] and skipped == []
    assert (tmp_path / "out" / "data" / "x.csv").read_text() == "1"


def test_a_submission_keeps_only_the_files_the_release_has(store):
    """A config file nbgrader would load, a hidden file or a script next to the notebook is not
    stored; the answer names what was left out."""
    sub = store.submit("s230001", "a1", tar({"a1.ipynb": b"{}", "nbgrader_config.py": b"import os",
                                             "jupyter_server_config.py": b"x", "data/x.csv": b"1",
                                             "notes/more.ipynb": b"{}"}),
                       dt.datetime(2027, 1, 5, tzinfo=UTC), None)
    folder = store.inbound("s230001", "a1", sub.id)
    assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == ["a1.ipynb", "meta.json", "x.csv"]
    assert sub.ignored == ["jupyter_server_config.py", "nbgrader_config.py", "notes/more.ipynb"]


def test_a_file_then_a_folder_of_the_same_name(store, tmp_path):
    """An archive with ``x`` and then ``x/y``: unpacked freely it is refused with a message and
    leaves nothing; as a submission, ``x/y`` is not part of the assignment and is left out."""
    with pytest.raises(ExchangeRefused, match="same name"):
        safe_extract(tar({"x": b"file", "x/y": b"1"}), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    sub = store.submit("s230001", "a1", tar({"a1.ipynb": b"{}", "a1.ipynb/y": b"1"}),
                       dt.datetime(2027, 1, 5, tzinfo=UTC), None)
    assert sub.notebooks == ["a1"] and sub.ignored == ["a1.ipynb/y"]


@pytest.mark.parametrize("entries", [{"a1.ipynb": b"{}", ".bashrc": b"x"}, {"a1.ipynb\nx": b"{}"},
                                     {"a1.ipynb": b"{}", "-rf": b"x"}])
def test_odd_names_are_refused_when_unpacked_freely(tmp_path, entries):
    with pytest.raises(ExchangeRefused, match="not allowed"):
        safe_extract(tar(entries), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_odd_names_in_a_submission_are_left_out(store):
    sub = store.submit("s230001", "a1", tar({"a1.ipynb": b"{}", ".bashrc": b"x", "a1.ipynb\nx": b"{}"}),
                       dt.datetime(2027, 1, 5, tzinfo=UTC), None)
    assert sub.notebooks == ["a1"] and sub.ignored == [".bashrc", "a1.ipynb\nx"]


def test_the_same_file_twice_is_refused(store):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for _ in range(2):
            info = tarfile.TarInfo("a1.ipynb")
            info.size = 2
            t.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(ExchangeRefused, match="twice"):
        store.submit("s230001", "a1", buf.getvalue(), dt.datetime(2027, 1, 5, tzinfo=UTC), None)


def test_too_many_entries_are_refused_while_reading(store, monkeypatch):
    import hub.course.exchange as exchange
    monkeypatch.setattr(exchange, "MAX_FILES", 10)
    entries = {f"junk{i}": b"" for i in range(50)}
    with pytest.raises(ExchangeRefused, match="more than 10 entries"):
        store.submit("s230001", "a1", tar(entries), dt.datetime(2027, 1, 5, tzinfo=UTC), None)


def test_submissions_per_assignment_and_files_per_student_are_limited(store, monkeypatch):
    import hub.course.exchange as exchange
    monkeypatch.setattr(exchange, "MAX_SUBMISSIONS", 2)
    for minute in (1, 2):
        store.submit("s230001", "a1", tar({"a1.ipynb": b"{}"}), dt.datetime(2027, 1, 5, 10, minute, tzinfo=UTC), None)
    with pytest.raises(ExchangeRefused, match="submitted a1 2 times, the most is 2"):
        store.submit("s230001", "a1", tar({"a1.ipynb": b"{}"}), dt.datetime(2027, 1, 5, 10, 3, tzinfo=UTC), None)
    monkeypatch.setattr(exchange, "MAX_SUBMISSIONS", 100)
    monkeypatch.setattr(exchange, "MAX_FILES_PER_STUDENT", 8)
    with pytest.raises(ExchangeRefused, match="8 files"):
        store.submit("s230001", "a1", tar({"a1.ipynb": b"{}", "data/x.csv": b"1"}),
                     dt.datetime(2027, 1, 5, 10, 4, tzinfo=UTC), None)
    assert len(store.submissions("s230001")) == 2


def test_sandbox_result_counts_only_with_the_runs_secret():
    import base64
    real = {"notebook": {"cells": [{"source": MARKER.decode()}]}, "reason": ""}
    forged_nb = {"notebook": {"cells": [{"source": "full marks"}]}, "reason": ""}

    def frame(secret: bytes, data: dict) -> bytes:
        return b"\n" + MARKER + secret + b"\n" + base64.b64encode(json.dumps(data).encode()) + b"\n"

    out = b"\n" + MARKER + b"\nnot base64 at all\n" + b"noise" + frame(b"s3cret", real)
    assert parse_output(out, "s3cret") == real
    assert parse_output(b"nothing here", "s3cret") is None
    # A frame the notebook printed (no secret, or a guessed one) is ignored, before or after.
    assert parse_output(out + frame(b"", forged_nb), "s3cret") == real
    assert parse_output(frame(b"guess", forged_nb) + frame(b"", forged_nb), "s3cret") is None
    assert parse_output(out + MARKER + b"s3cret\n{forged json}\n", "s3cret") is None
    with pytest.raises(ValueError):
        parse_output(out, "")


def test_a_result_relayed_by_swarm_in_pieces_is_read_whole():
    """Swarm's log relay may split the frame's long base64 line; ``whole`` joins it again."""
    import base64
    real = {"notebook": {"cells": ["x" * 40000]}, "reason": ""}
    body = base64.b64encode(json.dumps(real).encode())
    pieces = b"\n".join(body[i:i + 16384] for i in range(0, len(body), 16384))
    out = b"noise\n" + MARKER + b"s3cret\n" + pieces + b"\n"
    assert parse_output(out, "s3cret", whole=True) == real
    assert parse_output(out, "s3cret") is None  # a line alone is not the frame
    assert parse_output(out, "other", whole=True) is None


def test_a_swarm_sandbox_has_the_limits_of_one_on_a_host():
    """The service a notebook runs in on a swarm: the secret only root reads, no capability but
    changing user, read-only root, tmpfs, CPU, memory and process limits (reserved, so Swarm
    places by them), no restart, the lab's placement, no network attached."""
    from hub.course.sandbox import INPUT, Limits, SwarmSandboxes

    sandboxes = SwarmSandboxes("mlops-lab/course:1", Limits(cpus=1.5, mem="2G", pids=99), "lab-x",
                               ["node.role == worker"], client=object())
    task = sandboxes.task_template("sid", "lab-x-sandbox-1")
    spec = task["ContainerSpec"]
    assert spec["Command"] == ["/usr/local/bin/lab-sandbox-exec", "--input", INPUT] and spec["User"] == "0:0"
    assert spec["CapabilityDrop"] == ["ALL"] and spec["CapabilityAdd"] == ["CAP_SETUID", "CAP_SETGID"]
    assert spec["ReadOnly"] is True and spec["Privileges"] == {"NoNewPrivileges": True}
    assert spec["Secrets"] == [{"SecretID": "sid", "SecretName": "lab-x-sandbox-1",
                                "File": {"Name": "lab-sandbox-input", "UID": "0", "GID": "0", "Mode": 0o400}}]
    assert {m["Target"]: m["Type"] for m in spec["Mounts"]} == {"/tmp": "tmpfs", "/home/jovyan": "tmpfs"}
    assert spec["Labels"] == {"mlops-lab.role": "autograde-sandbox", "mlops-lab.instance": "lab-x"}
    assert task["Resources"]["Limits"] == {"NanoCPUs": 1_500_000_000, "MemoryBytes": 2 << 30, "Pids": 99}
    assert task["Resources"]["Reservations"] == {"NanoCPUs": 1_500_000_000, "MemoryBytes": 2 << 30}
    assert task["RestartPolicy"]["Condition"] == "none"
    assert task["Placement"] == {"Constraints": ["node.role == worker"]} and "Networks" not in task
