"""Settlement: a terminal's batch of receipts, each checked, each credited once.

A mixed batch credits the merchant exactly the good receipts; forged,
re-signed, duplicated and already settled receipts are refused with their
reason and audited. Every way a receipt or its certificate can be wrong is
refused one by one without touching money. A batch from an unknown terminal
writes nothing but its audit row. Settled receipts lower the shadow balance
so that the card's next online session still passes the clone check, and
once every receipt is settled the shadow balance is the card's balance.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apdu.purse import Receipt, Tag
from apdu.signed import ObjectKind, generate_key, seal
from issuer.registry import ReceiptRecord
from issuer.session import ReplyKind
from issuer.settlement import SettlementItem, SettlementReport
from issuer.signer import IssuerKey
from tests.issuer_kit import DAY, POS_ID, T0, CardHandle, IssuerRig, make_issuer
from tests.test_registry import assert_only_audited

LOAD = 5_000
OTHER_POS = b"POS00002"
CURRENCY = 978


# helpers ----------------------------------------------------------------------------------
def funded(rig: IssuerRig, holder: str, load: int = LOAD) -> CardHandle:
    """A card issued to ``holder`` and loaded online with ``load``."""
    handle = rig.new_card(holder)
    rig.centre.deposit(holder, 50_000)
    rig.session(handle, load=load)
    return handle


def certificate(handle: CardHandle) -> bytes:
    """The card's issuer-signed certificate, as a terminal reads it."""
    return handle.client.get_data(Tag.CERTIFICATE)


def credited(rig: IssuerRig, terminal_id: bytes = POS_ID) -> int:
    terminal = rig.centre.read(lambda tx: tx.terminal(terminal_id))
    assert terminal is not None
    return terminal.credited


def shadow(rig: IssuerRig, handle: CardHandle) -> int:
    return rig.centre.card(handle.card_id).shadow_balance


def settled(rig: IssuerRig) -> list[ReceiptRecord]:
    return rig.centre.read(lambda tx: tx.receipts())


def audit_events(rig: IssuerRig) -> list[str]:
    return [entry.event for entry in rig.centre.audit_log()]


def reasons(report: SettlementReport) -> list[str]:
    return [result.reason for result in report.results]


def flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def receipt_body(card_id: bytes, amount: int = 1_000, terminal_id: bytes = POS_ID) -> bytes:
    return Receipt(card_id, 99, amount, 0, CURRENCY, terminal_id, T0, bytes(16)).encode()


@dataclass
class Impostor:
    """A key pair the registry never saw, and a certificate binding it to a card ID."""

    certificate: bytes
    key: IssuerKey  # used only as a P-256 key pair here

    def receipt(self, card_id: bytes) -> bytes:
        return seal(ObjectKind.RECEIPT, card_id, receipt_body(card_id), self.key.private)

    def item(self, card_id: bytes) -> SettlementItem:
        return SettlementItem(self.receipt(card_id), self.certificate)


def impostor(signer: IssuerKey, card_id: bytes) -> Impostor:
    key = IssuerKey.generate()
    return Impostor(signer.certificate(card_id, key.public, T0, T0 + DAY), key)


@pytest.fixture
def rig(tmp_path: Path) -> IssuerRig:
    made = make_issuer(tmp_path)
    made.centre.register_terminal(OTHER_POS, "Other Shop")
    return made


