"""The issuer's blocklist files and a terminal's TrustedBlocklist.

A property test reports and recovers cards at random and checks, after every
change, that a terminal holding any earlier full list reaches the newest list
exactly by the delta from its version, and that the list names exactly the
cards the registry holds as lost or stolen. The terminal refuses older lists,
deltas from another version, re-signed, tampered, mislabelled or truncated
files, and every refusal leaves what it holds unchanged. A lock order taken
from the list locks its card.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from unittest import mock

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from apdu import blocklist
from apdu.blocklist import (
    ORDER_LEN,
    BlocklistFile,
    BlocklistRefused,
    BlocklistRollback,
    LockOrders,
    TrustedBlocklist,
    build_blocklist,
    lock_order_card,
    verify_blocklist,
)
from apdu.purse import CARD_ID_LEN, BlocklistHeader, LifeCycle
from apdu.signed import (
    BadSignature,
    MalformedObject,
    ObjectKind,
    SignedObjectError,
    UnknownKey,
    WrongKind,
    generate_key,
    key_id_of,
    parse_envelope,
    public_bytes,
    public_keys,
    seal,
)
from apdu.status import SW, CardError
from issuer.errors import Refused
from issuer.registry import CardState
from issuer.signer import IssuerKey
from tests.issuer_kit import CardHandle, IssuerRig, make_issuer

Keys = Mapping[bytes, ec.EllipticCurvePublicKey]
REPORTED = (CardState.LOST, CardState.STOLEN)


# helpers ----------------------------------------------------------------------------------
def holding(raw: bytes, keys: Keys) -> TrustedBlocklist:
    """A terminal's list after applying ``raw`` to an empty one."""
    trusted = TrustedBlocklist()
    trusted.apply(raw, keys)
    return trusted


def reported_cards(rig: IssuerRig) -> set[bytes]:
    return {card.card_id for card in rig.centre.cards() if card.status in REPORTED}


def assert_refused(
    trusted: TrustedBlocklist,
    raw: bytes,
    keys: Keys,
    error: type[SignedObjectError],
    match: str | None = None,
) -> None:
    """``raw`` is refused with ``error`` and the terminal's list is exactly as it was."""
    before = copy.deepcopy(trusted)
    with pytest.raises(error, match=match):
        trusted.apply(raw, keys)
    assert trusted == before


def header_body(raw: bytes) -> bytes:
    return parse_envelope(BlocklistFile.decode(raw).header).body


def with_header(raw: bytes, header: bytes) -> bytes:
    parsed = BlocklistFile.decode(raw)
    return BlocklistFile(header, parsed.added, parsed.removed).encode()


def with_added(raw: bytes, change: Callable[[list[bytes]], list[bytes]]) -> bytes:
    parsed = BlocklistFile.decode(raw)
    return BlocklistFile(parsed.header, tuple(change(list(parsed.added))), parsed.removed).encode()


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# the property: deltas and full lists agree ----------------------------------------------------
OPERATIONS = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from(["lost", "stolen", "found"])),
    min_size=1,
    max_size=10,
)


def operate(rig: IssuerRig, handle: CardHandle, op: str) -> int | None:
    """Report or recover a card; the new list version, or None when the issuer must refuse."""
    status = rig.centre.card(handle.card_id).status
    found = op == "found"
    allowed = status in REPORTED if found else status is CardState.ACTIVE
    try:
        if found:
            version = rig.centre.found(handle.card_id)
        else:
            version = rig.centre.report(handle.card_id, CardState(op))
    except Refused as refusal:
        reason = refusal.reason
    else:
        assert allowed, f"{op} accepted for a card that is {status.value}"
        return version
    assert not allowed
    assert reason == ("not_reported" if found else "not_active")
    return None


