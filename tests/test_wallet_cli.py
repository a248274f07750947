"""Card to card from the command line: ``purse wallet transfer`` and ``purse issuer transfers``.

Every test runs in its own ``tmp_path`` home, through click's ``CliRunner`` on
``purse_cli.main.cli``, with fixed ``--now`` times. Two cards are issued:
P0000001 (Alice, PIN 1234, loaded with 80.00: the payer) and P0000002 (Bob,
PIN 4321, empty: the payee).

What is checked:

* the happy path: both balances and sequence numbers in the text and the
  ``--json`` answer; ``card show`` of both cards (``transfer_out`` and
  ``transfer_in`` history with the other card as counterparty); the issuer's
  shadow balances follow once both cards have been online;
* the PIN above the no-PIN limit (missing: ``6982``; wrong: ``63CX`` and only
  the try counter moves; right: the transfer goes through);
* refusals exit 3, name the step and leave both card files byte for byte as
  they were, except the one case the protocol documents: the payee's ask
  succeeded and the payer refused, so the payee holds a pending transfer (its
  ATC moved past ``to_seq``); no value moves;
* usage errors (exit 2, one line, nothing written), a missing card file and a
  card file in use by another program (exit 1);
* a card pulled out midway (the in-process transport made to fail like a
  PC/SC reader whose card was removed): the value in flight, or the payee
  credited without the payer's close;
* ``issuer transfers`` and its ``--json``: empty, ``maybe_lost``, ``not_sent``,
  ``completed``, ``lost``, the restore sent and then applied, the payer's
  balance given back; the ATM says so (``restored``);
* ``--help`` of the new commands; the shared option factory
  ``card_source_option`` on a command of its own;
* the registry's migration from schema 1 to 2 (``_V2``), on a bare file and on
  a whole home whose cards then transfer.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from apdu.pcsc import NoCard
from apdu.purse import PURSE_AID, CardCertificate, PendingTransfer, Tag, Transfer, TransferRole
from apdu.signed import parse_envelope
from apdu.transport import LocalTransport
from card_os.image import decode_image, image_lock
from issuer import sqlite_registry
from issuer.centre import REGISTRY_FILE
from issuer.registry import CardState, Outcome
from issuer.sqlite_registry import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, SQLiteRegistry
from purse_cli.home import card_file
from purse_cli.params import CardSource, card_source_option, wait_option
from tests.cli_kit import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    fails,
    ok,
    ok_json,
    one_line,
    run,
    seconds,
    show,
    snapshot,
)

T0 = "2026-11-30T08:00:00Z"  # set-up: issue, deposit, load, renew
T_XFER = "2026-11-30T09:00:00Z"  # the first transfer
T_XFER2 = "2026-11-30T09:30:00Z"  # a second one
T_RENEW = "2026-11-30T10:00:00Z"  # the cards go online
T_RENEW2 = "2026-11-30T11:00:00Z"
T_RENEW3 = "2026-11-30T12:00:00Z"
T_LATE = "2026-12-08T08:00:00Z"  # T0 + 8 days: the T0 credentials have expired

PAYER_ID, PAYEE_ID = "P0000001", "P0000002"
CELL_PREFIX = PURSE_AID.hex() + "/"
TRANSFER_JSON_KEYS = {
    "from",
    "to",
    "amount",
    "from_seq",
    "to_seq",
    "payer_balance",
    "payee_balance",
    "time",
}
TRANSFERS_ROW_KEYS = {
    "from",
    "from_seq",
    "to",
    "to_seq",
    "amount",
    "status",
    "payer_logged",
    "payee_logged",
    "restored",
    "restore_pending",
}


def cells(card: Path) -> dict[str, bytes]:
    """The purse's persistent cells in the card image, without the applet prefix."""
    raw = decode_image(card.read_bytes(), card)
    return {k.removeprefix(CELL_PREFIX): v for k, v in raw.items() if k.startswith(CELL_PREFIX)}


