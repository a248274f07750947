"""Offline checks a terminal makes: the card's certificate and its receipts.

A terminal trusts the issuer keys it was given at sync, and through them
the card certificate it reads from the card; the certificate's public key
then verifies each receipt. Nothing the card says is believed unless it is
signed.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric import ec

from apdu.purse import CardCertificate, PayData, Receipt
from apdu.signed import (
    ObjectKind,
    SignedObjectError,
    open_envelope,
    public_key_from_bytes,
)
from terminal.errors import Declined, TerminalError


def check_certificate(
    raw: bytes, card_id: bytes, keys: Mapping[bytes, ec.EllipticCurvePublicKey], now: int
) -> CardCertificate:
    """The card's certificate, verified and valid now, for the card ID it reported."""
    try:
        cert = CardCertificate.decode(
            open_envelope(raw, ObjectKind.CARD_CERTIFICATE, dict(keys)).body
        )
    except SignedObjectError as err:
        raise Declined("not_genuine", f"the card's certificate does not verify ({err})") from None
    if cert.card_id != card_id:
        raise Declined("not_genuine", "the card's certificate is for another card")
    if not cert.issued_at <= now < cert.expires_at:
        raise Declined("certificate_expired", "the card's certificate is not valid now")
    return cert


def check_receipt(raw: bytes, cert: CardCertificate, asked: PayData) -> Receipt:
    """A receipt signed by this card, for exactly the payment the terminal asked."""
    try:
        key = public_key_from_bytes(cert.public_key)
        receipt = Receipt.decode(open_envelope(raw, ObjectKind.RECEIPT, {cert.card_id: key}).body)
    except SignedObjectError as err:
        raise TerminalError(f"the card's receipt does not verify ({err})") from None
    expected = (cert.card_id, asked.amount, asked.terminal_id, asked.terminal_time)
    got = (receipt.card_id, receipt.amount, receipt.terminal_id, receipt.terminal_time)
    if got != expected or receipt.terminal_nonce != asked.terminal_nonce:
        raise TerminalError("the card's receipt is not for this payment")
    return receipt
