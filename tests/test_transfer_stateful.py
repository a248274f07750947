"""Card-to-card transfers under a hypothesis state machine: value is never created or lost.

Three cards issued by one real issuer (SQLite in a temporary folder, a set
clock). The machine starts transfers between two distinct cards, delivers
their messages one step at a time, drops them, replays old messages to any
card and any transfer command, cuts the power at a random tear point of a
step (then powers the card up again), pays at a POS, lets time pass, and runs
online sessions (renewal, optionally a load funded by the holder's deposit;
sometimes the issuer's reply never reaches the card). It keeps its own record
of what was loaded, paid, debited by a payer and credited by a payee (a cut
step counts when the card's store shows it landed).

After every step:

* no value is created: the cards' balances add up to at most the loads
  minus the payments;
* all value is accounted for: balances plus the value in flight equal the
  loads minus the payments, where *in flight* is read from the cards and the
  issuer alone: a transfer is debited-and-unacknowledged when its payer has it
  pending or logged as PAYER or the issuer has its payer's log entry; it is
  not credited when its payee still has it pending or logged as PAYEE or the
  issuer has its payee's log entry (a payee logs only what never came); it
  is given back when the issuer tied it to an update the payer has applied.
  That set of debited, uncredited transfers must be exactly what the machine
  saw debited and not credited, and no transfer is debited or credited twice;
* every refusal has a documented transfer status word and leaves the card's
  store byte-identical, and every cut leaves it exactly as before or after;
* right after each online session, the issuer's shadow balance of the card
  is exactly the card's balance in its request plus its payments (none is
  settled here);
* ``settle_everything`` takes every card online twice: then nothing is pending
  or logged, no transfer is ``maybe_lost``, the ``lost`` ones are exactly the
  debited and uncredited ones, each restored once, and no value is in flight.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from apdu.purse import (
    EXCEPTION_LOG_SLOTS,
    PURSE_AID,
    OnlineRequest,
    PayData,
    Tag,
    Transfer,
    TransferRole,
)
from apdu.purse_client import PurseClient
from apdu.signed import parse_envelope
from apdu.status import SW, CardError
from apdu.transport import CardChannel, LocalTransport
from card_os.card import Card
from card_os.purse import PurseApplet
from card_os.purse.state import PurseState
from card_os.store import MemoryBackend
from card_os.tear import PowerLoss, TearInjector
from issuer.errors import Refused
from issuer.policy import Policy
from issuer.session import ReplyKind
from issuer.transfers import TransferStatus
from tests.issuer_kit import DAY, POS_ID, CardHandle, make_issuer

HOLDERS = ("Alice", "Bob", "Carol")
PIN = b"1234"
DEPOSIT = 1_000_000
FIRST_LOAD = 6_000
POLICY = Policy()  # make_issuer's policy
MAX_FLIGHTS = 4
MAX_MESSAGES = 40

Key = tuple[bytes, int, bytes, int]
Cells = dict[str, bytes]

# what the transfer commands and PAY may answer, by docs/protocol.md (never 6F00)
DOCUMENTED = frozenset(
    {
        SW.WRONG_DATA,
        SW.SECURITY_STATUS_NOT_SATISFIED,
        SW.CARD_LOCKED,
        SW.CARD_NOT_ACTIVE,
        SW.EXCEPTION_LOG_FULL,
        SW.CURRENCY_MISMATCH,
        SW.BAD_SIGNATURE,
        SW.UNKNOWN_KEY,
        SW.WRONG_CARD,
        SW.WRONG_OBJECT_KIND,
        SW.OVER_MAX_BALANCE,
        SW.WRONG_SEQUENCE,
        SW.NO_TRANSFER_PENDING,
        SW.NO_CREDENTIAL,
        SW.CREDENTIAL_EXPIRED,
        SW.CLOCK_ROLLBACK,
        SW.INSUFFICIENT_FUNDS,
        SW.OVER_PAYMENT_LIMIT,
        SW.OFFLINE_CAP_EXCEEDED,
    }
)

amounts = st.sampled_from([1, 100, 700, POLICY.no_pin_limit, POLICY.no_pin_limit + 1, 6_000])
# a tear point in a third of the steps (a command has 4 to 12; 0 is the last one)
rare_tears = st.integers(0, 36).map(lambda k: k if k <= 12 else None)


def purse(card: Card) -> PurseState:
    applet = card.applets[PURSE_AID]
    assert isinstance(applet, PurseApplet)
    return applet.state


def key_of(body: bytes) -> Key:
    t = Transfer.decode(body)
    return (t.from_id, t.from_seq, t.to_id, t.to_seq)


def body_of(envelope: bytes) -> bytes:
    return parse_envelope(envelope).body


def connect(card: Card) -> PurseClient:
    card.install(PURSE_AID, PurseApplet)
    card.power_on()
    return PurseClient(CardChannel(LocalTransport(card)))


def twin_of(card: Card, counter: TearInjector) -> tuple[Card, PurseClient]:
    """A copy of what the card has committed, powered and selected, counting tear points."""
    twin = Card(MemoryBackend(card.store.snapshot()), tear=counter.point)
    client = connect(twin)
    client.select()
    return twin, client


@dataclass
class Flight:
    """A transfer the wallet is carrying: the messages so far and the next step."""

    payer: int
    payee: int
    amount: int
    request: bytes
    value: bytes = b""
    ack: bytes = b""

    @property
    def key(self) -> Key:
        return key_of(body_of(self.request))

    @property
    def stage(self) -> str:
        return "closing" if self.ack else "receiving" if self.value else "sending"


@dataclass(frozen=True)
class Message:
    raw: bytes
    signer: int  # the card that signed it


Command = Callable[[PurseClient], bytes | None]


class TransferMachine(RuleBasedStateMachine):
    """Three cards, one issuer, and the machine's own ledger of what moved."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.rig = make_issuer(Path(self.tmp.name))
        self.cards: list[CardHandle] = []
        self.injectors: list[TearInjector] = []
        self.certs: list[bytes] = []
        self.loads = 0
        self.paid = [0] * len(HOLDERS)
        self.flights: list[Flight] = []
        self.messages: list[Message] = []
        self.debited: dict[Key, int] = {}
        self.credited: set[Key] = set()
        self.restored: set[Key] = set()
        self.atcs = [0] * len(HOLDERS)
        for number, holder in enumerate(HOLDERS):
            injector = TearInjector()
            card = Card(
                MemoryBackend(), tear=injector.point, random=random.Random(number).randbytes
            )
            client = connect(card)
            card_id, pin = self.rig.centre.issue(client, holder, PIN)
            self.cards.append(CardHandle(card, client, card_id, pin))
            self.injectors.append(injector)
            client.select()
            self.certs.append(client.get_data(Tag.CERTIFICATE))
            self.rig.centre.deposit(holder, DEPOSIT)
            self._session(number, FIRST_LOAD, deliver=True)

    def teardown(self) -> None:
        self.rig.centre.close()
        self.tmp.cleanup()

    # helpers ---------------------------------------------------------------------------------
    def _state(self, i: int) -> PurseState:
        return purse(self.cards[i].card)

    def _run(
        self, what: str, i: int, pin: bool, command: Command, tear: int | None
    ) -> tuple[str, bytes]:
        outcome, answer = self._run_once(i, pin, command, tear)
        event(f"{what}: {outcome}")
        return ("refused" if outcome.startswith("refused") else outcome), answer

    def _run_once(self, i: int, pin: bool, command: Command, tear: int | None) -> tuple[str, bytes]:
        """One command on card ``i``, cut at tear point ``tear`` if given.

        Returns ``("ok", answer)``, ``("refused", b"")``, ``("landed", b"")`` (cut
        after its commit: done, answer lost) or ``("cut", b"")`` (cut before: nothing).
        """
        h = self.cards[i]
        h.client.select()
        if pin:
            h.client.verify_pin(h.pin)
        before = h.card.store.snapshot()
        done: Cells | None = None
        if tear is not None:  # what the command does untorn, on a copy of the card
            counter = TearInjector()
            twin, twin_client = twin_of(h.card, counter)
            if pin:
                twin_client.verify_pin(h.pin)
            counter.arm(None)
            with contextlib.suppress(CardError):
                command(twin_client)
            done = twin.store.snapshot()
            self.injectors[i].arm(tear or counter.count)  # 0: the last point (landed)
        refusal: CardError | None = None
        try:
            answer = command(h.client)
        except PowerLoss:
            h.card.power_on()
            now = h.card.store.snapshot()
            assert now in (before, done), "a cut left the card neither before nor after"
            return ("cut" if now == before else "landed"), b""
        except CardError as err:
            refusal = err
            answer = None
        finally:
            self.injectors[i].arm(None)
        if refusal is not None:
            assert refusal.sw in DOCUMENTED, f"undocumented answer {refusal.sw:04X}"
            assert h.card.store.snapshot() == before, f"refused ({refusal.sw:04X}) but changed"
            return f"refused {refusal.sw:04X}", b""
        if done is not None:
            assert h.card.store.snapshot() == done
        return "ok", answer or b""

    def _debit(self, key: Key, amount: int) -> None:
        assert key not in self.debited, "one transfer debited twice"
        self.debited[key] = amount

    def _credit(self, key: Key) -> None:
        assert key not in self.credited, "one transfer credited twice"
        assert key in self.debited, "credited before any debit"
        self.credited.add(key)

    def _remember(self, raw: bytes, signer: int) -> None:
        self.messages.append(Message(raw, signer))
        del self.messages[:-MAX_MESSAGES]

    def _session(self, i: int, load: int, deliver: bool) -> None:
        h = self.cards[i]
        h.client.select()
        raw = h.client.begin_online()
        request = OnlineRequest.decode(body_of(raw))
        if request.balance + load > POLICY.max_balance:
            load = 0
        try:
            reply = self.rig.centre.online_session(raw, load)
        except Refused as refusal:  # pragma: no cover - a failure, shown with its reason
            raise AssertionError(f"session refused: {refusal.reason}: {refusal}") from None
        assert reply.kind is ReplyKind.UPDATE
        record = self.rig.centre.card(h.card_id)
        assert record.shadow_balance == request.balance + self.paid[i], "shadow balance"
        assert (record.transfers_out, record.transfers_in) == (
            request.transfers_out,
            request.transfers_in,
        )
        if not deliver:
            return
        h.client.issuer_update(reply.envelope)
        self.loads += load
        assert self._state(i).exception_log() == [], "the update clears the reported log"
        if reply.restore:
            given = [  # serials are per card: this card's, as the payer
                x
                for x in self.rig.centre.read(lambda tx: tx.exceptions(h.card_id))
                if x.from_id == h.card_id and x.restore_serial == reply.serial
            ]
            assert sum(x.amount for x in given) == reply.restore
            event("restore applied")
            for x in given:
                assert x.key not in self.restored, "restored twice"
                self.restored.add(x.key)

    # transfer steps --------------------------------------------------------------------------
    def _ask(self, payer: int, payee: int, amount: int, tear: int | None) -> Flight | None:
        """The payee's TRANSFER IN ask, with the payer's certificate and next ATC."""
        from_seq = self._state(payer).atc + 1
        cert = self.certs[payer]
        outcome, request = self._run(
            "ask", payee, False, lambda c: c.transfer_ask(amount, from_seq, cert), tear
        )
        if outcome != "ok":
            return None
        flight = Flight(payer, payee, amount, request)
        self.flights.append(flight)
        del self.flights[:-MAX_FLIGHTS]
        self._remember(request, payee)
        return flight

    def _advance(self, f: Flight, pin: bool, tear: int | None) -> bool:
        """The flight's next step (TRANSFER OUT, IN value or ACK); False when it ended."""
        now = self.rig.clock()
        payee_cert = self.certs[f.payee]
        stage = f.stage
        if stage == "sending":
            outcome, answer = self._run(
                "out", f.payer, pin, lambda c: c.transfer_out(now, payee_cert, f.request), tear
            )
            if outcome in ("ok", "landed"):
                self._debit(f.key, f.amount)
            if outcome == "ok":
                f.value = answer
                self._remember(answer, f.payer)
        elif stage == "receiving":
            outcome, answer = self._run(
                "in", f.payee, False, lambda c: c.transfer_receive(f.value), tear
            )
            if outcome in ("ok", "landed"):
                self._credit(f.key)
            if outcome == "ok":
                f.ack = answer
                self._remember(answer, f.payee)
        else:

            def close(client: PurseClient) -> None:
                client.transfer_ack(f.ack)

            outcome, _ = self._run("ack", f.payer, False, close, tear)
            if outcome in ("ok", "landed"):
                outcome = "closed"
        if outcome in ("refused", "landed", "closed"):  # done, given up, or answer lost
            if f in self.flights:
                self.flights.remove(f)
            return False
        return outcome == "ok"

    # rules: transfers --------------------------------------------------------------------------
    @rule(payer=st.integers(0, 2), shift=st.integers(1, 2), amount=amounts, tear=rare_tears)
    def start(self, payer: int, shift: int, amount: int, tear: int | None) -> None:
        """The wallet asks the payee, and goes no further for now."""
        self._ask(payer, (payer + shift) % len(HOLDERS), amount, tear)

    @rule(
        payer=st.integers(0, 2),
        shift=st.integers(1, 2),
        amount=amounts,
        pin=st.booleans(),
        steps=st.integers(1, 4),
        cut=st.integers(0, 4),
        tear=st.integers(0, 12),
    )
    def wallet(
        self, payer: int, shift: int, amount: int, pin: bool, steps: int, cut: int, tear: int
    ) -> None:
        """A transfer carried through ``steps`` of its four steps; step ``cut`` (if any)
        loses the power at tear point ``tear`` (0: its last one, after the commit). What is
        left stays in the wallet."""
        flight = self._ask(
            payer, (payer + shift) % len(HOLDERS), amount, tear if cut == 1 else None
        )
        step = 1
        while flight is not None and step < steps:
            step += 1
            if not self._advance(flight, pin, tear if cut == step else None):
                break

    @precondition(lambda self: self.flights)
    @rule(pick=st.integers(0, MAX_FLIGHTS), pin=st.booleans(), tear=rare_tears)
    def deliver(self, pick: int, pin: bool, tear: int | None) -> None:
        """The next step of a transfer in the wallet (TRANSFER OUT, IN value or ACK)."""
        self._advance(self.flights[pick % len(self.flights)], pin, tear)

    @precondition(lambda self: self.flights)
    @rule()
    def drop(self) -> None:
        """The wallet forgets every transfer it carries (cards pulled out)."""
        self.flights.clear()

    @precondition(lambda self: self.messages)
    @rule(
        pick=st.integers(0, MAX_MESSAGES),
        card=st.integers(0, 2),
        command=st.sampled_from(["out", "in", "ack"]),
    )
    def replay(self, pick: int, card: int, command: str) -> None:
        """An old message, to any card, as a request, a value or an acknowledgement."""
        m = self.messages[pick % len(self.messages)]
        now = self.rig.clock()
        cert = self.certs[m.signer]
        run: Command
        if command == "out":
            run = lambda c: c.transfer_out(now, cert, m.raw)  # noqa: E731
        elif command == "in":
            run = lambda c: c.transfer_receive(m.raw)  # noqa: E731
        else:

            def run(client: PurseClient) -> None:
                client.transfer_ack(m.raw)

        outcome, answer = self._run(f"replay {command}", card, command == "out", run, None)
        if outcome != "ok":
            return
        key = key_of(body_of(m.raw))
        if command == "out":  # a request the payer had not used yet: a late delivery
            self._debit(key, Transfer.decode(body_of(m.raw)).amount)
            self._remember(answer, card)
        elif command == "in":
            self._credit(key)
            self._remember(answer, card)

    # rules: the rest of the cards' lives ---------------------------------------------------------
    @rule(card=st.integers(0, 2), amount=st.sampled_from([1, 300, 2_000, 3_000]))
    def pay(self, card: int, amount: int) -> None:
        """A POS payment (with the PIN); it aborts a pending transfer."""
        now = self.rig.clock()
        outcome, _ = self._run(
            "pay", card, True, lambda c: c.pay(PayData(amount, now, POS_ID, bytes(16))), None
        )
        if outcome == "ok":
            self.paid[card] += amount

    @rule(
        card=st.integers(0, 2),
        load=st.sampled_from([0, 0, 500, 2_000]),
        deliver=st.sampled_from([True, True, True, False]),
    )
    def online(self, card: int, load: int, deliver: bool) -> None:
        """An online session; the reply may never reach the card."""
        self._session(card, load, deliver)

    @rule(seconds=st.sampled_from([60, 3_600, 8 * DAY]))
    def wait(self, seconds: int) -> None:
        self.rig.clock.advance(seconds)

    @rule()
    def settle_everything(self) -> None:
        """Every card online twice: every transfer reconciled, lost value all restored."""
        self.flights.clear()
        for _ in range(2):
            for i in range(len(HOLDERS)):
                self._session(i, 0, deliver=True)
        for i in range(len(HOLDERS)):
            assert self._state(i).pending_transfer is None
            assert self._state(i).exception_log() == []
        statuses = {r.transfer.key: r.status for r in self.rig.centre.transfers()}
        assert TransferStatus.MAYBE_LOST not in statuses.values()
        lost = {k for k, s in statuses.items() if s is TransferStatus.LOST}
        assert lost == set(self.debited) - self.credited
        assert lost == self.restored
        event(f"settled: {len(lost)} lost, {len(statuses) - len(lost)} other exception(s)")
        for k, s in statuses.items():
            if s is TransferStatus.COMPLETED:
                assert k in self.credited
            if s is TransferStatus.NOT_SENT:
                assert k not in self.debited

    # invariants -----------------------------------------------------------------------------------
    def _from_cards_and_issuer(self) -> tuple[set[Key], set[Key], dict[Key, int]]:
        """(debited and uncredited, given back by an applied update, amounts)."""
        debited: dict[Key, int] = {}
        waiting: set[Key] = set()
        serials: dict[bytes, int] = {}
        for i, h in enumerate(self.cards):
            s = self._state(i)
            cred = s.credential()
            serials[h.card_id] = cred.serial if cred is not None else 0
            held = [(e.role, e.transfer) for e in s.exception_log()]
            if s.pending_transfer is not None:
                held.append((s.pending_transfer.role, s.pending_transfer.transfer))
            for role, body in held:
                if role == TransferRole.PAYER:
                    debited[key_of(body)] = Transfer.decode(body).amount
                else:
                    waiting.add(key_of(body))
        given_back: set[Key] = set()
        for x in self.rig.centre.read(lambda tx: tx.exceptions()):
            if x.payer_logged is not None:
                debited[x.key] = x.amount
            if x.payee_logged is not None:
                waiting.add(x.key)
            applied = x.restore_serial is not None and serials[x.from_id] >= x.restore_serial
            if x.restored or applied:
                given_back.add(x.key)
        return {k for k in debited if k in waiting}, given_back, debited

    @invariant()
    def value_is_neither_created_nor_lost(self) -> None:
        issued = self.loads - sum(self.paid)
        balances = sum(self._state(i).balance for i in range(len(HOLDERS)))
        assert balances <= issued, "value created"
        uncredited, given_back, amounts = self._from_cards_and_issuer()
        assert uncredited == set(self.debited) - self.credited
        assert given_back <= uncredited, "a restore for a transfer whose value arrived"
        assert given_back == self.restored
        in_flight = sum(amounts[k] for k in uncredited - given_back)
        assert balances + in_flight == issued, "value unaccounted for"

    @invariant()
    def counters_and_logs_stay_in_bounds(self) -> None:
        for i in range(len(HOLDERS)):
            s = self._state(i)
            assert s.atc >= self.atcs[i], "the ATC went down"
            self.atcs[i] = s.atc
            assert len(s.exception_log()) + (s.pending_transfer is not None) <= (
                EXCEPTION_LOG_SLOTS
            )
            assert 0 <= s.balance <= POLICY.max_balance


def test_transfer_state_machine() -> None:
    run_state_machine_as_test(
        TransferMachine,
        settings=settings(
            max_examples=35,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