@settings(max_examples=25, deadline=None)
@given(operations=OPERATIONS)
def test_a_delta_from_any_earlier_version_reaches_the_full_list(
    operations: list[tuple[int, str]],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        rig = make_issuer(Path(folder))
        try:
            keys = rig.trusted_keys()
            cards = [rig.new_card(f"Holder {n}") for n in range(4)]
            fulls = {0: rig.centre.blocklist()}  # each full list, kept while it was current
            for index, op in operations:
                rig.clock.advance(60)
                version = operate(rig, cards[index], op)
                if version is None:
                    continue
                assert version == max(fulls) + 1
                fulls[version] = rig.centre.blocklist()
                newest = holding(fulls[version], keys)
                assert newest.version == version
                assert set(newest.orders) == reported_cards(rig)
                for card_id, order in newest.orders.items():
                    assert lock_order_card(order).card_id == card_id
                for old in range(version + 1):
                    trusted = holding(fulls[old], keys)
                    trusted.apply(rig.centre.blocklist(since=old), keys)
                    assert (trusted.version, trusted.orders) == (version, newest.orders)
        finally:
            rig.centre.close()


# a fixed history: three cards reported, one list version each ------------------------------
REASONS = (CardState.LOST, CardState.STOLEN, CardState.LOST)


class History:
    """Three cards reported in turn; the full list and the delta from 1 at each version."""

    def __init__(self, rig: IssuerRig) -> None:
        self.rig = rig
        self.keys = rig.trusted_keys()
        self.cards = [rig.new_card(name) for name in ("Alice", "Bob", "Carol")]
        self.full: dict[int, bytes] = {}
        self.delta_from_1: dict[int, bytes] = {}
        for reason, card in zip(REASONS, self.cards, strict=True):
            rig.clock.advance(60)
            version = rig.centre.report(card.card_id, reason)
            self.full[version] = rig.centre.blocklist()
            self.delta_from_1[version] = rig.centre.blocklist(since=1)

    def holding(self, version: int) -> TrustedBlocklist:
        return holding(self.full[version], self.keys)


@pytest.fixture
def history(tmp_path: Path) -> History:
    return History(make_issuer(tmp_path))


def test_history_versions(history: History) -> None:
    assert sorted(history.full) == [1, 2, 3]
    assert len(history.holding(3)) == 3
    header = BlocklistHeader.decode(header_body(history.delta_from_1[3]))
    assert (header.version, header.base_version, header.added) == (3, 1, 2)


def test_an_older_full_list_is_refused(history: History) -> None:
    trusted = history.holding(3)
    for version in (1, 2):
        assert_refused(trusted, history.full[version], history.keys, BlocklistRollback)


def test_an_older_delta_is_refused(history: History) -> None:
    assert_refused(history.holding(3), history.delta_from_1[2], history.keys, BlocklistRollback)


def test_a_delta_from_another_version_is_refused(history: History) -> None:
    trusted = history.holding(2)
    assert_refused(trusted, history.delta_from_1[3], history.keys, BlocklistRollback, "delta")
    empty = TrustedBlocklist()
    assert_refused(empty, history.delta_from_1[3], history.keys, BlocklistRollback)
    trusted.apply(history.rig.centre.blocklist(since=2), history.keys)
    assert trusted.version == 3


def test_the_held_list_again_is_accepted_without_change(history: History) -> None:
    trusted = history.holding(3)
    before = copy.deepcopy(trusted)
    trusted.apply(history.full[3], history.keys)
    assert trusted == before
    assert_refused(trusted, history.delta_from_1[3], history.keys, BlocklistRollback)


def test_a_header_resigned_by_a_foreign_key_is_refused(history: History) -> None:
    trusted = history.holding(1)
    raw = history.full[3]
    foreign = generate_key()
    foreign_id = key_id_of(public_bytes(foreign.public_key()))
    resigned = seal(ObjectKind.BLOCKLIST, foreign_id, header_body(raw), foreign)
    assert_refused(trusted, with_header(raw, resigned), history.keys, UnknownKey)


def test_a_header_signed_under_the_issuer_key_id_by_another_key_is_refused(
    history: History,
) -> None:
    trusted = history.holding(1)
    raw = history.full[3]
    issuer_id = parse_envelope(BlocklistFile.decode(raw).header).key_id
    assert issuer_id in history.keys
    forged = seal(ObjectKind.BLOCKLIST, issuer_id, header_body(raw), generate_key())
    assert_refused(trusted, with_header(raw, forged), history.keys, BadSignature)


def test_a_header_with_a_flipped_signature_bit_is_refused(history: History) -> None:
    raw = history.full[3]
    header = BlocklistFile.decode(raw).header
    broken = with_header(raw, flip(header, len(header) - 1))
    assert_refused(history.holding(1), broken, history.keys, BadSignature)


def forged_order(card_id: bytes) -> bytes:
    return IssuerKey.generate().lock_order(card_id, 1, 2, 1)


TAMPERINGS: dict[str, Callable[[list[bytes]], list[bytes]]] = {
    "one order dropped": lambda orders: orders[1:],
    "a forged order added": lambda orders: [*orders, forged_order(b"P0000009")],
    "an order replaced by a forged one": lambda orders: [
        forged_order(lock_order_card(orders[0]).card_id),
        *orders[1:],
    ],
    "a byte of an order changed": lambda orders: [flip(orders[0], 20), *orders[1:]],
    "orders swapped": lambda orders: [orders[1], orders[0], *orders[2:]],
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_tampered_entries_under_the_original_header_are_refused(
    history: History, tampering: str
) -> None:
    raw = with_added(history.full[3], TAMPERINGS[tampering])
    assert_refused(history.holding(1), raw, history.keys, BlocklistRefused, "count|digest")


def test_forged_removals_in_a_delta_are_refused(history: History) -> None:
    parsed = BlocklistFile.decode(history.delta_from_1[3])
    forged = BlocklistFile(parsed.header, parsed.added, (history.cards[0].card_id,)).encode()
    assert_refused(history.holding(1), forged, history.keys, BlocklistRefused, "count|digest")


def test_a_lock_order_in_place_of_the_header_is_refused(history: History) -> None:
    raw = history.full[3]
    order = BlocklistFile.decode(raw).added[0]
    assert_refused(history.holding(1), with_header(raw, order), history.keys, WrongKind)


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda raw: raw[:-1], id="last byte cut"),
        pytest.param(lambda raw: raw[:40], id="cut inside the header"),
        pytest.param(lambda raw: raw[:300], id="cut inside the entries"),
        pytest.param(lambda raw: b"", id="empty"),
        pytest.param(lambda raw: raw + b"\x00", id="trailing byte"),
        pytest.param(lambda raw: b"\xff" * len(raw), id="garbage"),
        pytest.param(lambda raw: raw[2:], id="length prefix dropped"),
    ],
)
def test_truncated_or_garbage_bytes_are_malformed(
    history: History, cut: Callable[[bytes], bytes]
) -> None:
    assert_refused(history.holding(1), cut(history.full[3]), history.keys, MalformedObject)


