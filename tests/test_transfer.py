"""Card-to-card value transfer (Mondex-style), end to end over APDUs with a real issuer.

Three issued cards (Alice, Bob, Carol) at one :class:`issuer.centre.IssuerCentre`
on SQLite, driven through the four transfer commands of ``docs/protocol.md``
(TRANSFER IN ask, TRANSFER OUT, TRANSFER IN value, TRANSFER ACK) and the
wallet terminal. Sections:

1. the happy path: messages, balances, history, totals, the wallet's result,
   and the issuer's shadow balances that follow the totals;
2. every abort point (after the ask, with the value in flight, after the
   credit), each aborted by BEGIN ONLINE, PAY or a new transfer: what each
   exception log holds, value conservation, and the issuer's reconciliation
   (``maybe_lost`` before the second card reports, then ``not_sent``, ``lost``
   or ``completed``), a lost transfer restored exactly once, logs cleared;
3. a restoring update that never reaches the card: voided, offered again,
   restored once in total;
4. replays and forgeries: each message replayed into its own transfer and
   into others, messages for other cards, of the wrong kind, of an unknown
   issuer, tampered, of another currency, out of sequence, to itself, and
   malformed commands; every refusal has its documented status word and
   leaves every card's persistent store byte-identical;
5. the payer's spending rules (credential, expiry, clock, PIN, limits,
   balance, offline cap), what a payee may receive, a locked card, the
   payee's maximum balance, and the exception log filling up and cleared
   online;
6. power loss at every tear point of each transfer command: the card is
   exactly as before or after, value is conserved, and the transfer is then
   finished or aborted consistently; and what the wallet reports when a card
   is pulled out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from apdu.command import CommandApdu
from apdu.errors import TransportError
from apdu.purse import (
    EXCEPTION_LOG_SLOTS,
    PURSE_AID,
    CardCertificate,
    ExceptionEntry,
    HistoryKind,
    HistoryRecord,
    IssuerUpdate,
    LifeCycle,
    OnlineRequest,
    PayData,
    PendingTransfer,
    Tag,
    Transfer,
    TransferOutData,
    TransferRole,
    UpdateAction,
    split_exception_log,
)
from apdu.purse_client import PurseClient
from apdu.signed import (
    ObjectKind,
    parse_envelope,
    public_key_from_bytes,
    verify_envelope,
)
from apdu.status import SW, CardError
from apdu.transport import CardChannel, LocalTransport
from card_os.card import Card
from card_os.purse import PurseApplet
from card_os.purse.state import PurseState
from card_os.store import MemoryBackend
from card_os.tear import PowerLoss, TearInjector
from issuer.policy import Policy
from issuer.registry import CardState, Outcome, TransferException
from issuer.session import ReplyKind, SessionReply
from issuer.transfers import TransferStatus
from terminal.wallet import Step, TransferFailed, TransferInterrupted, TransferResult, Wallet
from tests.issuer_kit import POS_ID, CardHandle, IssuerRig, make_issuer

PIN = b"1234"
DEPOSIT = 500_000
LOADS = {"Alice": 20_000, "Bob": 5_000, "Carol": 5_000}
AMOUNT = 1_200
POLICY = Policy()  # the issuer's defaults: what make_issuer sets up
EUR = POLICY.currency

Key = tuple[bytes, int, bytes, int]
Cells = dict[str, bytes]


# the world: one issuer, three issued and funded cards ------------------------------------
def purse(h: CardHandle) -> PurseState:
    """The card's persistent purse state, read straight from its store."""
    applet = h.card.applets[PURSE_AID]
    assert isinstance(applet, PurseApplet)
    return applet.state


def snap(h: CardHandle) -> Cells:
    """What the card has committed (what survives a power loss now)."""
    return h.card.store.snapshot()


def balance(h: CardHandle) -> int:
    return purse(h).balance


def atc(h: CardHandle) -> int:
    return purse(h).atc


def cert(h: CardHandle) -> bytes:
    h.client.select()
    return h.client.get_data(Tag.CERTIFICATE)


def body_of(envelope: bytes) -> bytes:
    return parse_envelope(envelope).body


def key_of(body: bytes) -> Key:
    t = Transfer.decode(body)
    return (t.from_id, t.from_seq, t.to_id, t.to_seq)


def entry(role: TransferRole, body: bytes) -> ExceptionEntry:
    return ExceptionEntry(role, body)


def connect(card: Card) -> PurseClient:
    card.install(PURSE_AID, PurseApplet)
    card.power_on()
    return PurseClient(CardChannel(LocalTransport(card)))


@dataclass
class World:
    rig: IssuerRig
    cards: list[CardHandle] = field(default_factory=list)
    injectors: dict[bytes, TearInjector] = field(default_factory=dict)
    loads: int = 0
    paid: dict[bytes, int] = field(default_factory=dict)

    @property
    def a(self) -> CardHandle:
        return self.cards[0]

    @property
    def b(self) -> CardHandle:
        return self.cards[1]

    @property
    def c(self) -> CardHandle:
        return self.cards[2]

    @property
    def now(self) -> int:
        return self.rig.clock()

    def issue(self, holder: str) -> CardHandle:
        """A card issued over APDUs, on a memory backend with a tear injector (unarmed)."""
        injector = TearInjector()
        card = Card(MemoryBackend(), tear=injector.point)
        client = connect(card)
        card_id, pin = self.rig.centre.issue(client, holder, PIN)
        handle = CardHandle(card, client, card_id, pin)
        self.injectors[card_id] = injector
        self.paid[card_id] = 0
        return handle

    def balances(self) -> int:
        return sum(balance(h) for h in self.cards)

    def issued(self) -> int:
        """Value the cards may hold: loads applied minus payments made."""
        return self.loads - sum(self.paid.values())

    def pay(self, h: CardHandle, amount: int) -> bytes:
        receipt = h.pay(amount, self.now)
        self.paid[h.card_id] += amount
        return receipt

    def online(
        self, h: CardHandle, load: int = 0, deliver: bool = True
    ) -> tuple[OnlineRequest, SessionReply]:
        """A whole online session (the reply dropped unless ``deliver``)."""
        h.client.select()
        raw = h.client.begin_online()
        request = OnlineRequest.decode(body_of(raw))
        reply = self.rig.centre.online_session(raw, load)
        assert reply.kind is ReplyKind.UPDATE
        update = IssuerUpdate.decode(body_of(reply.envelope))
        reported = split_exception_log(request.exception_log)
        assert update.log_cleared == len(reported)
        assert update.restore_amount == reply.restore
        if deliver:
            h.client.issuer_update(reply.envelope)
            self.loads += load
            assert purse(h).exception_log() == [], "the update clears what was reported"
        return request, reply

    def transfer(self, payer: CardHandle, payee: CardHandle, amount: int) -> TransferResult:
        pin = payer.pin if amount > POLICY.no_pin_limit else None
        return Wallet(self.rig.clock).transfer(payer.client, payee.client, amount, pin)


def make_world(folder: Path) -> World:
    w = World(make_issuer(folder))
    for holder, load in LOADS.items():
        h = w.issue(holder)
        w.cards.append(h)
        w.rig.centre.deposit(holder, DEPOSIT)
        w.online(h, load=load)
    w.rig.clock.advance(60)
    return w


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


