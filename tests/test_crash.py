"""Crash tests: SIGKILL at random moments under load, then reload; value is conserved.

Three kinds of process are killed with ``kill -9`` (no handler runs, no
``finally``, no lock released by the program), each at several seeded random
moments (``CRASH_SEED`` in the environment changes the seed):

1. ``purse card serve FILE --vpcd 127.0.0.1:PORT``, while this file plays the
   reader side of vpcd itself (a TCP listener on a loopback port from the OS,
   as ``test_vpcd_bridge`` does) and sends a stream of PAY commands. Kill
   points: during start-up, with nothing in flight, right after a PAY went out
   (before its answer is read), and at a random instant of the stream. After
   each kill: the image loads, a ``FILE.lock`` left behind blocks neither
   ``purse card show`` nor the next ``purse card serve``, a ``FILE.tmp`` left
   behind does not matter, and::

       balance_after == balance_before - sum(receipts received) - (0 | amount in flight)
       atc_after     == atc_before + len(receipts received) + (0 | 1)

   with the same choice in both, the receipts verifying under the card's key
   and chaining (ATC +1, balance down by each amount), and the card's history
   holding exactly those payments, newest first.

2. An issuer process (``tests/crash_workers/issuer_worker.py``) running
   deposits, online sessions with loads, renewals, and payments settled at
   once, against card image files and the registry, with ``durable=True`` and
   with ``durable=False``. It journals each operation before and after (one
   ``write`` per line), so the test knows the one operation in flight. After
   each kill the registry passes ``PRAGMA integrity_check`` and
   ``foreign_key_check``, the audit log reads, and, from the registry alone::

       deposits (audit log) == sum(holder accounts) + sum(shadow balances)
                               + sum(merchant credits) + sum(pending loads)

   with the deposits equal to those the journal saw finish, plus the one in
   flight or not. Then the receipts the journal holds are settled (those
   already settled are refused as duplicates, and nothing else is refused),
   each card has one more online session (none refused: every pending update
   is resolved as applied or void, a void load refunded), and exactly::

       deposits == sum(holder accounts) + sum(card balances, from the images)
                   + sum(merchant credits) + lost
       shadow balance of each card == its balance + its lost

   where ``lost`` is a PAY the card made whose receipt died with the process
   before the journal got it (read off the card's ATC and history).

3. Whole ``purse`` commands, ``atm load``, ``pos pay``, ``pos upload`` and
   ``issuer deposit`` (card file and registry in one process), killed during
   their run: 0 to 30 ms after they reach their work (the card image's lock
   appears, or for the commands without a card the registry's WAL), or at a
   random instant 0.2 to 0.6 s after the start. The card image, the registry
   and the POS state file reload; then one more ATM session
   (``purse atm renew``) and::

       deposits == sum(holder accounts) + card balance + merchant credits
                   + unsettled sales in the POS batch + lost sales

   where a lost sale is a PAY in the card's history that the POS state does
   not hold (killed between the card's commit and the POS saving its state).

Every loop is bounded, every socket is on 127.0.0.1, every wait has a
deadline, and every child process is killed and reaped in a ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric import ec

from apdu.clock import SetClock, parse_instant
from apdu.command import CommandApdu
from apdu.purse import PURSE_AID, HistoryKind, HistoryRecord, PayData, Receipt
from apdu.purse_client import PurseClient
from apdu.signed import ObjectKind, open_envelope, public_key_from_bytes
from apdu.transport import CardChannel
from card_os.card import Card
from card_os.image import ImageFile
from card_os.purse import PurseApplet
from card_os.vpcd import Control, VpcdError
from issuer.centre import REGISTRY_FILE, IssuerCentre
from issuer.registry import Outcome, RegistryTx, Renewal
from issuer.session import ReplyKind
from issuer.settlement import SettlementItem
from purse_cli.home import card_file
from purse_cli.main import cli
from terminal.pos_state import PosState
from tests.issuer_kit import POS_ID, make_issuer
from tests.purse_kit import CARD_ID, T0, TERMINAL_ID, funded_rig
from tests.vpcd_kit import FakeVpcd, Reader, patience, sw

SEED = int(os.environ.get("CRASH_SEED", "20270115"))
PATIENCE = 5.0  # seconds any single wait may take before the test fails
COLD_START = 15.0  # seconds a child interpreter may take to get going
REPO = Path(__file__).resolve().parents[1]
PURSE = [sys.executable, "-c", "from purse_cli.main import main; main()"]
EXIT_OK = 0
KILLED = -signal.SIGKILL
SW_OK = 0x9000


# child processes ---------------------------------------------------------------------------
@contextlib.contextmanager
def child(command: Sequence[str], logs: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` running, its output in ``logs``; killed and reaped at the end, always."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{name}.out").open("wb") as out, (logs / f"{name}.err").open("wb") as err:
        proc = subprocess.Popen(
            list(command), stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO, env=env
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=PATIENCE)


def kill_9(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL (if it still runs) and reap it."""
    proc.kill()  # Popen does nothing once the process is reaped
    proc.wait(timeout=PATIENCE)


