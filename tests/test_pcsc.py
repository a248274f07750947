"""The purse card over a real PC/SC stack: pcscd, vsmartcard's vpcd driver, pyscard.

Every test here takes the session fixture ``pcsc`` (pcscd with the two vpcd
readers, "Virtual PCD 00 00" and "Virtual PCD 00 01"). Cards are inserted
either in a thread (``tests.pcsc_kit.served``) or by the real bridge, ``purse
card serve FILE`` in a subprocess, stopped with SIGINT in a ``finally``.

What is checked:

* ``purse apdu readers`` (text and ``--json``) lists both readers by index,
  with the served card's ATR and protocols, and "no card" for the other;
* the whole CLI story on ``--reader`` (issue, load, pay by reader name,
  upload, settle) against a card served from its image file, and the image
  holds afterwards exactly what was done over PC/SC;
* a card refusal (expired credential, 9C02) over PC/SC changes no byte;
* programs we did not write (opensc-tool, scriptor) select the purse;
* two cards in two readers at once move independently;
* :class:`apdu.pcsc.PcscTransport` itself: T=1 preferred, a T=0-only card,
  reset and power cycles clearing the card's session, a card inserted while
  waiting, exclusive access, a card removed mid-session;
* bad input (reader index, unknown or ambiguous name, no card, busy reader,
  ``--card`` with ``--reader``, pyscard missing) is one clear line, in
  bounded time, and changes nothing;
* ``apdu send --trace`` shows the GET RESPONSE round; ``apdu script`` checks
  status words over PC/SC;
* a tear (power cut) inside PAY over PC/SC is a PcscError, leaves the image
  exactly before or after the payment, and the card comes back;
* a program that ends resets the card: the next one inherits no session.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from apdu.atr import build_atr
from apdu.command import CommandApdu
from apdu.pcsc import Context, NoCard, PcscError, PcscTransport, list_readers
from apdu.purse import PURSE_AID, HistoryKind, LifeCycle, PayData
from apdu.purse_client import CardStatus, PurseClient
from apdu.status import SW, CardError
from apdu.transport import CardChannel
from card_os.card import DEFAULT_ATR, Card
from card_os.image import ImageFile
from card_os.purse import PurseApplet
from card_os.tear import TearInjector
from card_os.vpcd import VPCD_HOST, VpcdBridge, slot_port
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
    snapshot,
)
from tests.pcsc_kit import READERS, PcscStack, served, wait_for_slot
from tests.purse_kit import NONCE, PIN, T0, TERMINAL_ID, funded_rig, reopen

# the times of tests/test_cli.py: the default policy gives a 7-day credential
C_T0 = "2026-11-30T08:00:00Z"  # set-up: issue, deposit, load, sync
C_PAY = "2026-11-30T09:00:00Z"
C_PAY2 = "2026-11-30T10:00:00Z"
C_UPLOAD = "2026-11-30T18:00:00Z"
C_EXPIRES = "2026-12-07T08:00:00Z"
C_LATE = "2026-12-08T08:00:00Z"  # past the expiry

SELECT = "00 A4 04 00 08 F045505552534501"
SELECT_COLONS = "00:A4:04:00:08:F0:45:50:55:52:53:45:01"
SELECT_RAW = bytes.fromhex("00A4040008F045505552534501")
GET_BALANCE_RAW = bytes.fromhex("00CADF0300")
READ_RECORD_1_RAW = bytes.fromhex("00B2010400")

QUICK = 2.0  # seconds any failure must take at most (the brief's "bounded time")
STOP_TIMEOUT = 10.0  # seconds a `card serve` may take to stop after SIGINT
TOOL_TIMEOUT = 20.0  # seconds for opensc-tool and scriptor

_PURSE_SCRIPT = Path(sys.executable).with_name("purse")
PURSE: list[str] = (
    [str(_PURSE_SCRIPT)]
    if _PURSE_SCRIPT.exists()
    else [sys.executable, "-c", "from purse_cli.main import main; main()"]
)


def show(card: Path, home: Path) -> dict[str, Any]:
    facts: dict[str, Any] = ok_json(["card", "show", str(card)], home)
    return facts


@contextmanager
def within(limit: float) -> Iterator[None]:
    """The block must end (however it ends) within ``limit`` seconds."""
    start = time.monotonic()
    try:
        yield
    finally:
        took = time.monotonic() - start
        assert took < limit, f"took {took:.2f} s, more than {limit:g} s"


# readers, cards and bridges ---------------------------------------------------------------
def index_of(slot: int) -> str:
    """The index (as ``--reader`` takes it) of vpcd slot ``slot``'s reader."""
    with Context() as ctx:
        return str(ctx.readers().index(READERS[slot]))


def open_card(path: Path) -> Card:
    """The card in image file ``path`` (unpowered, purse installed), as `card serve` opens it."""
    card = Card.open(path)
    card.install(PURSE_AID, PurseApplet)
    return card


def powered(card: Card) -> bool:
    """Whether the card has power now (a call, so that no type checker holds it constant)."""
    return card.powered


def idle_rig_card() -> Card:
    """An issued card holding 100.00 with a credential (tests.purse_kit), unpowered."""
    card = funded_rig().card
    card.power_off()  # the reader powers it up: no session carried in from the set-up
    return card