# a mixed batch ------------------------------------------------------------------------------
def test_a_mixed_batch_credits_exactly_the_good_receipts(rig: IssuerRig) -> None:
    alice, bob = funded(rig, "Alice"), funded(rig, "Bob")
    earlier = alice.item(alice.pay(50, T0 + 30))
    first = rig.centre.settle(POS_ID, [earlier])
    assert reasons(first) == ["accepted"]

    a1 = alice.item(alice.pay(100, T0 + 60))
    a2 = alice.item(alice.pay(200, T0 + 90))
    b1 = bob.item(bob.pay(300, T0 + 120))
    flipped = SettlementItem(flip_last(a2.receipt), a2.certificate)
    foreign_key = generate_key()
    resigned = SettlementItem(
        seal(ObjectKind.RECEIPT, alice.card_id, receipt_body(alice.card_id), foreign_key),
        a1.certificate,
    )
    shadows = shadow(rig, alice), shadow(rig, bob)
    events = len(audit_events(rig))

    report = rig.centre.settle(POS_ID, [a1, b1, flipped, resigned, a1, earlier, a2])

    assert reasons(report) == [
        "accepted",
        "accepted",
        "receipt_bad_signature",
        "receipt_bad_signature",
        "duplicate",
        "duplicate",
        "accepted",
    ]
    assert [(r.card_id, r.amount) for r in report.accepted] == [
        (alice.card_id, 100),
        (bob.card_id, 300),
        (alice.card_id, 200),
    ]
    assert report.credited == 600
    assert credited(rig) == 50 + 600
    assert credited(rig, OTHER_POS) == 0
    assert (shadow(rig, alice), shadow(rig, bob)) == (shadows[0] - 300, shadows[1] - 300)
    records = {(r.card_id, r.atc): r for r in settled(rig)}
    assert len(records) == 4
    for result, item in zip(report.accepted, (a1, b1, a2), strict=True):
        record = records[(result.card_id, result.atc)]
        assert (record.raw, record.batch_id, record.amount) == (
            item.receipt,
            report.batch_id,
            result.amount,
        )
    new_events = audit_events(rig)[events:]
    assert new_events == ["receipt_refused"] * 4 + ["batch_settled"]
    details = [entry.detail for entry in rig.centre.audit_log()[events:]]
    for index, detail in zip((2, 3, 4, 5), details[:4], strict=True):
        assert f"batch {report.batch_id} item {index}" in detail
    assert "3 accepted, 4 refused, 600 credited" in details[-1]


def test_a_batch_sent_again_credits_nothing_more(rig: IssuerRig) -> None:
    alice = funded(rig, "Alice")
    items = [alice.item(alice.pay(amount, T0 + 60 * amount)) for amount in (10, 20, 30)]
    assert rig.centre.settle(POS_ID, items).credited == 60
    again = rig.centre.settle(POS_ID, items)
    assert reasons(again) == ["duplicate"] * 3
    assert again.credited == 0
    assert credited(rig) == 60
    assert shadow(rig, alice) == -60  # the load is confirmed at the next session


# receipts refused one by one -----------------------------------------------------------------
def wrong_terminal(rig: IssuerRig, alice: CardHandle, bob: CardHandle) -> SettlementItem:
    return alice.item(alice.pay(100, T0 + 60, terminal_id=OTHER_POS))


def foreign_issuer_certificate(
    rig: IssuerRig, alice: CardHandle, bob: CardHandle
) -> SettlementItem:
    card = rig.centre.card(alice.card_id)
    foreign = IssuerKey.generate().certificate(card.card_id, card.public_key, T0, T0 + DAY)
    return SettlementItem(alice.pay(100, T0 + 60), foreign)


def certificate_of_another_card(
    rig: IssuerRig, alice: CardHandle, bob: CardHandle
) -> SettlementItem:
    return SettlementItem(alice.pay(100, T0 + 60), certificate(bob))


def certificate_not_registered(
    rig: IssuerRig, alice: CardHandle, bob: CardHandle
) -> SettlementItem:
    """An issuer-signed certificate for a key the registry does not hold for this card."""
    return impostor(rig.centre.keys.current, alice.card_id).item(alice.card_id)


def unknown_card(rig: IssuerRig, alice: CardHandle, bob: CardHandle) -> SettlementItem:
    return impostor(rig.centre.keys.current, b"P9999999").item(b"P9999999")


def garbage_receipt(rig: IssuerRig, alice: CardHandle, bob: CardHandle) -> SettlementItem:
    return alice.item(b"\x00" * 40)