# the four steps, one by one ------------------------------------------------------------------
def ask(payer: CardHandle, payee: CardHandle, amount: int, from_seq: int | None = None) -> bytes:
    """Payee: TRANSFER IN ask (``from_seq`` defaults to the payer's ATC + 1)."""
    payer_cert = cert(payer)
    seq = atc(payer) + 1 if from_seq is None else from_seq
    payee.client.select()
    return payee.client.transfer_ask(amount, seq, payer_cert)


def send(
    payer: CardHandle, payee: CardHandle, request: bytes, now: int, pin: bool = False
) -> bytes:
    """Payer: TRANSFER OUT for ``request`` (with VERIFY first if ``pin``)."""
    payee_cert = cert(payee)
    payer.client.select()
    if pin:
        payer.client.verify_pin(payer.pin)
    return payer.client.transfer_out(now, payee_cert, request)


def receive(payee: CardHandle, value: bytes) -> bytes:
    payee.client.select()
    return payee.client.transfer_receive(value)


def close(payer: CardHandle, ack: bytes) -> None:
    payer.client.select()
    payer.client.transfer_ack(ack)


@dataclass(frozen=True)
class Flight:
    request: bytes
    value: bytes
    ack: bytes

    @property
    def body(self) -> bytes:
        return body_of(self.request)


def full(w: World, payer: CardHandle, payee: CardHandle, amount: int) -> Flight:
    request = ask(payer, payee, amount)
    value = send(payer, payee, request, w.now, pin=amount > POLICY.no_pin_limit)
    ack = receive(payee, value)
    close(payer, ack)
    return Flight(request, value, ack)


def refused(sw: int, call: Callable[[], object], *cards: CardHandle) -> None:
    """``call`` is refused with ``sw`` and every card in ``cards`` is byte-identical."""
    before = [snap(h) for h in cards]
    with pytest.raises(CardError) as caught:
        call()
    assert caught.value.sw == sw, f"answered {caught.value.sw:04X}, expected {sw:04X}"
    assert [snap(h) for h in cards] == before, "a refused command changed a card"


def in_flight_on_cards(w: World) -> int:
    """Value debited by a payer and not credited, by what the cards alone say.

    A payer's pending transfer or PAYER log entry means "debited, no
    acknowledgement"; the payee has not credited it while it still has it
    pending as PAYEE or in its log as PAYEE (before any issuer session).
    """
    debited: dict[Key, int] = {}
    waiting: set[Key] = set()
    for h in w.cards:
        s = purse(h)
        held = [entry(TransferRole(e.role), e.transfer) for e in s.exception_log()]
        if s.pending_transfer is not None:
            held.append(entry(TransferRole(s.pending_transfer.role), s.pending_transfer.transfer))
        for e in held:
            if e.role == TransferRole.PAYER:
                debited[key_of(e.transfer)] = Transfer.decode(e.transfer).amount
            else:
                waiting.add(key_of(e.transfer))
    return sum(amount for k, amount in debited.items() if k in waiting)


def records(w: World) -> dict[Key, TransferException]:
    return {r.transfer.key: r.transfer for r in w.rig.centre.transfers()}


def status_of(w: World, body: bytes) -> TransferStatus:
    found = [r.status for r in w.rig.centre.transfers() if r.transfer.key == key_of(body)]
    assert len(found) == 1, found
    return found[0]


def newest_record(h: CardHandle) -> HistoryRecord:
    h.client.select()
    h.client.verify_pin(h.pin)
    return h.client.read_record(1)


def settle_all(w: World) -> None:
    """One more session per card: nothing more is restored, logs are empty, and each
    shadow balance is the card's balance plus its (unsettled) payments."""
    for h in w.cards:
        request, reply = w.online(h)
        assert reply.restore == 0, "restored again"
        assert purse(h).exception_log() == []
        assert purse(h).pending_transfer is None
        shadow = w.rig.centre.card(h.card_id).shadow_balance
        assert shadow == request.balance + w.paid[h.card_id] == balance(h) + w.paid[h.card_id]
    assert w.balances() == w.issued()


def no_pending(*cards: CardHandle) -> None:
    for h in cards:
        assert purse(h).pending_transfer is None


# 1. the happy path ------------------------------------------------------------------------------
def test_happy_path_step_by_step(world: World) -> None:
    w = world
    a, b = w.a, w.b
    a0, b0, atc_a, atc_b = balance(a), balance(b), atc(a), atc(b)
    certs = {h.card_id: CardCertificate.decode(body_of(cert(h))) for h in (a, b)}
    expected = Transfer(a.card_id, b.card_id, AMOUNT, EUR, atc_a + 1, atc_b + 1)

    request = ask(a, b, AMOUNT)
    assert atc(b) == atc_b + 1
    assert purse(b).pending_transfer == PendingTransfer(
        TransferRole.PAYEE, expected.encode(), certs[a.card_id].public_key
    )
    value = send(a, b, request, w.now)
    assert purse(a).pending_transfer == PendingTransfer(
        TransferRole.PAYER, expected.encode(), certs[b.card_id].public_key
    )
    assert (balance(a), atc(a)) == (a0 - AMOUNT, atc_a + 1)
    assert balance(b) == b0, "the payee has not credited yet"
    ack = receive(b, value)
    assert (balance(b), atc(b)) == (b0 + AMOUNT, atc_b + 2)
    close(a, ack)

    # three messages: one body, each under its own kind, each signed by its card
    signers = {
        ObjectKind.TRANSFER_REQUEST: b.card_id,
        ObjectKind.TRANSFER_VALUE: a.card_id,
        ObjectKind.TRANSFER_ACK: b.card_id,
    }
    for message, kind in zip((request, value, ack), signers, strict=True):
        env = parse_envelope(message)
        assert len(message) == 108
        assert (env.kind, env.key_id, env.body) == (kind, signers[kind], expected.encode())
        verify_envelope(env, public_key_from_bytes(certs[signers[kind]].public_key))

    assert (balance(a), balance(b)) == (a0 - AMOUNT, b0 + AMOUNT)
    assert atc(a) == atc_a + 1, "the acknowledgement takes no ATC"
    no_pending(a, b)
    assert purse(a).exception_log() == purse(b).exception_log() == []
    assert (purse(a).transfers_out, purse(a).transfers_in) == (AMOUNT, 0)
    assert (purse(b).transfers_out, purse(b).transfers_in) == (0, AMOUNT)
    assert purse(a).offline_spent == AMOUNT
    assert newest_record(a) == HistoryRecord(
        atc_a + 1, HistoryKind.TRANSFER_OUT, AMOUNT, a0 - AMOUNT, w.now, b.card_id
    )
    assert newest_record(b) == HistoryRecord(
        atc_b + 2, HistoryKind.TRANSFER_IN, AMOUNT, b0 + AMOUNT, purse(b).time_mark, a.card_id
    )
    assert w.balances() == w.issued()


