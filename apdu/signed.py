"""One envelope for every signed object of the purse protocol.

Layout (:data:`ENVELOPE`)::

    magic      "PS"            2 bytes
    version    01              1 byte
    kind       ObjectKind      1 byte    domain separation: what the body is
    key_id     8 bytes                   issuer key ID, or the card ID for card-signed objects
    body       uint16 length + bytes     the object, declared in :mod:`apdu.purse`
    signature  64 bytes                  ECDSA P-256 / SHA-256, raw r || s

The signature covers every byte before it, kind and key ID included, so a
receipt can never pass as a credential: :func:`open_envelope` checks the kind
before it looks at the signature, and the kind is signed.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import construct as cs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from apdu.errors import WireError

MAGIC = b"PS"
VERSION = 1
KEY_ID_LEN = 8
SIGNATURE_LEN = 64
PUBLIC_KEY_LEN = 65  # uncompressed SEC1 point: 04 || X || Y
_CURVE = ec.SECP256R1()
_ECDSA = ec.ECDSA(hashes.SHA256())


class ObjectKind(IntEnum):
    """The type tag of a signed object."""

    CARD_CERTIFICATE = 0x01
    CREDENTIAL = 0x02
    ISSUER_UPDATE = 0x03
    RECEIPT = 0x04
    LOCK_ORDER = 0x05
    ONLINE_REQUEST = 0x06
    BLOCKLIST = 0x07
    TRANSFER_REQUEST = 0x08  # card-signed, by the payee
    TRANSFER_VALUE = 0x09  # card-signed, by the payer
    TRANSFER_ACK = 0x0A  # card-signed, by the payee


ENVELOPE = cs.Struct(
    "magic" / cs.Const(MAGIC),
    "version" / cs.Const(VERSION, cs.Int8ub),
    "kind" / cs.Int8ub,
    "key_id" / cs.Bytes(KEY_ID_LEN),
    "body" / cs.Prefixed(cs.Int16ub, cs.GreedyBytes),
    "signature" / cs.Bytes(SIGNATURE_LEN),
    cs.Terminated,
)
_COMPILED = ENVELOPE.compile()
# every byte but the body: magic, version, kind, key ID, body length, signature
_OVERHEAD = len(MAGIC) + 1 + 1 + KEY_ID_LEN + 2 + SIGNATURE_LEN


class SignedObjectError(WireError):
    """A signed object that is malformed, of the wrong kind, or badly signed."""


class MalformedObject(SignedObjectError):
    """Bytes that do not parse as the envelope or body they claim to be."""


class WrongKind(SignedObjectError):
    """A valid envelope of another kind than the one expected."""


class UnknownKey(SignedObjectError):
    """Signed with a key ID the verifier does not hold."""


class BadSignature(SignedObjectError):
    """The signature does not verify over the envelope's bytes."""


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: int
    key_id: bytes
    body: bytes
    signature: bytes
    signed_bytes: bytes

    def to_bytes(self) -> bytes:
        return self.signed_bytes + self.signature


def parse_envelope(raw: bytes) -> Envelope:
    try:
        parsed: Any = _COMPILED.parse(raw)
    except (cs.ConstructError, ValueError, struct.error) as err:
        raise MalformedObject(f"not a signed object ({type(err).__name__})") from None
    body = parsed.body
    # construct's compiled Bytes/Prefixed do not check short reads: the sizes must add up
    if len(raw) != _OVERHEAD + len(body):
        raise MalformedObject("not a signed object (truncated)")
    return Envelope(
        parsed.kind,
        parsed.key_id,
        body,
        parsed.signature,
        raw[:-SIGNATURE_LEN],
    )


def _to_sign(kind: int, key_id: bytes, body: bytes) -> bytes:
    if len(key_id) != KEY_ID_LEN:
        raise ValueError("a key ID has 8 bytes")
    built: bytes = _COMPILED.build(
        {"kind": kind, "key_id": key_id, "body": body, "signature": bytes(SIGNATURE_LEN)}
    )
    return built[:-SIGNATURE_LEN]


def seal(kind: ObjectKind, key_id: bytes, body: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """Sign ``body`` as an object of ``kind``; returns the envelope bytes."""
    signed = _to_sign(kind, key_id, body)
    r, s = decode_dss_signature(key.sign(signed, _ECDSA))
    return signed + r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify_envelope(env: Envelope, public_key: ec.EllipticCurvePublicKey) -> None:
    r = int.from_bytes(env.signature[:32], "big")
    s = int.from_bytes(env.signature[32:], "big")
    try:
        public_key.verify(encode_dss_signature(r, s), env.signed_bytes, _ECDSA)
    except InvalidSignature:
        raise BadSignature("signature does not verify") from None


def open_envelope(
    raw: bytes,
    kind: ObjectKind,
    keys: dict[bytes, ec.EllipticCurvePublicKey],
) -> Envelope:
    """Parse, check the kind, find the key, verify: the body may then be used."""
    env = parse_envelope(raw)
    if env.kind != kind:
        raise WrongKind(f"expected a {kind.name}, got kind {env.kind:02X}")
    key = keys.get(env.key_id)
    if key is None:
        raise UnknownKey(f"no key with ID {env.key_id.hex().upper()}")
    verify_envelope(env, key)
    return env


# keys ------------------------------------------------------------------------
def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(_CURVE)


def private_key_from_scalar(scalar: bytes) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(scalar, "big"), _CURVE)


def private_scalar(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_numbers().private_value.to_bytes(32, "big")


def public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        encoding=serialization.Encoding.X962,
        format=serialization.PublicFormat.UncompressedPoint,
    )


def public_key_from_bytes(raw: bytes) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from its uncompressed point; MalformedObject if off-curve."""
    if len(raw) != PUBLIC_KEY_LEN or raw[0] != 0x04:
        raise MalformedObject("a public key is 65 bytes starting with 04")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, raw)
    except ValueError:
        raise MalformedObject("public key is not a point on P-256") from None


def public_keys(points: Mapping[bytes, bytes]) -> dict[bytes, ec.EllipticCurvePublicKey]:
    """Key ID -> public point, as keys a verifier can use (MalformedObject if one is bad)."""
    return {key_id: public_key_from_bytes(point) for key_id, point in points.items()}


def key_id_of(public: bytes) -> bytes:
    """The 8-byte key ID of an issuer public key: SHA-256 of its point, truncated."""
    return hashlib.sha256(b"purse key id\x00" + public).digest()[:KEY_ID_LEN]