@dataclass
class Server:
    """A ``purse card serve FILE --slot N`` subprocess."""

    proc: subprocess.Popen[str]
    slot: int
    out: str = ""
    err: str = ""
    stopped: bool = False

    def stop(self) -> int:
        """SIGINT, then wait (kill if it does not end); its exit code. Idempotent."""
        if not self.stopped:
            self.stopped = True
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
            try:
                out, err = self.proc.communicate(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate(timeout=5)
            self.out, self.err = out, err
        code = self.proc.returncode
        assert code is not None
        return code


@contextmanager
def serving(home: Path, image: Path, slot: int) -> Iterator[Server]:
    """``purse card serve`` in a subprocess; the card is in the reader during the block."""
    proc = subprocess.Popen(
        [*PURSE, "--home", str(home), "card", "serve", str(image), "--slot", str(slot)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Server(proc, slot)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                server.stop()
                raise AssertionError(f"card serve ended at once: {server.out}{server.err}")
            try:
                wait_for_slot(slot, present=True, timeout=0.25)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
        yield server
    finally:
        server.stop()
        wait_for_slot(slot, present=False)


def purse_process(args: Sequence[str], timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """``purse ARGS`` in a subprocess that must end by itself within ``timeout`` s."""
    try:
        return subprocess.run(
            [*PURSE, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:  # subprocess.run has killed it
        raise AssertionError(f"purse {' '.join(args)} did not end in {timeout:g} s") from err


def tool(name: str) -> str:
    """The path of a PC/SC tool we did not write; skipped when missing (failed under CI)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} must be installed under CI")
        pytest.skip(f"{name} is not installed")
    return path


@dataclass(frozen=True)
class World:
    home: Path
    card: Path  # Alice's card P0000001: issued, 200.00 loaded at C_T0, POS synced


@pytest.fixture
def world(tmp_path: Path) -> World:
    """A home with an issuer, Alice's card on an image file, a registered and synced POS."""
    home, card = tmp_path / "home", tmp_path / "alice.img"
    ok(["issuer", "init", "--now", C_T0], home)
    ok(["card", "new", str(card)], home)
    ok(["issuer", "issue", "--card", str(card), "--holder", "Alice", "--pin", "1234"], home)
    ok(["issuer", "deposit", "Alice", "500.00", "--now", C_T0], home)
    ok(["issuer", "terminal", "POS00001", "--merchant", "Shop", "--now", C_T0], home)
    load = ["atm", "load", "--amount", "200.00", "--card", str(card), "--pin", "1234"]
    ok([*load, "--now", C_T0], home)
    ok(["pos", "sync", "--now", C_T0], home)
    return World(home, card)


# 1. purse apdu readers ---------------------------------------------------------------------
def test_readers_lists_both_vpcd_readers_and_the_served_card(
    pcsc: PcscStack, tmp_path: Path
) -> None:
    assert set(pcsc.readers) == set(READERS)
    with served(idle_rig_card(), 0):
        listed = ok_json(["apdu", "readers"], tmp_path)
        text = ok(["apdu", "readers"], tmp_path)
    by_name = {entry["name"]: entry for entry in listed}
    assert set(READERS) <= set(by_name)
    assert [entry["index"] for entry in listed] == list(range(len(listed)))
    assert by_name[READERS[0]] == {
        "index": int(index_of(0)),
        "name": READERS[0],
        "atr": DEFAULT_ATR.hex().upper(),
        "protocols": "T=0/T=1",
    }
    assert by_name[READERS[1]] == {
        "index": int(index_of(1)),
        "name": READERS[1],
        "atr": None,
        "protocols": None,
    }
    lines = text.splitlines()
    assert f"{index_of(0)}: {READERS[0]}  card ATR {DEFAULT_ATR.hex().upper()} (T=0/T=1)" in lines
    assert f"{index_of(1)}: {READERS[1]}  no card" in lines
    assert DEFAULT_ATR.hex().upper() == "3B8780018055505552534592"  # as README shows it

    # removed: both readers are empty again, still listed
    after = {entry["name"]: entry for entry in ok_json(["apdu", "readers"], tmp_path)}
    assert after[READERS[0]]["atr"] is None
    assert after[READERS[1]]["atr"] is None

    # a T=0-only card in slot 1 next to ours in slot 0: each with its own ATR and protocols
    t0_atr = build_atr(b"T0ONLY", protocols=(0,))
    with served(idle_rig_card(), 0), served(Card(atr=t0_atr), 1):
        both = {entry["name"]: entry for entry in ok_json(["apdu", "readers"], tmp_path)}
        infos = {info.name: info for info in list_readers()}
    assert (both[READERS[0]]["atr"], both[READERS[0]]["protocols"]) == (
        DEFAULT_ATR.hex().upper(),
        "T=0/T=1",
    )
    assert (both[READERS[1]]["atr"], both[READERS[1]]["protocols"]) == (t0_atr.hex().upper(), "T=0")
    assert infos[READERS[0]].atr == DEFAULT_ATR
    assert infos[READERS[1]].atr == t0_atr
    assert infos[READERS[1]].card_present


# 2. the CLI story on --reader, with `purse card serve` -------------------------------------
def test_cli_story_over_pcsc_with_card_serve(pcsc: PcscStack, tmp_path: Path) -> None:
    home, image = tmp_path / "home", tmp_path / "alice.img"
    r0 = index_of(0)
    ok(["issuer", "init", "--now", C_T0], home)
    assert "blank card created" in ok(["card", "new", str(image)], home)

    with serving(home, image, 0) as server:
        # while it is served, the image is locked: no other purse command uses it
        line = fails(run(["card", "show", str(image)], home), EXIT_ERROR)
        assert "in use by another program" in line
        twice = purse_process(
            ["--home", str(home), "card", "serve", str(image), "--slot", "1", "--wait", "1"]
        )
        assert twice.returncode == EXIT_ERROR, (twice.stdout, twice.stderr)
        assert "in use by another program" in twice.stderr

        readers = {e["name"]: e for e in ok_json(["apdu", "readers"], home)}
        assert readers[READERS[0]]["atr"] == DEFAULT_ATR.hex().upper()

        issue = ["issuer", "issue", "--reader", r0, "--holder", "Alice", "--pin", "1234"]
        issued = ok_json([*issue, "--now", C_T0], home)
        assert issued == {"card_id": "P0000001", "holder": "Alice", "pin": "1234"}
        assert ok(["issuer", "deposit", "Alice", "500.00", "--now", C_T0], home) == (
            "account Alice: 500.00 EUR\n"
        )
        ok(["issuer", "terminal", "POS00001", "--merchant", "Shop", "--now", C_T0], home)
        load_args = ["atm", "load", "--amount", "200.00", "--reader", r0, "--pin", "1234"]
        load = ok_json([*load_args, "--now", C_T0], home)
        assert load["outcome"] == "updated"
        assert load["actions"] == ["renew", "load"]
        assert (load["card_id"], load["serial"], load["loaded"], load["balance"]) == (
            "P0000001",
            1,
            20000,
            20000,
        )
        assert (load["issued_at"], load["expires_at"]) == (C_T0, C_EXPIRES)
        assert "0 card(s) listed" in ok(["pos", "sync", "--now", C_T0], home)

        sale = ok_json(
            ["pos", "pay", "--amount", "4.50", "--reader", READERS[0], "--now", C_PAY], home
        )
        assert sale == {
            "card_id": "P0000001",
            "terminal_id": "POS00001",
            "amount": 450,
            "balance": 19550,
            "atc": load["atc"] + 1,
            "time": C_PAY,
        }
        pay_by_part = ["pos", "pay", "--amount", "30.00", "--reader", "00 00", "--pin", "1234"]
        text = ok([*pay_by_part, "--now", C_PAY2], home)
        assert "paid 30.00 EUR at POS00001: receipt verified (card P0000001" in text
        assert "balance 165.50 EUR" in text

        sales = ok_json(["pos", "sales"], home)
        assert [(s["amount"], s["settled"]) for s in sales] == [(450, False), (3000, False)]
        report = ok_json(["pos", "upload", "--now", C_UPLOAD], home)
        assert report == {"batch_id": 1, "accepted": 2, "refused": [], "credited": 3450}
        assert ok_json(["issuer", "settle"], home) == [
            {"terminal_id": "POS00001", "merchant": "Shop", "credited": 3450, "receipts": 2}
        ]
        (registered,) = ok_json(["issuer", "cards"], home)
        assert (registered["card_id"], registered["holder"], registered["status"]) == (
            "P0000001",
            "Alice",
            "active",
        )
        # the renewal at the ATM confirms the balance: shadow == card
        renewal = ok_json(["atm", "renew", "--reader", r0, "--now", C_UPLOAD], home)
        assert renewal["balance"] == 16550
        (registered,) = ok_json(["issuer", "cards"], home)
        assert registered["shadow_balance"] == 16550

        assert server.stop() == EXIT_OK
    assert f"serving {image} to vpcd at {VPCD_HOST}:{slot_port(0)}" in server.out
    assert f"card inserted into vpcd at {VPCD_HOST}:{slot_port(0)}" in server.out
    assert "card removed from vpcd" in server.out
    stopped = server.out.strip().splitlines()[-1]
    assert stopped.startswith("stopped: ")
    assert "command(s) answered over 1 connection(s)" in stopped
    assert int(stopped.split()[1]) > 20
    assert server.err == ""

    # the image holds what was done over PC/SC
    facts = show(image, home)
    assert (facts["card_id"], facts["state"], facts["balance"]) == ("P0000001", "active", 16550)
    # a renewal takes two ATCs: BEGIN ONLINE (no record) and ISSUER UPDATE
    assert facts["atc"] == renewal["atc"] == sale["atc"] + 3
    assert facts["pin_tries"] == 3
    cred = facts["credential"]
    assert (cred["serial"], cred["issued_at"], cred["offline_spent"]) == (2, C_UPLOAD, 0)
    history = [
        (h["atc"], h["kind"], h["amount"], h["balance"], h["time"]) for h in facts["history"]
    ]
    assert history == [
        (renewal["atc"], "renew", 0, 16550, C_UPLOAD),
        (sale["atc"] + 1, "pay", 3000, 16550, C_PAY2),
        (sale["atc"], "pay", 450, 19550, C_PAY),
        (load["atc"], "load", 20000, 20000, C_T0),
        (load["atc"], "renew", 0, 0, C_T0),
    ]
    assert [h["counterparty"] for h in facts["history"]][1:3] == ["POS00001", "POS00001"]


# 3. a refusal over PC/SC changes nothing -----------------------------------------------------
def test_expired_credential_is_refused_over_pcsc_and_changes_nothing(
    pcsc: PcscStack, world: World
) -> None:
    before_card = world.card.read_bytes()
    before_facts = show(world.card, world.home)
    with serving(world.home, world.card, 0) as server:
        before_home = snapshot(world.home)
        assert world.card.read_bytes() == before_card  # serving alone writes nothing
        with within(QUICK + 3):
            late = ["pos", "pay", "--amount", "4.50", "--reader", index_of(0), "--now", C_LATE]
            result = run([*late, "--offline"], world.home)
        line = fails(result, EXIT_REFUSED)
        assert line.startswith("purse: refused: ")
        assert "9C02" in line
        assert "expired" in line
        assert snapshot(world.home) == before_home  # no sale recorded by the POS
        assert ok_json(["pos", "sales"], world.home) == []
        assert server.stop() == EXIT_OK
    assert world.card.read_bytes() == before_card
    assert show(world.card, world.home) == before_facts


# 4. programs we did not write -----------------------------------------------------------------
def test_opensc_tool_selects_the_purse(pcsc: PcscStack) -> None:
    opensc = tool("opensc-tool")
    r0 = index_of(0)
    with served(idle_rig_card(), 0):
        atr = subprocess.run(
            [opensc, "-r", r0, "-a"],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
        case3 = subprocess.run(
            [opensc, "-r", r0, "-s", SELECT_COLONS],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
        case4 = subprocess.run(
            [opensc, "-r", r0, "-s", SELECT_COLONS + ":00"],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
    assert atr.returncode == 0, atr.stderr
    assert atr.stdout.strip() == DEFAULT_ATR.hex(":")
    # without Le: the card answers 61 21, opensc fetches it; it reports the final 90 00
    assert case3.returncode == 0, case3.stderr
    assert f"Sending: {SELECT_COLONS.replace(':', ' ')}" in case3.stdout
    assert "Received (SW1=0x90, SW2=0x00)" in case3.stdout
    # with Le: the FCI itself (tag 6F, the AID in 84, card ID CARD0001)
    assert case4.returncode == 0, case4.stderr
    assert "Received (SW1=0x90, SW2=0x00)" in case4.stdout
    assert "6F 1F 84 08 F0 45 50 55 52 53 45 01" in case4.stdout
    assert ".CARD0001" in case4.stdout


def test_scriptor_selects_the_purse(pcsc: PcscStack) -> None:
    scriptor = tool("scriptor")
    commands = "00 A4 04 00 08 F0 45 50 55 52 53 45 01\n00 C0 00 00 21\n"
    with served(idle_rig_card(), 0):
        done = subprocess.run(
            [scriptor, "-r", READERS[0]],
            input=commands,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
    assert done.returncode == 0, (done.stdout, done.stderr)
    out = done.stdout
    assert "Using T=1 protocol" in out  # T=1 preferred when the ATR offers both
    assert "> 00 A4 04 00 08 F0 45 50 55 52 53 45 01" in out
    assert "< 61 21 : 0x21 bytes of response still available." in out
    assert "> 00 C0 00 00 21" in out
    assert "< 6F 1F 84 08 F0 45 50 55 52 53 45 01" in out
    assert "90 00 : Normal processing." in out


# 5. two cards at once ---------------------------------------------------------------------
def test_two_cards_in_two_readers_move_independently(pcsc: PcscStack, tmp_path: Path) -> None:
    home = tmp_path / "home"
    alice, bob = tmp_path / "alice.img", tmp_path / "bob.img"
    ok(["issuer", "init", "--now", C_T0], home)
    for image, holder, amount in ((alice, "Alice", "200.00"), (bob, "Bob", "100.00")):
        ok(["card", "new", str(image)], home)
        issue = ["issuer", "issue", "--card", str(image), "--holder", holder, "--pin", "1234"]
        ok([*issue, "--now", C_T0], home)
        ok(["issuer", "deposit", holder, "500.00", "--now", C_T0], home)
        load = ["atm", "load", "--amount", amount, "--card", str(image), "--pin", "1234"]
        ok([*load, "--now", C_T0], home)
    ok(["issuer", "terminal", "POS00001", "--merchant", "Shop", "--now", C_T0], home)
    ok(["pos", "sync", "--now", C_T0], home)
    r0, r1 = index_of(0), index_of(1)

    def pay(reader: str, amount: str, now: str) -> dict[str, Any]:
        sale: dict[str, Any] = ok_json(
            ["pos", "pay", "--amount", amount, "--reader", reader, "--now", now], home
        )
        return sale

    with serving(home, alice, 0) as alice_server, serving(home, bob, 1) as bob_server:
        first_a = pay(r0, "4.50", C_PAY)
        first_b = pay(r1, "12.00", C_PAY)
        assert (first_a["card_id"], first_a["balance"]) == ("P0000001", 19550)
        assert (first_b["card_id"], first_b["balance"]) == ("P0000002", 8800)
        second_b = pay(READERS[1], "1.00", C_PAY2)
        assert (second_b["card_id"], second_b["balance"], second_b["atc"]) == (
            "P0000002",
            8700,
            first_b["atc"] + 1,
        )

        # both readers held at once by one program: each answers for its own card
        with (
            PcscTransport(r0, wait=QUICK) as t0,
            PcscTransport(r1, wait=QUICK) as t1,
        ):
            a, b = PurseClient(CardChannel(t0)), PurseClient(CardChannel(t1))
            a.select()
            b.select()
            sa, sb = a.status(), b.status()
            assert (sa.card_id, sa.balance, sa.atc) == (b"P0000001", 19550, first_a["atc"])
            assert (sb.card_id, sb.balance, sb.atc) == (b"P0000002", 8700, second_b["atc"])
        assert alice_server.stop() == EXIT_OK
        assert bob_server.stop() == EXIT_OK

    a_facts, b_facts = show(alice, home), show(bob, home)
    assert (a_facts["card_id"], a_facts["balance"], a_facts["atc"]) == (
        "P0000001",
        19550,
        first_a["atc"],
    )
    assert (b_facts["card_id"], b_facts["balance"], b_facts["atc"]) == (
        "P0000002",
        8700,
        second_b["atc"],
    )
    assert [h["amount"] for h in a_facts["history"] if h["kind"] == "pay"] == [450]
    assert [h["amount"] for h in b_facts["history"] if h["kind"] == "pay"] == [100, 1200]
    settled = ok_json(["pos", "upload", "--now", C_UPLOAD], home)
    assert (settled["accepted"], settled["credited"]) == (3, 1750)


def test_wallet_transfer_between_the_two_readers(pcsc: PcscStack, tmp_path: Path) -> None:
    """The patent's fig. 2 over PC/SC: the payer in slot 0, the payee in slot 1."""
    home = tmp_path / "home"
    alice, bob = tmp_path / "alice.img", tmp_path / "bob.img"
    ok(["issuer", "init", "--now", C_T0], home)
    for image, holder in ((alice, "Alice"), (bob, "Bob")):
        ok(["card", "new", str(image)], home)
        issue = ["issuer", "issue", "--card", str(image), "--holder", holder, "--pin", "1234"]
        ok([*issue, "--now", C_T0], home)
    ok(["issuer", "deposit", "Alice", "500.00", "--now", C_T0], home)
    load = ["atm", "load", "--amount", "100.00", "--card", str(alice), "--pin", "1234"]
    ok([*load, "--now", C_T0], home)
    with serving(home, alice, 0) as alice_server, serving(home, bob, 1) as bob_server:
        move = ["wallet", "transfer", "--from-reader", index_of(0), "--to-reader", READERS[1]]
        done = ok_json([*move, "--amount", "7.00", "--now", C_PAY], home)
        assert (done["from"], done["to"], done["amount"]) == ("P0000001", "P0000002", 700)
        assert (done["payer_balance"], done["payee_balance"]) == (9300, 700)
        assert alice_server.stop() == EXIT_OK
        assert bob_server.stop() == EXIT_OK
    a_facts, b_facts = show(alice, home), show(bob, home)
    assert (a_facts["balance"], b_facts["balance"]) == (9300, 700)
    assert a_facts["history"][0]["kind"] == "transfer_out"
    assert b_facts["history"][0]["kind"] == "transfer_in"
    assert b_facts["history"][0]["counterparty"] == "P0000001"


# 6. PcscTransport itself ---------------------------------------------------------------------
def test_transport_prefers_t1_and_reports_the_cards_atr(pcsc: PcscStack) -> None:
    card = idle_rig_card()
    with served(card, 0), PcscTransport(index_of(0), wait=QUICK) as transport:
        assert transport.reader == READERS[0]
        assert transport.protocol == 1
        assert transport.atr == card.atr == DEFAULT_ATR
        client = PurseClient(CardChannel(transport))
        assert client.select().startswith(bytes.fromhex("6F1F8408") + PURSE_AID)
        status = client.status()
        assert (status.card_id, status.state, status.balance) == (
            b"CARD0001",
            LifeCycle.ACTIVE,
            10_000,
        )
    # picked by a unique part of its name, case-insensitively, it is the same reader
    with served(card, 0), PcscTransport("virtual pcd 00 00", wait=QUICK) as by_name:
        assert by_name.reader == READERS[0]
        assert by_name.atr == DEFAULT_ATR


def test_t0_only_card_connects_with_t0_and_chains(pcsc: PcscStack) -> None:
    atr = build_atr(b"T0ONLY", protocols=(0,))
    card = Card(atr=atr)
    card.install(PURSE_AID, PurseApplet)  # blank: SELECT and GET DATA work
    exchanges: list[tuple[bytes, bytes]] = []
    with served(card, 1), PcscTransport(index_of(1), wait=QUICK) as transport:
        assert transport.protocol == 0
        assert transport.atr == atr
        channel = CardChannel(transport, lambda sent, got: exchanges.append((sent, got)))

        # case 4, Le 00: the whole FCI at once
        fci = channel.send(CommandApdu(0x00, 0xA4, 0x04, 0x00, PURSE_AID, 256))
        assert fci.sw == 0x9000
        assert fci.data.startswith(bytes([0x6F, len(fci.data) - 2, 0x84, 0x08]) + PURSE_AID)
        assert len(exchanges) == 1

        # case 3: the card answers 61XX, the channel fetches the rest with GET RESPONSE
        exchanges.clear()
        again = channel.send(CommandApdu(0x00, 0xA4, 0x04, 0x00, PURSE_AID, None))
        assert (again.sw, again.data) == (0x9000, fci.data)
        assert [got[-2:] for _sent, got in exchanges] == [
            bytes([0x61, len(fci.data)]),
            b"\x90\x00",
        ]
        assert exchanges[1][0] == bytes([0x00, 0xC0, 0x00, 0x00, len(fci.data)])

        # case 4 with too small an Le: 6CXX, and the channel asks again with the right one
        exchanges.clear()
        short = channel.send(CommandApdu(0x00, 0xA4, 0x04, 0x00, PURSE_AID, 4))
        assert (short.sw, short.data) == (0x9000, fci.data)
        assert exchanges[0][1] == bytes([0x6C, len(fci.data)])
        assert exchanges[1][0][-1] == len(fci.data)

        status = PurseClient(channel).status()
        assert status.state is LifeCycle.BLANK


def test_reset_clears_the_cards_session(pcsc: PcscStack) -> None:
    with served(idle_rig_card(), 0), PcscTransport(index_of(0), wait=QUICK) as transport:
        client = PurseClient(CardChannel(transport))
        client.select()
        client.verify_pin(PIN)
        assert client.history()[0].kind == HistoryKind.LOAD  # the PIN is verified
        assert transport.transmit(GET_BALANCE_RAW)[-2:] == b"\x90\x00"

        assert transport.reset() == DEFAULT_ATR
        assert transport.protocol == 1
        # the selection is gone: a GET DATA without SELECT is refused
        assert transport.transmit(GET_BALANCE_RAW) == SW.INS_NOT_SUPPORTED.to_bytes(2, "big")
        client.select()
        # the verified PIN is forgotten
        with pytest.raises(CardError) as refused:
            client.read_record(1)
        assert refused.value.sw == SW.SECURITY_STATUS_NOT_SATISFIED
        # the persistent state is all there
        status = client.status()
        assert (status.balance, status.atc, status.state) == (10_000, 2, LifeCycle.ACTIVE)


def test_power_off_then_power_on(pcsc: PcscStack) -> None:
    card = idle_rig_card()
    with served(card, 0), PcscTransport(index_of(0), wait=QUICK) as transport:
        client = PurseClient(CardChannel(transport))
        client.select()
        client.verify_pin(PIN)
        assert powered(card)
        transport.power_off()
        deadline = time.monotonic() + QUICK
        while powered(card) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not powered(card)  # the reader really cut the card's power
        with pytest.raises(PcscError, match="no connection to the card"):
            transport.transmit(SELECT_RAW)

        assert transport.power_on() == DEFAULT_ATR
        assert powered(card)
        assert transport.atr == DEFAULT_ATR
        assert transport.protocol == 1
        assert transport.transmit(GET_BALANCE_RAW) == b"\x6d\x00"  # a fresh session
        client.select()
        with pytest.raises(CardError) as refused:
            client.read_record(1)
        assert refused.value.sw == SW.SECURITY_STATUS_NOT_SATISFIED
        assert client.status().balance == 10_000
        assert transport.power_on() == DEFAULT_ATR  # powered already: nothing happens


def test_a_card_inserted_while_waiting_is_used(pcsc: PcscStack, tmp_path: Path) -> None:
    card = idle_rig_card()
    bridge = VpcdBridge(card, VPCD_HOST, slot_port(1), wait=5.0, retry=0.05)

    def insert_later() -> None:
        time.sleep(0.5)
        bridge.serve()

    thread = threading.Thread(target=insert_later, name="vpcd-slot-1-later", daemon=True)
    start = time.monotonic()
    thread.start()
    try:
        out = ok(["apdu", "send", "--reader", READERS[1], "--wait", "5", SELECT], tmp_path)
        took = time.monotonic() - start
    finally:
        bridge.stop()
        thread.join(5)
        wait_for_slot(1, present=False)
    assert 0.4 < took < 5
    assert "SW 9000: success" in out
    assert '"CARD0001"' in out


# 7. bad input --------------------------------------------------------------------------------
def _reader_specs() -> list[tuple[str, str]]:
    return [
        ("out-of-range", "no reader {n}: there are {n} (0 to {last})"),
        ("unknown", "no reader named 'No Such Reader' (readers: "),
        ("ambiguous", "'Virtual' names more than one reader: "),
    ]


@pytest.mark.parametrize(("kind", "says"), _reader_specs(), ids=[k for k, _ in _reader_specs()])
def test_bad_reader_is_one_clear_line_and_changes_nothing(
    pcsc: PcscStack, world: World, kind: str, says: str
) -> None:
    with Context() as ctx:
        count = len(ctx.readers())
    spec = {"out-of-range": str(count), "unknown": "No Such Reader", "ambiguous": "Virtual"}[kind]
    expected = says.format(n=count, last=count - 1)
    commands = [
        ["pos", "pay", "--amount", "4.50", "--reader", spec, "--now", C_PAY],
        ["atm", "renew", "--reader", spec, "--now", C_PAY],
        ["apdu", "send", "--reader", spec, SELECT],
    ]
    with served(open_card(world.card), 0):
        before_home, before_card = snapshot(world.home), world.card.read_bytes()
        for args in commands:
            with within(QUICK):
                line = fails(run(args, world.home), EXIT_ERROR)
            assert expected in line, (args, line)
            if kind == "ambiguous":
                assert repr(READERS[0]) in line
                assert repr(READERS[1]) in line
        assert snapshot(world.home) == before_home
        assert world.card.read_bytes() == before_card
    with pytest.raises(PcscError, match=re.escape(expected.split(":")[0])):
        PcscTransport(spec, wait=0)


def test_no_card_in_the_reader(pcsc: PcscStack, world: World) -> None:
    before = snapshot(world.home.parent)
    for args in (
        ["pos", "pay", "--amount", "4.50", "--reader", index_of(1), "--wait", "0.5"],
        ["apdu", "send", "--reader", READERS[1], "--wait", "0.5", SELECT],
    ):
        with within(QUICK):
            line = fails(run(args, world.home), EXIT_ERROR)
        assert line == f"purse: no card in reader {READERS[1]!r} (waited 0.5 s)"
    with within(QUICK):
        line = fails(
            run(["apdu", "send", "--reader", index_of(1), "--wait", "0", SELECT], world.home),
            EXIT_ERROR,
        )
    assert line == f"purse: no card in reader {READERS[1]!r} (waited 0 s)"
    assert snapshot(world.home.parent) == before
    with within(QUICK), pytest.raises(NoCard, match="no card in reader"):
        PcscTransport(index_of(1), wait=0.5)


def test_a_busy_reader_is_refused_until_released(pcsc: PcscStack, world: World) -> None:
    r0 = index_of(0)
    with served(open_card(world.card), 0):
        holder = PcscTransport(r0, wait=QUICK)
        try:
            PurseClient(CardChannel(holder)).select()
            with within(QUICK), pytest.raises(PcscError, match="busy") as busy:
                PcscTransport(r0, wait=QUICK)
            assert busy.value.code == 0x8010000B
            assert "another program holds the card" in str(busy.value)

            before_home, before_card = snapshot(world.home), world.card.read_bytes()
            pay = ["pos", "pay", "--amount", "4.50", "--reader", r0, "--now", C_PAY]
            with within(QUICK):
                line = fails(run(pay, world.home), EXIT_ERROR)
            assert "busy" in line
            assert READERS[0] in line
            assert snapshot(world.home) == before_home
            assert world.card.read_bytes() == before_card
            # listing the readers needs no connection: the busy card is still shown
            listed = {e["name"]: e for e in ok_json(["apdu", "readers"], world.home)}
            assert listed[READERS[0]]["atr"] == DEFAULT_ATR.hex().upper()
            # the holder is undisturbed
            assert holder.transmit(GET_BALANCE_RAW)[-2:] == b"\x90\x00"
        finally:
            holder.close()
        sale = ok_json(pay, world.home)  # released: the next program gets the card
        assert sale["balance"] == 19550


def test_card_removed_mid_session_fails_fast_and_can_come_back(pcsc: PcscStack) -> None:
    card = idle_rig_card()
    r0 = index_of(0)
    with served(card, 0):
        transport = PcscTransport(r0, wait=0.5)  # the card is there: no wait
    try:
        # served() has stopped the bridge and seen the slot empty: the card is gone
        with within(QUICK), pytest.raises(NoCard, match="the card was removed") as removed:
            transport.transmit(SELECT_RAW)
        assert removed.value.code == 0x80100069
        with pytest.raises(PcscError, match="no connection"):
            transport.transmit(SELECT_RAW)
        with within(QUICK), pytest.raises(NoCard, match="no card in reader"):
            transport.power_on()
        with served(card, 0):
            assert transport.power_on() == DEFAULT_ATR
            client = PurseClient(CardChannel(transport))
            client.select()
            assert client.status().balance == 10_000
            transport.close()  # before the card leaves again
    finally:
        transport.close()


USAGE: list[list[str]] = [
    ["apdu", "send", "--reader", "0", "--card", "{card}", SELECT],
    ["apdu", "send", SELECT],
    ["pos", "pay", "--amount", "4.50", "--reader", "0", "--card", "{card}"],
    ["pos", "pay", "--amount", "4.50"],
    ["atm", "renew", "--reader", "0", "--card", "{card}"],
    ["issuer", "issue", "--holder", "Bob"],
    ["apdu", "script", "--reader", "0", "--card", "{card}", "{card}"],
]


@pytest.mark.parametrize(
    "args", USAGE, ids=[" ".join(a[:2]) + f" {i}" for i, a in enumerate(USAGE)]
)
def test_card_and_reader_together_or_neither(
    pcsc: PcscStack, world: World, args: list[str]
) -> None:
    before = snapshot(world.home.parent)
    with served(open_card(world.card), 0), within(QUICK):
        line = fails(run([a.format(card=world.card) for a in args], world.home), EXIT_USAGE)
    assert "give the card as --card FILE or --reader NAME|INDEX (one of them)" in line
    assert "--help" in line
    assert snapshot(world.home.parent) == before


def test_negative_wait_is_a_usage_error(pcsc: PcscStack, world: World) -> None:
    result = run(["apdu", "send", "--reader", "0", "--wait", "-1", SELECT], world.home)
    line = fails(result, EXIT_USAGE)
    assert "--wait" in line


def test_without_pyscard_every_pcsc_call_says_so(
    pcsc: PcscStack, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "smartcard", None)
    monkeypatch.setitem(sys.modules, "smartcard.scard", None)
    says = "PC/SC needs pyscard: pip install 'purse-card[pcsc]'"
    with pytest.raises(PcscError, match="needs pyscard"):
        Context()
    with pytest.raises(PcscError, match="needs pyscard"):
        list_readers()
    with pytest.raises(PcscError, match="needs pyscard"):
        PcscTransport("0", wait=0)
    before = snapshot(world.home.parent)
    for args in (
        ["apdu", "readers"],
        ["pos", "pay", "--amount", "4.50", "--reader", "0", "--now", C_PAY],
        ["apdu", "send", "--reader", READERS[0], SELECT],
    ):
        assert fails(run(args, world.home), EXIT_ERROR).startswith(f"purse: {says}")
    assert snapshot(world.home.parent) == before
    # image files need no pyscard
    out = ok(["apdu", "send", "--card", str(world.card), SELECT], world.home)
    assert "SW 9000: success" in out


def test_card_serve_refuses_what_it_cannot_serve(pcsc: PcscStack, world: World) -> None:
    serve = ["--home", str(world.home), "card", "serve"]
    missing = purse_process([*serve, str(world.home / "nowhere.img"), "--slot", "1", "--wait", "1"])
    assert missing.returncode == EXIT_ERROR
    assert missing.stderr.strip().endswith("no such card file")
    before = ImageFile(world.card).load()
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind((VPCD_HOST, 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    nobody = purse_process(
        [*serve, str(world.card), "--vpcd", f"{VPCD_HOST}:{port}", "--wait", "0.5"]
    )
    assert time.monotonic() - start < 10
    assert nobody.returncode == EXIT_ERROR, (nobody.stdout, nobody.stderr)
    assert f"cannot reach vpcd at {VPCD_HOST}:{port}: nothing listens there" in nobody.stderr
    assert "Traceback" not in nobody.stderr
    assert ImageFile(world.card).load() == before  # nothing written, the lock released
    assert not world.card.with_name(world.card.name + ".lock").exists()


# 8. apdu send and apdu script over PC/SC -----------------------------------------------------
def test_apdu_send_traces_the_get_response_round(pcsc: PcscStack, world: World) -> None:
    with served(open_card(world.card), 0):
        result = run(
            ["apdu", "send", "--reader", index_of(0), "--trace", SELECT, "00 CA DF 03 00"],
            world.home,
        )
    assert result.exit_code == EXIT_OK, result.stderr
    trace = result.stderr.splitlines()
    assert trace == [
        "> 00 A4 04 00 08 F0 45 50 55 52 53 45 01",
        "< 61 21",
        "> 00 C0 00 00 21",
        "< 6F 1F 84 08 F0 45 50 55 52 53 45 01 A5 13 DF 01 08 50 30 30 30 30 30 30 31 "
        "DF 0D 01 01 DF 02 01 02 90 00",
        "> 00 CA DF 03 00",
        "< DF 03 04 00 00 4E 20 90 00",
    ]
    out = result.stdout
    assert "-> 00 A4 04 00 08 F0 45 50 55 52 53 45 01" in out
    assert 'DF01 (8 bytes): 50 30 30 30 30 30 30 31  "P0000001"' in out
    assert out.count("SW 9000: success") == 2
    assert "00 00 4E 20" in out  # 200.00


def test_apdu_script_checks_status_words_over_pcsc(
    pcsc: PcscStack, world: World, tmp_path: Path
) -> None:
    script = tmp_path / "session.apdu"
    script.write_text(
        "# select the purse, then read the balance\n"
        "00 A4 04 00 08 F045505552534501 => 9000\n"
        "00 CA DF 03 00                  => 9000\n"
        "\n"
        "00 20 00 80 04 39393939         => 63CX   # a wrong PIN\n"
        "00 20 00 80 04 31323334         => 9000   # the right one resets the tries\n"
        "00 B2 01 04 00                  => 9000   # history, now that the PIN is verified\n"
        "00 CA DF 0A 00                  => 9000\n"
    )
    r0 = index_of(0)
    with served(open_card(world.card), 0):
        out = ok(["apdu", "script", "--reader", r0, str(script)], world.home)
        assert out.rstrip().endswith("6 APDU(s) sent, every expected status word matched")
        assert "SW 63C2" in out
        assert "DF0A (1 byte): 03" in out  # tries back to 3

        bad = tmp_path / "bad.apdu"
        bad.write_text(
            "00 A4 04 00 08 F045505552534501 => 9000\n"
            "00 A4 04 00 08 F0455055525345FF => 9000   # no such applet\n"
            "00 CA DF 03 00 => 9000\n"
        )
        before = world.card.read_bytes()
        result = run(["apdu", "script", "--reader", r0, str(bad)], world.home)
        assert result.exit_code == EXIT_REFUSED, (result.stdout, result.stderr)
        assert result.stderr.splitlines() == ["purse: line 2: expected SW 9000, got 6A82"]
        assert "-> 00 CA DF 03 00" not in result.stdout  # it stopped at line 2
        assert world.card.read_bytes() == before
    assert show(world.card, world.home)["pin_tries"] == 3


# 9. a tear over PC/SC -----------------------------------------------------------------------
@dataclass(frozen=True)
class TearBase:
    base: Path  # the funded card's image, before the payment
    before: dict[str, bytes]
    after: dict[str, bytes]  # the image after the same payment, untorn
    points: int  # tear points the payment passes
    pay: PayData


def _tear_base(tmp_path: Path) -> TearBase:
    base = tmp_path / "base.img"
    rig = funded_rig(base)
    rig.card.power_off()
    request = PayData(987, T0 + 120, TERMINAL_ID, NONCE)
    clean = tmp_path / "clean.img"
    shutil.copy(base, clean)
    counter = TearInjector()
    untorn = reopen(clean, rig, tear=counter.point)
    counter.arm(None)
    untorn.client.pay(request)
    assert counter.labels[-4:] == ["image:fsync", "image:rename", "image:dirsync", "commit:done"]
    return TearBase(base, ImageFile(base).load(), ImageFile(clean).load(), counter.count, request)


def _torn_card(tmp_path: Path, tb: TearBase, name: str) -> tuple[Path, Card, TearInjector]:
    work = tmp_path / name
    shutil.copy(tb.base, work)
    injector = TearInjector()
    card = Card.open(work, tear=injector.point)
    card.install(PURSE_AID, PurseApplet)
    return work, card, injector


def _status_once_back(reader: str, limit: float = 5.0) -> CardStatus:
    """The card's status from a new connection, once the bridge has put it back.

    The bridge reconnects to vpcd at once after the power cut; pcscd sees no
    removal, and vpcd notices the new connection only when an exchange on the
    old one fails. So the first exchange may fail (a PcscError, never a hang).
    """
    deadline = time.monotonic() + limit
    while True:
        try:
            with PcscTransport(reader, wait=limit) as transport:
                client = PurseClient(CardChannel(transport))
                client.select()
                return client.status()
        except PcscError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.parametrize(
    ("where", "lands"),
    [("first-write", "before"), ("at-rename", "before"), ("after-rename", "after")],
)
def test_tear_during_pay_over_pcsc(pcsc: PcscStack, tmp_path: Path, where: str, lands: str) -> None:
    tb = _tear_base(tmp_path)
    k = {"first-write": 1, "at-rename": tb.points - 2, "after-rename": tb.points - 1}[where]
    work, card, injector = _torn_card(tmp_path, tb, f"torn-{where}.img")
    r0 = index_of(0)
    with served(card, 0) as bridge:
        with PcscTransport(r0, wait=QUICK) as transport:
            client = PurseClient(CardChannel(transport))
            client.select()
            injector.arm(k)
            # the exchange fails, quickly, as a PC/SC error; no receipt comes back
            with within(QUICK), pytest.raises(PcscError):
                client.pay(tb.pay)
        assert injector.at is None  # the cut happened
        label = injector.labels[-1]
        expected_label = {"at-rename": "image:rename", "after-rename": "image:dirsync"}
        assert label == expected_label.get(where, label)
        assert label.startswith("write:") or where != "first-write"
        on_disk = ImageFile(work).load()
        assert on_disk == (tb.before if lands == "before" else tb.after), label
        assert bridge.stats.drops == 1

        # the card comes back into the reader and answers what its image holds
        facts = _status_once_back(r0)
        assert facts.balance == (10_000 if lands == "before" else 10_000 - 987)
        assert facts.atc == (2 if lands == "before" else 3)
    assert ImageFile(work).load() == on_disk  # nothing else was written


def test_torn_exchange_is_a_pcsc_error(pcsc: PcscStack, tmp_path: Path) -> None:
    tb = _tear_base(tmp_path)
    _work, card, injector = _torn_card(tmp_path, tb, "torn.img")
    with served(card, 0), PcscTransport(index_of(0), wait=QUICK) as transport:
        client = PurseClient(CardChannel(transport))
        client.select()
        injector.arm(1)
        caught: BaseException | None = None
        with within(QUICK):
            try:
                client.pay(tb.pay)
            except Exception as err:
                caught = err
    assert caught is not None, "the torn PAY answered"
    assert isinstance(caught, PcscError), f"{type(caught).__name__}: {caught}"


# a session that outlives its program ---------------------------------------------------------
def test_a_verified_pin_does_not_outlive_its_program(pcsc: PcscStack, world: World) -> None:
    r0 = index_of(0)
    with served(open_card(world.card), 0):
        load = ["atm", "load", "--amount", "1.00", "--reader", r0, "--pin", "1234"]
        ok([*load, "--now", C_PAY], world.home)
        # another program, which never saw the PIN: 30.00 is above the 25.00 no-PIN limit
        request = PayData(3000, seconds(C_PAY), b"ROGUE001", NONCE)
        with PcscTransport(r0, wait=QUICK) as rogue:
            pay = rogue.transmit(CommandApdu(0x80, 0x54, 0, 0, request.encode(), 256).to_bytes())
            history = rogue.transmit(READ_RECORD_1_RAW)
    assert pay[-2:] != b"\x90\x00", "a PIN-requiring PAY without VERIFY was accepted"
    assert history[-2:] != b"\x90\x00", "the history was read without VERIFY"