def test_wallet_transfer_agrees_with_the_cards(world: World) -> None:
    w = world
    a, b = w.a, w.b
    a0, b0, atc_a, atc_b = balance(a), balance(b), atc(a), atc(b)
    result = w.transfer(b, a, 700)  # Bob pays Alice
    assert result == TransferResult(
        Transfer(
            from_id=b.card_id,
            to_id=a.card_id,
            amount=700,
            currency=EUR,
            from_seq=atc_b + 1,
            to_seq=atc_a + 1,
        ),
        payer_balance=b0 - 700,
        payee_balance=a0 + 700,
    )
    assert (balance(a), balance(b)) == (a0 + 700, b0 - 700)
    no_pending(a, b)
    out, into = newest_record(b), newest_record(a)
    assert (out.kind, out.atc, out.counterparty) == (
        HistoryKind.TRANSFER_OUT,
        result.transfer.from_seq,
        a.card_id,
    )
    assert (into.kind, into.atc, into.counterparty) == (
        HistoryKind.TRANSFER_IN,
        result.transfer.to_seq + 1,
        b.card_id,
    )
    # above the no-PIN limit the wallet needs the payer's PIN
    big = POLICY.no_pin_limit + 1
    result = w.transfer(a, b, big)
    assert result.transfer.amount == big
    assert result.payer_balance == a0 + 700 - big


def test_completed_transfers_move_the_shadow_balances_and_leave_no_exception(
    world: World,
) -> None:
    w = world
    full(w, w.a, w.b, AMOUNT)
    full(w, w.b, w.c, 300)
    w.transfer(w.c, w.a, 50)
    for h in w.cards:
        request, _ = w.online(h)
        record = w.rig.centre.card(h.card_id)
        assert (record.transfers_out, record.transfers_in) == (
            request.transfers_out,
            request.transfers_in,
        )
        assert (request.transfers_out, request.transfers_in) == (
            purse(h).transfers_out,
            purse(h).transfers_in,
        )
        assert record.shadow_balance == balance(h)
    assert w.rig.centre.transfers() == []
    settle_all(w)


def test_wallet_reports_the_step_a_refusal_stopped_at(world: World) -> None:
    w = world
    a, b = w.a, w.b
    total = w.balances()
    with pytest.raises(TransferFailed) as caught:
        w.transfer(b, a, balance(b) + 1)  # over the payer's balance
    assert (caught.value.step, caught.value.sw, caught.value.reason) == (
        Step.SEND,
        SW.INSUFFICIENT_FUNDS,
        "card_9c04",
    )
    assert "nothing moved" in str(caught.value)
    assert w.balances() == total
    with pytest.raises(TransferFailed) as caught:
        Wallet(w.rig.clock).transfer(a.client, b.client, POLICY.no_pin_limit + 1)  # no PIN
    assert (caught.value.step, caught.value.sw) == (Step.SEND, SW.SECURITY_STATUS_NOT_SATISFIED)
    with pytest.raises(TransferFailed) as caught:
        w.transfer(a, b, POLICY.max_balance)  # the payee cannot hold it
    assert (caught.value.step, caught.value.sw) == (Step.ASK, SW.OVER_MAX_BALANCE)
    with pytest.raises(TransferFailed) as caught:
        w.transfer(a, a, 10)
    assert (caught.value.step, caught.value.sw) == (Step.ASK, SW.WRONG_DATA)
    assert w.balances() == total


# 2. every abort point ---------------------------------------------------------------------------
ABORTS = ("begin_online", "pay", "new_transfer")


def abort(w: World, h: CardHandle, how: str) -> None:
    """Abort whatever ``h`` has pending, by one of the documented means."""
    assert purse(h).pending_transfer is not None
    if how == "begin_online":  # a session the issuer never hears of
        h.client.select()
        h.client.begin_online()
    elif how == "pay":
        w.pay(h, 100)
    else:  # Carol pays the card: its TRANSFER IN ask displaces what it had pending
        full(w, w.c, h, 100)
    assert purse(h).pending_transfer is None


@pytest.mark.parametrize("how", ABORTS)
def test_abort_after_the_ask_nothing_moved(world: World, how: str) -> None:
    w = world
    a, b = w.a, w.b
    a0 = balance(a)
    request = ask(a, b, AMOUNT)
    body = body_of(request)
    pending = purse(b).pending_transfer
    assert pending is not None
    assert (pending.role, pending.transfer) == (TransferRole.PAYEE, body)
    assert purse(a).pending_transfer is None
    abort(w, b, how)
    assert purse(b).exception_log() == [entry(TransferRole.PAYEE, body)]
    assert purse(a).exception_log() == []
    assert balance(a) == a0
    assert w.balances() == w.issued()
    assert in_flight_on_cards(w) == 0

    # the issuer: the payee's report alone is not enough; the payer's says it never sent
    request_b, _ = w.online(b)
    assert split_exception_log(request_b.exception_log) == [entry(TransferRole.PAYEE, body)]
    assert status_of(w, body) is TransferStatus.MAYBE_LOST
    _, reply = w.online(a)
    assert reply.restore == 0
    assert status_of(w, body) is TransferStatus.NOT_SENT
    x = records(w)[key_of(body)]
    assert x.payer_logged is None
    assert x.payee_logged is not None
    assert (x.restore_serial, x.restored) == (None, False)
    assert balance(a) == a0
    settle_all(w)


@pytest.mark.parametrize("payee_first", [True, False], ids=["payee_first", "payer_first"])
@pytest.mark.parametrize("how", ABORTS)
def test_abort_with_the_value_in_flight_is_restored_once(
    world: World, how: str, payee_first: bool
) -> None:
    w = world
    a, b = w.a, w.b
    a0, b0 = balance(a), balance(b)
    request = ask(a, b, AMOUNT)
    value = send(a, b, request, w.now)
    body = body_of(request)
    assert balance(a) == a0 - AMOUNT
    assert balance(b) == b0
    assert in_flight_on_cards(w) == AMOUNT
    assert w.balances() + AMOUNT == w.issued()

    abort(w, a, how)
    abort(w, b, how)
    assert purse(a).exception_log() == [entry(TransferRole.PAYER, body)]
    assert purse(b).exception_log() == [entry(TransferRole.PAYEE, body)]
    # aborted: the value can no longer be accepted, nor an acknowledgement made
    refused(SW.NO_TRANSFER_PENDING, lambda: receive(b, value), a, b)
    moved_by_abort = {
        a.card_id: balance(a) - (a0 - AMOUNT),
        b.card_id: balance(b) - b0,
    }
    assert in_flight_on_cards(w) == AMOUNT
    assert w.balances() + AMOUNT == w.issued(), "value in flight is conserved"

    first, second = (b, a) if payee_first else (a, b)
    _, reply = w.online(first)
    assert reply.restore == 0
    assert status_of(w, body) is TransferStatus.MAYBE_LOST, "one side alone proves nothing"
    _, reply = w.online(second)
    assert status_of(w, body) is TransferStatus.LOST
    if not payee_first:  # the payer reported first: its restore comes in its next update
        assert reply.restore == 0
        assert records(w)[key_of(body)].restore_serial is None
        _, reply = w.online(a)
    assert reply.restore == AMOUNT
    assert reply.actions & UpdateAction.RESTORE
    x = records(w)[key_of(body)]
    assert x.restore_serial == reply.serial
    assert not x.restored
    assert balance(a) == a0 + moved_by_abort[a.card_id], "restored to the payer"
    assert balance(b) == b0 + moved_by_abort[b.card_id]
    rec = newest_record(a)
    assert (rec.kind, rec.amount, rec.balance) == (HistoryKind.RESTORE, AMOUNT, balance(a))
    assert w.balances() == w.issued()

    _, again = w.online(a)  # the next session confirms the restore and gives nothing more
    assert again.restore == 0
    x = records(w)[key_of(body)]
    assert x.restored
    assert x.restore_serial == reply.serial
    assert status_of(w, body) is TransferStatus.LOST
    settle_all(w)
    assert balance(a) == a0 + moved_by_abort[a.card_id]


