"""docs/security.md is checked against the test suite.

Every row of its attack catalogue must name at least one test, every test it
names must exist (``tests/FILE.py::test_name``, a function of that module),
and the catalogue must cover every attack the project promised to defend
against (the list below, from the issue that asked for the catalogue).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "security.md"
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")

# attacks the catalogue must cover: a phrase that must appear in some row's attack column
REQUIRED = (
    "Forged credential or issuer update",
    "Tampered credential or update",
    "Replayed issuer update",
    "Cross-card objects",
    "Domain confusion",
    "Clock rollback",
    "Clock stretching",
    "PIN brute force",
    "PIN brute force with tearing",
    "Blocklist rollback",
    "Blocklist forgery",
    "Lock order for another card",
    "Cloned card at the issuer",
    "Duplicate receipts",
    "Forged receipts",
    "Transfer message replay",
    "Malformed APDUs of every case",
    "Oversized and truncated data objects",
)


def _rows() -> list[list[str]]:
    text = DOC.read_text()
    section = text[text.index("## Attack catalogue") :]
    section = section[: section.index("\n## ", 1)]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| A") and len(cells) == 4:
            rows.append(cells)
    return rows


@cache
def _functions(path: str) -> frozenset[str]:
    tree = ast.parse((ROOT / path).read_text())
    return frozenset(n.name for n in tree.body if isinstance(n, ast.FunctionDef))


ROWS = _rows()


def test_the_catalogue_has_rows() -> None:
    assert len(ROWS) >= len(REQUIRED)
    ids = [row[0] for row in ROWS]
    assert len(ids) == len(set(ids)), "row ids must be unique"


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_every_row_names_tests_that_exist(row: list[str]) -> None:
    refs = TEST_REF.findall(row[3])
    assert refs, f"{row[0]} ({row[1]}) names no test"
    for path, name in refs:
        assert (ROOT / path).is_file(), f"{row[0]}: no file {path}"
        assert name.startswith("test_"), f"{row[0]}: {name} is not a test"
        assert name in _functions(path), f"{row[0]}: {path} has no {name}"
    assert row[2], f"{row[0]} says no defence"


@pytest.mark.parametrize("attack", REQUIRED)
def test_every_promised_attack_is_in_the_catalogue(attack: str) -> None:
    assert any(attack in row[1] for row in ROWS), f"no row for: {attack}"