def stderr_of(logs: Path, name: str) -> str:
    return (logs / f"{name}.err").read_text(errors="replace")


def assert_killed(proc: subprocess.Popen[bytes], logs: Path, name: str) -> None:
    """It died of our SIGKILL, not of an error of its own before it."""
    assert proc.returncode == KILLED, (proc.returncode, stderr_of(logs, name))


def purse(args: Sequence[str], home: Path) -> Result:
    """``purse --home HOME ARGS`` in this process; an escaping exception fails the test."""
    result = CliRunner().invoke(cli, ["--home", str(home), *args], prog_name="purse")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"purse {' '.join(args)} crashed") from result.exception
    return result


def purse_ok(args: Sequence[str], home: Path) -> str:
    result = purse(args, home)
    assert result.exit_code == EXIT_OK, (args, result.exit_code, result.stdout, result.stderr)
    return result.stdout


# the card image, read as a debugger would --------------------------------------------------
@dataclass(frozen=True)
class CardView:
    card_id: bytes
    balance: int
    atc: int
    serial: int  # the credential's (0: none)
    history: list[HistoryRecord]  # newest first
    cells: dict[str, bytes]


def card_view(path: Path) -> CardView:
    """What the image holds (no lock taken, nothing written)."""
    cells = ImageFile(path).load()  # a whole image, or ImageError
    card = Card.open(path)
    applet = card.install(PURSE_AID, PurseApplet)
    assert isinstance(applet, PurseApplet)
    state = applet.state
    history: list[HistoryRecord] = []
    for number in range(1, state.history_count + 1):
        entry = state.history(number)
        if entry is None:
            break
        history.append(entry)
    credential = state.credential()
    return CardView(
        state.card_id,
        state.balance,
        state.atc,
        0 if credential is None else credential.serial,
        history,
        cells,
    )


