"""The issuer's signing key and the objects it signs for cards.

This is the minimal signer the card needs to be tested against: it builds
card certificates, credentials, issuer updates and lock orders. The issuer
centre (registry, policy, blocklist) is built on top of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from apdu.purse import CardCertificate, Credential, IssuerUpdate, LockOrder, UpdateAction
from apdu.signed import ObjectKind, generate_key, key_id_of, public_bytes, seal


@dataclass(frozen=True)
class IssuerKey:
    """An issuer key pair and its 8-byte key ID."""

    private: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> IssuerKey:
        return cls(generate_key())

    @property
    def public(self) -> bytes:
        return public_bytes(self.private.public_key())

    @property
    def key_id(self) -> bytes:
        return key_id_of(self.public)

    def sign(self, kind: ObjectKind, body: bytes) -> bytes:
        return seal(kind, self.key_id, body, self.private)

    def certificate(
        self, card_id: bytes, card_public: bytes, issued_at: int, expires_at: int
    ) -> bytes:
        body = CardCertificate(card_id, card_public, issued_at, expires_at).encode()
        return self.sign(ObjectKind.CARD_CERTIFICATE, body)

    def credential(self, cred: Credential) -> bytes:
        return self.sign(ObjectKind.CREDENTIAL, cred.encode())

    def update(
        self,
        card_id: bytes,
        card_nonce: bytes,
        issuer_time: int,
        actions: UpdateAction,
        *,
        load_amount: int = 0,
        credential: bytes = b"",
        restore_amount: int = 0,
        log_cleared: int = 0,
    ) -> bytes:
        body = IssuerUpdate(
            card_id,
            card_nonce,
            issuer_time,
            actions,
            load_amount,
            credential,
            restore_amount,
            log_cleared,
        )
        return self.sign(ObjectKind.ISSUER_UPDATE, body.encode())

    def lock_order(
        self, card_id: bytes, issued_at: int, reason: int = 1, list_version: int = 0
    ) -> bytes:
        body = LockOrder(card_id, issued_at, reason, list_version).encode()
        return self.sign(ObjectKind.LOCK_ORDER, body)

    # files -------------------------------------------------------------------------
    def to_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(cls, pem: bytes) -> IssuerKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("not a P-256 private key")
        return cls(key)
