"""Property tests of the purse's guarantees (DESIGN.md sections 4-5).

A rule-based state machine drives one in-memory card through payments at any
claimed time, PIN tries, renewals, power resets, locks and unlocks, and keeps
its own model of what the card must hold. After every step it checks:

* the card never pays without a credential, nor at or past its expiry;
* what is paid since the last renewal never exceeds the offline cap;
* 0 <= balance <= maximum, and balance == loads - payments, on the card too;
* the ATC never decreases (and counts exactly the accepted operations);
* the history (READ RECORD, when the PIN is verified) is the model's;
* a refused command changes no persistent byte (a wrong PIN: only its try).

Every accepted payment's receipt is verified with the card's public key. The
plain ``@given`` tests below check the cap, the expiry and the time mark
against random payment sequences on a fresh card.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from apdu.command import CommandApdu
from apdu.purse import (
    HISTORY_SLOTS,
    PIN_TRIES,
    PURSE_AID,
    CardCertificate,
    ChangePinData,
    Credential,
    HistoryKind,
    HistoryRecord,
    LifeCycle,
    OnlineRequest,
    PayData,
    Receipt,
    Tag,
    UpdateAction,
)
from apdu.signed import ObjectKind, open_envelope, public_key_from_bytes
from apdu.status import SW, CardError
from tests.purse_kit import (
    CARD_ID,
    CURRENCY,
    DAY,
    MAX_BALANCE,
    NONCE,
    PIN,
    T0,
    TERMINAL_ID,
    Policy,
    PurseRig,
    make_rig,
)

T = TypeVar("T")
U32_MAX = 0xFFFF_FFFF
MAX_LIFETIME = 30 * DAY
CELL = PURSE_AID.hex() + "/"
TRIES_CELL = CELL + "pin_tries"
NO_COUNTERPARTY = bytes(8)
TERMINALS = (TERMINAL_ID, b"POS00002")


def outcome(call: Callable[[], T]) -> T | CardError:
    """What a card call returned, or the CardError it raised."""
    try:
        return call()
    except CardError as err:
        return err


def clamp(t: int, hi: int = U32_MAX) -> int:
    return max(0, min(t, hi))


def open_receipt(rig: PurseRig, raw: bytes) -> Receipt:
    """The receipt in a card-signed envelope, its signature verified."""
    env = open_envelope(raw, ObjectKind.RECEIPT, {CARD_ID: public_key_from_bytes(rig.card_public)})
    assert env.key_id == CARD_ID
    return Receipt.decode(env.body)


def card_credential(rig: PurseRig) -> Credential | None:
    raw = outcome(lambda: rig.client.get_data(Tag.CREDENTIAL))
    if isinstance(raw, CardError):
        assert raw.sw == SW.REFERENCED_DATA_NOT_FOUND
        return None
    keys = {rig.issuer.key_id: public_key_from_bytes(rig.issuer.public)}
    return Credential.decode(open_envelope(raw, ObjectKind.CREDENTIAL, keys).body)


def pin_tries(rig: PurseRig) -> int:
    return int.from_bytes(rig.client.get_data(Tag.PIN_TRIES), "big")


# the model -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Paid:
    """One accepted payment, with the credential that was in force."""

    receipt: Receipt
    expires_at: int
    offline_cap: int
    renewal: int  # which renewal the payment belongs to


@dataclass
class Model:
    state: LifeCycle = LifeCycle.ACTIVE
    loads: int = 0
    paid: int = 0
    atc: int = 0
    time_mark: int = 0
    unlock_mark: int = 0
    credential: Credential | None = None
    renewals: int = 0
    spent: int = 0  # since the last renewal
    pin_tries: int = PIN_TRIES
    pin_verified: bool = False
    history: list[HistoryRecord] = field(default_factory=list)
    payments: list[Paid] = field(default_factory=list)

    @property
    def balance(self) -> int:
        return self.loads - self.paid

    def record(self, kind: HistoryKind, amount: int, time: int, other: bytes) -> None:
        self.history.append(HistoryRecord(self.atc, kind, amount, self.balance, time, other))

    def pay_refusal(self, amount: int, time: int) -> int | None:
        """The status word PAY must answer with (docs/protocol.md, the expiry rule), or None."""
        if self.state is LifeCycle.LOCKED:
            return SW.CARD_LOCKED
        if self.state is not LifeCycle.ACTIVE:
            return SW.CARD_NOT_ACTIVE
        cred = self.credential
        checks = (
            (cred is None, SW.NO_CREDENTIAL),
            (cred is not None and time + cred.tolerance < self.time_mark, SW.CLOCK_ROLLBACK),
            (cred is not None and time >= cred.expires_at, SW.CREDENTIAL_EXPIRED),
            (amount == 0, SW.WRONG_DATA),
            (cred is not None and amount > cred.per_payment_limit, SW.OVER_PAYMENT_LIMIT),
            (
                cred is not None and amount > cred.no_pin_limit and not self.pin_verified,
                SW.SECURITY_STATUS_NOT_SATISFIED,
            ),
            (amount > self.balance, SW.INSUFFICIENT_FUNDS),
            (cred is not None and self.spent + amount > cred.offline_cap, SW.OFFLINE_CAP_EXCEEDED),
        )
        return next((sw for failed, sw in checks if failed), None)


# strategies ----------------------------------------------------------------------------------
amounts = st.one_of(
    st.integers(1, 6_000),
    st.integers(0, 200),
    st.sampled_from([0, 1, MAX_BALANCE, U32_MAX]),
    st.integers(0, U32_MAX),
)
pay_offsets = st.one_of(
    st.integers(-2 * DAY, 2 * DAY),
    st.integers(-3_600, 3_600),
    st.sampled_from([-3_601, -301, -300, -1, 0, 1, 299, 300, 10 * 365 * DAY, 1 << 31, -(1 << 31)]),
)
session_offsets = st.one_of(st.integers(-DAY, 3 * DAY), st.sampled_from([-1, 0, 1, 60]))
policies = st.builds(
    Policy,
    lifetime=st.one_of(st.sampled_from([1, 60, 3_600, DAY, 7 * DAY]), st.integers(1, MAX_LIFETIME)),
    offline_cap=st.one_of(
        st.integers(0, 4_000), st.integers(0, 30_000), st.sampled_from([0, 1_000, 20_000])
    ),
    per_payment_limit=st.one_of(st.integers(0, 10_000), st.just(5_000)),
    no_pin_limit=st.one_of(st.integers(0, 5_000), st.just(1_000)),
    tolerance=st.sampled_from([0, 300, 3_600]),
)
loads = st.one_of(
    st.just(0),
    st.integers(1, 5_000),
    st.integers(1, 30_000),
    st.sampled_from([MAX_BALANCE, MAX_BALANCE + 1, U32_MAX]),
)
wrong_pins = st.one_of(
    st.text("0123456789", min_size=4, max_size=12).map(str.encode).filter(lambda p: p != PIN),
    st.sampled_from([b"", b"123", b"12a4", b"1234567890123", b"12345"]),
)


class PurseMachine(RuleBasedStateMachine):
    """One card and the model of what it must hold."""

    def __init__(self) -> None:
        super().__init__()
        self.rig = make_rig()
        status = self.rig.client.status()
        self.model = Model(atc=status.atc, time_mark=status.time_mark)
        self.last_atc = status.atc
        self.card_keys = {CARD_ID: public_key_from_bytes(self.rig.card_public)}
        self.issuer_keys = {self.rig.issuer.key_id: public_key_from_bytes(self.rig.issuer.public)}

    # helpers -----------------------------------------------------------------------------
    def _time(self, anchor: str, offset: int, hi: int = U32_MAX) -> int:
        m = self.model
        cred = m.credential
        base = {
            "mark": m.time_mark,
            "expiry": cred.expires_at if cred else m.time_mark,
            "issued": cred.issued_at if cred else T0,
            "T0": T0,
            "zero": 0,
        }[anchor]
        return clamp(base + offset, hi)

    def _begin(self) -> OnlineRequest:
        """BEGIN ONLINE, its card signature verified and its report checked."""
        env = open_envelope(
            self.rig.client.begin_online(), ObjectKind.ONLINE_REQUEST, self.card_keys
        )
        req = OnlineRequest.decode(env.body)
        m = self.model
        m.atc += 1  # every request has its own ATC
        assert (req.card_id, req.atc, req.state, req.balance) == (
            CARD_ID,
            m.atc,
            m.state,
            m.balance,
        )
        assert (req.time_mark, req.offline_spent) == (m.time_mark, m.spent)
        assert req.credential_serial == (m.credential.serial if m.credential else 0)
        return req

    def _refused_unchanged(self, before: dict[str, bytes]) -> None:
        assert self.rig.snapshot() == before, "a refused command changed the card's state"

    def _renew(self, now: int, load: int, policy: Policy) -> None:
        m = self.model
        self.rig.policy = policy
        request = self._begin()
        before = self.rig.snapshot()
        cred = Credential(
            card_id=CARD_ID,
            serial=self.rig.serial + 1,
            issued_at=now,
            expires_at=now + policy.lifetime,
            offline_cap=policy.offline_cap,
            per_payment_limit=policy.per_payment_limit,
            no_pin_limit=policy.no_pin_limit,
            tolerance=policy.tolerance,
            card_nonce=b"",  # bound by the card's nonce; not compared
        )
        expected: int | None = None
        if m.state is LifeCycle.LOCKED:
            expected = SW.CARD_LOCKED
        elif m.balance + load > MAX_BALANCE:
            expected = SW.OVER_MAX_BALANCE
        atc = outcome(
            lambda: self.rig.client.issuer_update(self.rig.update_for(request, now, load))
        )
        event(f"renew {'refused ' + SW(atc.sw).name if isinstance(atc, CardError) else 'applied'}")
        if isinstance(atc, CardError):
            assert atc.sw == expected, f"renewal refused with {atc.sw:04X}, expected {expected}"
            self._refused_unchanged(before)
            return
        assert expected is None, f"renewal accepted, expected a refusal {expected:04X}"
        m.atc += 1
        assert atc == m.atc
        m.time_mark = now  # the issuer's time sets the mark, also backwards
        m.credential = cred
        m.renewals += 1
        m.spent = 0
        m.record(HistoryKind.RENEW, 0, now, NO_COUNTERPARTY)
        if load:
            m.loads += load
            m.record(HistoryKind.LOAD, load, now, NO_COUNTERPARTY)

    # rules -----------------------------------------------------------------------------------
    @initialize(funded=st.sampled_from([True, True, True, False]))
    def start(self, funded: bool) -> None:
        cert_raw = self.rig.client.get_data(Tag.CERTIFICATE)
        cert = CardCertificate.decode(
            open_envelope(cert_raw, ObjectKind.CARD_CERTIFICATE, self.issuer_keys).body
        )
        assert (cert.card_id, cert.public_key) == (CARD_ID, self.rig.card_public)
        if funded:
            self._renew(T0, 10_000, Policy())

    @rule(
        amount=amounts,
        anchor=st.sampled_from(["mark", "expiry", "issued", "T0", "zero"]),
        offset=pay_offsets,
        terminal=st.sampled_from(TERMINALS),
        nonce=st.binary(min_size=16, max_size=16),
    )
    def pay(self, amount: int, anchor: str, offset: int, terminal: bytes, nonce: bytes) -> None:
        """Any amount at any claimed time."""
        self._pay(amount, self._time(anchor, offset), terminal, nonce)

    @rule(
        amount=st.integers(1, 2_000),
        offset=st.integers(-300, 3_600),
        terminal=st.sampled_from(TERMINALS),
        nonce=st.binary(min_size=16, max_size=16),
    )
    def pay_plausibly(self, amount: int, offset: int, terminal: bytes, nonce: bytes) -> None:
        """A modest amount at about the card's time: mostly accepted."""
        self._pay(amount, self._time("mark", offset), terminal, nonce)

    def _pay(self, amount: int, time: int, terminal: bytes, nonce: bytes) -> None:
        m = self.model
        refusal = m.pay_refusal(amount, time)
        before = self.rig.snapshot()
        raw = outcome(lambda: self.rig.client.pay(PayData(amount, time, terminal, nonce)))
        event(f"PAY {'refused ' + SW(raw.sw).name if isinstance(raw, CardError) else 'paid'}")
        if isinstance(raw, CardError):
            assert refusal is not None, f"PAY {amount} at {time} refused with {raw.sw:04X}"
            assert raw.sw == refusal, f"PAY refused with {raw.sw:04X}, expected {refusal:04X}"
            self._refused_unchanged(before)
            return
        assert refusal is None, f"PAY {amount} at {time} accepted, expected {refusal:04X}"
        cred = m.credential
        assert cred is not None
        receipt = open_receipt(self.rig, raw)
        m.atc += 1
        m.paid += amount
        m.spent += amount
        m.time_mark = max(m.time_mark, time)
        assert receipt == Receipt(
            CARD_ID, m.atc, amount, m.balance, CURRENCY, terminal, time, nonce
        )
        m.payments.append(Paid(receipt, cred.expires_at, cred.offline_cap, m.renewals))
        m.record(HistoryKind.PAY, amount, time, terminal)
        if amount > cred.no_pin_limit:
            m.pin_verified = False  # one VERIFY covers one payment that needs the PIN

    @rule(right=st.booleans(), wrong=wrong_pins)
    def verify_pin(self, right: bool, wrong: bytes) -> None:
        m = self.model
        pin = PIN if right else wrong
        before = self.rig.snapshot()
        err = outcome(lambda: self.rig.client.verify_pin(pin))
        if isinstance(err, CardError):
            if pin and not (4 <= len(pin) <= 12 and pin.isdigit()):
                assert err.sw == SW.WRONG_DATA
                self._refused_unchanged(before)
            elif m.pin_tries == 0:
                assert err.sw == SW.AUTH_METHOD_BLOCKED
                self._refused_unchanged(before)
            elif not pin:  # the status query, PIN not verified
                assert err.sw == SW.tries_left(m.pin_tries)
                self._refused_unchanged(before)
            else:
                assert pin != PIN, f"the right PIN refused with {err.sw:04X}"
                m.pin_tries -= 1
                m.pin_verified = False
                assert err.sw == SW.tries_left(m.pin_tries)
                after = self.rig.snapshot()
                assert after.pop(TRIES_CELL) == bytes([m.pin_tries])
                assert before.pop(TRIES_CELL) == bytes([m.pin_tries + 1])
                assert after == before, "a wrong PIN changed more than its try counter"
            return
        if not pin:
            assert m.pin_verified, "empty VERIFY answered 9000 without a verified PIN"
            return
        assert pin == PIN, "a wrong PIN was accepted"
        assert m.pin_tries > 0, "a blocked PIN was accepted"
        m.pin_tries = PIN_TRIES
        m.pin_verified = True

    @rule(
        load=loads,
        anchor=st.sampled_from(["mark", "expiry", "T0"]),
        offset=session_offsets,
        policy=policies,
    )
    def renew(self, load: int, anchor: str, offset: int, policy: Policy) -> None:
        self._renew(self._time(anchor, offset, U32_MAX - MAX_LIFETIME), load, policy)

    @rule()
    def power_reset(self) -> None:
        before = self.rig.snapshot()
        self.rig.card.reset()
        self.rig.client.select()
        self.model.pin_verified = False
        assert self.rig.snapshot() == before

    @rule(offset=st.one_of(st.integers(-DAY, DAY), st.sampled_from([-1, 0, 1])))
    def lock(self, offset: int) -> None:
        m = self.model
        issued_at = self._time("mark", offset)
        order = self.rig.issuer.lock_order(CARD_ID, issued_at)
        before = self.rig.snapshot()
        stale = issued_at <= m.unlock_mark
        err = outcome(lambda: self.rig.client.lock(order))
        if isinstance(err, CardError):
            assert stale, f"a fresh lock order refused with {err.sw:04X}"
            assert err.sw == SW.STALE_OBJECT
            self._refused_unchanged(before)
            return
        assert not stale, "a lock order older than the last unlock was applied"
        if m.state is LifeCycle.LOCKED:
            assert self.rig.snapshot() == before, "locking a locked card changed it"
            return
        m.atc += 1
        m.state = LifeCycle.LOCKED
        m.time_mark = max(m.time_mark, issued_at)
        m.record(HistoryKind.LOCK, 0, issued_at, NO_COUNTERPARTY)

    @rule(offset=session_offsets, unblock=st.booleans())
    def unlock(self, offset: int, unblock: bool) -> None:
        m = self.model
        now = self._time("mark", offset)
        actions = UpdateAction.UNLOCK | (UpdateAction.UNBLOCK_PIN if unblock else UpdateAction(0))
        request = self._begin()
        update = self.rig.issuer.update(CARD_ID, request.card_nonce, now, actions)
        atc = self.rig.client.issuer_update(update)  # never refused on an active or locked card
        m.atc += 1
        assert atc == m.atc
        m.time_mark = now  # the issuer's time sets the mark
        if unblock:
            m.pin_tries = PIN_TRIES
            m.record(HistoryKind.UNBLOCK_PIN, 0, now, NO_COUNTERPARTY)
        # also on an active card: every lock order issued until now is void
        m.state = LifeCycle.ACTIVE
        m.unlock_mark = max(m.unlock_mark, now)
        m.record(HistoryKind.UNLOCK, 0, now, NO_COUNTERPARTY)

    @precondition(lambda self: self.model.pin_tries > 0 and not self.model.pin_verified)
    @rule()
    def verify_then_read_history(self) -> None:
        """Verify the PIN so that the history invariant can read the records."""
        self.verify_pin(True, b"")

    # invariants --------------------------------------------------------------------------------
    @invariant()
    def public_state_matches_the_model(self) -> None:
        m = self.model
        status = self.rig.client.status()
        assert status.atc >= self.last_atc, "the ATC went down"
        self.last_atc = status.atc
        assert status.atc == m.atc
        assert 0 <= status.balance <= MAX_BALANCE
        assert status.balance == m.balance == m.loads - m.paid
        assert status.state == m.state
        assert status.time_mark == m.time_mark
        assert status.offline_spent == m.spent
        assert pin_tries(self.rig) == m.pin_tries
        cred = card_credential(self.rig)
        if m.credential is None:
            assert cred is None
        else:
            assert cred is not None
            assert cred == dataclasses.replace(m.credential, card_nonce=cred.card_nonce)

    @invariant()
    def payments_need_a_live_credential_and_stay_under_the_cap(self) -> None:
        m = self.model
        for p in m.payments:
            assert p.receipt.terminal_time < p.expires_at, "paid at or past expiry"
        since_renewal = [p for p in m.payments if p.renewal == m.renewals]
        spent = sum(p.receipt.amount for p in since_renewal)
        assert spent == m.spent
        if since_renewal:
            assert m.credential is not None
            assert spent <= m.credential.offline_cap, "the offline cap was exceeded"
        for p in since_renewal:
            assert p.offline_cap == since_renewal[0].offline_cap

    @invariant()
    def history_matches_the_model(self) -> None:
        m = self.model
        if not m.pin_verified:
            return
        kept = self.rig.client.history()
        assert kept == m.history[::-1][:HISTORY_SLOTS]
        if m.history:
            assert self.rig.client.read_record(1) == m.history[-1]


