"""``docs/protocol.md`` is the contract: its worked examples run against the card.

Every fenced block with the info string ``apdu`` is one example::

    # setup: funded
    > 00 CA DF 03 00
    < DF 03 04 00 00 27 10 90 00

The first line names a set-up (:data:`SETUPS`), other ``#`` lines are
comments, ``>`` starts a command APDU (hex, sent raw with
``Card.process``), ``<`` the expected response, where ``..`` stands for any
run of bytes. A line that starts with a space continues the previous ``>``
or ``<`` line. The exchanges of one block run in order on one card.

The other tests keep the document complete: every command the purse applet
handles is in the command table, every purse status word and every tag is
documented.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from apdu.purse import PURSE_AID, Tag, UpdateAction
from apdu.signed import private_key_from_scalar
from apdu.status import SW
from card_os.card import Card
from card_os.purse import PurseApplet
from card_os.simulator import Simulator
from issuer.signer import IssuerKey
from tests.purse_kit import CARD_ID, T0, PurseRig, make_rig

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

# The issuer key of the examples: its signed objects are written out in the document.
DOC_ISSUER = IssuerKey(
    private_key_from_scalar(hashlib.sha256(b"docs/protocol.md example issuer").digest())
)
SELECT_PURSE = bytes.fromhex("00A40400 08") + PURSE_AID + b"\x00"
OK = b"\x90\x00"


# set-ups -------------------------------------------------------------------------
def _unselected() -> Card:
    sim = Simulator()
    sim.install(PURSE_AID, PurseApplet)
    return sim.card


def _blank() -> Card:
    card = _unselected()
    assert card.process(SELECT_PURSE).endswith(OK)
    return card


def _active_rig() -> PurseRig:
    return make_rig(issuer=DOC_ISSUER)


def _funded_rig(balance: int) -> PurseRig:
    rig = _active_rig()
    rig.renew(T0, load=balance)
    return rig


def _unlocked() -> Card:
    rig = _funded_rig(10_000)
    rig.client.lock(DOC_ISSUER.lock_order(CARD_ID, T0 + 3600, reason=1, list_version=1))
    request = rig.begin()
    update = DOC_ISSUER.update(CARD_ID, request.card_nonce, T0 + 7200, UpdateAction.UNLOCK)
    rig.client.issuer_update(update)
    return rig.card


SETUPS: dict[str, Callable[[], Card]] = {
    "unselected": _unselected,
    "blank": _blank,
    "active": lambda: _active_rig().card,
    "funded": lambda: _funded_rig(10_000).card,
    "rich": lambda: _funded_rig(50_000).card,
    "unlocked": _unlocked,
}


# the document ---------------------------------------------------------------------
@dataclass(frozen=True)
class Exchange:
    line: int
    command: bytes
    expected: str  # the pattern as written

    def regex(self) -> re.Pattern[str]:
        parts: list[str] = []
        for token in self.expected.split():
            if token == "..":
                parts.append("(?:[0-9A-F]{2})*")
            elif re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", token):
                parts.append(token.upper())
            else:
                raise ValueError(f"line {self.line}: {token!r} is neither hex nor '..'")
        return re.compile("".join(parts))

    @property
    def status(self) -> str:
        """The expected status word (the last two bytes of the pattern)."""
        return "".join(self.expected.split())[-4:].upper()


@dataclass(frozen=True)
class Example:
    title: str
    line: int
    setup: str
    exchanges: tuple[Exchange, ...]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _parse_block(title: str, start: int, lines: list[tuple[int, str]]) -> Example:
    entries: list[tuple[int, str, str]] = []  # (line, '>' or '<', text)
    setup: str | None = None
    for number, raw in lines:
        text = raw.strip()
        if not text:
            continue
        if setup is None:
            found = re.fullmatch(r"#\s*setup:\s*(\S+)", text)
            if found is None:
                raise ValueError(f"line {number}: an example starts with '# setup: NAME'")
            setup = found.group(1)
        elif text.startswith("#"):
            continue
        elif text[0] in "<>":
            entries.append((number, text[0], text[1:]))
        elif raw[0].isspace() and entries:
            last = entries[-1]
            entries[-1] = (last[0], last[1], last[2] + " " + text)
        else:
            raise ValueError(f"line {number}: expected '>', '<', '#' or a continuation")
    if setup is None:
        raise ValueError(f"line {start}: empty example")
    exchanges: list[Exchange] = []
    for index in range(0, len(entries), 2):
        pair = entries[index : index + 2]
        if len(pair) != 2 or pair[0][1] != ">" or pair[1][1] != "<":
            raise ValueError(f"line {pair[0][0]}: each '>' command needs one '<' response")
        command = bytes.fromhex("".join(pair[0][2].split()))
        exchanges.append(Exchange(pair[0][0], command, pair[1][2]))
    if not exchanges:
        raise ValueError(f"line {start}: an example without exchanges")
    return Example(title, start, setup, tuple(exchanges))


def parse_examples(text: str) -> list[Example]:
    examples: list[Example] = []
    heading = "document start"
    block: list[tuple[int, str]] | None = None
    start = 0
    fence_open = False
    for number, line in enumerate(text.splitlines(), start=1):
        if block is not None:
            if line.strip() == "```":
                examples.append(_parse_block(heading, start, block))
                block = None
            else:
                block.append((number, line))
            continue
        if line.startswith("```"):
            if not fence_open and line.strip() == "```apdu":
                block, start = [], number
            else:
                fence_open = not fence_open
            continue
        if not fence_open and (found := re.match(r"#{1,6}\s+(.*)", line)):
            heading = found.group(1).strip()
    if block is not None:
        raise ValueError(f"line {start}: unterminated apdu block")
    return examples


def _section(text: str, title: str) -> str:
    """The text under the ``##`` heading ``title``, up to the next ``##`` heading."""
    found = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert found is not None, f"docs/protocol.md has no '## {title}' section"
    return found.group(1)


