"""Settlement: a terminal's batch of receipts, checked one by one, credited once.

Each receipt travels with the card certificate the terminal read. A receipt
is accepted when the certificate verifies under an issuer key, names a
registered card with that public key, the receipt is card-signed with it,
names this terminal and the card's currency, and its (card ID, ATC) was
never settled before. A refused receipt does not stop the batch: the report
says, per receipt, what was accepted and what was refused and why. The whole
batch is one transaction: a failure part-way leaves the registry as it was,
and the terminal sends the batch again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from apdu.purse import CardCertificate, Receipt, printable_id
from apdu.signed import (
    BadSignature,
    MalformedObject,
    ObjectKind,
    SignedObjectError,
    UnknownKey,
    WrongKind,
    open_envelope,
    public_key_from_bytes,
    public_keys,
)
from issuer.errors import Refused
from issuer.keys import KeyRing
from issuer.registry import ReceiptRecord, RegistryTx


@dataclass(frozen=True, slots=True)
class SettlementItem:
    receipt: bytes  # the card-signed Receipt envelope
    certificate: bytes  # the card's issuer-signed certificate, as the terminal read it


@dataclass(frozen=True, slots=True)
class ItemResult:
    index: int
    accepted: bool
    reason: str  # "accepted" or a short refusal code
    card_id: bytes = b""
    atc: int = 0
    amount: int = 0


@dataclass(frozen=True, slots=True)
class SettlementReport:
    batch_id: int
    terminal_id: bytes
    results: tuple[ItemResult, ...]

    @property
    def accepted(self) -> list[ItemResult]:
        return [r for r in self.results if r.accepted]

    @property
    def refused(self) -> list[ItemResult]:
        return [r for r in self.results if not r.accepted]

    @property
    def credited(self) -> int:
        return sum(r.amount for r in self.accepted)


class _ItemRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_ENVELOPE_REASONS: dict[type[SignedObjectError], str] = {
    WrongKind: "wrong_kind",
    UnknownKey: "unknown_issuer_key",
    BadSignature: "bad_signature",
    MalformedObject: "malformed",
}


def _opened(
    raw: bytes, kind: ObjectKind, keys: dict[bytes, ec.EllipticCurvePublicKey], what: str
) -> bytes:
    try:
        return open_envelope(raw, kind, keys).body
    except SignedObjectError as err:
        raise _ItemRefused(f"{what}_{_ENVELOPE_REASONS.get(type(err), 'malformed')}") from None


def _check_item(
    tx: RegistryTx,
    issuer_keys: dict[bytes, ec.EllipticCurvePublicKey],
    terminal_id: bytes,
    item: SettlementItem,
    seen: set[tuple[bytes, int]],
) -> Receipt:
    cert_body = _opened(item.certificate, ObjectKind.CARD_CERTIFICATE, issuer_keys, "certificate")
    try:
        cert = CardCertificate.decode(cert_body)
        card_key = public_key_from_bytes(cert.public_key)
    except MalformedObject:
        raise _ItemRefused("certificate_malformed") from None
    body = _opened(item.receipt, ObjectKind.RECEIPT, {cert.card_id: card_key}, "receipt")
    try:
        receipt = Receipt.decode(body)
    except MalformedObject:
        raise _ItemRefused("receipt_malformed") from None
    if receipt.card_id != cert.card_id:
        raise _ItemRefused("receipt_wrong_card")
    card = tx.card(receipt.card_id)
    if card is None:
        raise _ItemRefused("unknown_card")
    if card.public_key != cert.public_key:
        raise _ItemRefused("certificate_not_registered")
    if receipt.terminal_id != terminal_id:
        raise _ItemRefused("wrong_terminal")
    if receipt.currency != card.currency:
        raise _ItemRefused("wrong_currency")
    key = (receipt.card_id, receipt.atc)
    if key in seen or tx.receipt_seen(*key):
        raise _ItemRefused("duplicate")
    seen.add(key)
    return receipt


def settle(
    tx: RegistryTx, keys: KeyRing, now: int, terminal_id: bytes, items: Sequence[SettlementItem]
) -> SettlementReport:
    if tx.terminal(terminal_id) is None:
        raise Refused("unknown_terminal", f"terminal {printable_id(terminal_id)} is not registered")
    issuer_keys = public_keys(keys.public_keys())
    batch_id = tx.add_batch(terminal_id, now)
    seen: set[tuple[bytes, int]] = set()
    results: list[ItemResult] = []
    for index, item in enumerate(items):
        try:
            receipt = _check_item(tx, issuer_keys, terminal_id, item, seen)
        except _ItemRefused as refused:
            results.append(ItemResult(index, False, refused.reason))
            tx.audit(now, "receipt_refused", None, f"batch {batch_id} item {index}: {refused}")
            continue
        card = tx.card(receipt.card_id)
        assert card is not None  # checked above, same transaction
        tx.add_receipt(
            ReceiptRecord(
                receipt.card_id,
                receipt.atc,
                receipt.amount,
                receipt.balance,
                terminal_id,
                receipt.terminal_time,
                batch_id,
                item.receipt,
            )
        )
        card.shadow_balance -= receipt.amount
        if receipt.atc > card.last_atc:
            card.last_atc, card.last_balance = receipt.atc, receipt.balance
        tx.save_card(card)
        tx.credit_terminal(terminal_id, receipt.amount)
        results.append(
            ItemResult(index, True, "accepted", receipt.card_id, receipt.atc, receipt.amount)
        )
    report = SettlementReport(batch_id, terminal_id, tuple(results))
    tx.finish_batch(batch_id, len(report.accepted), len(report.refused), report.credited)
    tx.audit(
        now,
        "batch_settled",
        None,
        f"batch {batch_id} from {printable_id(terminal_id)}: {len(report.accepted)} accepted, "
        f"{len(report.refused)} refused, {report.credited} credited",
    )
    return report
