"""docs/api.md's settings table against `Settings`, the one place the defaults live: every field has its row, with
its ALEXNET_* variable, its flag where alexnet-serve has one, and its actual default; no row names anything else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.cli import FLAGS
from service.settings import DEPRECATED, ENV_PREFIX, Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def settings_table() -> dict[str, tuple[str, str]]:
    """`ALEXNET_X` -> (flag cell, default cell) of the table in docs/api.md's "## Settings" section."""
    text = DOC.read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    header = "| Environment variable | Flag | Default | Meaning |"
    assert header in section, f"no settings table in docs/api.md's Settings section ({header})"
    rows: dict[str, tuple[str, str]] = {}
    for line in section.split(header, 1)[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]  # GFM: a pipe in a cell is \|
        assert len(cells) == 4, f"a settings row without its four cells: {line}"
        name = re.fullmatch(r"`([A-Z0-9_]+)`", cells[0])
        assert name, f"the first cell should be one `ALEXNET_...` variable: {line}"
        assert name[1] not in rows, f"{name[1]} has two rows"
        rows[name[1]] = (cells[1], cells[2])
    return rows


def documented(cell: str) -> str:
    """The default a cell states: its first `code` span, else its first word ('empty: ...', 'unset: ...')."""
    found = re.match(r"`([^`]*)`|([\w-]+)", cell)
    assert found, f"no default in {cell!r}"
    return found[1] if found[1] is not None else found[2]


def actual(name: str) -> str:
    value = Settings.model_fields[name].get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value) or "empty"
    if value == "":
        return "empty"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


TABLE = settings_table()


def test_no_row_names_a_setting_that_does_not_exist():
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert sorted(set(TABLE) - fields) == []
    assert not set(TABLE) & {f"{ENV_PREFIX}{name.upper()}" for name in DEPRECATED}  # those have their own table


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_every_setting_has_its_row_with_its_default_and_flag(name):
    env = f"{ENV_PREFIX}{name.upper()}"
    assert env in TABLE, f"docs/api.md's settings table has no row for {env}"
    flag, default = TABLE[env]
    assert documented(default) == actual(name), f"{env}: the doc says {default!r}, Settings has {actual(name)!r}"
    if name in FLAGS:
        assert flag.startswith(f"`--{name.replace('_', '-')}"), f"{env}: its flag is --{name.replace('_', '-')}"
    else:
        assert flag == "", f"{env}: alexnet-serve has no flag for it, the doc says {flag}"


def test_the_parser_reads_what_it_checks():
    assert documented("`0`: 1/32 of the memory limit") == "0"
    assert documented("empty: every model in the store") == "empty"
    assert documented("`20971520` (20 MiB)") == "20971520"
    assert len(TABLE) >= 30
