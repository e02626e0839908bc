"""README.md's settings tables are written from the settings schema and stay equal to it."""

from pathlib import Path

from hub.settings import (DEFAULTS, ENV_VARS, HOST_ONLY_VARS, HOST_VARS, REFERENCE_BEGIN, REFERENCE_END,
                          reference_markdown, with_reference)

README = Path(__file__).resolve().parents[2] / "README.md"


def leaf_keys(node, path=()):
    """Dotted keys of DEFAULTS' leaves, a profile's name written <name> as in the tables."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaf_keys(value, path + ("<name>" if path == ("profiles",) else key,))
    else:
        yield ".".join(path)


def test_readme_tables_are_written_from_the_schema():
    text = README.read_text(encoding="utf-8")
    assert text.count(REFERENCE_BEGIN) == 1 and text.count(REFERENCE_END) == 1
    block = text.split(REFERENCE_BEGIN, 1)[1].split(REFERENCE_END, 1)[0]
    assert block.strip("\n") == reference_markdown().strip("\n"), \
        "README.md's settings tables are out of date: run python -m hub.settings reference"
    assert with_reference(text) == text


def test_every_setting_is_documented():
    reference = reference_markdown()
    keys = set(leaf_keys(DEFAULTS))
    assert "profiles.<name>.display_name" in keys and "gpus.devices" in keys
    missing = sorted(k for k in keys if f"| `{k}` |" not in reference)
    assert not missing, f"lab.yaml keys missing from the reference (give them a title in SCHEMA): {missing}"


def test_every_variable_is_documented():
    reference = reference_markdown()
    assert HOST_ONLY_VARS == set(HOST_VARS)
    missing = sorted(v for v in set(ENV_VARS) | HOST_ONLY_VARS if f"| `{v}` |" not in reference)
    assert not missing, f"variables missing from the reference: {missing}"


def test_cells_escape_the_pipe():
    rows = [line for line in reference_markdown().splitlines() if line.startswith("| `auth.id_pattern` |")]
    assert rows == ["| `auth.id_pattern` | `^(s[0-9]{6}\\|[a-z]{2,8})$` | what a DTU id looks like "
                    "(student number or staff initials) |"]
