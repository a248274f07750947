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

A list may name a million cards, so the bulk is not handled entry by entry:
the file is walked by its length prefixes (the layout :data:`BLOCKLIST_FILE`
declares), the digest is one SHA-256 pass over the file's own bytes, and every
entry is checked to be a lock order of this list by comparing the bytes a lock
order has at fixed places (a lock order envelope has a fixed size), column by
column. Anything that does not look plainly right takes the entry-by-entry
path, which says what is wrong. A terminal holds the lock orders as
:class:`LockOrders`: the card IDs as sorted 64-bit integers and, beside each,
where its order lies in the file, whose bytes it keeps (16 bytes per card).
"""

from __future__ import annotations

import hashlib
import heapq
import operator
import sys
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import construct as cs
from cryptography.hazmat.primitives.asymmetric import ec

from apdu.purse import CARD_ID_LEN, BlocklistHeader, LockOrder
from apdu.signed import (
    KEY_ID_LEN,
    MAGIC,
    SIGNATURE_LEN,
    VERSION,
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
_PREFIX = int(cs.Int16ub.sizeof())  # the length of the header and of each added entry
_COUNT = int(cs.Int32ub.sizeof())  # the number of added entries, of removed card IDs


def _field_at(struct: Any, name: str) -> int:
    """Where a field of a fixed-size construct Struct starts."""
    at = 0
    for sub in struct.subcons:
        if sub.name == name:
            return at
        at += int(sub.sizeof())
    raise ValueError(name)


# A lock order envelope has a fixed size: magic, version, kind, key ID, body length,
# the LockOrder body, signature (apdu.signed.ENVELOPE). In the file each follows its
# uint16 length: one *record*.
_ORDER_HEAD = MAGIC + bytes((VERSION, ObjectKind.LOCK_ORDER))
_ORDER_BODY_LEN = int(LockOrder.STRUCT.sizeof())
_ORDER_BODY_AT = len(_ORDER_HEAD) + KEY_ID_LEN + _PREFIX
ORDER_LEN = _ORDER_BODY_AT + _ORDER_BODY_LEN + SIGNATURE_LEN
"""The size of every lock order envelope (95 bytes)."""
_RECORD = _PREFIX + ORDER_LEN
_CARD_ID_AT = _PREFIX + _ORDER_BODY_AT + _field_at(LockOrder.STRUCT, "card_id")
_LIST_VERSION_AT = _PREFIX + _ORDER_BODY_AT + _field_at(LockOrder.STRUCT, "list_version")
# the bytes every record of a lock order has: (place in the record, byte)
_RECORD_TEMPLATE = (
    ORDER_LEN.to_bytes(_PREFIX, "big")
    + _ORDER_HEAD
    + bytes(KEY_ID_LEN)
    + _ORDER_BODY_LEN.to_bytes(_PREFIX, "big")
)
_KEY_ID_AT = _PREFIX + len(_ORDER_HEAD)
_RECORD_FIXED = tuple(
    (at, byte)
    for at, byte in enumerate(_RECORD_TEMPLATE)
    if not _KEY_ID_AT <= at < _KEY_ID_AT + KEY_ID_LEN
)
_U64 = "Q"
_U32 = "I" if array("I").itemsize == 4 else "L"


class BlocklistRefused(SignedObjectError):
    """A blocklist file that a terminal must not use (the reason is the message)."""


class BlocklistRollback(BlocklistRefused):
    """A list older than the one held, or a delta that does not start where the holder is."""


# building --------------------------------------------------------------------------------
def _prefixed(entries: tuple[bytes, ...]) -> bytes:
    sizes = set(map(len, entries))
    if len(sizes) == 1:  # the usual case: every entry a lock order
        prefix = sizes.pop().to_bytes(_PREFIX, "big")
        return prefix + prefix.join(entries)
    return b"".join(len(entry).to_bytes(_PREFIX, "big") + entry for entry in entries)


def _entries_bytes(added: Iterable[bytes], removed: Iterable[bytes]) -> bytes:
    """The entries as :data:`_ENTRIES` builds them (which is used, and raises, for odd input)."""
    added_t, removed_t = tuple(added), tuple(removed)
    try:
        if any(len(card_id) != CARD_ID_LEN for card_id in removed_t):
            raise ValueError("a removed card ID has 8 bytes")
        return b"".join(
            (
                len(added_t).to_bytes(_COUNT, "big"),
                _prefixed(added_t),
                len(removed_t).to_bytes(_COUNT, "big"),
                *removed_t,
            )
        )
    except (TypeError, ValueError, OverflowError):
        built: bytes = _ENTRIES.build({"added": list(added_t), "removed": list(removed_t)})
        return built


def entries_digest(entries: bytes | memoryview) -> bytes:
    digest = hashlib.sha256(_DIGEST_DOMAIN)
    digest.update(entries)
    return digest.digest()


# reading -----------------------------------------------------------------------------------
def _malformed(why: str) -> MalformedObject:
    return MalformedObject(f"not a blocklist file ({why})")


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where the parts of a blocklist file lie: its walk by the length prefixes."""

    header: bytes
    entries_at: int  # the first byte of the entries: what the digest covers
    added_at: int  # the first added entry's length prefix
    added_count: int
    stride: int  # the size of every added record when they all have the same, else 0
    varied: tuple[bytes, ...]  # the added entries when their sizes differ
    removed: tuple[bytes, ...]

    def added(self, raw: bytes) -> tuple[bytes, ...]:
        if not self.stride:
            return self.varied
        stride, first = self.stride, self.added_at
        starts = range(first, first + self.added_count * stride, stride)
        return tuple(raw[at + _PREFIX : at + stride] for at in starts)