def test_purse_state_machine() -> None:
    run_state_machine_as_test(
        PurseMachine,
        settings=settings(
            max_examples=100,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


# plain properties ----------------------------------------------------------------------------
CAP_POLICY = Policy(
    lifetime=DAY, offline_cap=3_000, per_payment_limit=2_000, no_pin_limit=500, tolerance=300
)
PROPERTY_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _fresh_card(policy: Policy, balance: int = 10_000, *, verified: bool = True) -> PurseRig:
    rig = make_rig()
    rig.policy = policy
    rig.renew(T0, load=balance)
    if verified:
        rig.client.verify_pin(PIN)
    return rig


payment_times = st.one_of(
    st.integers(T0 - DAY, T0 + 2 * DAY),
    st.integers(0, U32_MAX),
    st.sampled_from([0, T0 - 301, T0 - 300, T0, T0 + DAY - 1, T0 + DAY, T0 + DAY + 1, U32_MAX]),
)
payment_sequences = st.lists(
    st.tuples(st.one_of(st.integers(0, 2_500), st.integers(0, U32_MAX)), payment_times),
    max_size=25,
)


@PROPERTY_SETTINGS
@given(payments=payment_sequences, verified=st.booleans())
def test_random_payments_respect_the_cap_and_the_expiry(
    payments: list[tuple[int, int]], verified: bool
) -> None:
    rig = _fresh_card(CAP_POLICY, verified=verified)
    expires_at = T0 + CAP_POLICY.lifetime
    accepted: list[Receipt] = []
    for amount, time in payments:
        try:
            raw = rig.pay(amount, time)
        except CardError:
            continue
        receipt = open_receipt(rig, raw)
        assert (receipt.amount, receipt.terminal_time) == (amount, time)
        accepted.append(receipt)
    total = sum(r.amount for r in accepted)
    assert total <= CAP_POLICY.offline_cap
    assert all(r.terminal_time < expires_at for r in accepted)
    assert all(r.amount <= CAP_POLICY.per_payment_limit for r in accepted)
    # one VERIFY covers at most one payment above the no-PIN limit
    above = [r for r in accepted if r.amount > CAP_POLICY.no_pin_limit]
    assert len(above) <= (1 if verified else 0)
    status = rig.client.status()
    assert status.balance == 10_000 - total
    assert status.offline_spent == total
    assert [r.atc for r in accepted] == list(range(3, 3 + len(accepted)))  # funding: 2


@functools.cache
def _expired_card(verified: bool) -> PurseRig:
    """A card whose credential expires at T0 + DAY, its time mark raised to just before."""
    rig = _fresh_card(CAP_POLICY, verified=verified)
    rig.pay(100, T0 + DAY - 1)
    return rig


@PROPERTY_SETTINGS
@given(
    verified=st.booleans(),
    after=st.one_of(st.integers(0, 2 * DAY), st.integers(0, U32_MAX - T0 - DAY), st.just(0)),
    amount=st.one_of(st.integers(0, U32_MAX), st.sampled_from([0, 1, 100, 500, 501, 3_000])),
    terminal=st.binary(min_size=8, max_size=8),
)
def test_expired_credential_refuses_every_payment(
    verified: bool, after: int, amount: int, terminal: bytes
) -> None:
    rig = _expired_card(verified)
    expires_at = T0 + CAP_POLICY.lifetime
    before = rig.snapshot()
    with pytest.raises(CardError) as refused:
        rig.pay(amount, expires_at + after, terminal)
    assert refused.value.sw == SW.CREDENTIAL_EXPIRED
    assert rig.snapshot() == before
    assert rig.client.status().time_mark == expires_at - 1


@PROPERTY_SETTINGS
@given(payments=payment_sequences)
def test_payments_never_push_the_time_mark_past_expiry(payments: list[tuple[int, int]]) -> None:
    policy = Policy(
        lifetime=DAY, offline_cap=100_000, per_payment_limit=100_000, no_pin_limit=100_000
    )
    rig = _fresh_card(policy, balance=MAX_BALANCE)
    expires_at = T0 + policy.lifetime
    mark = T0
    for amount, time in payments:
        err = outcome(functools.partial(rig.pay, amount, time))
        if isinstance(err, CardError):
            if time >= expires_at:
                assert err.sw == SW.CREDENTIAL_EXPIRED
        else:
            assert time < expires_at
            mark = max(mark, time)
        status = rig.client.status()
        assert status.time_mark == mark
        assert status.time_mark < expires_at


# malformed PAY data ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def funded() -> PurseRig:
    return _fresh_card(CAP_POLICY)


_PAY_DATA = PayData(100, T0 + 10, TERMINAL_ID, NONCE).encode()


def _pay_raw(rig: PurseRig, data: bytes) -> bytes:
    return rig.client.channel.transceive(CommandApdu(0x80, 0x54, 0, 0, data, 256))


@pytest.mark.parametrize("length", [*range(len(_PAY_DATA)), len(_PAY_DATA) + 1, 40])
def test_pay_data_of_the_wrong_length_is_refused(funded: PurseRig, length: int) -> None:
    data = (_PAY_DATA + bytes(8))[:length]
    before = funded.snapshot()
    with pytest.raises(CardError) as refused:
        _pay_raw(funded, data)
    assert refused.value.sw == SW.WRONG_LENGTH
    assert funded.snapshot() == before


@settings(max_examples=10, deadline=None, phases=[Phase.explicit, Phase.generate])
@given(new=st.text("0123456789", min_size=8, max_size=12).map(str.encode), cut=st.integers(1, 4))
def test_change_pin_with_a_truncated_new_pin_is_refused(new: bytes, cut: int) -> None:
    rig = make_rig()
    data = ChangePinData(PIN, new).encode()[:-cut]  # the prefix still claims len(new)
    before = rig.snapshot()
    with pytest.raises(CardError) as refused:
        rig.client.channel.transceive(CommandApdu(0x00, 0x24, 0x00, 0x80, data, None))
    assert refused.value.sw == SW.WRONG_DATA
    assert rig.snapshot() == before
