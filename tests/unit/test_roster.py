"""The course roster: id normalisation, role mapping, DTU Learn exports, and bad input that is
refused with file, line and field while nothing changes."""

import pytest

from hub.roster import (
    Roster,
    RosterError,
    RosterStore,
    diff,
    normalize_github,
    normalize_id,
    normalize_role,
    parse_roster,
)

OURS = b"""id,name,email,github,role
s230001,Ada Lovelace,s230001@student.dtu.dk,ada-lovelace,student
s230002,Alan Turing,s230002@student.dtu.dk,,student
tahe,Tara Hensen,tahe@dtu.dk,,ta
teacher,Tea Cher,teacher@dtu.dk,Tea-Cher,instructor
"""


def refused(data: bytes, name="roster.csv") -> list[str]:
    with pytest.raises(RosterError) as info:
        parse_roster(data, name)
    return info.value.problems


@pytest.mark.parametrize("raw", ["s123456", "S123456", " s123456 ", "\ts123456\n", "#s123456", "s123456@dtu.dk",
                                 "S123456@Student.DTU.dk"])
def test_student_numbers_normalise_to_one_id(raw):
    assert normalize_id(raw) == "s123456"


@pytest.mark.parametrize("raw", ["abcd", "ABCD", " abcd@dtu.dk "])
def test_staff_initials_normalise(raw):
    assert normalize_id(raw) == "abcd"


@pytest.mark.parametrize("raw, why", [
    ("s12345", "not a DTU id"), ("s1234567", "not a DTU id"), ("123456", "not a DTU id"),
    ("s123456@gmail.com", "domain must be one of"), ("", "is empty"), ("ab cd", "not a DTU id"),
])
def test_bad_ids_say_why(raw, why):
    with pytest.raises(ValueError, match=why):
        normalize_id(raw)


@pytest.mark.parametrize("raw, role", [
    ("student", "student"), ("Student", "student"), (" STUDENT ", "student"), ("Studerende", "student"),
    ("TA", "ta"), ("Teaching Assistant", "ta"), ("teaching  assistant", "ta"), ("Hjælpelærer", "ta"),
    ("Instructor", "instructor"), ("Teacher", "instructor"), ("Underviser", "instructor"),
    ("Course Responsible", "instructor"),
])
def test_role_names_map_to_three_roles(raw, role):
    assert normalize_role(raw) == role


def test_unknown_role_is_refused():
    with pytest.raises(ValueError, match="'Guest' is not a role"):
        normalize_role("Guest")


@pytest.mark.parametrize("raw, login", [("Ada-Lovelace", "ada-lovelace"), ("@ada", "ada"),
                                        ("https://github.com/ada/", "ada"), ("", "")])
def test_github_logins_normalise(raw, login):
    assert normalize_github(raw) == login


@pytest.mark.parametrize("raw", ["-ada", "ada--l", "ada_l", "a" * 40])
def test_bad_github_logins_are_refused(raw):
    with pytest.raises(ValueError, match="not a GitHub login"):
        normalize_github(raw)


def test_our_format_reads_every_field():
    r = parse_roster(OURS)
    assert sorted(r.people) == ["s230001", "s230002", "tahe", "teacher"]
    ada = r.people["s230001"]
    assert (ada.name, ada.email, ada.github, ada.role) == ("Ada Lovelace", "s230001@student.dtu.dk", "ada-lovelace", "student")
    assert r.people["teacher"].github == "tea-cher"
    assert r.by_github("TEA-CHER").id == "teacher"
    assert r.by_github("nobody") is None
    assert r.with_role("ta") == ["tahe"]


def test_dtu_learn_export_with_bom_semicolons_and_extra_columns():
    """A DTU Learn (Brightspace) class list, as Danish Excel saves it: UTF-8 BOM, ';', '#' user names."""
    text = ("Username;OrgDefinedId;Last Name;First Name;Email;Role;Section;Last Accessed\r\n"
            "#s230001;s230001;Lovelace;Ada;s230001@student.dtu.dk;Student;L1;2026-01-05\r\n"
            "#S230002;s230002;Æbelø;Søren;s230002@student.dtu.dk;Student;L1;\r\n"
            "#abcd;abcd;Cher;Tea;abcd@dtu.dk;Instructor;;\r\n"
            "#tahe;tahe;Hensen;Tara;tahe@dtu.dk;Teaching Assistant;;\r\n")
    r = parse_roster(b"\xef\xbb\xbf" + text.encode("utf-8"), "classlist.csv")
    assert r.encoding == "utf-8"
    assert r.people["s230002"].name == "Søren Æbelø"
    assert {p.id: p.role for p in r.people.values()} == {
        "s230001": "student", "s230002": "student", "abcd": "instructor", "tahe": "ta"}
    assert r.people["s230001"].github == ""