def _scan(raw: bytes) -> _Layout:
    """Walk a file by its lengths and counts; MalformedObject unless it is exactly one file."""
    end = len(raw)
    if end < _PREFIX:
        raise _malformed("truncated")
    at = _PREFIX + int.from_bytes(raw[:_PREFIX], "big")
    if at + _COUNT > end:
        raise _malformed("truncated")
    header, entries_at = raw[_PREFIX:at], at
    count = int.from_bytes(raw[at : at + _COUNT], "big")
    at += _COUNT
    added_at, stride = at, 0
    varied: tuple[bytes, ...] = ()
    if count:
        if at + _PREFIX > end:
            raise _malformed("truncated")
        stride = _PREFIX + int.from_bytes(raw[at : at + _PREFIX], "big")
        stop = at + count * stride
        if stop <= end and all(
            raw[at + i : stop : stride].count(raw[at + i]) == count for i in range(_PREFIX)
        ):
            at = stop  # every entry has the size of the first
        else:
            stride, varied, at = 0, *_walk_entries(raw, at, count)
    if at + _COUNT > end:
        raise _malformed("truncated")
    removed_count = int.from_bytes(raw[at : at + _COUNT], "big")
    at += _COUNT
    if end - at != removed_count * CARD_ID_LEN:
        raise _malformed(
            "truncated" if end - at < removed_count * CARD_ID_LEN else "trailing bytes"
        )
    removed = tuple(raw[i : i + CARD_ID_LEN] for i in range(at, end, CARD_ID_LEN))
    return _Layout(header, entries_at, added_at, count, stride, varied, removed)


def _walk_entries(raw: bytes, at: int, count: int) -> tuple[tuple[bytes, ...], int]:
    entries = []
    for _ in range(count):
        if at + _PREFIX > len(raw):
            raise _malformed("truncated")
        size = int.from_bytes(raw[at : at + _PREFIX], "big")
        at += _PREFIX
        if at + size > len(raw):
            raise _malformed("truncated")
        entries.append(raw[at : at + size])
        at += size
    return tuple(entries), at


