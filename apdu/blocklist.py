"""The issuer's blocklist: a signed, versioned list of per-card lock orders.

File layout (:data:`BLOCKLIST_FILE`)::

    header   uint16 length + a BLOCKLIST envelope whose body is a BlocklistHeader
    added    uint32 count + (uint16 length + LOCK_ORDER envelope) each
    removed  uint32 count + 8-byte card IDs

A *full* list (``base_version`` 0) carries every entry of its version and no
removals; a *delta* from ``base_version`` B carries what was added and
removed between B and ``version``. The header's digest is the SHA-256 of the
added and removed parts, so the issuer's one signature covers them all.

Terminals hold a :class:`TrustedBlocklist`. It accepts a file only when the
envelope verifies under an issuer key the terminal trusts, the digest and
counts match, and the version is newer than the one it holds (a delta must
start exactly at it): a rolled-back, forged or re-signed list is refused and
leaves the held list as it was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import construct as cs
from cryptography.hazmat.primitives.asymmetric import ec

from apdu.purse import CARD_ID_LEN, BlocklistHeader, LockOrder
from apdu.signed import (
    MalformedObject,
    ObjectKind,
    SignedObjectError,
    open_envelope,
    parse_envelope,
)

_DIGEST_DOMAIN = b"purse blocklist entries\x00"

# the entries: what the header's digest covers
_ENTRIES = cs.Struct(
    "added" / cs.PrefixedArray(cs.Int32ub, cs.Prefixed(cs.Int16ub, cs.GreedyBytes)),
    "removed" / cs.PrefixedArray(cs.Int32ub, cs.Bytes(CARD_ID_LEN)),
)
BLOCKLIST_FILE = cs.Struct(
    "header" / cs.Prefixed(cs.Int16ub, cs.GreedyBytes),
    *_ENTRIES.subcons,
    cs.Terminated,
)


class BlocklistRefused(SignedObjectError):
    """A blocklist file that a terminal must not use (the reason is the message)."""


class BlocklistRollback(BlocklistRefused):
    """A list older than the one held, or a delta that does not start where the holder is."""


def _entries_bytes(added: Iterable[bytes], removed: Iterable[bytes]) -> bytes:
    built: bytes = _ENTRIES.build({"added": list(added), "removed": list(removed)})
    return built


def entries_digest(entries: bytes) -> bytes:
    return hashlib.sha256(_DIGEST_DOMAIN + entries).digest()


@dataclass(frozen=True, slots=True)
class BlocklistFile:
    """A parsed (not yet verified) blocklist file."""

    header: bytes  # the signed envelope
    added: tuple[bytes, ...]  # LOCK_ORDER envelopes
    removed: tuple[bytes, ...]  # card IDs

    def encode(self) -> bytes:
        built: bytes = BLOCKLIST_FILE.build(
            {"header": self.header, "added": list(self.added), "removed": list(self.removed)}
        )
        return built

    @classmethod
    def decode(cls, raw: bytes) -> BlocklistFile:
        try:
            parsed: Any = BLOCKLIST_FILE.parse(raw)
        except (cs.ConstructError, ValueError) as err:
            raise MalformedObject(f"not a blocklist file ({type(err).__name__})") from None
        made = cls(
            bytes(parsed.header),
            tuple(bytes(a) for a in parsed.added),
            tuple(bytes(r) for r in parsed.removed),
        )
        if made.encode() != raw:
            raise MalformedObject("not a blocklist file (truncated or not canonical)")
        return made

    def entries_bytes(self) -> bytes:
        return _entries_bytes(self.added, self.removed)


def build_blocklist(
    sign: Callable[[ObjectKind, bytes], bytes],
    version: int,
    base_version: int,
    issued_at: int,
    added: Iterable[bytes],
    removed: Iterable[bytes] = (),
) -> bytes:
    """Assemble and sign a blocklist file; ``sign(kind, body)`` returns an envelope."""
    added_t, removed_t = tuple(added), tuple(removed)
    header = BlocklistHeader(
        version=version,
        base_version=base_version,
        issued_at=issued_at,
        added=len(added_t),
        removed=len(removed_t),
        digest=entries_digest(_entries_bytes(added_t, removed_t)),
    )
    envelope = sign(ObjectKind.BLOCKLIST, header.encode())
    return BlocklistFile(envelope, added_t, removed_t).encode()


def lock_order_card(order: bytes) -> LockOrder:
    """The body of a lock order envelope (its signature is the card's to check)."""
    env = parse_envelope(order)
    if env.kind != ObjectKind.LOCK_ORDER:
        raise MalformedObject("a blocklist entry is not a lock order")
    return LockOrder.decode(env.body)


@dataclass(frozen=True, slots=True)
class VerifiedBlocklist:
    """A blocklist file whose signature, digest and entries have been checked."""

    header: BlocklistHeader
    added: dict[bytes, bytes]  # card ID -> lock order envelope
    removed: tuple[bytes, ...]


def verify_blocklist(
    raw: bytes, issuer_keys: Mapping[bytes, ec.EllipticCurvePublicKey]
) -> VerifiedBlocklist:
    """Parse and verify a blocklist file (no version check: see :class:`TrustedBlocklist`)."""
    parsed = BlocklistFile.decode(raw)
    env = open_envelope(parsed.header, ObjectKind.BLOCKLIST, dict(issuer_keys))
    header = BlocklistHeader.decode(env.body)
    if header.added != len(parsed.added) or header.removed != len(parsed.removed):
        raise BlocklistRefused("entry counts do not match the signed header")
    if entries_digest(parsed.entries_bytes()) != header.digest:
        raise BlocklistRefused("entries do not match the signed digest")
    if header.base_version and header.base_version >= header.version:
        raise BlocklistRefused("a delta must end after it starts")
    if not header.base_version and parsed.removed:
        raise BlocklistRefused("a full list has no removals")
    added: dict[bytes, bytes] = {}
    for order in parsed.added:
        body = lock_order_card(order)
        if body.card_id in added:
            raise BlocklistRefused(f"card {body.card_id.hex().upper()} listed twice")
        if body.list_version > header.version:
            raise BlocklistRefused("a lock order from a later list version")
        added[body.card_id] = order
    return VerifiedBlocklist(header, added, parsed.removed)


@dataclass
class TrustedBlocklist:
    """A terminal's copy of the blocklist: only ever moves forward, only by signed lists."""

    version: int = 0
    issued_at: int = 0
    orders: dict[bytes, bytes] = field(default_factory=dict)

    def __contains__(self, card_id: object) -> bool:
        return card_id in self.orders

    def __len__(self) -> int:
        return len(self.orders)

    def lock_order(self, card_id: bytes) -> bytes | None:
        return self.orders.get(card_id)

    def apply(
        self, raw: bytes, issuer_keys: Mapping[bytes, ec.EllipticCurvePublicKey]
    ) -> BlocklistHeader:
        """Verify a full list or a delta and move to its version; refusals change nothing."""
        checked = verify_blocklist(raw, issuer_keys)
        header = checked.header
        if header.version < self.version:
            raise BlocklistRollback(
                f"list version {header.version} is older than the held {self.version}"
            )
        if header.version == self.version:
            if header.base_version == 0 and checked.added == self.orders:
                return header  # the list already held
            raise BlocklistRollback(f"list version {header.version} is already held")
        if header.base_version:
            if header.base_version != self.version:
                raise BlocklistRollback(
                    f"delta from version {header.base_version}, but version {self.version} is held"
                )
            orders = dict(self.orders)
            for card_id in checked.removed:
                orders.pop(card_id, None)
            orders.update(checked.added)
        else:
            orders = dict(checked.added)
        self.version, self.issued_at, self.orders = header.version, header.issued_at, orders
        return header