def test_a_payer_request_just_before_from_seq_proves_nothing(world: World) -> None:
    """``not_sent`` needs a payer request at or after ``from_seq``. A request at
    ``from_seq - 1`` (its update never arrived, so the card's ATC stayed there) was made
    before the debit: the transfer is ``maybe_lost`` until the payer reports again."""
    w = world
    a, b = w.a, w.b
    a0 = balance(a)
    request_a, _ = w.online(a, deliver=False)
    request = ask(a, b, AMOUNT)
    body = body_of(request)
    assert Transfer.decode(body).from_seq == request_a.atc + 1
    assert w.rig.centre.card(a.card_id).reported_atc == request_a.atc
    send(a, b, request, w.now)
    w.online(b)
    assert status_of(w, body) is TransferStatus.MAYBE_LOST, "the payer did send"
    _, reply = w.online(a)
    assert status_of(w, body) is TransferStatus.LOST
    assert reply.restore == AMOUNT
    settle_all(w)
    assert balance(a) == a0


@pytest.mark.parametrize("how", ABORTS)
def test_abort_after_the_credit_is_completed(world: World, how: str) -> None:
    w = world
    a, b = w.a, w.b
    a0, b0 = balance(a), balance(b)
    request = ask(a, b, AMOUNT)
    value = send(a, b, request, w.now)
    ack = receive(b, value)
    body = body_of(request)
    no_pending(b)
    assert (balance(a), balance(b)) == (a0 - AMOUNT, b0 + AMOUNT)
    abort(w, a, how)
    a1, b1 = balance(a), balance(b)
    assert purse(a).exception_log() == [entry(TransferRole.PAYER, body)]
    assert purse(b).exception_log() == []
    refused(SW.NO_TRANSFER_PENDING, lambda: close(a, ack), a, b)
    assert in_flight_on_cards(w) == 0
    assert w.balances() == w.issued()

    _, reply = w.online(a)
    assert reply.restore == 0
    assert status_of(w, body) is TransferStatus.MAYBE_LOST
    w.online(b)
    assert status_of(w, body) is TransferStatus.COMPLETED
    _, reply = w.online(a)
    assert reply.restore == 0, "a completed transfer is never restored"
    settle_all(w)
    assert (balance(a), balance(b)) == (a1, b1)


# 3. a restoring update that never arrives -----------------------------------------------------
def test_restore_that_never_reaches_the_card_is_voided_and_offered_again(world: World) -> None:
    w = world
    a, b = w.a, w.b
    a0 = balance(a)
    request = ask(a, b, AMOUNT)
    send(a, b, request, w.now)
    body = body_of(request)
    w.online(b)
    _, dropped = w.online(a, deliver=False)
    assert dropped.restore == AMOUNT
    assert balance(a) == a0 - AMOUNT
    assert purse(a).exception_log() == [entry(TransferRole.PAYER, body)], "not cleared"
    assert records(w)[key_of(body)].restore_serial == dropped.serial

    w.rig.clock.advance(60)
    request_a, reply = w.online(a)
    assert split_exception_log(request_a.exception_log) == [entry(TransferRole.PAYER, body)]
    outcomes = {r.serial: r.outcome for r in w.rig.centre.read(lambda tx: tx.renewals(a.card_id))}
    assert outcomes[dropped.serial] is Outcome.VOID
    assert reply.restore == AMOUNT
    assert reply.serial > dropped.serial
    assert "update_void" in [e.event for e in w.rig.centre.audit_log(a.card_id)]
    assert balance(a) == a0
    x = records(w)[key_of(body)]
    assert (x.restore_serial, x.restored) == (reply.serial, False)

    _, last = w.online(a)
    assert last.restore == 0
    assert records(w)[key_of(body)].restored
    settle_all(w)
    assert balance(a) == a0, "restored exactly once in total"


# 4. replays, forgeries and malformed commands ------------------------------------------------
def test_replayed_request_value_and_ack_into_the_same_transfer(world: World) -> None:
    w = world
    a, b, c = w.a, w.b, w.c
    request = ask(a, b, AMOUNT)
    value = send(a, b, request, w.now)
    # the request again, to the payer that has sent for it: its ATC moved on
    refused(SW.WRONG_SEQUENCE, lambda: send(a, b, request, w.now), a, b, c)
    assert purse(a).pending_transfer is not None, "a refused TRANSFER OUT aborts nothing"
    ack = receive(b, value)
    refused(SW.NO_TRANSFER_PENDING, lambda: receive(b, value), a, b, c)
    close(a, ack)
    refused(SW.NO_TRANSFER_PENDING, lambda: close(a, ack), a, b, c)
    refused(SW.WRONG_SEQUENCE, lambda: send(a, b, request, w.now), a, b, c)
    assert w.balances() == w.issued()


def test_replays_into_a_later_transfer(world: World) -> None:
    w = world
    a, b, c = w.a, w.b, w.c
    old = full(w, a, b, AMOUNT)
    # a later transfer between the same cards
    request = ask(a, b, 500)
    refused(SW.WRONG_SEQUENCE, lambda: send(a, b, old.request, w.now), a, b, c)
    refused(SW.WRONG_SEQUENCE, lambda: receive(b, old.value), a, b, c)
    value = send(a, b, request, w.now)
    refused(SW.WRONG_SEQUENCE, lambda: receive(b, old.value), a, b, c)
    refused(SW.WRONG_SEQUENCE, lambda: close(a, old.ack), a, b, c)
    ack = receive(b, value)
    refused(SW.WRONG_SEQUENCE, lambda: close(a, old.ack), a, b, c)
    close(a, ack)
    # a later transfer from another payer, and to another payee
    ask(c, b, 400)
    refused(SW.WRONG_CARD, lambda: receive(b, old.value), a, b, c)
    request = ask(a, c, 300)
    send(a, c, request, w.now)
    refused(SW.WRONG_CARD, lambda: close(a, old.ack), a, b, c)
    assert purse(a).pending_transfer is not None


def test_messages_for_another_card(world: World) -> None:
    w = world
    a, b, c = w.a, w.b, w.c
    request = ask(a, b, AMOUNT)  # Bob asks Alice
    # Carol is not the payer the request names
    refused(SW.WRONG_CARD, lambda: send(c, b, request, w.now), a, b, c)
    # the request with another payee's certificate: not signed by the certified card
    refused(SW.WRONG_CARD, lambda: send(a, c, request, w.now), a, b, c)
    value = send(a, b, request, w.now)
    # Carol waits for value from Bob: Alice's value is signed by another card
    ask(b, c, 100)
    refused(SW.WRONG_CARD, lambda: receive(c, value), a, b, c)
    ack = receive(b, value)
    # Carol's acknowledgement of another transfer is not from Alice's payee
    carol_value = send(b, c, ask(b, c, 100), w.now)
    carol_ack = receive(c, carol_value)
    refused(SW.WRONG_CARD, lambda: close(a, carol_ack), a, b, c)
    # Bob's own acknowledgement goes to Bob (pending as payer): signed by another card
    refused(SW.WRONG_CARD, lambda: close(b, ack), a, b, c)
    close(a, ack)
    close(b, carol_ack)
    no_pending(a, b, c)
    assert w.balances() == w.issued()