def test_a_list_signed_by_a_rotated_key_is_accepted_by_a_terminal_trusting_it(
    history: History,
) -> None:
    rig = history.rig
    rig.centre.rotate_key()
    raw = rig.centre.blocklist(since=3)
    assert_refused(history.holding(3), raw, history.keys, UnknownKey)  # the old trust set
    trusted = holding(raw, rig.trusted_keys())
    assert trusted.orders == history.holding(3).orders


# the issuer's side ----------------------------------------------------------------------------
def test_a_version_after_the_latest_is_refused(history: History) -> None:
    for since in (4, 100, -1):
        with pytest.raises(Refused) as refusal:
            history.rig.centre.blocklist(since=since)
        assert refusal.value.reason == "unknown_version"
    events = [entry.event for entry in history.rig.centre.audit_log()]
    assert events[-3:] == ["refused_unknown_version"] * 3


def test_a_lock_order_from_the_list_locks_its_card(history: History) -> None:
    trusted = history.holding(3)
    for card in history.cards:
        order = trusted.lock_order(card.card_id)
        assert order is not None
        card.client.select()
        card.client.lock(order)
        assert card.client.status().state is LifeCycle.LOCKED


def test_a_found_card_refuses_its_old_order_but_not_a_new_one(tmp_path: Path) -> None:
    rig = make_issuer(tmp_path)
    keys = rig.trusted_keys()
    card = rig.new_card("Alice")
    rig.centre.report(card.card_id, CardState.STOLEN)
    old = holding(rig.centre.blocklist(), keys).lock_order(card.card_id)
    rig.centre.found(card.card_id)
    rig.session(card)  # carries UNLOCK: older lock orders are void
    assert old is not None
    with pytest.raises(CardError) as stale:
        card.client.lock(old)
    assert stale.value.sw == SW.STALE_OBJECT
    rig.centre.report(card.card_id, CardState.LOST)  # at the same instant as the unlock
    new = holding(rig.centre.blocklist(), keys).lock_order(card.card_id)
    assert new is not None
    card.client.lock(new)
    assert card.client.status().state is LifeCycle.LOCKED


