"""The ``purse`` command line, end to end, through click's ``CliRunner``.

Every test runs in its own ``tmp_path`` home with fixed ``--now`` times, so the
issuer's signatures carry known instants and the outputs are deterministic
(except the random keys, nonces and signatures, which no test compares).

What is checked: every command answers ``--help``; the happy path (issue,
load, pay, upload, settle) and the documented ``--json`` objects; refusals
(an expired credential, a stolen card) change nothing and say why in one
line; ``--now`` is the instant the issuer signs; bad input gives one clear
line, the documented exit code and writes nothing; the APDU tools decode
what the card answers; ``PURSE_HOME`` chooses the home folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import Result

from purse_cli.main import cli
from tests.cli_kit import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    fails,
    ok,
    ok_json,
    run,
    seconds,
    show,
    snapshot,
)

T0 = "2026-11-30T08:00:00Z"  # set-up: issue, deposit, load, sync
T_PAY = "2026-11-30T09:00:00Z"  # the first payment
T_UPLOAD = "2026-11-30T18:00:00Z"  # the POS uploads its batch
T_EXPIRES = "2026-12-07T08:00:00Z"  # T0 + 7 days: the credential's expiry (default policy)
T_LATE = "2026-12-08T08:00:00Z"  # T0 + 8 days: past the expiry
T_RENEW = "2026-12-01T09:00:00Z"

SELECT = "00 A4 04 00 08 F045505552534501"
SELECT_COMPACT = "00A4040008F045505552534501"
GET_CREDENTIAL = "00 CA DF 06 00"

DOCUMENTED_CARD_KEYS = {"card_id", "state", "balance", "currency", "atc", "credential", "history"}
DOCUMENTED_CREDENTIAL_KEYS = {"serial", "issued_at", "expires_at", "offline_cap", "offline_spent"}
DOCUMENTED_HISTORY_KEYS = {"atc", "kind", "amount", "balance", "time", "counterparty"}


@dataclass(frozen=True)
class World:
    home: Path
    card: Path  # Alice's card: issued, loaded with 200.00 at T0
    blank: Path  # a second card, still blank
    load: dict[str, Any]  # the ATM's --json answer to the load


@pytest.fixture
def world(tmp_path: Path) -> World:
    home = tmp_path / "home"
    card, blank = tmp_path / "alice.img", tmp_path / "spare.img"
    ok(["issuer", "init", "--now", T0], home)
    ok(["card", "new", str(card)], home)
    ok(["card", "new", str(blank)], home)
    ok(
        ["issuer", "issue", "--card", str(card), "--holder", "Alice", "--pin", "1234", "--now", T0],
        home,
    )
    ok(["issuer", "deposit", "Alice", "500.00", "--now", T0], home)
    ok(["issuer", "terminal", "POS00001", "--merchant", "Shop", "--now", T0], home)
    load = ok_json(
        ["atm", "load", "--amount", "200.00", "--card", str(card), "--pin", "1234", "--now", T0],
        home,
    )
    ok(["pos", "sync", "--now", T0], home)
    return World(home, card, blank, load)


def pay(world: World, when: str, *extra: str, amount: str = "4.50") -> Result:
    return run(
        ["pos", "pay", "--amount", amount, "--card", str(world.card), "--now", when, *extra],
        world.home,
    )


# 1. help --------------------------------------------------------------------------------
def _command_paths(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _command_paths(command, (*path, name))
        else:
            yield (*path, name)


def _command_at(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


COMMAND_PATHS = list(_command_paths(cli))


def test_the_walk_finds_every_command() -> None:
    names = {" ".join(p) for p in COMMAND_PATHS}
    assert {"issuer init", "atm load", "pos pay", "card show", "apdu shell", "demo"} <= names
    assert len(COMMAND_PATHS) > 25


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "purse")
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_command_answers_help(path: tuple[str, ...], flag: str) -> None:
    command = _command_at(path)
    out = ok([*path, flag], None)
    assert out.startswith(f"Usage: {' '.join(('purse', *path))} ")
    assert command.help, f"purse {' '.join(path)} has no description"
    first_paragraph = " ".join(command.help.split("\n\n")[0].split())
    assert first_paragraph in " ".join(out.split())
    if isinstance(command, click.Group):
        for name in command.commands:
            assert f"  {name} " in out or out.rstrip().endswith(f"  {name}")


def test_version() -> None:
    assert ok(["--version"], None) == f"purse, version {version('purse-card')}\n"


# 2. the happy path -----------------------------------------------------------------------
def test_blank_then_issued_card_without_credential(world: World) -> None:
    blank = show(world.blank, world.home)
    assert blank["state"] == "blank"
    assert blank["card_id"] is None
    assert blank["credential"] is None
    assert blank["history"] == []
    assert ok(["card", "show", str(world.blank)], world.home) == "card: blank (not issued)\n"

    issued = ok_json(
        ["issuer", "issue", "--card", str(world.blank), "--holder", "Bob", "--pin", "4321"],
        world.home,
    )
    assert issued == {"card_id": "P0000002", "holder": "Bob", "pin": "4321"}
    facts = show(world.blank, world.home)
    assert set(facts) >= DOCUMENTED_CARD_KEYS
    assert facts["card_id"] == "P0000002"
    assert facts["state"] == "active"
    assert (facts["balance"], facts["currency"], facts["atc"]) == (0, 978, 0)
    assert facts["credential"] is None  # not renewed yet: it cannot pay
    assert facts["history"] == []
    text = ok(["card", "show", str(world.blank)], world.home)
    assert "credential: none (the card cannot pay until renewed)" in text


def test_load_pay_show_upload_settle(world: World) -> None:
    load = world.load
    assert load["outcome"] == "updated"
    assert load["actions"] == ["renew", "load"]
    assert (load["card_id"], load["serial"], load["loaded"], load["balance"]) == (
        "P0000001",
        1,
        20000,
        20000,
    )
    assert (load["issued_at"], load["expires_at"]) == (T0, T_EXPIRES)

    result = pay(world, T_PAY, "--json")
    assert result.exit_code == EXIT_OK, result.stderr
    sale = json.loads(result.stdout)
    assert sale == {
        "card_id": "P0000001",
        "terminal_id": "POS00001",
        "amount": 450,
        "balance": 19550,
        "atc": load["atc"] + 1,  # PAY counts once on the card
        "time": T_PAY,
    }

    facts = show(world.card, world.home)
    assert set(facts) >= DOCUMENTED_CARD_KEYS
    assert facts["card_id"] == "P0000001"
    assert facts["state"] == "active"
    assert (facts["balance"], facts["currency"], facts["atc"]) == (19550, 978, sale["atc"])
    cred = facts["credential"]
    assert set(cred) >= DOCUMENTED_CREDENTIAL_KEYS
    assert (cred["serial"], cred["issued_at"], cred["expires_at"]) == (1, T0, T_EXPIRES)
    assert (cred["offline_cap"], cred["offline_spent"]) == (20000, 450)
    history = facts["history"]
    assert all(set(h) == DOCUMENTED_HISTORY_KEYS for h in history)
    assert history == [  # newest first; one ISSUER UPDATE wrote the load and the renewal
        {
            "atc": sale["atc"],
            "kind": "pay",
            "amount": 450,
            "balance": 19550,
            "time": T_PAY,
            "counterparty": "POS00001",
        },
        {
            "atc": load["atc"],
            "kind": "load",
            "amount": 20000,
            "balance": 20000,
            "time": T0,
            "counterparty": None,
        },
        {
            "atc": load["atc"],
            "kind": "renew",
            "amount": 0,
            "balance": 0,
            "time": T0,
            "counterparty": None,
        },
    ]
    text = ok(["card", "show", str(world.card)], world.home)
    assert "card P0000001: active, balance 195.50 EUR" in text
    assert f"credential #1: issued {T0}, expires {T_EXPIRES}, offline cap left 195.50 EUR" in text

    waiting = ok_json(["pos", "sales"], world.home)
    assert waiting == [
        {"card_id": "P0000001", "atc": sale["atc"], "amount": 450, "time": T_PAY, "settled": False}
    ]

    report = ok_json(["pos", "upload", "--now", T_UPLOAD], world.home)
    assert report == {"batch_id": 1, "accepted": 1, "refused": [], "credited": 450}
    settled = ok_json(["pos", "sales"], world.home)
    assert [s["settled"] for s in settled] == [True]
    again = ok_json(["pos", "upload", "--now", T_UPLOAD], world.home)  # nothing left to send
    assert (again["accepted"], again["credited"]) == (0, 0)

    assert ok_json(["issuer", "settle"], world.home) == [
        {"terminal_id": "POS00001", "merchant": "Shop", "credited": 450, "receipts": 1}
    ]
    assert "POS00001 (Shop): 1 receipts settled, credited 4.50 EUR" in ok(
        ["issuer", "settle"], world.home
    )

    (card,) = ok_json(["issuer", "cards"], world.home)
    assert card["card_id"] == "P0000001"
    assert (card["holder"], card["status"], card["credential_serial"]) == ("Alice", "active", 1)
    assert card["issued_at"] == T0
    # The load is confirmed by the card's next online session; until then the shadow
    # balance holds only the settled payment.
    assert card["shadow_balance"] == -450
    ok(["atm", "renew", "--card", str(world.card), "--now", T_UPLOAD], world.home)
    (card,) = ok_json(["issuer", "cards"], world.home)
    assert card["shadow_balance"] == 19550 == show(world.card, world.home)["balance"]
    assert card["last_atc"] >= sale["atc"]

    audit = ok(["issuer", "audit"], world.home)
    for event in ("policy_set", "card_issued", "deposit", "terminal_registered", "renewal"):
        assert event in audit
    assert "batch_settled" in audit
    assert "1 accepted, 0 refused, 450 credited" in audit
    entries = ok_json(["issuer", "audit", "P0000001"], world.home)
    assert entries
    assert all(e["card_id"] == "P0000001" for e in entries)
    assert [e["at"] for e in entries if e["event"] == "card_issued"] == [T0]
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)


def test_holder_account_pays_for_loads(world: World) -> None:
    # 500.00 deposited, 200.00 loaded: 300.00 left; a 300.01 load is refused by the issuer
    before = show(world.card, world.home)
    load = ["atm", "load", "--amount", "300.01", "--pin", "1234", "--now", T_PAY]
    result = run([*load, "--card", str(world.card)], world.home)
    line = fails(result, EXIT_REFUSED)
    assert "has 30000, the load needs 30001" in line
    after = show(world.card, world.home)
    assert (after["balance"], after["credential"]) == (before["balance"], before["credential"])
    assert after["history"] == before["history"]
    assert ok(["issuer", "deposit", "Alice", "1", "--now", T_PAY], world.home) == (
        "account Alice: 300.01 EUR\n"
    )
    # funded now, but 200.00 + 800.01 is above the card's maximum (1000.00): nothing is taken
    ok(["issuer", "deposit", "Alice", "500.00", "--now", T_PAY], world.home)
    load = ["atm", "load", "--amount", "800.01", "--pin", "1234", "--now", T_PAY]
    line = fails(run([*load, "--card", str(world.card)], world.home), EXIT_REFUSED)
    assert "exceed the card's maximum" in line
    assert show(world.card, world.home)["balance"] == before["balance"]
    assert ok(["issuer", "deposit", "Alice", "1", "--now", T_PAY], world.home) == (
        "account Alice: 800.02 EUR\n"
    )


# 3. refusals ------------------------------------------------------------------------------
def test_expired_credential_refuses_and_changes_nothing(world: World) -> None:
    before_facts = show(world.card, world.home)
    before_home = snapshot(world.home)
    before_card = world.card.read_bytes()

    line = fails(pay(world, T_LATE, "--offline"), EXIT_REFUSED)
    assert line.startswith("purse: refused: ")
    assert "9C02" in line
    assert "expired" in line

    assert world.card.read_bytes() == before_card
    assert snapshot(world.home) == before_home  # no sale recorded by the POS either
    assert show(world.card, world.home) == before_facts
    assert ok_json(["pos", "sales"], world.home) == []

    # online, the POS renews the credential first, and the card pays again
    result = pay(world, T_LATE, "--json")
    assert result.exit_code == EXIT_OK, result.stderr
    assert json.loads(result.stdout)["balance"] == 19550
    assert show(world.card, world.home)["credential"]["issued_at"] == T_LATE


def test_stolen_card_is_locked_until_found_and_unlocked(world: World) -> None:
    home, card = world.home, str(world.card)
    # a second POS, synced before the report: its blocklist does not list the card
    ok(["issuer", "terminal", "POS00002", "--merchant", "Kiosk", "--now", T0], home)
    ok(["pos", "sync", "--terminal", "POS00002", "--now", T0], home)

    out = ok(["issuer", "report", "P0000001", "--reason", "stolen", "--now", T_PAY], home)
    assert "blocklist version 1" in out
    assert "1 card(s) listed" in ok(["pos", "sync", "--now", T_PAY], home)

    line = fails(pay(world, T_PAY), EXIT_REFUSED)
    assert "P0000001 is on the blocklist" in line
    facts = show(world.card, home)
    assert facts["state"] == "locked"
    assert (facts["history"][0]["kind"], facts["history"][0]["time"]) == ("lock", T_PAY)
    balance = facts["balance"]

    # locked: no payment anywhere, the card itself refuses where the POS does not know
    assert "on the blocklist" in fails(pay(world, T_PAY), EXIT_REFUSED)
    before = world.card.read_bytes()
    line = fails(pay(world, T_PAY, "--terminal", "POS00002", "--offline"), EXIT_REFUSED)
    assert "9C07" in line or "locked" in line
    assert world.card.read_bytes() == before

    # no renewal: the ATM answers with the lock order and the card stays locked
    renewal = ok_json(["atm", "renew", "--card", card, "--now", T_PAY], home)
    assert renewal == {"card_id": "P0000001", "outcome": "locked"}
    assert "lock order locked it" in ok(["atm", "renew", "--card", card, "--now", T_PAY], home)
    facts = show(world.card, home)
    assert (facts["state"], facts["balance"]) == ("locked", balance)
    assert facts["credential"]["serial"] == 1  # no new credential

    # found: still locked until the card visits an ATM
    assert "found" in ok(["issuer", "found", "P0000001", "--now", T_UPLOAD], home)
    fails(pay(world, T_UPLOAD, "--terminal", "POS00002", "--offline"), EXIT_REFUSED)
    assert show(world.card, home)["state"] == "locked"

    unlocked = ok_json(["atm", "unlock", "--card", card, "--now", T_UPLOAD], home)
    assert unlocked["outcome"] == "updated"
    assert "unlock" in unlocked["actions"]
    facts = show(world.card, home)
    assert (facts["state"], facts["balance"]) == ("active", balance)
    assert [h["kind"] for h in facts["history"][:2]] == ["unlock", "renew"]
    assert facts["credential"]["issued_at"] == T_UPLOAD

    # the POS's stale blocklist still refuses it, but its old lock order is void now
    fails(pay(world, T_UPLOAD), EXIT_REFUSED)
    assert show(world.card, home)["state"] == "active"
    assert "0 card(s) listed" in ok(["pos", "sync", "--now", T_UPLOAD], home)
    result = pay(world, T_UPLOAD, "--json")
    assert result.exit_code == EXIT_OK, result.stderr
    assert json.loads(result.stdout)["balance"] == balance - 450


def test_atm_unlock_without_a_grant_fails(world: World) -> None:
    result = run(["atm", "unlock", "--card", str(world.card), "--now", T_PAY], world.home)
    assert result.exit_code == EXIT_ERROR
    assert result.stderr.splitlines() == [
        "purse: the issuer had no unlock or PIN unblock for this card (renewed only)"
    ]


# 4. --now is the issuer's instant --------------------------------------------------------------
def test_now_is_when_the_issuer_signs(world: World) -> None:
    renewal = ok_json(["atm", "renew", "--card", str(world.card), "--now", T_RENEW], world.home)
    assert renewal["issued_at"] == T_RENEW
    assert renewal["expires_at"] == "2026-12-08T09:00:00Z"
    cred = show(world.card, world.home)["credential"]
    assert cred["issued_at"] == T_RENEW
    assert cred["expires_at"] == "2026-12-08T09:00:00Z"
    assert cred["serial"] == 2
    # the signed credential on the card carries that instant (offset 12 of its body)
    out = ok(["apdu", "send", "--card", str(world.card), SELECT, GET_CREDENTIAL], world.home)
    issued_hex = seconds(T_RENEW).to_bytes(4, "big").hex(" ").upper()
    assert f"50 30 30 30 30 30 30 31 00 00 00 02 {issued_hex}" in out
    renewals = [
        e for e in ok_json(["issuer", "audit", "P0000001"], world.home) if e["event"] == "renewal"
    ]
    assert renewals[-1]["at"] == T_RENEW


# 5. bad input ---------------------------------------------------------------------------------
USAGE_ERRORS: list[tuple[list[str], str]] = [
    (["apdu", "send", "--card", "{card}", "00 A4 04 00 08 F0455055525345ZZ"], "is not hex"),
    (["apdu", "send", "--card", "{card}", "00A40"], "is not hex"),
    (["apdu", "send", "--card", "{card}", "00"], "is not a command APDU"),
    (["pos", "pay", "--amount", "4.50", "--card", "{card}", "--bogus"], "No such option"),
    (["pos", "pay", "--amount", "-4.50", "--card", "{card}"], "an amount must be positive"),
    (["pos", "pay", "--amount", "0", "--card", "{card}"], "an amount must be positive"),
    (["pos", "pay", "--amount", "abc", "--card", "{card}"], "is not an amount"),
    (["pos", "pay", "--amount", "4.5", "--card", "{card}"], "is not an amount"),
    (["atm", "load", "--amount", "1e3", "--card", "{card}", "--pin", "1234"], "is not an amount"),
    (["pos", "pay", "--amount", "4.50", "--card", "{card}", "--now", "yesterday"], "ISO 8601"),
    (["pos", "pay", "--amount", "1", "--card", "{card}", "--now", "2026-02-30T00:00Z"], "ISO 8601"),
    (["atm", "renew", "--card", "{card}", "--now", "1969-12-31T23:59:59Z"], "out of range"),
    (["atm", "load", "--amount", "1", "--card", "{card}", "--pin", "12a4"], "4 to 12 digits"),
    (["atm", "load", "--amount", "1", "--card", "{card}", "--pin", "123"], "4 to 12 digits"),
    (["atm", "load", "--amount", "1", "--card", "{card}", "--pin", "1" * 13], "4 to 12 digits"),
    (["atm", "load", "--amount", "1", "--card", "{card}"], "needs the card's PIN"),
    (["issuer", "issue", "--card", "{blank}", "--holder", "Bob", "--pin", "12 34"], "4 to 12"),
    (["issuer", "report", "P001", "--reason", "lost"], "is not an ID"),
    (["issuer", "report", "P0000001", "--reason", "misplaced"], "--reason"),
    (["card", "show", "{home}"], "is a directory"),
    (["pos", "frobnicate"], "No such command"),
]


@pytest.mark.parametrize(
    ("args", "says"), USAGE_ERRORS, ids=[" ".join(a[:2]) + f" ({s})" for a, s in USAGE_ERRORS]
)
def test_usage_errors(world: World, args: list[str], says: str) -> None:
    names = {"card": str(world.card), "blank": str(world.blank), "home": str(world.home)}
    before = snapshot(world.home.parent)
    line = fails(run([a.format(**names) for a in args], world.home), EXIT_USAGE)
    assert says in line
    assert snapshot(world.home.parent) == before


def _damaged(world: World) -> Path:
    path = world.home.parent / "damaged.img"
    raw = bytearray(world.card.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    return path


def _not_a_card(world: World) -> Path:
    path = world.home.parent / "notes.txt"
    path.write_text("these are not the bytes of a card\n")
    return path


def _missing(world: World) -> Path:
    return world.home.parent / "nowhere.img"


FILE_ERRORS = [
    (_missing, "no such card file"),
    (_damaged, "damaged"),
    (_not_a_card, "not a card image"),
]
FILE_COMMANDS = [
    ["card", "show", "{file}"],
    ["pos", "pay", "--amount", "4.50", "--card", "{file}", "--now", T_PAY],
    ["atm", "renew", "--card", "{file}", "--now", T_PAY],
    ["issuer", "issue", "--card", "{file}", "--holder", "Bob", "--now", T_PAY],
    ["apdu", "send", "--card", "{file}", SELECT],
]


@pytest.mark.parametrize(("make", "says"), FILE_ERRORS, ids=["missing", "damaged", "not-a-card"])
def test_unusable_card_files(world: World, make: Any, says: str) -> None:
    path: Path = make(world)
    before = snapshot(world.home.parent)
    for args in FILE_COMMANDS:
        line = fails(run([a.format(file=path) for a in args], world.home), EXIT_ERROR)
        assert says in line, (args, line)
        assert snapshot(world.home.parent) == before, args
    assert ok_json(["issuer", "cards"], world.home)[0]["card_id"] == "P0000001"
    assert len(ok_json(["issuer", "cards"], world.home)) == 1  # no card registered


def test_issuing_an_issued_card_is_refused(world: World) -> None:
    card, cards = world.card.read_bytes(), ok_json(["issuer", "cards"], world.home)
    audit = ok_json(["issuer", "audit"], world.home)
    issue = ["issuer", "issue", "--holder", "Bob", "--pin", "1234", "--now", T_PAY]
    result = run([*issue, "--card", str(world.card)], world.home)
    assert "already personalised" in fails(result, EXIT_REFUSED)
    assert world.card.read_bytes() == card
    assert ok_json(["issuer", "cards"], world.home) == cards  # no card, no number used
    # the issuer's only write: the refusal goes to its audit log
    *same, refusal = ok_json(["issuer", "audit"], world.home)
    assert same == audit
    assert (refusal["event"], refusal["at"]) == ("refused_not_blank", T_PAY)
    # the next card still gets the next number
    issued = ok_json(
        ["issuer", "issue", "--card", str(world.blank), "--holder", "Bob", "--now", T_PAY],
        world.home,
    )
    assert issued["card_id"] == "P0000002"


def test_init_twice_and_new_card_on_an_existing_file(world: World) -> None:
    before = snapshot(world.home.parent)
    assert "already set up" in fails(run(["issuer", "init", "--now", T0], world.home), EXIT_ERROR)
    line = fails(run(["card", "new", str(world.card)], world.home), EXIT_ERROR)
    assert "already exists" in line
    assert snapshot(world.home.parent) == before


BEFORE_INIT: list[tuple[list[str], str]] = [
    (["issuer", "cards"], "no issuer in"),
    (["issuer", "audit"], "no issuer in"),
    (["issuer", "deposit", "Alice", "5.00", "--now", T0], "no issuer in"),
    (["issuer", "issue", "--card", "{card}", "--holder", "Alice", "--now", T0], "no issuer in"),
    (["issuer", "terminal", "POS00001", "--merchant", "Shop", "--now", T0], "no issuer in"),
    (["atm", "renew", "--card", "{card}", "--now", T0], "no issuer in"),
    (
        ["atm", "load", "--amount", "5", "--card", "{card}", "--pin", "1234", "--now", T0],
        "no issuer",
    ),
    (["pos", "sync", "--now", T0], "offline"),
    (["pos", "upload", "--now", T0], "offline"),
    (["pos", "pay", "--amount", "5", "--card", "{card}", "--now", T0], "sync it first"),
]


@pytest.mark.parametrize(
    ("args", "says"), BEFORE_INIT, ids=[" ".join(a[:2]) for a, _ in BEFORE_INIT]
)
def test_commands_before_issuer_init(tmp_path: Path, args: list[str], says: str) -> None:
    home = tmp_path / "home"
    card = tmp_path / "blank.img"
    ok(["card", "new", str(card)], home)
    before = snapshot(tmp_path)
    line = fails(run([a.format(card=card) for a in args], home), EXIT_ERROR)
    assert says in line
    if says.startswith("no issuer"):
        assert str(home) in line
        assert "purse issuer init" in line
    assert snapshot(tmp_path) == before
    assert not home.exists()


def test_unknown_card_is_named_plainly(world: World) -> None:
    before = ok_json(["issuer", "cards"], world.home)
    for command in (
        ["report", "--reason", "lost"],
        ["found"],
        ["unlock"],
        ["unlock", "--pin-unblock"],
    ):
        line = fails(run(["issuer", command[0], "NOSUCHID", *command[1:]], world.home), 3)
        assert "NOSUCHID" in line
        assert "not registered" in line
        assert "b'" not in line, line
    assert ok_json(["issuer", "cards"], world.home) == before


def test_inconsistent_policy_sets_up_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    limits = ["--no-pin-limit", "200.00", "--per-payment-limit", "100.00"]
    line = fails(run(["issuer", "init", *limits, "--now", T0], home), EXIT_ERROR)
    assert "no_pin_limit must not exceed per_payment_limit" in line
    assert not home.exists()
    line = fails(run(["issuer", "init", "--lifetime-days", "0", "--now", T0], home), EXIT_USAGE)
    assert "--lifetime-days" in line
    assert not home.exists()


@pytest.mark.parametrize(
    "amount", ["12.5e-1", "1_000", "\u0665"], ids=["exp", "underscore", "arabic"]
)
def test_amount_accepts_only_the_documented_forms(world: World, amount: str) -> None:
    before = snapshot(world.home.parent)
    result = run(["issuer", "deposit", "Alice", amount, "--now", T_PAY], world.home)
    assert "is not an amount" in fails(result, EXIT_USAGE)
    assert snapshot(world.home.parent) == before


def test_too_large_amount_is_not_called_negative(world: World) -> None:
    result = run(["issuer", "deposit", "Alice", "42949672.96", "--now", T_PAY], world.home)
    line = fails(result, EXIT_USAGE)
    assert "42949672.96" in line
    assert "positive" not in line, line


def test_registering_a_terminal_again_says_what_happened(world: World) -> None:
    assert pay(world, T_PAY).exit_code == EXIT_OK
    ok(["pos", "upload", "--now", T_UPLOAD], world.home)
    again = ["issuer", "terminal", "POS00001", "--merchant", "Other", "--now", T_UPLOAD]
    result = run(again, world.home)
    (settled,) = ok_json(["issuer", "settle"], world.home)
    # either it is refused, or the registry now says what the command said
    assert result.exit_code != EXIT_OK or settled["merchant"] == "Other", (
        result.stdout,
        settled,
    )


# 6. APDUs -----------------------------------------------------------------------------------
def test_apdu_send_decodes_the_fci(world: World) -> None:
    out = ok(["apdu", "send", "--card", str(world.card), SELECT], world.home)
    lines = [line.strip() for line in out.splitlines()]
    assert lines[0] == "-> 00 A4 04 00 08 F0 45 50 55 52 53 45 01"
    assert lines[1] == "SW 9000: success"
    assert "6F (31 bytes)" in lines
    assert "84 (8 bytes): F0 45 50 55 52 53 45 01" in lines
    assert "A5 (19 bytes)" in lines
    assert 'DF01 (8 bytes): 50 30 30 30 30 30 30 31  "P0000001"' in lines
    assert "DF0D (1 byte): 01" in lines
    assert "DF02 (1 byte): 02" in lines  # ACTIVE
    # the tree is indented: the FCI template holds the AID, the AID is not at the top
    assert "     6F (31 bytes)" in out
    assert "       84 (8 bytes)" in out


def test_apdu_send_several_and_colon_hex(world: World) -> None:
    out = ok(
        ["apdu", "send", "--card", str(world.card), SELECT_COMPACT, "00:CA:DF:03:00", "00CADF0E00"],
        world.home,
    )
    assert out.count("-> ") == 3
    assert "DF03 (4 bytes): 00 00 4E 20" in out  # balance 20000
    assert "SW 6A88: referenced data not found" in out
    # each `apdu send` is a new power-up: without SELECT, no applet answers
    out = ok(["apdu", "send", "--card", str(world.card), "00CADF0300"], world.home)
    assert "SW 6D00" in out


def test_apdu_get_data_credential_bytes(world: World) -> None:
    out = ok(["apdu", "send", "--card", str(world.card), SELECT, GET_CREDENTIAL], world.home)
    assert "SW 9000: success" in out
    assert "DF06 (130 bytes): 50 53 01 02" in out  # the signed envelope, kind 02
    expires = seconds(T_EXPIRES).to_bytes(4, "big").hex(" ").upper()
    issued = seconds(T0).to_bytes(4, "big").hex(" ").upper()
    assert f"00 00 00 01 {issued} {expires} 00 00 4E 20" in out  # serial, times, cap 20000


def test_apdu_get_data_credential_is_decoded(world: World) -> None:
    out = ok(["apdu", "send", "--card", str(world.card), SELECT, GET_CREDENTIAL], world.home)
    assert "signed CREDENTIAL (kind 02)" in out
    assert "serial: 1" in out
    assert f"issued_at: {seconds(T0)}" in out
    assert f"expires_at: {seconds(T_EXPIRES)}" in out
    assert "offline_cap: 20000" in out


def test_apdu_trace_goes_to_stderr(world: World) -> None:
    result = run(["apdu", "send", "--trace", "--card", str(world.card), SELECT], world.home)
    assert result.exit_code == EXIT_OK
    trace = result.stderr.splitlines()
    assert trace
    assert all(line[:2] in {"> ", "< "} for line in trace)
    assert trace[0] == "> 00 A4 04 00 08 F0 45 50 55 52 53 45 01"
    assert trace[1] == "< 61 21"  # no Le: the FCI waits for GET RESPONSE
    assert trace[2] == "> 00 C0 00 00 21"
    assert trace[3].startswith("< 6F 1F 84 08")
    assert trace[3].endswith("90 00")
    assert not [line for line in result.stdout.splitlines() if line[:2] in {"> ", "< "}]
    assert "SW 9000" in result.stdout


SCRIPT = """\
# select the purse, then read