def test_messages_of_the_wrong_kind(world: World) -> None:
    w = world
    a, b, c = w.a, w.b, w.c
    done = full(w, a, b, 100)
    receipt = w.pay(a, 50)
    request = ask(a, b, AMOUNT)
    refused(SW.WRONG_OBJECT_KIND, lambda: send(a, b, receipt, w.now), a, b, c)
    refused(SW.WRONG_OBJECT_KIND, lambda: send(a, b, done.value, w.now), a, b, c)
    refused(SW.WRONG_OBJECT_KIND, lambda: send(a, b, done.ack, w.now), a, b, c)
    # issuer objects where a card certificate belongs
    credential = a.client.get_data(Tag.CREDENTIAL)
    a.client.select()
    refused(
        SW.WRONG_OBJECT_KIND, lambda: a.client.transfer_out(w.now, credential, request), a, b, c
    )
    c.client.select()
    refused(
        SW.WRONG_OBJECT_KIND,
        lambda: c.client.transfer_ask(10, atc(a) + 1, credential),
        a,
        b,
        c,
    )
    value = send(a, b, request, w.now)
    # an acknowledgement, a request, a receipt given as the value
    for wrong in (done.ack, request, receipt):
        refused(SW.WRONG_OBJECT_KIND, partial(receive, b, wrong), a, b, c)
    ack = receive(b, value)
    # a value, a request given as the acknowledgement
    for wrong in (value, request, receipt):
        refused(SW.WRONG_OBJECT_KIND, partial(close, a, wrong), a, b, c)
    close(a, ack)


def test_certificate_of_an_unknown_issuer(world: World, tmp_path: Path) -> None:
    w = world
    a, b, c = w.a, w.b, w.c
    other = make_issuer(tmp_path / "other")
    x, y = other.new_card("Xavier"), other.new_card("Yolanda")
    x.client.select()
    x_cert = x.client.get_data(Tag.CERTIFICATE)
    y.client.select()
    y_request = y.client.transfer_ask(100, 1, x_cert)  # fine between the other issuer's cards
    y_cert = y.client.get_data(Tag.CERTIFICATE)
    # Bob does not know the other issuer's key: no ask with its card as payer
    b.client.select()
    refused(SW.UNKNOWN_KEY, lambda: b.client.transfer_ask(100, 1, x_cert), a, b, c)
    # nor does Alice: a request from its card is refused on the certificate
    a.client.select()
    refused(SW.UNKNOWN_KEY, lambda: a.client.transfer_out(w.now, y_cert, y_request), a, b, c)
    # and the other issuer's cards refuse ours
    refused(SW.UNKNOWN_KEY, lambda: ask(a, x, 100), x)


def _flip(raw: bytes, offset: int) -> bytes:
    return raw[:offset] + bytes([raw[offset] ^ 0x01]) + raw[offset + 1 :]


BODY_AT = 14  # magic 2, version 1, kind 1, key ID 8, body length 2


def test_tampered_messages_and_certificates(world: World) -> None:
    w = world
    a, b, c = w.a, w.b, w.c
    a_cert, b_cert = cert(a), cert(b)
    b.client.select()
    # a payer certificate whose expiry was changed, or whose signature was
    refused(
        SW.BAD_SIGNATURE,
        lambda: b.client.transfer_ask(100, atc(a) + 1, _flip(a_cert, BODY_AT + 80)),
        a,
        b,
        c,
    )
    refused(
        SW.BAD_SIGNATURE,
        lambda: b.client.transfer_ask(100, atc(a) + 1, _flip(a_cert, len(a_cert) - 1)),
        a,
        b,
        c,
    )
    request = ask(a, b, 100)
    a.client.select()
    refused(
        SW.BAD_SIGNATURE,
        lambda: a.client.transfer_out(w.now, _flip(b_cert, BODY_AT + 3), request),
        a,
        b,
        c,
    )
    # the request's amount raised from 100 to 356, or its signature changed
    raised = _flip(request, BODY_AT + 18)
    assert Transfer.decode(body_of(raised)).amount == 356
    for bad in (raised, _flip(request, len(request) - 5)):
        refused(SW.BAD_SIGNATURE, partial(send, a, b, bad, w.now), a, b, c)
    value = send(a, b, request, w.now)
    for bad in (_flip(value, BODY_AT + 18), _flip(value, len(value) - 5)):
        refused(SW.BAD_SIGNATURE, partial(receive, b, bad), a, b, c)
    # a value whose key ID was changed names another card
    refused(SW.WRONG_CARD, lambda: receive(b, _flip(value, 4)), a, b, c)
    ack = receive(b, value)
    for bad in (_flip(ack, BODY_AT), _flip(ack, len(ack) - 1)):
        refused(SW.BAD_SIGNATURE, partial(close, a, bad), a, b, c)
    # truncated or not an envelope at all
    refused(SW.WRONG_DATA, lambda: close(a, ack[:-1]), a, b, c)
    close(a, ack)
    assert (balance(b) - 100, purse(a).transfers_out) == (LOADS["Bob"], 100)


def test_other_currency(world: World) -> None:
    w = world
    a, b = w.a, w.b
    w.rig.centre.set_policy(Policy(currency=840))
    d = w.issue("Dora")  # same issuer key, US dollars
    w.rig.centre.set_policy(POLICY)
    # the payee's request is in its currency: a euro payer refuses it
    request = ask(a, d, 100)
    assert Transfer.decode(body_of(request)).currency == 840
    refused(SW.CURRENCY_MISMATCH, lambda: send(a, d, request, w.now), a, b, d)
    # and a dollar payer refuses a euro payee's request (before any spending check)
    euro_request = ask(d, b, 100)
    refused(SW.CURRENCY_MISMATCH, lambda: send(d, b, euro_request, w.now), a, b, d)


def test_request_out_of_sequence(world: World) -> None:
    w = world
    a, b, c = w.a, w.b, w.c
    for seq in (atc(a) + 2, atc(a), 0):
        request = ask(a, b, 100, from_seq=seq)
        refused(SW.WRONG_SEQUENCE, partial(send, a, b, request, w.now), a, b, c)
    # a valid request goes stale when the payer does anything else first
    request = ask(a, b, 100)
    w.pay(a, 10)
    refused(SW.WRONG_SEQUENCE, lambda: send(a, b, request, w.now), a, b, c)


def test_a_card_does_not_transfer_to_itself(world: World) -> None:
    w = world
    a, b, c = w.a, w.b, w.c
    refused(SW.WRONG_DATA, lambda: ask(a, a, 100), a, b, c)
    request = ask(a, b, 100)
    a_cert = cert(a)
    a.client.select()
    refused(SW.WRONG_DATA, lambda: a.client.transfer_out(w.now, a_cert, request), a, b, c)


def _raw(h: CardHandle, apdu: str) -> int:
    h.client.select()
    return h.client.channel.send(CommandApdu.parse(bytes.fromhex(apdu))).sw