# the file format --------------------------------------------------------------------------
FILES = st.builds(
    BlocklistFile,
    header=st.binary(max_size=300),
    added=st.lists(st.binary(max_size=200), max_size=6).map(tuple),
    removed=st.lists(st.binary(min_size=CARD_ID_LEN, max_size=CARD_ID_LEN), max_size=6).map(tuple),
)


@settings(max_examples=100, deadline=None)
@given(made=FILES)
def test_blocklist_file_round_trip(made: BlocklistFile) -> None:
    raw = made.encode()
    assert BlocklistFile.decode(raw) == made
    for cut in {0, 1, len(raw) // 2, len(raw) - 1}:
        with pytest.raises(MalformedObject):
            BlocklistFile.decode(raw[:cut])
    with pytest.raises(MalformedObject):
        BlocklistFile.decode(raw + b"\x00")


@settings(max_examples=100, deadline=None)
@given(made=FILES, extra=st.integers(1, 3))
def test_blocklist_file_with_counts_beyond_its_entries_is_malformed(
    made: BlocklistFile, extra: int
) -> None:
    raw = made.encode()
    removed_count_at = len(raw) - 4 - CARD_ID_LEN * len(made.removed)
    count = int.from_bytes(raw[removed_count_at : removed_count_at + 4], "big")
    inflated = raw[:removed_count_at] + (count + extra).to_bytes(4, "big")
    inflated += raw[removed_count_at + 4 :]
    with pytest.raises(MalformedObject):
        BlocklistFile.decode(inflated)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=100))
def test_blocklist_file_decode_accepts_only_canonical_bytes(raw: bytes) -> None:
    try:
        parsed = BlocklistFile.decode(raw)
    except MalformedObject:
        return
    assert parsed.encode() == raw


# the terminal's compact lock orders ------------------------------------------------------
CARD_IDS = st.binary(min_size=CARD_ID_LEN, max_size=CARD_ID_LEN)


def fake_order(card_id: bytes, salt: int) -> bytes:
    """95 bytes standing for a lock order (LockOrders does not look inside what it holds)."""
    return bytes([salt]) * (ORDER_LEN - CARD_ID_LEN) + card_id


def orders_of(salts: dict[bytes, int]) -> dict[bytes, bytes]:
    return {card_id: fake_order(card_id, salt) for card_id, salt in salts.items()}