00 A4 04 00 08 F045505552534501 => 9000
00 CA DF 03 00                  => 9000   # the balance
   # an indented comment
00 CA DF 0E 00 => 6A88
00CADF0A00 => 9X00
00 CA DF 05 00
"""


def test_apdu_script_checks_status_words(world: World) -> None:
    script = world.home.parent / "read.apdu"
    script.write_text(SCRIPT)
    before = world.card.read_bytes()
    out = ok(["apdu", "script", "--card", str(world.card), str(script)], world.home)
    assert out.count("-> ") == 5  # comments and blank lines skipped
    assert out.splitlines()[-1] == "5 APDU(s) sent, every expected status word matched"
    assert "SW 6A88" in out
    assert "DF0A (1 byte): 03" in out
    assert world.card.read_bytes() == before  # reads only


def test_apdu_script_stops_at_a_wrong_expectation(world: World) -> None:
    script = world.home.parent / "wrong.apdu"
    script.write_text(
        "# line 1\n\n" + SELECT + " => 9000\n00 CA DF 0E 00 => 9000\n00 CA DF 03 00 => 9000\n"
    )
    result = run(["apdu", "script", "--card", str(world.card), str(script)], world.home)
    assert result.exit_code == EXIT_REFUSED
    assert result.stderr.splitlines() == ["purse: line 4: expected SW 9000, got 6A88"]
    assert "-> 00 CA DF 0E 00" in result.stdout
    assert "-> 00 CA DF 03 00" not in result.stdout  # stopped there


def test_apdu_script_with_a_bad_line(world: World) -> None:
    script = world.home.parent / "bad.apdu"
    script.write_text(SELECT + "\nnot an apdu\n")
    line = fails(run(["apdu", "script", "--card", str(world.card), str(script)], world.home), 2)
    assert "line 2" in line


def test_apdu_shell(world: World) -> None:
    result = run(
        ["apdu", "shell", "--card", str(world.card)],
        world.home,
        stdin=f"{SELECT_COMPACT}\nquit\n00CADF0300\n",
    )
    assert result.exit_code == EXIT_OK, result.stderr
    assert "SW 9000: success" in result.stdout
    assert "DF02 (1 byte): 02" in result.stdout
    assert "DF03" not in result.stdout  # nothing after quit
    # bad hex is answered and the shell goes on; end of input ends it
    result = run(
        ["apdu", "shell", "--card", str(world.card)],
        world.home,
        stdin=f"zz\n\n{SELECT_COMPACT}\n00CADF0300\n",
    )
    assert result.exit_code == EXIT_OK, result.stderr
    assert "'zz' is not hex" in result.stdout
    assert "DF03 (4 bytes): 00 00 4E 20" in result.stdout


# 7. PURSE_HOME -------------------------------------------------------------------------------
def test_purse_home_environment(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    env = {"PURSE_HOME": str(world.home)}
    (card,) = json.loads(ok(["issuer", "cards", "--json"], None, env=env))
    assert card["card_id"] == "P0000001"
    # a payment through PURSE_HOME is recorded by the POS of that home
    paid = ["pos", "pay", "--amount", "1.25", "--card", str(world.card), "--now", T_PAY]
    assert "paid 1.25 EUR at POS00001" in ok(paid, None, env=env)
    (sale,) = ok_json(["pos", "sales"], world.home)
    assert (sale["amount"], sale["time"]) == (125, T_PAY)
    # --home wins over PURSE_HOME
    empty = tmp_path / "empty"
    line = fails(run(["issuer", "cards"], empty, env=env), EXIT_ERROR)
    assert f"no issuer in {empty}" in line
    # and without either, the default folder is ./purse-data
    line = fails(run(["issuer", "cards"], None, env={"PURSE_HOME": None}), EXIT_ERROR)
    assert "no issuer in purse-data" in line
    assert list(elsewhere.iterdir()) == []