@pytest.mark.parametrize(
    ("apdu", "sw"),
    [
        ("80 58 02 00 01 00 00", SW.INCORRECT_P1P2),
        ("80 58 00 01 01 00 00", SW.INCORRECT_P1P2),
        ("80 56 01 00 01 00 00", SW.INCORRECT_P1P2),
        ("80 5A 00 01 01 00", SW.INCORRECT_P1P2),
        ("80 58 00 00 03 00 00 01 00", SW.WRONG_DATA),  # not a TransferAskData
        ("80 58 00 00 00", SW.WRONG_DATA),
        ("80 56 00 00 03 00 00 01 00", SW.WRONG_DATA),  # not a TransferOutData
        ("80 58 01 00 03 00 00 01 00", SW.NO_TRANSFER_PENDING),  # checked before the data
        ("80 5A 00 00 03 00 00 01", SW.NO_TRANSFER_PENDING),
    ],
)
def test_malformed_transfer_commands(world: World, apdu: str, sw: int) -> None:
    before = snap(world.a)
    assert _raw(world.a, apdu) == sw
    assert snap(world.a) == before


def test_short_le_answers_61xx_and_the_value_survives(world: World) -> None:
    """TRANSFER OUT changes the card: a short Le gets the first bytes and ``61XX`` (never
    ``6CXX``, which would invite a resend), the rest comes by GET RESPONSE."""
    w = world
    a, b = w.a, w.b
    request = ask(a, b, AMOUNT)
    data = TransferOutData(w.now, cert(b), request).encode()
    a.client.select()
    before = balance(a)
    first = a.card.process(CommandApdu(0x80, 0x56, 0x00, 0x00, data, 0x40).to_bytes())
    assert first[-2:] == bytes.fromhex("612C")
    assert balance(a) == before - AMOUNT
    rest = a.card.process(bytes.fromhex("00C0000000"))
    assert rest[-2:] == bytes.fromhex("9000")
    value = first[:-2] + rest[:-2]
    assert len(value) == 108
    close(a, receive(b, value))
    assert w.balances() == w.issued()


def test_ask_for_nothing(world: World) -> None:
    w = world
    a, b, c = w.a, w.b, w.c
    refused(SW.WRONG_DATA, lambda: ask(a, b, 0), a, b, c)


# 5. spending rules, receiving rules, the exception log ---------------------------------------
def test_no_credential_cannot_send_but_receives(world: World) -> None:
    w = world
    a = w.a
    d = w.issue("Dora")  # issued, never online: no credential, no money
    w.cards.append(d)
    request = ask(d, a, 100)
    refused(SW.NO_CREDENTIAL, lambda: send(d, a, request, w.now), a, d)
    full(w, a, d, 500)  # it receives all the same
    assert balance(d) == 500
    request = ask(d, a, 100)
    refused(SW.NO_CREDENTIAL, lambda: send(d, a, request, w.now), a, d)
    assert w.balances() == w.issued()


def test_expired_credential_cannot_send_but_receives(world: World) -> None:
    w = world
    a, b, c = w.a, w.b, w.c
    w.rig.clock.advance(POLICY.credential_lifetime)  # every credential has just expired
    request = ask(a, b, 100)
    refused(SW.CREDENTIAL_EXPIRED, lambda: send(a, b, request, w.now), a, b, c)
    w.online(c)  # Carol renews; Bob does not
    b_cred = purse(b).credential()
    assert b_cred is not None
    assert b_cred.expires_at <= w.now
    b0 = balance(b)
    full(w, c, b, 400)
    assert balance(b) == b0 + 400, "an expired credential does not stop a card receiving"
    assert w.balances() == w.issued()


def test_terminal_clock_behind_the_time_mark(world: World) -> None:
    w = world
    a, b, c = w.a, w.b, w.c
    request = ask(a, b, 100)
    late = purse(a).time_mark - POLICY.tolerance - 1
    refused(SW.CLOCK_ROLLBACK, lambda: send(a, b, request, late), a, b, c)
    send(a, b, request, late + 1)  # within the tolerance


def test_pin_above_the_no_pin_limit_is_needed_and_consumed(world: World) -> None:
    w = world
    a, b, c = w.a, w.b, w.c
    big = POLICY.no_pin_limit + 1
    request = ask(a, b, big)
    refused(SW.SECURITY_STATUS_NOT_SATISFIED, lambda: send(a, b, request, w.now), a, b, c)
    small = ask(a, b, POLICY.no_pin_limit)
    receive(b, send(a, b, small, w.now))  # at the limit: no PIN needed
    # one VERIFY covers one transfer above the limit
    a_cert, b_cert = cert(a), cert(b)
    request = ask(a, b, big)
    a.client.select()
    a.client.verify_pin(a.pin)
    value = a.client.transfer_out(w.now, b_cert, request)
    receive(b, value)
    b.client.select()
    request = b.client.transfer_ask(big, atc(a) + 1, a_cert)  # Alice stays selected
    refused(
        SW.SECURITY_STATUS_NOT_SATISFIED,
        lambda: a.client.transfer_out(w.now, b_cert, request),
        a,
        b,
        c,
    )


def test_per_payment_limit_balance_and_offline_cap(world: World) -> None:
    w = world
    a, b, c = w.a, w.b, w.c
    over = POLICY.per_payment_limit + 1
    request = ask(a, b, over)
    refused(SW.OVER_PAYMENT_LIMIT, lambda: send(a, b, request, w.now, pin=True), a, b, c)
    # over Bob's balance
    request = ask(b, c, balance(b) + 1)
    refused(SW.INSUFFICIENT_FUNDS, lambda: send(b, c, request, w.now, pin=True), a, b, c)
    # the offline cap counts transfers: load Alice past the cap, then spend up to it
    w.online(a, load=20_000)
    assert balance(a) > POLICY.offline_cap
    full(w, a, b, POLICY.per_payment_limit)
    w.pay(a, 5_000)
    full(w, a, c, 4_000)
    assert purse(a).offline_spent == 19_000
    request = ask(a, b, 1_001)
    refused(SW.OFFLINE_CAP_EXCEEDED, lambda: send(a, b, request, w.now), a, b, c)
    receive(b, send(a, b, ask(a, b, 1_000), w.now))  # exactly up to the cap
    assert purse(a).offline_spent == POLICY.offline_cap
    w.online(a)  # renewal: the cap starts again
    full(w, a, b, 1_001)


def test_a_refused_command_keeps_the_pending_transfer(world: World) -> None:
    """Documented: the abort is inside the command's transaction; refused, it stays."""
    w = world
    a, b, c = w.a, w.b, w.c
    ask(a, b, 100)  # Bob pending as payee
    pending = purse(b).pending_transfer
    assert pending is not None
    request = ask(b, c, balance(b) + 1)  # Carol asks Bob for more than he has
    refused(SW.INSUFFICIENT_FUNDS, lambda: send(b, c, request, w.now, pin=True), a, b, c)
    refused(SW.INSUFFICIENT_FUNDS, lambda: b.pay(balance(b) + 1, w.now), a, b, c)
    assert purse(b).pending_transfer == pending
    assert purse(b).exception_log() == []


def lock(w: World, h: CardHandle) -> None:
    """Report the card lost and give it its lock order, as a POS with the blocklist would."""
    w.rig.centre.report(h.card_id, CardState.LOST)
    card_id = h.card_id
    listing = w.rig.centre.read(lambda tx: tx.listing(card_id))
    assert listing is not None
    h.client.select()
    h.client.lock(listing.lock_order)
    assert purse(h).life_cycle is LifeCycle.LOCKED