@dataclass(frozen=True, slots=True)
class BlocklistFile:
    """A parsed (not yet verified) blocklist file."""

    header: bytes  # the signed envelope
    added: tuple[bytes, ...]  # LOCK_ORDER envelopes
    removed: tuple[bytes, ...]  # card IDs

    def encode(self) -> bytes:
        try:
            head = len(self.header).to_bytes(_PREFIX, "big") + self.header
            return head + _entries_bytes(self.added, self.removed)
        except (TypeError, OverflowError):
            built: bytes = BLOCKLIST_FILE.build(
                {"header": self.header, "added": list(self.added), "removed": list(self.removed)}
            )
            return built

    @classmethod
    def decode(cls, raw: bytes) -> BlocklistFile:
        layout = _scan(raw)
        return cls(layout.header, layout.added(raw), layout.removed)

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
    entries = _entries_bytes(added_t, removed_t)
    header = BlocklistHeader(
        version=version,
        base_version=base_version,
        issued_at=issued_at,
        added=len(added_t),
        removed=len(removed_t),
        digest=entries_digest(entries),
    )
    envelope = sign(ObjectKind.BLOCKLIST, header.encode())
    if len(envelope) > 0xFFFF:
        return BlocklistFile(envelope, added_t, removed_t).encode()  # raises
    return len(envelope).to_bytes(_PREFIX, "big") + envelope + entries


def lock_order_card(order: bytes) -> LockOrder:
    """The body of a lock order envelope (its signature is the card's to check)."""
    env = parse_envelope(order)
    if env.kind != ObjectKind.LOCK_ORDER:
        raise MalformedObject("a blocklist entry is not a lock order")
    return LockOrder.decode(env.body)


# a terminal's lock orders ------------------------------------------------------------------
_BUFFER_SHIFT = 40  # where: buffer index << 40 | offset of the order in that buffer
_OFFSET_MASK = (1 << _BUFFER_SHIFT) - 1
_SMALL_CHANGE = 256  # changes of a delta applied in place; more: one merge


def _increasing(values: array[int]) -> bool:
    return all(map(operator.lt, values, islice(values, 1, None)))