def _tables(section: str) -> list[list[list[str]]]:
    """The markdown tables of ``section``: each a list of rows (header first) of cells."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*section.splitlines(), ""]:
        text = line.strip()
        if not text.startswith("|"):
            if current:
                tables.append(current)
            current = []
        elif not re.fullmatch(r"\|[\s:|-]+", text):  # not the |---| separator
            current.append([cell.strip().strip("`") for cell in text.strip("|").split("|")])
    return tables


def _first_column(section: str) -> set[str]:
    return {row[0].upper() for table in _tables(section) for row in table[1:]}


TEXT = DOC.read_text(encoding="utf-8")
EXAMPLES = parse_examples(TEXT)


def _ids(examples: list[Example]) -> list[str]:
    seen: dict[str, int] = {}
    out: list[str] = []
    for example in examples:
        slug = _slug(example.title) or "example"
        seen[slug] = seen.get(slug, 0) + 1
        out.append(slug if seen[slug] == 1 else f"{slug}-{seen[slug]}")
    return out


# the tests ------------------------------------------------------------------------
@pytest.mark.parametrize("example", EXAMPLES, ids=_ids(EXAMPLES))
def test_example(example: Example) -> None:
    assert example.setup in SETUPS, f"line {example.line}: unknown set-up {example.setup!r}"
    card = SETUPS[example.setup]()
    for exchange in example.exchanges:
        answer = card.process(exchange.command).hex().upper()
        if exchange.regex().fullmatch(answer) is None:
            pytest.fail(
                f"docs/protocol.md line {exchange.line}\n"
                f"  sent     {exchange.command.hex(' ').upper()}\n"
                f"  expected {' '.join(exchange.expected.split())}\n"
                f"  got      {bytes.fromhex(answer).hex(' ').upper()}"
            )


def test_enough_examples() -> None:
    assert len(EXAMPLES) >= 10
    assert {example.setup for example in EXAMPLES} <= set(SETUPS)


def _command_table() -> set[tuple[int, int]]:
    """(CLA, INS) of every row of the command table (the one with CLA and INS columns)."""
    for table in _tables(_section(TEXT, "Commands")):
        header = [cell.upper() for cell in table[0]]
        if "CLA" in header and "INS" in header:
            cla, ins = header.index("CLA"), header.index("INS")
            return {
                (int(row[cla], 16), int(row[ins], 16))
                for row in table[1:]
                if re.fullmatch(r"[0-9A-F]{2}", row[cla]) and re.fullmatch(r"[0-9A-F]{2}", row[ins])
            }
    raise AssertionError("the Commands section has no table with CLA and INS columns")


def test_every_command_is_in_the_command_table() -> None:
    table = _command_table()
    handled = {(cla, ins) for ins, (cla, _name) in PurseApplet._commands.items()}
    runtime = {(0x00, 0xA4), (0x00, 0xC0)}  # SELECT and GET RESPONSE
    missing = sorted((handled | runtime) - table)
    assert not missing, "undocumented commands (CLA, INS): " + ", ".join(
        f"{cla:02X} {ins:02X}" for cla, ins in missing
    )


def test_every_purse_status_word_is_documented() -> None:
    documented = _first_column(_section(TEXT, "Status words"))
    purse = [sw for sw in SW if 0x9C00 <= sw <= 0x9CFF]
    assert purse
    missing = [f"{sw:04X} ({sw.name})" for sw in purse if f"{sw:04X}" not in documented]
    assert not missing, f"purse status words missing from the table: {missing}"


def test_example_status_words_are_in_the_table() -> None:
    documented = _first_column(_section(TEXT, "Status words"))
    for example in EXAMPLES:
        for exchange in example.exchanges:
            sw = exchange.status
            family = {"61": "61XX", "6C": "6CXX"}.get(sw[:2], sw)
            if sw.startswith("63C"):
                family = "63CX"
            assert family in documented, f"line {exchange.line}: {sw} is not in the table"


def test_every_tag_is_documented() -> None:
    documented = _first_column(_section(TEXT, "GET DATA tags"))
    missing = [f"{tag:04X}" for tag in Tag if f"{tag:04X}" not in documented]
    assert not missing, f"GET DATA tags missing from the table: {missing}"