def test_a_locked_card_can_neither_ask_nor_send_but_takes_its_ack(world: World) -> None:
    w = world
    a, b, c = w.a, w.b, w.c
    # Alice has sent and waits for Bob's acknowledgement; Carol has asked Bob
    request = ask(a, b, AMOUNT)
    ack = receive(b, send(a, b, request, w.now))
    c_waits = ask(b, c, 100)
    c_value = send(b, c, c_waits, w.now)
    for h in (a, c):
        lock(w, h)
    refused(SW.CARD_LOCKED, lambda: ask(b, a, 100), a, b, c)  # as payee
    request = ask(a, b, 100)  # Bob asks the locked Alice
    refused(SW.CARD_LOCKED, lambda: send(a, b, request, w.now), a, b, c)
    refused(SW.CARD_LOCKED, lambda: receive(c, c_value), a, b, c)
    close(a, ack)  # TRANSFER ACK works in any state
    assert purse(a).pending_transfer is None
    refused(SW.NO_TRANSFER_PENDING, lambda: receive(a, c_value), a, b, c)  # 9C18 before 9C07


def test_payee_over_its_maximum_balance(world: World) -> None:
    w = world
    a, b, c = w.a, w.b, w.c
    room = POLICY.max_balance - balance(b) - 500
    w.online(b, load=room)
    assert balance(b) == POLICY.max_balance - 500
    refused(SW.OVER_MAX_BALANCE, lambda: ask(a, b, 501), a, b, c)
    full(w, a, b, 500)
    assert balance(b) == POLICY.max_balance


def test_payee_over_its_maximum_when_the_value_arrives(world: World) -> None:
    """Documented 9C15 at TRANSFER IN value: a load applied between the ask and the value
    (the online session's nonce survives the ask). The value stays in flight, and is
    restored to the payer once both cards have reported."""
    w = world
    a, b, c = w.a, w.b, w.c
    a0 = balance(a)
    a_cert, from_seq = cert(a), atc(a) + 1
    b.client.select()
    raw = b.client.begin_online()
    request = b.client.transfer_ask(500, from_seq, a_cert)  # no SELECT: the nonce lives on
    load = POLICY.max_balance - balance(b) - 100
    reply = w.rig.centre.online_session(raw, load)
    b.client.issuer_update(reply.envelope)
    w.loads += load
    pending = purse(b).pending_transfer
    assert pending is not None
    assert pending.role == TransferRole.PAYEE
    value = send(a, b, request, w.now)
    refused(SW.OVER_MAX_BALANCE, lambda: receive(b, value), a, b, c)
    assert w.balances() + 500 == w.issued()
    w.online(b)
    _, reply = w.online(a)
    assert status_of(w, body_of(request)) is TransferStatus.LOST
    assert reply.restore == 500
    assert balance(a) == a0
    settle_all(w)


def test_the_exception_log_fills_and_an_online_session_empties_it(world: World) -> None:
    w = world
    a, b, c = w.a, w.b, w.c
    bodies = []
    for _ in range(EXCEPTION_LOG_SLOTS):  # each ask displaces the previous one into the log
        bodies.append(body_of(ask(a, b, 10)))
    assert len(purse(b).exception_log()) == EXCEPTION_LOG_SLOTS - 1
    # no room for a new transfer and the one it would displace: as payee and as payer
    refused(SW.EXCEPTION_LOG_FULL, lambda: ask(a, b, 10), a, b, c)
    request = ask(b, c, 10)
    refused(SW.EXCEPTION_LOG_FULL, lambda: send(b, c, request, w.now), a, b, c)
    w.pay(b, 1)  # PAY aborts the eighth into the last slot
    log = purse(b).exception_log()
    assert log == [entry(TransferRole.PAYEE, body) for body in bodies]
    refused(SW.EXCEPTION_LOG_FULL, lambda: ask(a, b, 10), a, b, c)
    request_b, _ = w.online(b)
    assert split_exception_log(request_b.exception_log) == log
    assert purse(b).exception_log() == []
    assert [status_of(w, body) for body in bodies] == [TransferStatus.MAYBE_LOST] * 8
    w.online(a)
    assert [status_of(w, body) for body in bodies] == [TransferStatus.NOT_SENT] * 8
    full(w, a, b, 10)  # room again
    settle_all(w)


# 6. power loss ------------------------------------------------------------------------------------
STEPS = ("ask", "out", "in", "ack")


def _twin(h: CardHandle) -> tuple[PurseClient, TearInjector, Card]:
    """A copy of the card's committed store, with a tear counter, selected."""
    counter = TearInjector()
    card = Card(MemoryBackend(h.card.store.snapshot()), tear=counter.point)
    client = connect(card)
    client.select()
    return client, counter, card


def _expected_statuses(step: str, landed: bool) -> list[TransferStatus]:
    if not landed or step == "ack":
        return []
    return {
        "ask": [TransferStatus.NOT_SENT],
        "out": [TransferStatus.LOST],
        "in": [TransferStatus.COMPLETED],
    }[step]


def _cut(folder: Path, step: str, k: int) -> tuple[bool, int]:
    """One transfer in a new world, ``step`` cut at tear point ``k``; then finished or
    aborted, and reconciled. Returns whether the cut landed after, and the point count."""
    w = make_world(folder)
    a, b = w.a, w.b
    a0, b0 = balance(a), balance(b)
    a_cert, b_cert = cert(a), cert(b)
    from_seq = atc(a) + 1
    now = w.now
    msgs: dict[str, bytes] = {}
    if step != "ask":
        msgs["request"] = ask(a, b, AMOUNT)
    if step in ("in", "ack"):
        msgs["value"] = send(a, b, msgs["request"], now)
    if step == "ack":
        msgs["ack"] = receive(b, msgs["value"])

    def command(client: PurseClient) -> bytes | None:
        if step == "ask":
            return client.transfer_ask(AMOUNT, from_seq, a_cert)
        if step == "out":
            return client.transfer_out(now, b_cert, msgs["request"])
        if step == "in":
            return client.transfer_receive(msgs["value"])
        client.transfer_ack(msgs["ack"])
        return None

    torn = b if step in ("ask", "in") else a
    torn.client.select()
    before = snap(torn)
    twin, counter, twin_card = _twin(torn)
    counter.arm(None)
    command(twin)
    after = twin_card.store.snapshot()
    assert after != before
    assert counter.labels[-3:] == ["commit:begin", "memory:save", "commit:done"]

    injector = w.injectors[torn.card_id]
    injector.arm(k)
    with pytest.raises(PowerLoss):
        command(torn.client)
    assert not torn.card.powered
    torn.card.power_on()
    torn.client.select()
    on_card = snap(torn)
    assert on_card in (before, after), f"{step}: cut at point {k} ({injector.labels[-1]})"
    landed = on_card == after
    status = torn.client.status()
    assert (status.balance, status.atc) == (purse(torn).balance, purse(torn).atc)
    assert w.balances() + in_flight_on_cards(w) == w.issued(), "value conserved"

    # then finish the transfer, or abort it
    if not landed:  # the wallet sends the same command again, and goes on
        answer = command(torn.client)
        if step != "ack":
            assert answer is not None
            msgs[{"ask": "request", "out": "value", "in": "ack"}[step]] = answer
        if step == "ask":
            msgs["value"] = send(a, b, msgs["request"], now)
        if step in ("ask", "out"):
            msgs["ack"] = receive(b, msgs["value"])
        if step != "ack":
            close(a, msgs["ack"])
    elif step == "ask":  # the request is lost: the wallet starts again
        w.transfer(a, b, AMOUNT)
    elif step == "out":  # the value is lost: it cannot be made again
        refused(SW.WRONG_SEQUENCE, lambda: command(a.client), a, b)
    elif step == "in":  # the acknowledgement is lost
        refused(SW.NO_TRANSFER_PENDING, lambda: command(b.client), a, b)
    else:
        refused(SW.NO_TRANSFER_PENDING, lambda: command(a.client), a, b)
    assert w.balances() + in_flight_on_cards(w) == w.issued()

    w.online(b)
    w.online(a)
    assert [r.status for r in w.rig.centre.transfers()] == _expected_statuses(step, landed)
    settle_all(w)
    if landed and step == "out":
        assert (balance(a), balance(b)) == (a0, b0), "lost in flight, restored to the payer"
    else:
        assert (balance(a), balance(b)) == (a0 - AMOUNT, b0 + AMOUNT)
    return landed, counter.count