@settings(max_examples=150, deadline=None)
@given(
    base=st.dictionaries(CARD_IDS, st.integers(0, 255), max_size=12),
    added=st.dictionaries(CARD_IDS, st.integers(0, 255), max_size=8),
    in_place=st.booleans(),
    data=st.data(),
)
def test_lock_orders_behave_as_the_dict_they_replace(
    base: dict[bytes, int], added: dict[bytes, int], in_place: bool, data: st.DataObject
) -> None:
    held_dict = orders_of(base)
    held = LockOrders.from_mapping(held_dict)
    assert held == held_dict
    assert list(held) == sorted(held_dict)
    assert len(held) == len(held_dict)
    for card_id, order in held_dict.items():
        assert (held[card_id], held.get(card_id), card_id in held) == (order, order, True)
    known = st.sampled_from(sorted(base)) if base else CARD_IDS
    removed = data.draw(st.lists(known | CARD_IDS | st.sampled_from(sorted(added) or [b"x"])))
    for odd in (b"", b"short", bytes(9), bytearray(8), 7):
        assert odd not in held
        assert held.get(odd) is None  # type: ignore[arg-type]
    for card_id in (*removed, *added):
        assert (card_id in held, held.get(card_id)) == (
            card_id in held_dict,
            held_dict.get(card_id),
        )
    expected = dict(held_dict)
    for card_id in removed:
        expected.pop(card_id, None)
    expected.update(orders_of(added))
    # a delta's changes, applied in place (few) or by one merge (many)
    with mock.patch.object(blocklist, "_SMALL_CHANGE", 10_000 if in_place else 0):
        changed = held.updated(removed, LockOrders.from_mapping(orders_of(added)))
    assert changed == expected
    assert dict(changed.items()) == expected
    assert list(changed) == sorted(expected)
    assert held == held_dict  # the held lock orders are not changed
    assert copy.deepcopy(changed) == changed


def signed_list(key: IssuerKey, orders: list[bytes], version: int = 3) -> bytes:
    return build_blocklist(key.sign, version, 0, 100, orders)


def test_a_list_out_of_card_id_order_holds_the_same_lock_orders() -> None:
    key = IssuerKey.generate()
    keys = public_keys({key.key_id: key.public})
    card_ids = [bytes([9 - n]) * CARD_ID_LEN for n in range(6)]  # descending
    orders = [key.lock_order(card_id, 50, 1, 2) for card_id in card_ids]
    checked = verify_blocklist(signed_list(key, orders), keys)
    assert checked.added == dict(zip(card_ids, orders, strict=True))
    assert list(checked.added) == sorted(card_ids)
    trusted = holding(signed_list(key, orders[::-1]), keys)
    assert trusted.orders == checked.added
    assert trusted.lock_order(card_ids[2]) == orders[2]
    assert trusted.lock_order(b"P0000009") is None


def relabelled(order: bytes, kind: ObjectKind) -> bytes:
    return order[:3] + bytes([kind]) + order[4:]


def test_a_signed_list_of_wrong_entries_is_refused_and_says_which() -> None:
    key = IssuerKey.generate()
    keys = public_keys({key.key_id: key.public})
    first, second = (key.lock_order(c, 50, 1, 2) for c in (b"P0000001", b"P0000002"))
    again = key.lock_order(b"P0000001", 60, 2, 3)
    later = key.lock_order(b"P0000003", 50, 1, 4)
    credential_sized = key.sign(ObjectKind.LOCK_ORDER, bytes(30))
    cases: list[tuple[list[bytes], type[SignedObjectError], str]] = [
        ([first, second, again], BlocklistRefused, "card 5030303030303031 listed twice"),
        ([first, later], BlocklistRefused, "later list version"),
        ([first, relabelled(second, ObjectKind.CREDENTIAL)], MalformedObject, "not a lock order"),
        ([first, credential_sized], MalformedObject, "LockOrder"),
        ([first, second[:-1]], MalformedObject, "truncated"),
    ]
    for orders, error, match in cases:
        with pytest.raises(error, match=match):
            verify_blocklist(signed_list(key, orders), keys)
    assert len(verify_blocklist(signed_list(key, [first, second]), keys).added) == 2
