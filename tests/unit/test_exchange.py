"""The exchange store: what a student's upload may contain, where it is filed, what a student
can ask for, and collecting the latest submission for nbgrader."""

import datetime as dt
import io
import json
import tarfile
from types import SimpleNamespace

import pytest

from hub.exchange import ExchangeRefused, ExchangeStore, collect, safe_extract
from hub.sandbox import MARKER, parse_output

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
    assert collect(store, coursedir, "a1", before=due) == ["s230001"]
    folder = root / "submitted" / "s230001" / "a1"
    assert json.loads((folder / "a1.ipynb").read_text()) == {"v": 1}
    assert (folder / "timestamp.txt").read_text() == on_time.timestamp
    assert not (folder / "meta.json").exists()
    assert collect(store, coursedir, "a1", before=due) == []  # already collected
    assert collect(store, coursedir, "a1") == ["s230001"]  # by hand: the latest, late one
    assert json.loads((folder / "a1.ipynb").read_text()) == {"v": 2}


def test_safe_extract_keeps_folders(tmp_path):
    files = safe_extract(tar({"a1.ipynb": b"{}", "data/x.csv": b"1"}), tmp_path / "out")
    assert files == ["a1.ipynb", "data/x.csv"] and (tmp_path / "out" / "data" / "x.csv").read_text() == "1"


def test_sandbox_result_is_the_last_marked_block_and_survives_markers_inside():
    import base64
    real = {"notebook": {"cells": [{"source": MARKER.decode()}]}, "reason": ""}
    forged = b"\n" + MARKER + b"\nnot base64 at all\n"
    out = forged + b"noise" + b"\n" + MARKER + b"\n" + base64.b64encode(json.dumps(real).encode()) + b"\n"
    assert parse_output(out) == real
    assert parse_output(b"nothing here") is None
    assert parse_output(out + MARKER + b"\n{forged json}\n") is None