class LockOrders(Mapping[bytes, bytes]):
    """Card ID -> lock order envelope, read-only and compact.

    The card IDs are held as sorted 64-bit integers, and beside each, where its
    order lies in the bytes of the file it came from, which are kept as they are
    (not copied): 16 bytes per card on top of the file. A lookup is a binary
    search. Equal to any mapping with the same items.
    """

    __slots__ = ("_buffers", "_digest", "_ids", "_where")

    def __init__(self) -> None:
        self._ids: array[int] = array(_U64)
        self._where: array[int] = array(_U64)
        self._buffers: tuple[bytes, ...] = ()
        self._digest: bytes | None = None  # of the file entries it holds, all of them

    @classmethod
    def _make(
        cls, ids: array[int], where: array[int], buffers: tuple[bytes, ...], digest: bytes | None
    ) -> LockOrders:
        made = cls()
        made._ids, made._where, made._buffers, made._digest = ids, where, buffers, digest
        return made

    @classmethod
    def from_mapping(cls, orders: Mapping[bytes, bytes]) -> LockOrders:
        """Lock orders from card ID -> envelope (8-byte IDs, 95-byte envelopes)."""
        card_ids = sorted(orders)
        if any(len(c) != CARD_ID_LEN or len(orders[c]) != ORDER_LEN for c in card_ids):
            raise ValueError(f"card IDs have {CARD_ID_LEN} bytes, lock orders {ORDER_LEN}")
        ids = array(_U64, (int.from_bytes(c, "big") for c in card_ids))
        where = array(_U64, range(0, len(card_ids) * ORDER_LEN, ORDER_LEN))
        return cls._make(ids, where, (b"".join(orders[c] for c in card_ids),), None)

    # lookups
    def _find(self, key: int) -> int:
        ids = self._ids
        i = bisect_left(ids, key)
        return i if i < len(ids) and ids[i] == key else -1

    def _index(self, card_id: object) -> int:
        if not isinstance(card_id, bytes) or len(card_id) != CARD_ID_LEN:
            return -1
        return self._find(int.from_bytes(card_id, "big"))

    def _order(self, i: int) -> bytes:
        where = self._where[i]
        at = where & _OFFSET_MASK
        return self._buffers[where >> _BUFFER_SHIFT][at : at + ORDER_LEN]

    def __getitem__(self, card_id: bytes) -> bytes:
        i = self._index(card_id)
        if i < 0:
            raise KeyError(card_id)
        return self._order(i)

    def get(self, card_id: bytes, default: Any = None) -> Any:
        # what a terminal asks at every payment: _index and _order, inlined
        if not isinstance(card_id, bytes) or len(card_id) != CARD_ID_LEN:
            return default
        key = int.from_bytes(card_id, "big")
        ids = self._ids
        i = bisect_left(ids, key)
        if i == len(ids) or ids[i] != key:
            return default
        where = self._where[i]
        at = where & _OFFSET_MASK
        return self._buffers[where >> _BUFFER_SHIFT][at : at + ORDER_LEN]

    def __contains__(self, card_id: object) -> bool:
        return self._index(card_id) >= 0

    def __iter__(self) -> Iterator[bytes]:
        for key in self._ids:
            yield key.to_bytes(CARD_ID_LEN, "big")

    def __len__(self) -> int:
        return len(self._ids)

    def _orders(self) -> Iterator[bytes]:
        return map(self._order, range(len(self._ids)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LockOrders):
            return super().__eq__(other)
        if self._ids != other._ids:
            return False
        if self._digest is not None and self._digest == other._digest:
            return True  # from files with the same entries
        return all(map(operator.eq, self._orders(), other._orders()))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LockOrders({len(self)} cards)"

    def __copy__(self) -> LockOrders:
        return self  # immutable

    def __deepcopy__(self, memo: dict[int, Any]) -> LockOrders:
        return self

    # a delta
    def updated(self, removed: Iterable[bytes], added: LockOrders) -> LockOrders:
        """These lock orders without ``removed``, then with ``added`` (a delta's changes)."""
        shift = len(self._buffers) << _BUFFER_SHIFT
        gone = {i for card_id in removed if (i := self._index(card_id)) >= 0}
        gone.update(i for key in added._ids if (i := self._find(key)) >= 0)
        buffers = self._buffers + added._buffers
        if len(gone) + len(added) <= _SMALL_CHANGE:
            ids, where = array(_U64, self._ids), array(_U64, self._where)
            for i in sorted(gone, reverse=True):
                del ids[i], where[i]
            for key, at in zip(added._ids, added._where, strict=True):
                i = bisect_left(ids, key)
                ids.insert(i, key)
                where.insert(i, at + shift)
            return self._make(ids, where, buffers, None)
        kept: Iterable[tuple[int, int]] = zip(self._ids, self._where, strict=True)
        if gone:
            kept = (pair for i, pair in enumerate(kept) if i not in gone)
        new = zip(added._ids, (at + shift for at in added._where), strict=True)
        ids, where = array(_U64), array(_U64)
        for key, at in heapq.merge(kept, new):
            ids.append(key)
            where.append(at)
        return self._make(ids, where, buffers, None)


def _column(raw: bytes, first: int, width: int, count: int, typecode: str) -> array[int]:
    """The big-endian ``width``-byte field at ``first`` of each of ``count`` records."""
    out = bytearray(width * count)
    stop = first + count * _RECORD
    for k in range(width):
        out[k::width] = raw[first + k : stop + k : _RECORD]
    values = array(typecode)
    values.frombytes(out)
    if sys.byteorder == "little":
        values.byteswap()
    return values


def _plain_lock_orders(raw: bytes, layout: _Layout, header: BlocklistHeader) -> LockOrders | None:
    """The added entries, when each is plainly a lock order of this list for another card;
    None otherwise (then :func:`_checked_orders` says which entry is wrong)."""
    count = layout.added_count
    if not count:
        return LockOrders._make(array(_U64), array(_U64), (), header.digest)
    if layout.stride != _RECORD:
        return None
    at, stop = layout.added_at, layout.added_at + count * _RECORD
    for place, byte in _RECORD_FIXED:
        if raw[at + place : stop : _RECORD].count(byte) != count:
            return None
    if max(_column(raw, at + _LIST_VERSION_AT, 4, count, _U32)) > header.version:
        return None
    ids = _column(raw, at + _CARD_ID_AT, CARD_ID_LEN, count, _U64)
    where = array(_U64, range(at + _PREFIX, stop, _RECORD))
    if not _increasing(ids):  # the issuer lists cards in card ID order; others are sorted here
        order = sorted(range(count), key=ids.__getitem__)
        ids = array(_U64, map(ids.__getitem__, order))
        where = array(_U64, map(where.__getitem__, order))
        if not _increasing(ids):
            return None  # a card listed twice
    return LockOrders._make(ids, where, (raw,), header.digest)


def _checked_orders(entries: Iterable[bytes], version: int) -> dict[bytes, bytes]:
    """Each entry parsed and checked on its own (the path that names the wrong entry)."""
    added: dict[bytes, bytes] = {}
    for order in entries:
        body = lock_order_card(order)
        if body.card_id in added:
            raise BlocklistRefused(f"card {body.card_id.hex().upper()} listed twice")
        if body.list_version > version:
            raise BlocklistRefused("a lock order from a later list version")
        added[body.card_id] = order
    return added


@dataclass(frozen=True, slots=True)
class VerifiedBlocklist:
    """A blocklist file whose signature, digest and entries have been checked."""

    header: BlocklistHeader
    added: LockOrders  # card ID -> lock order envelope
    removed: tuple[bytes, ...]


def verify_blocklist(
    raw: bytes, issuer_keys: Mapping[bytes, ec.EllipticCurvePublicKey]
) -> VerifiedBlocklist:
    """Parse and verify a blocklist file (no version check: see :class:`TrustedBlocklist`)."""
    layout = _scan(raw)
    env = open_envelope(layout.header, ObjectKind.BLOCKLIST, dict(issuer_keys))
    header = BlocklistHeader.decode(env.body)
    if header.added != layout.added_count or header.removed != len(layout.removed):
        raise BlocklistRefused("entry counts do not match the signed header")
    if entries_digest(memoryview(raw)[layout.entries_at :]) != header.digest:
        raise BlocklistRefused("entries do not match the signed digest")
    if header.base_version and header.base_version >= header.version:
        raise BlocklistRefused("a delta must end after it starts")
    if not header.base_version and layout.removed:
        raise BlocklistRefused("a full list has no removals")
    added = _plain_lock_orders(raw, layout, header)
    if added is None:
        checked = _checked_orders(layout.added(raw), header.version)
        added = LockOrders.from_mapping(checked)
    return VerifiedBlocklist(header, added, layout.removed)


@dataclass
class TrustedBlocklist:
    """A terminal's copy of the blocklist: only ever moves forward, only by signed lists."""

    version: int = 0
    issued_at: int = 0
    orders: LockOrders = field(default_factory=LockOrders)

    def __contains__(self, card_id: object) -> bool:
        return card_id in self.orders

    def __len__(self) -> int:
        return len(self.orders)

    def lock_order(self, card_id: bytes) -> bytes | None:
        order: bytes | None = self.orders.get(card_id)
        return order

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
            orders = self.orders.updated(checked.removed, checked.added)
        else:
            orders = checked.added
        self.version, self.issued_at, self.orders = header.version, header.issued_at, orders
        return header