def changed(before: dict[str, bytes], after: dict[str, bytes]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def as_int(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def public_key_of(card: Path) -> bytes:
    """The card's certified public key, from the certificate it holds."""
    return CardCertificate.decode(parse_envelope(cells(card)["certificate"]).body).public_key


@dataclass(frozen=True)
class Pair:
    home: Path
    payer: Path  # P0000001, Alice, PIN 1234, 80.00 loaded at T0
    payee: Path  # P0000002, Bob, PIN 4321, empty, renewed at T0

    def transfer(self, amount: str, now: str, *extra: str) -> Result:
        args = ["wallet", "transfer", "--from", str(self.payer), "--to", str(self.payee)]
        return run([*args, "--amount", amount, "--now", now, *extra], self.home)

    def transfer_json(self, amount: str, now: str, *extra: str) -> dict[str, Any]:
        result = self.transfer(amount, now, *extra, "--json")
        assert result.exit_code == EXIT_OK, (result.exit_code, result.stderr)
        assert result.stderr == ""
        data: dict[str, Any] = json.loads(result.stdout)
        assert set(data) == TRANSFER_JSON_KEYS
        return data

    def renew(self, card: Path, now: str) -> dict[str, Any]:
        answer: dict[str, Any] = ok_json(
            ["atm", "renew", "--card", str(card), "--now", now], self.home
        )
        return answer

    def transfers(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = ok_json(["issuer", "transfers"], self.home)
        for row in rows:
            assert set(row) == TRANSFERS_ROW_KEYS
        return rows

    def shadows(self) -> dict[str, int]:
        return {c["card_id"]: c["shadow_balance"] for c in ok_json(["issuer", "cards"], self.home)}

    def balances(self) -> dict[str, int]:
        return {
            PAYER_ID: show(self.payer, self.home)["balance"],
            PAYEE_ID: show(self.payee, self.home)["balance"],
        }


def make_pair(root: Path) -> Pair:
    home = root / "home"
    payer, payee = root / "alice.img", root / "bob.img"
    ok(["issuer", "init", "--now", T0], home)
    ok(["card", "new", str(payer)], home)
    ok(["card", "new", str(payee)], home)
    issue = ["issuer", "issue", "--now", T0, "--card"]
    ok([*issue, str(payer), "--holder", "Alice", "--pin", "1234"], home)
    ok([*issue, str(payee), "--holder", "Bob", "--pin", "4321"], home)
    ok(["issuer", "deposit", "Alice", "500.00", "--now", T0], home)
    load = ["atm", "load", "--amount", "80.00", "--card", str(payer), "--pin", "1234"]
    ok([*load, "--now", T0], home)
    ok(["atm", "renew", "--card", str(payee), "--now", T0], home)
    return Pair(home, payer, payee)


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return make_pair(tmp_path)


def send_without_delivery(pair: Pair, amount: int, when: str) -> Transfer:
    """Steps 1 and 2 of a transfer through the Python API; the payer's value is then dropped.

    The payee has asked, the payer has debited: the value is in flight, and
    neither card will ever see the rest of this transfer.
    """
    with card_file(pair.payer) as (_a, payer), card_file(pair.payee) as (_b, payee):
        payer.select()
        payee.select()
        payer_cert = payer.get_data(Tag.CERTIFICATE)
        payee_cert = payee.get_data(Tag.CERTIFICATE)
        request = payee.transfer_ask(amount, payer.status().atc + 1, payer_cert)
        value = payer.transfer_out(seconds(when), payee_cert, request)
    return Transfer.decode(parse_envelope(value).body)


def assert_payee_only_asked(
    pair: Pair, before: dict[str, bytes], amount: int, payer_atc: int
) -> None:
    """The payee's ask went through and nothing after it: a pending transfer, ATC + 1."""
    after = cells(pair.payee)
    assert changed(before, after) == {"atc", "xfer_pending"}
    assert as_int(after["atc"]) == as_int(before["atc"]) + 1
    pending = PendingTransfer.decode(after["xfer_pending"])
    assert pending.role == TransferRole.PAYEE
    assert pending.counterparty_key == public_key_of(pair.payer)
    assert Transfer.decode(pending.transfer) == Transfer(
        from_id=PAYER_ID.encode(),
        to_id=PAYEE_ID.encode(),
        amount=amount,
        currency=978,
        from_seq=payer_atc + 1,
        to_seq=as_int(after["atc"]),
    )
    # nothing else: no value, no history record, no log entry
    assert after.get("balance") == before.get("balance")
    assert after.get("xfer_log", b"") == b""


# 1. the happy path --------------------------------------------------------------------------
def test_transfer_moves_value_and_both_cards_say_so(pair: Pair) -> None:
    out = pair.transfer("12.00", T_XFER)
    assert out.exit_code == EXIT_OK, out.stderr
    assert out.stderr == ""
    assert out.stdout.splitlines() == [
        f"transferred 12.00 EUR from {PAYER_ID} to {PAYEE_ID} (sequence 3 -> 3), acknowledged",
        f"balances: {PAYER_ID} 68.00 EUR, {PAYEE_ID} 12.00 EUR",
    ]

    result = pair.transfer("1.00", T_XFER2, "--json")
    assert result.exit_code == EXIT_OK, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == TRANSFER_JSON_KEYS
    # the payer's ATC was 3, the payee's 4 (ask 3, credit 4): the next ones
    assert data == {
        "from": PAYER_ID,
        "to": PAYEE_ID,
        "amount": 100,
        "from_seq": 4,
        "to_seq": 5,
        "payer_balance": 6700,
        "payee_balance": 1300,
        "time": T_XFER2,
    }

    payer, payee = show(pair.payer, pair.home), show(pair.payee, pair.home)
    assert (payer["balance"], payer["atc"]) == (6700, 4)
    assert (payee["balance"], payee["atc"]) == (1300, 6)
    assert payer["credential"]["offline_spent"] == 1300  # transfers count against the cap
    assert payee["credential"]["offline_spent"] == 0
    assert payer["history"][:2] == [
        {
            "atc": 4,
            "kind": "transfer_out",
            "amount": 100,
            "balance": 6700,
            "time": T_XFER2,
            "counterparty": PAYEE_ID,
        },
        {
            "atc": 3,
            "kind": "transfer_out",
            "amount": 1200,
            "balance": 6800,
            "time": T_XFER,
            "counterparty": PAYEE_ID,
        },
    ]
    # the payee's record has its own ATC of the credit and its time mark (its renewal)
    assert payee["history"][:3] == [
        {
            "atc": 6,
            "kind": "transfer_in",
            "amount": 100,
            "balance": 1300,
            "time": T0,
            "counterparty": PAYER_ID,
        },
        {
            "atc": 4,
            "kind": "transfer_in",
            "amount": 1200,
            "balance": 1200,
            "time": T0,
            "counterparty": PAYER_ID,
        },
        {
            "atc": 2,
            "kind": "renew",
            "amount": 0,
            "balance": 0,
            "time": T0,
            "counterparty": None,
        },
    ]
    for card in (pair.payer, pair.payee):
        assert cells(card)["xfer_pending"] == b""  # nothing left open
        assert cells(card).get("xfer_log", b"") == b""

    # the wallet needs no issuer: it knows nothing yet (not even the T0 load, which the
    # payer's next online session confirms)
    assert pair.shadows() == {PAYER_ID: 0, PAYEE_ID: 0}
    for card in (pair.payer, pair.payee):
        renewal = pair.renew(card, T_RENEW)
        assert (renewal["actions"], renewal["restored"]) == (["renew"], 0)
    assert pair.shadows() == pair.balances() == {PAYER_ID: 6700, PAYEE_ID: 1300}
    assert pair.transfers() == []  # a completed transfer logs nothing

    # and the cards go on: the payee pays back, the issuer follows again
    back = ["wallet", "transfer", "--from", str(pair.payee), "--to", str(pair.payer)]
    answer = ok_json([*back, "--amount", "3.00", "--now", T_RENEW2], pair.home)
    assert (answer["from"], answer["to"]) == (PAYEE_ID, PAYER_ID)
    assert (answer["payer_balance"], answer["payee_balance"]) == (1000, 7000)
    for card in (pair.payer, pair.payee):
        pair.renew(card, T_RENEW3)
    assert pair.shadows() == pair.balances() == {PAYER_ID: 7000, PAYEE_ID: 1000}


# 2. the PIN ------------------------------------------------------------------------------------
def test_above_the_no_pin_limit_without_the_pin(pair: Pair) -> None:
    payer_bytes, payee_before = pair.payer.read_bytes(), cells(pair.payee)
    payer_atc = as_int(cells(pair.payer)["atc"])
    line = fails(pair.transfer("30.00", T_XFER), EXIT_REFUSED)
    assert line.startswith("purse: refused: transfer stopped at the payer's debit (TRANSFER OUT)")
    assert "6982" in line
    assert "nothing moved" in line
    assert pair.payer.read_bytes() == payer_bytes
    # the payee asked before the payer refused (protocol, "Card to card", step 1)
    assert_payee_only_asked(pair, payee_before, 3000, payer_atc)
    assert pair.balances() == {PAYER_ID: 8000, PAYEE_ID: 0}


def test_a_wrong_pin_spends_one_try_and_nothing_else(pair: Pair) -> None:
    payer_before, payee_bytes = cells(pair.payer), pair.payee.read_bytes()
    line = fails(pair.transfer("30.00", T_XFER, "--pin", "1111"), EXIT_REFUSED)
    assert "63C2" in line
    assert "PIN" in line
    payer_after = cells(pair.payer)
    assert changed(payer_before, payer_after) == {"pin_tries"}
    assert as_int(payer_after["pin_tries"]) == 2
    assert pair.payee.read_bytes() == payee_bytes  # never asked
    assert show(pair.payer, pair.home)["pin_tries"] == 2


def test_the_right_pin_lets_a_large_transfer_through(pair: Pair) -> None:
    fails(pair.transfer("30.00", T_XFER, "--pin", "1111"), EXIT_REFUSED)  # one try spent
    data = pair.transfer_json("30.00", T_XFER, "--pin", "1234")
    assert (data["amount"], data["payer_balance"], data["payee_balance"]) == (3000, 5000, 3000)
    payer = show(pair.payer, pair.home)
    assert payer["pin_tries"] == 3  # the right PIN restores the tries
    assert payer["history"][0]["kind"] == "transfer_out"
    assert show(pair.payee, pair.home)["history"][0]["kind"] == "transfer_in"


def test_a_small_transfer_needs_no_pin_but_accepts_it(pair: Pair) -> None:
    data = pair.transfer_json("25.00", T_XFER, "--pin", "1234")
    assert (data["payer_balance"], data["payee_balance"]) == (5500, 2500)


# 3. refusals -----------------------------------------------------------------------------------
SEND_REFUSALS = [
    pytest.param("12.00", T_LATE, (), "9C02", id="payer credential expired"),
    pytest.param("90.00", T_XFER, ("--pin", "1234"), "9C04", id="payer over balance"),
]


@pytest.mark.parametrize(("amount", "now", "extra", "sw"), SEND_REFUSALS)
def test_the_payer_refuses_after_the_payee_asked(
    pair: Pair, amount: str, now: str, extra: tuple[str, ...], sw: str
) -> None:
    payer_bytes, payee_before = pair.payer.read_bytes(), cells(pair.payee)
    payer_atc = as_int(cells(pair.payer)["atc"])
    home_before = snapshot(pair.home)
    line = fails(pair.transfer(amount, now, *extra), EXIT_REFUSED)
    assert line.startswith("purse: refused: transfer stopped at the payer's debit (TRANSFER OUT)")
    assert sw in line
    assert "nothing moved (the payer did not debit)" in line
    assert pair.payer.read_bytes() == payer_bytes
    minor = int(amount.replace(".", ""))
    assert_payee_only_asked(pair, payee_before, minor, payer_atc)
    assert snapshot(pair.home) == home_before  # the wallet never reaches the issuer
    assert pair.balances() == {PAYER_ID: 8000, PAYEE_ID: 0}


def test_the_payee_refuses_above_its_maximum(pair: Pair) -> None:
    # Bob's card holds 995.00 of its 1000.00
    ok(["issuer", "deposit", "Bob", "995.00", "--now", T0], pair.home)
    load = ["atm", "load", "--amount", "995.00", "--card", str(pair.payee), "--pin", "4321"]
    ok([*load, "--now", T0], pair.home)
    before = snapshot(pair.home.parent)
    line = fails(pair.transfer("10.00", T_XFER), EXIT_REFUSED)
    assert line.startswith(
        "purse: refused: transfer stopped at the payee's request (TRANSFER IN ask)"
    )
    assert "9C15" in line
    assert "nothing moved" in line
    assert snapshot(pair.home.parent) == before  # both card files, byte for byte
    # 5.00 still fits
    assert pair.transfer_json("5.00", T_XFER)["payee_balance"] == 100_000


def test_a_blank_card_cannot_take_part(pair: Pair) -> None:
    blank = pair.home.parent / "blank.img"
    ok(["card", "new", str(blank)], pair.home)
    before = snapshot(pair.home.parent)
    args = ["wallet", "transfer", "--from", str(pair.payer), "--to", str(blank)]
    line = fails(run([*args, "--amount", "1.00", "--now", T_XFER], pair.home), EXIT_REFUSED)
    assert "transfer stopped at reading the cards" in line
    assert "nothing moved" in line
    assert snapshot(pair.home.parent) == before


def test_a_card_pulled_out_midway_leaves_the_value_in_flight(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The payee's card leaves the reader when the value is on its way (step 3)."""
    transmit = LocalTransport.transmit

    def pulled_at_credit(self: LocalTransport, apdu: bytes) -> bytes:
        if apdu[:3] == bytes([0x80, 0x58, 0x01]):  # TRANSFER IN value
            raise NoCard("the card was removed", 0x80100069)
        return transmit(self, apdu)

    payee_before = cells(pair.payee)
    with monkeypatch.context() as patch:
        patch.setattr(LocalTransport, "transmit", pulled_at_credit)
        result = pair.transfer("5.00", T_XFER)
    assert result.exit_code != EXIT_OK
    line = one_line(result)
    assert "transfer stopped at the payee's credit (TRANSFER IN value)" in line
    assert "the card was removed" in line
    assert "in flight" in line

    payer = cells(pair.payer)
    assert as_int(payer["balance"]) == 7500  # debited
    assert PendingTransfer.decode(payer["xfer_pending"]).role == TransferRole.PAYER
    assert_payee_only_asked(pair, payee_before, 500, 2)

    pair.renew(pair.payee, T_RENEW)
    pair.renew(pair.payer, T_RENEW)  # both logs in: lost, and restored at once
    (row,) = pair.transfers()
    assert (row["status"], row["amount"], row["restore_pending"]) == ("lost", 500, True)
    assert pair.balances() == {PAYER_ID: 8000, PAYEE_ID: 0}


def test_a_lost_acknowledgement_is_reconciled_as_completed(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The payer's card leaves before the acknowledgement (step 4): the payee has the value."""
    transmit = LocalTransport.transmit

    def pulled_at_close(self: LocalTransport, apdu: bytes) -> bytes:
        if apdu[:2] == bytes([0x80, 0x5A]):  # TRANSFER ACK
            raise NoCard("the card was removed", 0x80100069)
        return transmit(self, apdu)

    with monkeypatch.context() as patch:
        patch.setattr(LocalTransport, "transmit", pulled_at_close)
        result = pair.transfer("6.00", T_XFER)
    line = one_line(result)
    assert "transfer stopped at the payer's close (TRANSFER ACK)" in line
    assert "the payee has credited" in line
    assert pair.balances() == {PAYER_ID: 7400, PAYEE_ID: 600}
    assert PendingTransfer.decode(cells(pair.payer)["xfer_pending"]).role == TransferRole.PAYER
    assert cells(pair.payee)["xfer_pending"] == b""

    pair.renew(pair.payer, T_RENEW)
    (row,) = pair.transfers()
    assert (row["status"], row["payer_logged"], row["payee_logged"]) == ("maybe_lost", True, False)
    pair.renew(pair.payee, T_RENEW)
    (row,) = pair.transfers()
    assert row["status"] == "completed"
    assert "completed: the payee got it" in ok(["issuer", "transfers"], pair.home)
    assert pair.renew(pair.payer, T_RENEW2)["restored"] == 0  # nothing to give back
    assert pair.shadows() == pair.balances() == {PAYER_ID: 7400, PAYEE_ID: 600}


def test_a_card_pulled_out_midway_is_an_error_not_a_refusal(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    transmit = LocalTransport.transmit

    def pulled_at_credit(self: LocalTransport, apdu: bytes) -> bytes:
        if apdu[:3] == bytes([0x80, 0x58, 0x01]):
            raise NoCard("the card was removed", 0x80100069)
        return transmit(self, apdu)

    monkeypatch.setattr(LocalTransport, "transmit", pulled_at_credit)
    line = fails(pair.transfer("5.00", T_XFER), EXIT_ERROR)
    assert "refused" not in line
    assert "in flight" in line


# 4. bad input ------------------------------------------------------------------------------------
USAGE_ERRORS: list[tuple[list[str], str]] = [
    (["--to", "{b}", "--amount", "1.00"], "--from FILE or --from-reader NAME|INDEX"),
    (["--from", "{a}", "--amount", "1.00"], "--to FILE or --to-reader NAME|INDEX"),
    (["--from", "{a}", "--from-reader", "0", "--to", "{b}", "--amount", "1.00"], "one of them"),
    (["--from", "{a}", "--to", "{b}", "--to-reader", "0", "--amount", "1.00"], "one of them"),
    (["--amount", "1.00"], "--from FILE or --from-reader"),
    (["--from", "{a}", "--to", "{a}", "--amount", "1.00"], "must differ"),
    (["--from-reader", "0", "--to-reader", "0", "--amount", "1.00"], "must differ"),
    (["--from", "{a}", "--to", "{b}"], "Missing option '--amount'"),
    (["--from", "{a}", "--to", "{b}", "--amount", "1.5"], "is not an amount"),
    (["--from", "{a}", "--to", "{b}", "--amount", "0"], "must be positive"),
    (["--from", "{a}", "--to", "{b}", "--amount", "-3.00"], "must be positive"),
    (["--from", "{a}", "--to", "{b}", "--amount", "1", "--wait", "-1"], "--wait"),
    (["--from", "{a}", "--to", "{b}", "--amount", "1", "--pin", "12a4"], "4 to 12 digits"),
    (["--from", "{a}", "--to", "{b}", "--amount", "1", "--now", "yesterday"], "ISO 8601"),
    (["--from", "{a}", "--to", "{b}", "--amount", "1", "--bogus"], "No such option"),
    (["--from", "{home}", "--to", "{b}", "--amount", "1"], "is a directory"),
]


@pytest.mark.parametrize(
    ("args", "says"), USAGE_ERRORS, ids=[f"{i}: {s}" for i, (_, s) in enumerate(USAGE_ERRORS)]
)
def test_usage_errors(pair: Pair, args: list[str], says: str) -> None:
    names = {"a": str(pair.payer), "b": str(pair.payee), "home": str(pair.home)}
    before = snapshot(pair.home.parent)
    argv = ["wallet", "transfer", "--now", T_XFER, *(a.format(**names) for a in args)]
    line = fails(run(argv, pair.home), EXIT_USAGE)
    assert says in line, line
    assert snapshot(pair.home.parent) == before


@pytest.mark.parametrize("side", ["from", "to"])
def test_a_missing_card_file(pair: Pair, side: str) -> None:
    nowhere = pair.home.parent / "nowhere.img"
    files = {"from": str(pair.payer), "to": str(pair.payee), side: str(nowhere)}
    before = snapshot(pair.home.parent)
    args = ["wallet", "transfer", "--from", files["from"], "--to", files["to"]]
    line = fails(run([*args, "--amount", "1.00", "--now", T_XFER], pair.home), EXIT_ERROR)
    assert f"{nowhere}: no such card file" in line
    assert snapshot(pair.home.parent) == before  # no lock file left behind either


@pytest.mark.parametrize("side", ["payer", "payee"])
def test_a_card_file_in_use_by_another_program(pair: Pair, side: str) -> None:
    busy = pair.payer if side == "payer" else pair.payee
    other = pair.payee if side == "payer" else pair.payer
    before = snapshot(pair.home.parent)
    with image_lock(busy):
        line = fails(pair.transfer("1.00", T_XFER), EXIT_ERROR)
        assert f"{busy}: in use by another program" in line
        assert not other.with_name(other.name + ".lock").exists()  # released
    assert snapshot(pair.home.parent) == before
    assert pair.transfer("1.00", T_XFER).exit_code == EXIT_OK  # free again


def _same_card_names(pair: Pair, how: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """Two spellings of the payer's card file."""
    if how == "relative and absolute":
        monkeypatch.chdir(pair.payer.parent)
        return pair.payer.name, str(pair.payer)
    link = pair.payer.with_name("alias.img")
    link.symlink_to(pair.payer.name)
    return str(pair.payer), str(link)


SAME_CARD_SPELLINGS = ["relative and absolute", "symlink"]


@pytest.mark.parametrize("how", SAME_CARD_SPELLINGS)
def test_the_same_card_under_two_names_moves_nothing(
    pair: Pair, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = _same_card_names(pair, how, monkeypatch)
    before = snapshot(pair.home.parent)
    args = ["wallet", "transfer", "--from", first, "--to", second, "--amount", "1.00"]
    result = run([*args, "--now", T_XFER], pair.home)
    assert result.exit_code != EXIT_OK
    one_line(result)
    assert snapshot(pair.home.parent) == before  # the symlink is still a symlink, too


@pytest.mark.parametrize("how", SAME_CARD_SPELLINGS)
def test_the_same_card_under_two_names_is_a_usage_error(
    pair: Pair, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = _same_card_names(pair, how, monkeypatch)
    args = ["wallet", "transfer", "--from", first, "--to", second, "--amount", "1.00"]
    line = fails(run([*args, "--now", T_XFER], pair.home), EXIT_USAGE)
    assert "must differ" in line


# 5. issuer transfers --------------------------------------------------------------------------
def test_no_aborted_transfers_at_first(pair: Pair) -> None:
    assert ok(["issuer", "transfers"], pair.home) == "no aborted transfers reported\n"
    assert ok_json(["issuer", "transfers"], pair.home) == []


def test_issuer_transfers_needs_an_issuer(tmp_path: Path) -> None:
    home = tmp_path / "home"
    line = fails(run(["issuer", "transfers"], home), EXIT_ERROR)
    assert f"no issuer in {home}" in line
    assert not home.exists()


def test_a_refused_payer_is_reconciled_as_not_sent(pair: Pair) -> None:
    fails(pair.transfer("90.00", T_XFER, "--pin", "1234"), EXIT_REFUSED)  # 9C04, payee asked
    pending = Transfer.decode(PendingTransfer.decode(cells(pair.payee)["xfer_pending"]).transfer)
    assert pair.transfers() == []  # nobody has been online yet

    renewal = pair.renew(pair.payee, T_RENEW)
    assert (renewal["restored"], renewal["balance"]) == (0, 0)
    after = cells(pair.payee)  # the pending ask went to the log, which the issuer cleared
    assert (after["xfer_pending"], after["xfer_log"]) == (b"", b"")
    expected = {
        "from": PAYER_ID,
        "from_seq": pending.from_seq,
        "to": PAYEE_ID,
        "to_seq": pending.to_seq,
        "amount": 9000,
        "status": "maybe_lost",  # the payer has not been online since
        "payer_logged": False,
        "payee_logged": True,
        "restored": False,
        "restore_pending": False,
    }
    assert pair.transfers() == [expected]
    assert "maybe lost: waiting for the other card's report" in ok(
        ["issuer", "transfers"], pair.home
    )

    renewal = pair.renew(pair.payer, T_RENEW)
    assert (renewal["actions"], renewal["restored"], renewal["balance"]) == (["renew"], 0, 8000)
    assert pair.transfers() == [{**expected, "status": "not_sent"}]
    text = ok(["issuer", "transfers"], pair.home)
    assert text.splitlines() == [
        f"{PAYER_ID} #{pending.from_seq} -> {PAYEE_ID} #{pending.to_seq}  "
        f"{'90.00 EUR':>14}  not sent: the payer never debited"
    ]
    assert pair.shadows() == pair.balances() == {PAYER_ID: 8000, PAYEE_ID: 0}

    # a later renewal of the payer restores nothing: no value was lost
    assert pair.renew(pair.payer, T_RENEW2)["restored"] == 0
    assert pair.transfers() == [{**expected, "status": "not_sent"}]


def test_a_lost_transfer_is_restored_to_the_payer(pair: Pair) -> None:
    sent = send_without_delivery(pair, 500, T_XFER)
    assert (sent.from_seq, sent.to_seq, sent.amount) == (3, 3, 500)
    assert pair.balances() == {PAYER_ID: 7500, PAYEE_ID: 0}
    key = {"from": PAYER_ID, "from_seq": 3, "to": PAYEE_ID, "to_seq": 3, "amount": 500}

    # the payer first: its log alone cannot tell lost from completed
    renewal = pair.renew(pair.payer, T_RENEW)
    assert (renewal["restored"], renewal["balance"]) == (0, 7500)
    (row,) = pair.transfers()
    assert row == {
        **key,
        "status": "maybe_lost",
        "payer_logged": True,
        "payee_logged": False,
        "restored": False,
        "restore_pending": False,
    }

    # then the payee: both sides logged it, it is lost
    renewal = pair.renew(pair.payee, T_RENEW)
    assert (renewal["restored"], renewal["balance"]) == (0, 0)
    (row,) = pair.transfers()
    assert (row["status"], row["payer_logged"], row["payee_logged"]) == ("lost", True, True)
    assert (row["restore_pending"], row["restored"]) == (False, False)
    assert "LOST: both cards logged it" in ok(["issuer", "transfers"], pair.home)
    assert pair.shadows() == pair.balances() == {PAYER_ID: 7500, PAYEE_ID: 0}

    # the payer's next online session gives the value back, and the ATM says so
    renewal = pair.renew(pair.payer, T_RENEW2)
    assert renewal["actions"] == ["renew", "restore"]
    assert (renewal["restored"], renewal["balance"]) == (500, 8000)
    (row,) = pair.transfers()
    assert (row["status"], row["restore_pending"], row["restored"]) == ("lost", True, False)
    assert ok(["issuer", "transfers"], pair.home).rstrip().endswith(", restore sent")
    payer = show(pair.payer, pair.home)
    assert payer["balance"] == 8000
    assert [(h["kind"], h["amount"], h["balance"]) for h in payer["history"][:2]] == [
        ("restore", 500, 8000),
        ("renew", 0, 7500),
    ]

    # the session after that tells the issuer the restore was applied
    renewal = pair.renew(pair.payer, T_RENEW3)
    assert (renewal["actions"], renewal["restored"], renewal["balance"]) == (["renew"], 0, 8000)
    (row,) = pair.transfers()
    assert (row["status"], row["restore_pending"], row["restored"]) == ("lost", False, True)
    assert ok(["issuer", "transfers"], pair.home).rstrip().endswith(", restored to the payer")
    pair.renew(pair.payee, T_RENEW3)
    assert pair.shadows() == pair.balances() == {PAYER_ID: 8000, PAYEE_ID: 0}
    assert show(pair.payee, pair.home)["balance"] == 0  # the payee never got it


def test_a_lost_transfer_reported_payee_first_is_restored_at_once(pair: Pair) -> None:
    send_without_delivery(pair, 700, T_XFER)
    pair.renew(pair.payee, T_RENEW)
    (row,) = pair.transfers()
    assert (row["status"], row["payer_logged"], row["payee_logged"]) == ("maybe_lost", False, True)
    out = ok(["atm", "renew", "--card", str(pair.payer), "--now", T_RENEW], pair.home)
    assert "restored 7.00 EUR: card-to-card value the issuer found lost" in out
    assert "balance 80.00 EUR" in out
    (row,) = pair.transfers()
    assert (row["status"], row["restore_pending"]) == ("lost", True)
    pair.renew(pair.payer, T_RENEW2)
    (row,) = pair.transfers()
    assert row["restored"] is True
    assert pair.shadows() == pair.balances() == {PAYER_ID: 8000, PAYEE_ID: 0}


# 6. help ----------------------------------------------------------------------------------------
HELP: list[tuple[list[str], list[str]]] = [
    (["wallet"], ["transfer", "card to card"]),
    (
        ["wallet", "transfer"],
        [
            "--from FILE",
            "--from-reader NAME|INDEX",
            "--to FILE",
            "--to-reader NAME|INDEX",
            "--wait",
            "--amount",
            "--pin",
            "--json",
            "--now",
            "no-PIN limit",
        ],
    ),
    (["issuer", "transfers"], ["--json", "restored", "payer"]),
    (["issuer"], ["transfers"]),
    (["--help"], ["wallet"]),
]


@pytest.mark.parametrize(("path", "mentions"), HELP, ids=[" ".join(p) for p, _ in HELP])
def test_help(path: list[str], mentions: list[str]) -> None:
    args = path if path == ["--help"] else [*path, "--help"]
    out = ok(args, None)
    assert out.startswith("Usage: purse")
    for text in mentions:
        assert text in out, (text, out)


# the shared option factory ------------------------------------------------------------------------
@click.command()
@card_source_option("src", "src-reader", "source", "The source")
@card_source_option()
@wait_option
def probe(source: CardSource, card: CardSource, wait: float) -> None:
    """Echo the card sources it was given."""

    def plain(s: CardSource) -> list[Any]:
        return [None if s.path is None else str(s.path), s.reader, s.wait]

    click.echo(json.dumps({"source": plain(source), "card": plain(card), "wait": wait}))


def invoke_probe(args: list[str]) -> Result:
    return CliRunner().invoke(probe, args, prog_name="probe")


def test_card_source_option_passes_one_card_source_each() -> None:
    result = invoke_probe(["--src", "a.img", "--reader", "00 01", "--wait", "2.5"])
    assert result.exit_code == EXIT_OK, result.output
    assert json.loads(result.stdout) == {
        "source": ["a.img", None, 2.5],
        "card": [None, "00 01", 2.5],
        "wait": 2.5,
    }
    result = invoke_probe(["--src-reader", "1", "--card", "b.img"])
    assert result.exit_code == EXIT_OK, result.output
    assert json.loads(result.stdout) == {
        "source": [None, "1", 10.0],
        "card": ["b.img", None, 10.0],
        "wait": 10.0,
    }
    # the dataclass itself
    assert CardSource(Path("x.img")) == CardSource(Path("x.img"), None, 10.0)
    assert str(CardSource(Path("x.img"))) == "x.img"
    assert str(CardSource(reader="2")) == "reader 2"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--card", "b.img"], "give the source card as --src FILE or --src-reader NAME|INDEX"),
        (["--src", "a.img"], "give the card as --card FILE or --reader NAME|INDEX"),
        (["--src", "a.img", "--src-reader", "0", "--card", "b.img"], "(one of them)"),
    ],
)
def test_card_source_option_wants_exactly_one_of_its_two(args: list[str], says: str) -> None:
    result = invoke_probe(args)
    assert result.exit_code == EXIT_USAGE
    assert says in result.stderr


def test_card_source_option_help() -> None:
    out = invoke_probe(["--help"]).stdout
    for text in ("--src FILE", "--src-reader NAME|INDEX", "--card FILE", "--reader NAME|INDEX"):
        assert text in out
    assert "The source card's image file" in out


def test_the_old_commands_keep_card_and_reader(pair: Pair) -> None:
    before = snapshot(pair.home.parent)
    line = fails(run(["atm", "renew", "--now", T_RENEW], pair.home), EXIT_USAGE)
    assert "give the card as --card FILE or --reader NAME|INDEX (one of them)" in line
    both = ["atm", "renew", "--card", str(pair.payer), "--reader", "0", "--now", T_RENEW]
    assert "(one of them)" in fails(run(both, pair.home), EXIT_USAGE)
    assert snapshot(pair.home.parent) == before


# 7. the registry's migration from schema 1 to 2 -----------------------------------------------
V1_CARD = (
    b"P0000001",
    "Alice",
    b"K" * 8,
    b"\x04" + b"\x11" * 64,
    b"certificate",
    2_000_000_000,
    978,
    100_000,
    1_700_000_000,
    "active",
    7,
    4_500,
    4_500,
    3,
    0,
    1,
    0,
)
V2_COLUMNS = {"transfers_out", "transfers_in", "reported_atc"}


def columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]


def tables(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def make_v1_registry(path: Path) -> None:
    """A registry file as the schema-1 code left it, with a holder, a card and a renewal."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sqlite_registry, "MIGRATIONS", MIGRATIONS[:1])
        patch.setattr(sqlite_registry, "SCHEMA_VERSION", 1)
        SQLiteRegistry(path, create=True).close()
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        assert "transfer_exceptions" not in tables(db)
        assert not V2_COLUMNS & set(columns(db, "cards"))
        db.execute("INSERT INTO holders VALUES ('Alice', 1000)")
        db.execute(f"INSERT INTO cards VALUES ({', '.join('?' * len(V1_CARD))})", V1_CARD)
        db.execute(
            "INSERT INTO renewals VALUES (?, 3, 1700000100, 1700604900, 3, 'applied', 1700000100)",
            (b"P0000001",),
        )


def test_a_schema_1_registry_is_migrated_and_keeps_its_card(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    make_v1_registry(path)
    registry = SQLiteRegistry(path)
    try:
        assert registry.schema_version == SCHEMA_VERSION == 2
        with registry.transaction() as tx:
            card = tx.card(b"P0000001")
            assert card is not None
            assert (card.holder, card.issuer_key_id, card.public_key) == (
                "Alice",
                b"K" * 8,
                b"\x04" + b"\x11" * 64,
            )
            assert (card.certificate, card.cert_expires_at, card.currency, card.max_balance) == (
                b"certificate",
                2_000_000_000,
                978,
                100_000,
            )
            assert (card.issued_at, card.status, card.last_atc) == (
                1_700_000_000,
                CardState.ACTIVE,
                7,
            )
            assert (card.last_balance, card.shadow_balance, card.credential_serial) == (
                4_500,
                4_500,
                3,
            )
            assert (card.unlock_requested, card.unblock_requested, card.unlocked_at) == (
                False,
                True,
                0,
            )
            assert (card.transfers_out, card.transfers_in, card.reported_atc) == (0, 0, 0)
            assert [c.card_id for c in tx.cards()] == [b"P0000001"]
            assert tx.holder_balance("Alice") == 1000
            (renewal,) = tx.renewals(b"P0000001")
            assert (renewal.serial, renewal.outcome, renewal.restore) == (3, Outcome.APPLIED, 0)
            assert tx.exceptions() == []
            assert tx.exceptions(b"P0000001") == []
            assert tx.blocklist_version() == 0
    finally:
        registry.close()
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert "transfer_exceptions" in tables(db)
        assert set(columns(db, "cards")) >= V2_COLUMNS
        assert "restore" in columns(db, "renewals")
        # the audit log is still append-only after the migration
        db.execute("INSERT INTO audit (at, event, card_id, detail) VALUES (1, 'x', NULL, '')")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM audit")
    # opening again migrates nothing more
    again = SQLiteRegistry(path)
    try:
        assert again.schema_version == 2
        with again.transaction() as tx:
            card = tx.card(b"P0000001")
            assert card is not None
            assert card.reported_atc == 0
    finally:
        again.close()


def downgrade_to_v1(registry: Path, scratch: Path) -> None:
    """Rewrite a current registry file as schema 1: the V1 tables, the V1 columns, its rows."""
    assert not registry.with_name(registry.name + "-wal").exists()  # every commit is in the file
    current = scratch / "current.sqlite"
    registry.rename(current)
    with closing(sqlite3.connect(registry, isolation_level=None)) as db:
        db.executescript(MIGRATIONS[0])
        db.execute("ATTACH DATABASE ? AS old", (str(current),))
        for table in sorted(tables(db) - {"sqlite_sequence"}):
            names = ", ".join(columns(db, table))
            db.execute(
                f'INSERT OR REPLACE INTO main."{table}" ({names}) SELECT {names} FROM old."{table}"'
            )
        db.execute("DETACH DATABASE old")
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute("PRAGMA user_version = 1")


def test_a_home_with_a_schema_1_registry_migrates_and_transfers(pair: Pair, tmp_path: Path) -> None:
    cards_before = ok_json(["issuer", "cards"], pair.home)
    audit_before = ok_json(["issuer", "audit"], pair.home)
    registry = pair.home / "issuer" / REGISTRY_FILE
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    downgrade_to_v1(registry, scratch)
    with closing(sqlite3.connect(registry)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        assert "transfer_exceptions" not in tables(db)

    # the wallet does not touch the registry; the next issuer command migrates it
    pair.transfer_json("12.00", T_XFER)
    assert ok_json(["issuer", "cards"], pair.home) == cards_before
    assert ok_json(["issuer", "audit"], pair.home) == audit_before
    assert ok_json(["issuer", "transfers"], pair.home) == []
    with closing(sqlite3.connect(registry)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        rows = db.execute(
            "SELECT card_id, transfers_out, transfers_in, reported_atc FROM cards ORDER BY 1"
        ).fetchall()
        assert rows == [(b"P0000001", 0, 0, 0), (b"P0000002", 0, 0, 0)]

    # the cards report their transfer totals for the first time: the shadows follow
    for card in (pair.payer, pair.payee):
        pair.renew(card, T_RENEW)
    assert pair.shadows() == pair.balances() == {PAYER_ID: 6800, PAYEE_ID: 1200}
    with closing(sqlite3.connect(registry)) as db:
        rows = db.execute(
            "SELECT transfers_out, transfers_in FROM cards ORDER BY card_id"
        ).fetchall()
        assert rows == [(1200, 0), (0, 1200)]