@pytest.mark.parametrize("step", STEPS)
def test_tear_sweep(tmp_path: Path, step: str) -> None:
    """Cut each transfer command at every tear point: before or after, never between."""
    outcomes: list[bool] = []
    points: int | None = None
    k = 0
    while points is None or k < points:
        k += 1
        landed, points = _cut(tmp_path / f"cut{k}", step, k)
        outcomes.append(landed)
    assert points is not None
    assert outcomes == [False] * (points - 1) + [True], "only the last point is after"


@pytest.mark.parametrize("how", ["begin_online", "pay"])
def test_tear_sweep_of_an_abort(tmp_path: Path, how: str) -> None:
    """A displaced transfer moves to the log in the same transaction as the command that
    displaces it: a cut leaves it pending, or logged, never lost nor both."""
    w = make_world(tmp_path)
    a, b = w.a, w.b
    request = ask(a, b, AMOUNT)
    send(a, b, request, w.now)  # Alice pending as payer
    body = body_of(request)
    outcomes: list[bool] = []
    points: int | None = None
    k = 0
    while points is None or k < points:
        k += 1
        twin, counter, twin_card = _twin(a)
        torn, injector, torn_card = _twin(a)

        def run(client: PurseClient) -> bytes:
            if how == "begin_online":
                return client.begin_online()
            return client.pay(PayData(100, w.now, POS_ID, bytes(16)))

        if how == "pay":  # VERIFY first, on both copies: its tear points are not swept
            twin.verify_pin(PIN)
            torn.verify_pin(PIN)
        before = torn_card.store.snapshot()
        counter.arm(None)
        run(twin)
        after = twin_card.store.snapshot()
        points = counter.count
        injector.arm(k)
        with pytest.raises(PowerLoss):
            run(torn)
        torn_card.power_on()
        on_card = torn_card.store.snapshot()
        assert on_card in (before, after), f"cut at point {k} ({injector.labels[-1]})"
        outcomes.append(on_card == after)
        applet = torn_card.applets[PURSE_AID]
        assert isinstance(applet, PurseApplet)
        s = applet.state
        if on_card == before:
            assert s.pending_transfer == PendingTransfer(
                TransferRole.PAYER, body, CardCertificate.decode(body_of(cert(b))).public_key
            )
            assert s.exception_log() == []
        else:
            assert s.pending_transfer is None
            assert s.exception_log() == [entry(TransferRole.PAYER, body)]
    assert points is not None
    assert outcomes == [False] * (points - 1) + [True]


# what the wallet says when a card is pulled out ---------------------------------------------------
class Faulty:
    """A local transport that loses one command: before the card ran it, or its answer."""

    def __init__(self, card: Card, header: bytes, after: bool) -> None:
        self.inner = LocalTransport(card)
        self.header = header
        self.after = after
        self.fired = False

    @property
    def atr(self) -> bytes:
        return self.inner.atr

    def power_on(self) -> bytes:
        return self.inner.power_on()

    def power_off(self) -> None:
        self.inner.power_off()

    def reset(self) -> bytes:
        return self.inner.reset()

    def transmit(self, apdu: bytes) -> bytes:
        if not self.fired and apdu[:4] == self.header:
            self.fired = True
            if self.after:
                self.inner.transmit(apdu)
            raise TransportError("card pulled out")
        return self.inner.transmit(apdu)


TRANSFER_OUT = bytes.fromhex("80560000")
TRANSFER_VALUE = bytes.fromhex("80580100")


def _faulty(h: CardHandle, header: bytes, after: bool) -> PurseClient:
    return PurseClient(CardChannel(Faulty(h.card, header, after)))


def test_wallet_payee_pulled_out_before_the_value(world: World) -> None:
    w = world
    a, b = w.a, w.b
    with pytest.raises(TransferInterrupted) as caught:
        Wallet(w.rig.clock).transfer(a.client, _faulty(b, TRANSFER_VALUE, False), AMOUNT)
    assert caught.value.step is Step.RECEIVE
    assert "in flight" in str(caught.value)
    assert in_flight_on_cards(w) == AMOUNT
    assert w.balances() + AMOUNT == w.issued()
    w.online(b)
    _, reply = w.online(a)
    assert reply.restore == AMOUNT
    settle_all(w)


def test_wallet_payer_pulled_out_before_the_debit(world: World) -> None:
    w = world
    a, b = w.a, w.b
    a0 = balance(a)
    with pytest.raises(TransferInterrupted) as caught:
        Wallet(w.rig.clock).transfer(_faulty(a, TRANSFER_OUT, False), b.client, AMOUNT)
    assert caught.value.step is Step.SEND
    assert "nothing moved" in str(caught.value)
    assert balance(a) == a0
    assert in_flight_on_cards(w) == 0


def test_wallet_answer_of_transfer_out_lost_does_not_claim_nothing_moved(world: World) -> None:
    """The link fails after the payer debited: the wallet cannot know, and must not say
    that nothing moved (found as a bug while writing these tests; fixed since)."""
    w = world
    a, b = w.a, w.b
    a0 = balance(a)
    with pytest.raises(TransferInterrupted) as caught:
        Wallet(w.rig.clock).transfer(_faulty(a, TRANSFER_OUT, True), b.client, AMOUNT)
    assert caught.value.step is Step.SEND
    assert balance(a) == a0 - AMOUNT, "the payer did debit"
    assert in_flight_on_cards(w) == AMOUNT
    assert "did not debit" not in str(caught.value)
    assert "in flight" in str(caught.value)


def test_wallet_answer_of_transfer_in_lost_does_not_claim_not_credited(world: World) -> None:
    """The link fails after the payee credited: the wallet must not say it did not."""
    w = world
    a, b = w.a, w.b
    b0 = balance(b)
    with pytest.raises(TransferInterrupted) as caught:
        Wallet(w.rig.clock).transfer(a.client, _faulty(b, TRANSFER_VALUE, True), AMOUNT)
    assert caught.value.step is Step.RECEIVE
    assert balance(b) == b0 + AMOUNT, "the payee did credit"
    assert in_flight_on_cards(w) == 0
    assert "has not credited" not in str(caught.value)
    assert "credited before its answer was lost" in str(caught.value)
    # the payer's open entry: completed once both cards have reported
    w.online(a)
    w.online(b)
    assert [r.status for r in w.rig.centre.transfers()] == [TransferStatus.COMPLETED]
    settle_all(w)