def garbage_certificate(rig: IssuerRig, alice: CardHandle, bob: CardHandle) -> SettlementItem:
    return SettlementItem(alice.pay(100, T0 + 60), b"PS\x01\x01garbage")


def truncated_receipt(rig: IssuerRig, alice: CardHandle, bob: CardHandle) -> SettlementItem:
    return alice.item(alice.pay(100, T0 + 60)[:-1])


def certificate_with_a_bad_signature(
    rig: IssuerRig, alice: CardHandle, bob: CardHandle
) -> SettlementItem:
    item = alice.item(alice.pay(100, T0 + 60))
    return SettlementItem(item.receipt, flip_last(item.certificate))


def receipt_in_the_certificate_slot(
    rig: IssuerRig, alice: CardHandle, bob: CardHandle
) -> SettlementItem:
    receipt = alice.pay(100, T0 + 60)
    return SettlementItem(receipt, receipt)


def certificate_in_the_receipt_slot(
    rig: IssuerRig, alice: CardHandle, bob: CardHandle
) -> SettlementItem:
    cert = certificate(alice)
    return SettlementItem(cert, cert)


def receipt_body_that_does_not_parse(
    rig: IssuerRig, alice: CardHandle, bob: CardHandle
) -> SettlementItem:
    """A well-signed envelope whose body is not a Receipt (signed by the impostor's key)."""
    fake = impostor(rig.centre.keys.current, alice.card_id)
    envelope = seal(ObjectKind.RECEIPT, alice.card_id, b"not a receipt", fake.key.private)
    return SettlementItem(envelope, fake.certificate)


BAD_ITEMS: dict[str, tuple[Callable[[IssuerRig, CardHandle, CardHandle], SettlementItem], str]] = {
    "receipt for another terminal": (wrong_terminal, "wrong_terminal"),
    "certificate of a foreign issuer": (
        foreign_issuer_certificate,
        "certificate_unknown_issuer_key",
    ),
    # the receipt is signed under its card's ID, which the other card's certificate does not name
    "certificate of another card": (certificate_of_another_card, "receipt_unknown_issuer_key"),
    "certificate of an unregistered key": (
        certificate_not_registered,
        "certificate_not_registered",
    ),
    "card not registered": (unknown_card, "unknown_card"),
    "garbage receipt": (garbage_receipt, "receipt_malformed"),
    "truncated receipt": (truncated_receipt, "receipt_malformed"),
    "garbage certificate": (garbage_certificate, "certificate_malformed"),
    "certificate with a bad signature": (
        certificate_with_a_bad_signature,
        "certificate_bad_signature",
    ),
    "receipt as certificate": (receipt_in_the_certificate_slot, "certificate_wrong_kind"),
    "certificate as receipt": (certificate_in_the_receipt_slot, "receipt_wrong_kind"),
    "receipt body does not parse": (receipt_body_that_does_not_parse, "receipt_malformed"),
}


@pytest.mark.parametrize("case", list(BAD_ITEMS))
def test_a_bad_item_is_refused_and_moves_no_money(rig: IssuerRig, case: str) -> None:
    alice, bob = funded(rig, "Alice"), funded(rig, "Bob")
    make, reason = BAD_ITEMS[case]
    bad = make(rig, alice, bob)
    good = bob.item(bob.pay(70, T0 + 300))
    before = shadow(rig, alice), shadow(rig, bob)

    report = rig.centre.settle(POS_ID, [bad, good])

    assert reasons(report) == [reason, "accepted"]
    assert report.refused[0].amount == 0
    assert credited(rig) == 70
    assert (shadow(rig, alice), shadow(rig, bob)) == (before[0], before[1] - 70)
    assert [(r.card_id, r.amount) for r in settled(rig)] == [(bob.card_id, 70)]
    assert audit_events(rig)[-2:] == ["receipt_refused", "batch_settled"]