def lock_of(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def tmp_of(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


# 1. purse card serve ---------------------------------------------------------------------------
SELECT_PURSE = CommandApdu(0x00, 0xA4, 0x04, 0x00, PURSE_AID, 256).to_bytes()
SERVE_ITERATIONS = 20
SERVE_MODES = ("idle", "in_flight", "stream", "startup")
MAX_PAYS = 30  # per iteration
MAX_AMOUNT = 20  # 20 x 31 x 20 stays under the balance and the offline cap
START_BALANCE = 50_000


@dataclass
class PayStream:
    """The PAYs of one iteration, from the reader's side."""

    reader: Reader
    rng: random.Random
    when: int
    receipts: list[Receipt]
    in_flight: int = 0  # the amount of a PAY sent whose answer never came

    def send(self) -> None:
        amount = self.rng.randint(1, MAX_AMOUNT)
        self.when += 1
        data = PayData(amount, self.when, TERMINAL_ID, self.rng.randbytes(16)).encode()
        self.in_flight = amount
        self.reader.link.write(CommandApdu(0x80, 0x54, 0x00, 0x00, data, 256).to_bytes())

    def answer(self, keys: dict[bytes, ec.EllipticCurvePublicKey]) -> None:
        response = self.reader.link.read(patience())
        assert sw(response) == SW_OK, response.hex()
        envelope = open_envelope(response[:-2], ObjectKind.RECEIPT, keys)  # verifies
        receipt = Receipt.decode(envelope.body)
        assert receipt.amount == self.in_flight
        self.receipts.append(receipt)
        self.in_flight = 0

    def pay(self, keys: dict[bytes, ec.EllipticCurvePublicKey]) -> None:
        self.send()
        self.answer(keys)


def check_after_serve_kill(
    image: Path, before: CardView, receipts: list[Receipt], in_flight: int
) -> tuple[CardView, bool]:
    """The conservation equations of part 1; returns the card now and whether the PAY
    in flight (if any) was applied."""
    after = card_view(image)  # the image loads
    assert after.card_id == CARD_ID
    paid = sum(r.amount for r in receipts)
    applied = before.balance - paid - after.balance
    assert applied in ({0, in_flight} if in_flight else {0}), (applied, in_flight)
    extra = 1 if applied else 0
    assert after.atc == before.atc + len(receipts) + extra, "the ATC agrees with the payments"

    # the receipts the reader got chain from the state before
    balance = before.balance
    for number, receipt in enumerate(receipts, start=1):
        balance -= receipt.amount
        assert (receipt.card_id, receipt.atc) == (CARD_ID, before.atc + number)
        assert receipt.balance == balance
    # the history holds exactly those payments (and the one in flight if applied)
    pays = [(r.atc, r.amount, r.balance, r.terminal_time) for r in receipts]
    if applied:
        newest = after.history[0]
        assert (newest.atc, newest.amount, newest.balance) == (after.atc, applied, after.balance)
        pays.append((newest.atc, newest.amount, newest.balance, newest.time))
    recent = list(reversed(pays))[: len(after.history)]
    assert [(h.atc, h.amount, h.balance, h.time) for h in after.history[: len(recent)]] == recent
    assert all(h.kind == HistoryKind.PAY for h in after.history[: len(recent)])
    assert all(h.counterparty == TERMINAL_ID for h in after.history[: len(recent)])
    if after.history:
        assert after.history[0].atc == after.atc or not (receipts or applied)
    return after, bool(applied)


def test_kill_9_of_card_serve_under_load(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    image = tmp_path / "card.img"
    rig = funded_rig(image, balance=START_BALANCE)
    keys = {CARD_ID: public_key_from_bytes(rig.card_public)}
    home, logs = tmp_path / "home", tmp_path / "logs"
    state = card_view(image)
    assert state.balance == START_BALANCE
    when = T0 + 60
    tally: Counter[str] = Counter()
    vpcd = FakeVpcd(PATIENCE)
    try:
        for iteration in range(SERVE_ITERATIONS):
            mode = SERVE_MODES[iteration % len(SERVE_MODES)]
            name = f"serve-{iteration}"
            command = [
                *PURSE,
                "--home",
                str(home),
                "card",
                "serve",
                str(image),
                "--vpcd",
                f"127.0.0.1:{vpcd.port}",
                "--wait",
                "10",
            ]
            stream: PayStream | None = None
            with child(command, logs, name) as proc:
                if mode == "startup":  # loading the image, locking it, connecting
                    time.sleep(rng.uniform(0.0, 0.5))
                    kill_9(proc)
                else:
                    reader = vpcd.accept(COLD_START)
                    try:
                        reader.control(Control.POWER_ON)
                        client = PurseClient(CardChannel(reader))
                        client.select()
                        status = client.status()
                        # what the last kill left is what this server serves
                        assert (status.balance, status.atc) == (state.balance, state.atc)
                        stream = PayStream(reader, rng, when, [])
                        run_serve_load(proc, stream, keys, mode, rng)
                    finally:
                        kill_9(proc)  # (already dead: nothing)
                        reader.close()
            assert_killed(proc, logs, name)
            tally[mode] += 1
            tally["backlog connections drained"] += vpcd.drain()
            if tmp_of(image).exists():
                tally["FILE.tmp left behind"] += 1
            if stream is None:
                after = card_view(image)
                assert after.cells == state.cells, "a server killed at start-up changed the card"
            else:
                when = stream.when
                assert lock_of(image).exists(), "kill -9 leaves the lock file (harmlessly)"
                after, applied = check_after_serve_kill(
                    image, state, stream.receipts, stream.in_flight
                )
                tally["PAYs answered"] += len(stream.receipts)
                if stream.in_flight:
                    tally[f"PAY in flight {'applied' if applied else 'not applied'}"] += 1
            if iteration % 2 == 0:  # else the next `card serve` meets the stale lock
                facts = json.loads(purse_ok(["card", "show", str(image), "--json"], home))
                assert (facts["balance"], facts["atc"]) == (after.balance, after.atc)
                assert not lock_of(image).exists()  # taken and released normally
            state = after
    finally:
        vpcd.close()
    # the card still pays, in process, after all of it
    with card_file(image) as (_card, client):
        client.select()
        paid = client.pay(PayData(5, when + 1, TERMINAL_ID, bytes(16)))
        receipt = Receipt.decode(open_envelope(paid, ObjectKind.RECEIPT, keys).body)
    assert (receipt.atc, receipt.balance) == (state.atc + 1, state.balance - 5)
    assert tally["PAYs answered"] > SERVE_ITERATIONS
    print(f"\ncard serve kill points (seed {SEED}): {dict(tally)}")


def run_serve_load(
    proc: subprocess.Popen[bytes],
    stream: PayStream,
    keys: dict[bytes, ec.EllipticCurvePublicKey],
    mode: str,
    rng: random.Random,
) -> None:
    """PAYs through the reader, and the SIGKILL at the point ``mode`` chooses."""
    if mode == "idle":  # after some answered PAYs, nothing in flight
        for _ in range(rng.randint(0, MAX_PAYS)):
            stream.pay(keys)
        kill_9(proc)
    elif mode == "in_flight":  # right after a PAY went out, before its answer is read
        for _ in range(rng.randint(0, MAX_PAYS - 1)):
            stream.pay(keys)
        stream.send()
        time.sleep(rng.uniform(0.0, 0.003))  # a PAY takes about 2 ms: signature, fsyncs
        kill_9(proc)
        with contextlib.suppress(VpcdError):
            stream.answer(keys)  # it may have come before the kill
    else:  # a stream, and the kill from another thread at a random instant
        timer = threading.Timer(rng.uniform(0.0, 0.3), proc.kill)
        timer.start()
        try:
            for _ in range(MAX_PAYS):
                try:
                    stream.pay(keys)
                except VpcdError:
                    break
        finally:
            timer.cancel()
            timer.join(PATIENCE)
        kill_9(proc)


# 2. an issuer process ------------------------------------------------------------------------
HOLDERS = ("Alice", "Bob", "Carol")
FIRST_DEPOSIT = 20_000
ISSUER_ITERATIONS = 10
MAX_OPS = 5_000  # the worker's bound; the kill comes long before


@dataclass(frozen=True)
class Journal:
    """What the worker wrote before it died."""

    entries: list[dict[str, Any]]

    @classmethod
    def read(cls, path: Path) -> Journal:
        if not path.exists():
            return cls([])
        *whole, tail = path.read_bytes().split(b"\n")
        assert tail == b"", "a journal line was cut by the kill"
        return cls([json.loads(line) for line in whole])

    @property
    def ready(self) -> bool:
        return any(e["kind"] == "ready" for e in self.entries)

    def ended(self) -> set[int]:
        return {e["id"] for e in self.entries if e["kind"] == "end"}

    def in_flight(self) -> dict[str, Any] | None:
        """The operation begun and not ended (at most one: the worker runs one at a time)."""
        open_ops = [e for e in self.entries if e["kind"] == "begin" and e["id"] not in self.ended()]
        assert len(open_ops) <= 1
        assert not open_ops or open_ops[0] is self.begun()[-1]
        return open_ops[0] if open_ops else None

    def begun(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["kind"] == "begin"]

    def deposits_done(self) -> int:
        ended = self.ended()
        return sum(e["amount"] for e in self.begun() if e["op"] == "deposit" and e["id"] in ended)

    def pay_atc(self, op_id: int) -> int | None:
        """The card's ATC right before PAY ``op_id`` (None: the PAY was not sent)."""
        found = [e["atc"] for e in self.entries if e["kind"] == "atc" and e["id"] == op_id]
        return found[0] if found else None

    def receipts(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["kind"] == "receipt"]


def journal_ready(path: Path) -> bool:
    """Polled while the worker writes: looks for the line, never parses a half-written one."""
    return path.exists() and b'"kind": "ready"' in path.read_bytes()


def wait_for(what: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float) -> None:
    end = time.monotonic() + timeout
    while not what():
        assert proc.poll() is None, "the child ended by itself"
        assert time.monotonic() < end, f"not within {timeout} s"
        time.sleep(0.005)


def registry_is_whole(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []


@dataclass(frozen=True)
class Books:
    """The registry's money, in one transaction."""

    deposits: int  # from the audit log
    holders: int
    shadow: dict[bytes, int]
    credited: int
    pending_loads: int


def books(centre: IssuerCentre, holders: Sequence[str]) -> Books:
    def read(tx: RegistryTx) -> Books:
        log = tx.audit_log()
        seqs = [e.seq for e in log]
        assert seqs == sorted(set(seqs)), "the audit log is in order"
        deposits = sum(int(e.detail.split()[0]) for e in log if e.event == "deposit")
        cards = tx.cards()
        pending = sum(r.load for c in cards for r in tx.pending_renewals(c.card_id))
        return Books(
            deposits=deposits,
            holders=sum(tx.holder_balance(h) or 0 for h in holders),
            shadow={c.card_id: c.shadow_balance for c in cards},
            credited=sum(t.credited for t in tx.terminals()),
            pending_loads=pending,
        )

    result: Books = centre.read(read)
    return result


def registry_balances(b: Books) -> int:
    """Where the registry says the deposits are."""
    return b.holders + sum(b.shadow.values()) + b.credited + b.pending_loads


def renewals_of(centre: IssuerCentre, card_id: bytes, *, pending: bool = False) -> list[Renewal]:
    if pending:
        return centre.read(lambda tx: tx.pending_renewals(card_id))
    return centre.read(lambda tx: tx.renewals(card_id))


def final_session(centre: IssuerCentre, path: Path) -> int:
    """One more online session (no load); it must not be refused. Returns its serial."""
    with card_file(path) as (_card, client):
        client.select()
        reply = centre.online_session(client.begin_online(), 0)
        assert reply.kind is ReplyKind.UPDATE
        client.issuer_update(reply.envelope)
    return reply.serial


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "not-durable"])
def test_kill_9_of_an_issuer_process_under_load(tmp_path: Path, durable: bool) -> None:
    rng = random.Random(SEED + durable)
    rig = make_issuer(tmp_path)
    folder, logs = rig.folder, tmp_path / "logs"
    paths: dict[bytes, Path] = {}
    for holder in HOLDERS:
        path = tmp_path / f"{holder}.img"
        with card_file(path, create=True) as (_card, client):
            card_id, _pin = rig.centre.issue(client, holder, b"1234")
        paths[card_id] = path
        rig.centre.deposit(holder, FIRST_DEPOSIT)
        final_session(rig.centre, path)  # its first credential: it can pay
    rig.centre.close()
    holder_of = dict(zip(paths.values(), HOLDERS, strict=True))
    deposited = FIRST_DEPOSIT * len(HOLDERS)
    lost: defaultdict[bytes, int] = defaultdict(int)
    tally: Counter[str] = Counter()

    for iteration in range(ISSUER_ITERATIONS):
        journal_path = tmp_path / f"journal-{iteration}.jsonl"
        spec = {
            "folder": str(folder),
            "cards": [[str(p), holder_of[p]] for p in paths.values()],
            "journal": str(journal_path),
            "seed": rng.randrange(1 << 32),
            "durable": durable,
            "max_ops": MAX_OPS,
            "now": T0,
            "terminal": POS_ID.hex(),
        }
        spec_path = tmp_path / f"spec-{iteration}.json"
        spec_path.write_text(json.dumps(spec))
        name = f"issuer-{iteration}"
        command = [sys.executable, "-m", "tests.crash_workers.issuer_worker", str(spec_path)]
        with child(command, logs, name) as proc:
            if iteration == 0 or rng.random() < 0.8:
                wait_for(partial(journal_ready, journal_path), proc, COLD_START)
                time.sleep(rng.uniform(0.0, 0.8))
            else:  # while it starts: imports, opening the registry
                time.sleep(rng.uniform(0.05, 0.5))
            kill_9(proc)
        assert_killed(proc, logs, name)
        journal = Journal.read(journal_path)
        tally["operations begun"] += len(journal.begun())
        flying = journal.in_flight()
        where = flying["op"] if flying else "between operations" if journal.ready else "start-up"
        tally[f"killed in {where}"] += 1
        deposited = check_after_issuer_kill(
            folder, paths, journal, deposited, lost, tally, iteration
        )
    assert tally["operations begun"] > ISSUER_ITERATIONS
    print(f"\nissuer kill points (seed {SEED}, durable={durable}): {dict(tally)}")


def check_after_issuer_kill(
    folder: Path,
    paths: dict[bytes, Path],
    journal: Journal,
    deposited: int,
    lost: defaultdict[bytes, int],
    tally: Counter[str],
    iteration: int,
) -> int:
    """Part 2's checks after one kill; returns the deposits now (exact)."""
    registry_is_whole(folder / REGISTRY_FILE)
    flying = journal.in_flight()
    centre = IssuerCentre.open(folder, clock=SetClock(T0))
    try:
        assert centre.audit_log()  # readable
        before = books(centre, HOLDERS)
        # deposits: those that finished, and the one in flight or not
        done = deposited + journal.deposits_done()
        maybe = {done, done + flying["amount"]} if flying and flying["op"] == "deposit" else {done}
        assert before.deposits in maybe, (before.deposits, maybe)
        # the registry is consistent on its own, even with updates and receipts in flight
        assert registry_balances(before) == before.deposits

        # a PAY that the card made and whose receipt died with the worker
        views = {cid: card_view(p) for cid, p in paths.items()}
        receipts = journal.receipts()
        atc_before = journal.pay_atc(flying["id"]) if flying and flying["op"] == "pay" else None
        if flying and atc_before is not None and all(r["id"] != flying["id"] for r in receipts):
            cid = next(c for c, p in paths.items() if str(p) == flying["card"])
            view = views[cid]
            if view.atc != atc_before:
                newest = view.history[0]
                assert view.atc == atc_before + 1 == newest.atc
                assert (newest.kind, newest.amount) == (HistoryKind.PAY, flying["amount"])
                lost[cid] += flying["amount"]
                tally["PAY made, receipt lost with the process"] += 1

        # the receipts the journal holds: settled now, or refused as already settled
        settled = {(r.card_id, r.atc) for r in centre.read(lambda tx: tx.receipts())}
        items = [
            SettlementItem(bytes.fromhex(r["receipt"]), bytes.fromhex(r["certificate"]))
            for r in receipts
        ]
        if items:
            report = centre.settle(POS_ID, items)
            for result in report.results:
                if result.accepted:
                    assert (result.card_id, result.atc) not in settled
                    tally["receipt settled after the kill"] += 1
                else:
                    assert result.reason == "duplicate", result
            assert len(report.accepted) <= 1  # only the one in flight can be unsettled

        # one more online session per card: none refused, every pending update resolved
        pending = {cid: renewals_of(centre, cid, pending=True) for cid in paths}
        serials = {cid: final_session(centre, p) for cid, p in paths.items()}
        for cid, renewals in pending.items():
            outcomes = {r.serial: r.outcome for r in renewals_of(centre, cid)}
            for renewal in renewals:
                # the card's credential serial says whether it applied the update
                expected = Outcome.APPLIED if renewal.serial <= views[cid].serial else Outcome.VOID
                assert outcomes[renewal.serial] is expected
                tally[f"pending update resolved {expected.value}"] += 1
            assert [s for s, o in outcomes.items() if o is Outcome.PENDING] == [serials[cid]]

        after = books(centre, HOLDERS)
        assert after.deposits == before.deposits
        assert after.pending_loads == 0
        views = {cid: card_view(p) for cid, p in paths.items()}
        for cid, view in views.items():
            assert view.serial == serials[cid]
            assert after.shadow[cid] == view.balance + lost[cid], printable(cid)
        cards_total = sum(v.balance for v in views.values())
        assert after.deposits == after.holders + cards_total + after.credited + sum(lost.values())
        assert registry_balances(after) == after.deposits
    finally:
        centre.close()
    return after.deposits


def printable(card_id: bytes) -> str:
    return card_id.decode(errors="replace")


# 3. whole purse commands ---------------------------------------------------------------------
NOW = "2027-01-15T09:00:00Z"
CLI_ITERATIONS = 16
CLI_OPS = ("atm load", "pos pay", "pos upload", "issuer deposit")
CLI_DEPOSIT = 500_000
CLI_LOAD = 20_000
PIN = "1234"


@dataclass(frozen=True)
class CliWorld:
    home: Path
    card: Path

    @property
    def registry(self) -> Path:
        return self.home / "issuer" / REGISTRY_FILE

    @property
    def pos_state(self) -> Path:
        return self.home / "terminals" / f"{POS_ID.hex().upper()}.json"

    def centre(self) -> IssuerCentre:
        return IssuerCentre.open(self.home / "issuer", clock=SetClock(parse_instant(NOW)))

    def sales(self) -> PosState:
        return PosState.load(self.pos_state, POS_ID)


def cli_world(tmp_path: Path) -> CliWorld:
    """An issuer, Alice's card loaded with CLI_LOAD, a POS synced: all through `purse`."""
    world = CliWorld(tmp_path / "home", tmp_path / "alice.img")
    home, card = world.home, str(world.card)
    purse_ok(["issuer", "init", "--now", NOW], home)
    purse_ok(["card", "new", card], home)
    issue = ["issuer", "issue", "--card", card, "--holder", "Alice", "--pin", PIN]
    purse_ok([*issue, "--now", NOW], home)
    purse_ok(["issuer", "deposit", "Alice", str(CLI_DEPOSIT), "--now", NOW], home)
    purse_ok(["issuer", "terminal", POS_ID.decode(), "--merchant", "Shop", "--now", NOW], home)
    load = ["atm", "load", "--amount", str(CLI_LOAD), "--card", card, "--pin", PIN]
    purse_ok([*load, "--now", NOW], home)
    purse_ok(["pos", "sync", "--now", NOW], home)
    return world


def cli_command(world: CliWorld, op: str, amount: int) -> list[str]:
    card = str(world.card)
    args = {
        "atm load": ["atm", "load", "--amount", str(amount), "--card", card, "--pin", PIN],
        "pos pay": ["pos", "pay", "--amount", str(amount), "--card", card],
        "pos upload": ["pos", "upload"],
        "issuer deposit": ["issuer", "deposit", "Alice", str(amount)],
    }[op]
    return [*PURSE, "--home", str(world.home), *args, "--now", NOW]


def trigger_of(world: CliWorld, op: str) -> Path:
    """A file whose appearance says the command has reached its work: the card image's
    lock (taken right before the card is used), or the registry's WAL (opened at the
    registry's first use; a clean close removes it)."""
    return lock_of(world.card) if op in ("atm load", "pos pay") else Path(f"{world.registry}-wal")


def unsettled_sales(world: CliWorld, centre: IssuerCentre) -> int:
    settled = {(r.card_id, r.atc) for r in centre.read(lambda tx: tx.receipts())}
    batch = world.sales().batch if world.pos_state.exists() else []
    return sum(s.amount for s in batch if (s.card_id, s.atc) not in settled)


def test_kill_9_of_purse_commands_with_card_file_and_registry(tmp_path: Path) -> None:
    rng = random.Random(SEED + 3)
    world = cli_world(tmp_path)
    logs = tmp_path / "logs"
    deposited = CLI_DEPOSIT
    lost = 0
    seen_atc = card_view(world.card).atc
    tally: Counter[str] = Counter()
    for iteration in range(CLI_ITERATIONS):
        op = CLI_OPS[iteration % len(CLI_OPS)]
        amount = {
            "atm load": rng.randint(100, 3_000),
            "pos pay": rng.randint(50, 2_000),
            "pos upload": 0,
            "issuer deposit": rng.randint(100, 10_000),
        }[op]
        trigger = trigger_of(world, op)
        assert not trigger.exists()  # the last check released the lock and closed the registry
        name = f"cli-{iteration}"
        with child(cli_command(world, op, amount), logs, name) as proc:
            if rng.random() < 0.75:  # once it has reached its work, within its few ms
                with contextlib.suppress(AssertionError):  # it may end first
                    wait_for(trigger.exists, proc, COLD_START)
                time.sleep(rng.uniform(0.0, 0.03))
                how = "after the trigger"
            else:
                time.sleep(rng.uniform(0.2, 0.6))
                how = "at a random instant"
            kill_9(proc)
        if proc.returncode == EXIT_OK:
            tally[f"{op}: finished before the kill"] += 1
        else:
            assert_killed(proc, logs, name)
            tally[f"{op}: killed {how}"] += 1

        # everything reloads
        view = card_view(world.card)
        registry_is_whole(world.registry)
        if world.pos_state.exists():
            world.sales()
        centre = world.centre()
        try:
            before = books(centre, ["Alice"])
            maybe = {deposited, deposited + amount} if op == "issuer deposit" else {deposited}
            assert before.deposits in maybe
            deposited = before.deposits
            assert registry_balances(before) == deposited
        finally:
            centre.close()

        # a payment the card made that the POS did not live to record
        recorded = {(s.card_id, s.atc) for s in world.sales().sales} if op == "pos pay" else set()
        for entry in view.history:
            if entry.atc > seen_atc and entry.kind == HistoryKind.PAY:
                assert op == "pos pay"
                assert entry.amount == amount
                if (view.card_id, entry.atc) not in recorded:
                    lost += entry.amount
                    tally["pos pay: card paid, sale lost with the POS"] += 1

        # one more ATM session, then the equation
        renew = ["atm", "renew", "--card", str(world.card), "--now", NOW, "--json"]
        renewed = json.loads(purse_ok(renew, world.home))
        view = card_view(world.card)
        seen_atc = view.atc
        assert renewed["balance"] == view.balance
        centre = world.centre()
        try:
            after = books(centre, ["Alice"])
            unsettled = unsettled_sales(world, centre)
        finally:
            centre.close()
        assert after.deposits == deposited
        assert after.pending_loads == 0
        assert after.shadow[view.card_id] == view.balance + unsettled + lost
        assert deposited == after.holders + view.balance + after.credited + unsettled + lost

    # the last batch: settled now, except what a killed upload had settled already
    report = json.loads(purse_ok(["pos", "upload", "--now", NOW, "--json"], world.home))
    assert {r["reason"] for r in report["refused"]} <= {"duplicate"}
    centre = world.centre()
    try:
        final = books(centre, ["Alice"])
    finally:
        centre.close()
    view = card_view(world.card)
    assert deposited == final.holders + view.balance + final.credited + lost
    print(f"\npurse command kill points (seed {SEED}): {dict(tally)}")
