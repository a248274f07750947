"""Lost and stolen cards: reports, the versioned list of lock orders, and its files.

Each report or recovery makes a new list version. A reported card is listed
with a lock order signed by the key the card trusts; a card found again is
removed from the list and its next online session carries UNLOCK, which
also voids any older lock order the card may still meet. Files are built by
:func:`apdu.blocklist.build_blocklist` and signed by the current issuer key.
"""

from __future__ import annotations

from apdu.blocklist import build_blocklist
from apdu.purse import printable_id
from issuer.errors import Refused
from issuer.keys import KeyRing
from issuer.registry import CardState, ListEntry, RegistryTx

LOCK_REASONS = {CardState.LOST: 1, CardState.STOLEN: 2}


def report(tx: RegistryTx, keys: KeyRing, now: int, card_id: bytes, reason: CardState) -> int:
    """List a card as lost or stolen; returns the new list version."""
    if reason not in LOCK_REASONS:
        raise Refused("bad_reason", "a card is reported lost or stolen", card_id)
    card = tx.card(card_id)
    if card is None:
        raise Refused("unknown_card", f"card {printable_id(card_id)} is not registered", card_id)
    if card.status is not CardState.ACTIVE:
        raise Refused("not_active", f"the card is already {card.status.value}", card_id)
    version = tx.new_blocklist_version(now)
    # strictly after any unlock the card may hold, or the card would refuse it as stale
    issued_at = max(now, card.unlocked_at + 1)
    order = keys.get(card.issuer_key_id).lock_order(
        card_id, issued_at, LOCK_REASONS[reason], version
    )
    tx.list_card(ListEntry(card_id, version, order))
    card.status = reason
    card.unlock_requested = False
    tx.save_card(card)
    tx.audit(now, f"reported_{reason.value}", card_id, f"listed in blocklist version {version}")
    return version


def found(tx: RegistryTx, now: int, card_id: bytes) -> int:
    """Take a found card off the list and have its next session unlock it."""
    card = tx.card(card_id)
    if card is None:
        raise Refused("unknown_card", f"card {printable_id(card_id)} is not registered", card_id)
    if card.status not in LOCK_REASONS:
        raise Refused("not_reported", f"the card is {card.status.value}, not reported", card_id)
    version = tx.new_blocklist_version(now)
    tx.unlist_card(card_id, version)
    card.status = CardState.ACTIVE
    card.unlock_requested = True
    tx.save_card(card)
    tx.audit(now, "found", card_id, f"removed in blocklist version {version}; unlock requested")
    return version


def blocklist_file(tx: RegistryTx, keys: KeyRing, now: int, since: int = 0) -> bytes:
    """The current list, full (``since`` 0) or as a delta from version ``since``."""
    version = tx.blocklist_version()
    if not 0 <= since <= version:
        raise Refused("unknown_version", f"no blocklist version {since} (latest is {version})")
    if since in (0, version):
        entries = tx.listed(version)
        return build_blocklist(keys.current.sign, version, 0, now, (e.lock_order for e in entries))
    added, removed = tx.list_changes(since, version)
    return build_blocklist(
        keys.current.sign, version, since, now, (e.lock_order for e in added), removed
    )