def test_an_unknown_terminal_writes_only_its_audit_row(rig: IssuerRig) -> None:
    alice = funded(rig, "Alice")
    item = alice.item(alice.pay(100, T0 + 60))
    assert_only_audited(rig, "unknown_terminal", lambda: rig.centre.settle(b"POS99999", [item]))
    assert rig.centre.settle(POS_ID, [item]).credited == 100  # still unsettled: accepted now


def test_cards_of_a_rotated_key_still_settle(rig: IssuerRig) -> None:
    alice = funded(rig, "Alice")
    rig.centre.rotate_key()
    bob = funded(rig, "Bob")
    items = [alice.item(alice.pay(10, T0 + 60)), bob.item(bob.pay(20, T0 + 60))]
    assert reasons(rig.centre.settle(POS_ID, items)) == ["accepted", "accepted"]


# settlement and the shadow balance ----------------------------------------------------------
def test_the_next_session_succeeds_and_the_shadow_balance_is_the_card_balance(
    rig: IssuerRig,
) -> None:
    alice = funded(rig, "Alice")
    payments = enumerate((100, 250, 40), start=1)
    items = [alice.item(alice.pay(amount, T0 + 60 * n)) for n, amount in payments]
    rig.centre.settle(POS_ID, items)
    assert shadow(rig, alice) == -390  # the load waits for the card to confirm it
    reply = rig.session(alice, load=1_000)
    assert reply.kind is ReplyKind.UPDATE
    assert shadow(rig, alice) == LOAD - 390
    rig.session(alice)  # confirms the second load
    assert shadow(rig, alice) == alice.client.status().balance == LOAD + 1_000 - 390


def test_a_session_between_payment_and_settlement_succeeds(rig: IssuerRig) -> None:
    alice = funded(rig, "Alice")
    early = alice.item(alice.pay(300, T0 + 60))
    assert rig.session(alice).kind is ReplyKind.UPDATE  # the receipt is not settled yet
    assert shadow(rig, alice) == LOAD
    late = alice.item(alice.pay(200, T0 + 120))
    rig.centre.settle(POS_ID, [late])  # the later receipt first
    assert rig.session(alice).kind is ReplyKind.UPDATE
    rig.centre.settle(POS_ID, [early])
    assert shadow(rig, alice) == alice.client.status().balance == LOAD - 500
    assert rig.session(alice).kind is ReplyKind.UPDATE


STEPS = st.lists(st.sampled_from(["pay", "pay", "session", "settle some"]), max_size=12)


@settings(max_examples=15, deadline=None)
@given(steps=STEPS, seed=st.integers(0, 2**16))
def test_any_interleaving_of_payments_sessions_and_settlements(
    tmp_path_factory: pytest.TempPathFactory, steps: list[str], seed: int
) -> None:
    """Sessions never suspect a clone; in the end shadow, card balance and credits agree."""
    chance = random.Random(seed)
    rig = make_issuer(tmp_path_factory.mktemp("issuer"))
    try:
        alice = funded(rig, "Alice")
        unsettled: list[SettlementItem] = []
        paid = 0
        for number, step in enumerate(steps, start=1):
            rig.clock.advance(60)
            balance = alice.client.status().balance
            if step == "pay" and balance:
                amount = chance.randint(1, min(balance, 500))
                unsettled.append(alice.item(alice.pay(amount, T0 + 60 * number)))
                paid += amount
            elif step == "session":
                load = chance.choice([0, 100])
                assert rig.session(alice, load=load).kind is ReplyKind.UPDATE
            elif step == "settle some":
                chance.shuffle(unsettled)
                cut = chance.randint(0, len(unsettled))
                report = rig.centre.settle(POS_ID, unsettled[:cut])
                assert len(report.accepted) == cut
                unsettled = unsettled[cut:]
        rig.centre.settle(POS_ID, unsettled)
        rig.session(alice)  # confirms the last load, if any
        assert shadow(rig, alice) == alice.client.status().balance
        assert credited(rig) == paid
    finally:
        rig.centre.close()