def test_windows_1252_export_is_read():
    text = "Username,First Name,Last Name,Email\r\ns230002,Søren,Æbelø,s230002@student.dtu.dk\r\n"
    r = parse_roster(text.encode("cp1252"), "export.csv")
    assert r.encoding == "windows-1252"
    assert r.people["s230002"].name == "Søren Æbelø"
    assert r.people["s230002"].role == "student"  # no role column: everybody is a student


def test_utf16_with_bom_is_read():
    text = "id\tname\temail\trole\r\ns230001\tAda\tada@dtu.dk\tstudent\r\n"
    r = parse_roster(text.encode("utf-16"), "unicode.txt")
    assert r.encoding == "utf-16" and list(r.people) == ["s230001"]


def test_undecodable_bytes_are_refused_with_their_line():
    data = b"id,name,email,role\ns230001,Ada,ada@dtu.dk,student\ns230002,Al\x81n,al@dtu.dk,student\n"
    [problem] = refused(data)
    assert problem.startswith("roster.csv:3: file: byte 0x81 is neither UTF-8 nor Windows-1252")


def test_excel_workbook_and_nul_bytes_are_refused():
    assert "Excel workbook" in refused(b"PK\x03\x04rest")[0]
    assert "NUL bytes" in refused("id,name\n".encode("utf-16-le"))[0]


def test_each_bad_row_is_named_with_line_and_field():
    data = b"""id,name,email,github,role
s230001,Ada,s230001@student.dtu.dk,ada,student
s23x001,Bad Id,bad@dtu.dk,,student
s230003,Gus,not-an-email,,student
s230004,Dup Git,d@dtu.dk,ADA,student
s230001,Twice,t@dtu.dk,,student
s230005,Odd Role,o@dtu.dk,,guest
s230006,Bad Git,g@dtu.dk,-x-,student
s230007,,e@dtu.dk,,ta
"""
    problems = refused(data, "fall.csv")
    assert problems == [
        "fall.csv:3: id: 's23x001' is not a DTU id (a student number like s123456 or staff initials)",
        "fall.csv:4: email: 'not-an-email' is not an e-mail address",
        "fall.csv:5: github: 'ada' is claimed by s230004 and by s230001 (line 2)",
        "fall.csv:6: id: s230001 is listed twice (first on line 2)",
        "fall.csv:7: role: 'guest' is not a role (one of: student, ta, instructor)",
        "fall.csv:8: github: '-x-' is not a GitHub login (letters, digits and single hyphens, at most 39)",
        "fall.csv:9: name: is empty for s230007",
    ]


def test_missing_columns_are_named():
    [id_problem, email_problem] = refused(b"name,role\nAda,student\n")
    assert id_problem.startswith("roster.csv:1: header: no id column")
    assert email_problem.startswith("roster.csv:1: header: no email column")


def test_empty_and_header_only_files_are_refused():
    assert "is empty" in refused(b"")[0]
    assert "nobody is listed" in refused(b"id,name,email\n")[0]


def test_short_rows_are_refused():
    [problem] = refused(b"id,name,email,role\ns230001,Ada\n")
    assert problem == "roster.csv:2: row: has 2 fields, the header has 4"


def test_diff_names_every_kind_of_change():
    old = parse_roster(OURS)
    new = parse_roster(b"""id,name,email,github,role
s230001,Ada Lovelace,s230001@student.dtu.dk,ada-l,ta
tahe,Tara Hensen,tara@dtu.dk,,ta
teacher,Tea Cher,teacher@dtu.dk,Tea-Cher,instructor
s230009,New Person,s230009@student.dtu.dk,,student
""")
    changes = diff(old, new)
    assert changes.added == ["s230009"]
    assert changes.removed == ["s230002"]
    assert changes.role_changed == [("s230001", "student", "ta")]
    assert changes.github_changed == [("s230001", "ada-lovelace", "ada-l")]
    assert changes.details_changed == ["tahe"]
    assert "removed: 1 (s230002)" in changes.summary()
    assert diff(None, new).added == sorted(new.people)


def test_store_round_trips_and_sees_a_new_import(tmp_path):
    store = RosterStore(tmp_path / "roster.json")
    assert store.load() is None
    store.save(parse_roster(OURS))
    first = store.load()
    assert isinstance(first, Roster) and first.people["teacher"].role == "instructor"
    assert store.load() is first  # unchanged file: no re-read
    store.save(parse_roster(b"id,name,email\ns230002,Alan,al@dtu.dk\n"))
    assert list(store.load().people) == ["s230002"]
    assert not list(tmp_path.glob(".roster-*"))  # no temporary file left behind
