"""The online session: what the issuer answers to a card's signed request.

A terminal forwards the card's BEGIN ONLINE answer (a card-signed
OnlineRequest). The issuer checks, in order: the envelope is a request
signed by the registered key of a known card; its nonce was never seen; the
card's counter and balance are consistent with what the issuer knows (else
the card is suspected to be a clone); the card's status. A lost or stolen
card gets its lock order; a good card gets an issuer update carrying a fresh
credential, plus any load paid from the holder's account and any unlock or
PIN unblock the operator asked for.

Every update carries a new credential serial, and the card applies an update
whole or not at all, so the serial in the card's *next* request says whether
the previous update was applied: only then is its load added to the shadow
balance (an update that never reached the card is void, and its load goes
back to the holder's account).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from cryptography.hazmat.primitives.asymmetric import ec

from apdu.purse import Credential, LifeCycle, OnlineRequest, UpdateAction, printable_id
from apdu.signed import (
    BadSignature,
    MalformedObject,
    ObjectKind,
    parse_envelope,
    public_key_from_bytes,
    verify_envelope,
)
from issuer import transfers
from issuer.errors import Refused, RegistryError
from issuer.keys import KeyRing
from issuer.policy import Policy
from issuer.registry import CardRecord, CardState, Outcome, RegistryTx, Renewal


class ReplyKind(StrEnum):
    UPDATE = "update"  # an ISSUER UPDATE for the card
    LOCK = "lock"  # a LOCK order for the card


@dataclass(frozen=True, slots=True)
class SessionReply:
    kind: ReplyKind
    card_id: bytes
    envelope: bytes  # the signed IssuerUpdate or LockOrder to send to the card
    serial: int = 0
    issued_at: int = 0
    expires_at: int = 0
    load: int = 0
    actions: int = 0
    restore: int = 0


@lru_cache(maxsize=4096)
def _card_key(public: bytes) -> ec.EllipticCurvePublicKey:
    return public_key_from_bytes(public)


def open_request(tx: RegistryTx, raw: bytes) -> tuple[CardRecord, OnlineRequest]:
    """A card-signed request, verified against the card's registered key."""
    try:
        env = parse_envelope(raw)
    except MalformedObject:
        raise Refused("malformed", "not a signed online request") from None
    if env.kind != ObjectKind.ONLINE_REQUEST:
        raise Refused("malformed", f"a signed object of kind {env.kind:02X}, not a request")
    card = tx.card(env.key_id)
    if card is None:
        raise Refused("unknown_card", f"card {printable_id(env.key_id)} is not registered")
    try:
        verify_envelope(env, _card_key(card.public_key))
        request = OnlineRequest.decode(env.body)
    except BadSignature:
        raise Refused(
            "bad_signature", "the request's signature does not verify", card.card_id
        ) from None
    except MalformedObject:
        raise Refused("malformed", "the request's body does not parse", card.card_id) from None
    if request.card_id != card.card_id or request.currency != card.currency:
        raise Refused("malformed", "the request names another card or currency", card.card_id)
    return card, request


def _resolve_pending(
    tx: RegistryTx, card: CardRecord, request: OnlineRequest, now: int
) -> list[int]:
    """Close the card's pending updates; returns the serials that the card applied."""
    applied: list[int] = []
    for renewal in tx.pending_renewals(card.card_id):
        applied_now = request.credential_serial >= renewal.serial
        transfers.settle_restore(tx, renewal, applied_now)
        if applied_now:
            card.shadow_balance += renewal.load + renewal.restore
            if renewal.actions & UpdateAction.UNLOCK:
                card.unlock_requested = False
            if renewal.actions & UpdateAction.UNBLOCK_PIN:
                card.unblock_requested = False
            tx.close_renewal(card.card_id, renewal.serial, Outcome.APPLIED)
            applied.append(renewal.serial)
        else:
            if renewal.load:
                tx.adjust_holder(renewal.holder, renewal.load)
            tx.close_renewal(card.card_id, renewal.serial, Outcome.VOID)
            tx.audit(
                now,
                "update_void",
                card.card_id,
                f"serial {renewal.serial} never reached the card; {renewal.load} refunded",
            )
    return applied


def _applied_note(applied: list[int]) -> str:
    return f"card applied serials {applied or 'none'} since its last session"


def _check_not_clone(card: CardRecord, request: OnlineRequest) -> None:
    """Every request has its own ATC (BEGIN ONLINE counts), so a genuine card's
    request always shows a counter above anything the issuer has seen of it:
    its last request, and the receipts already settled."""
    if request.atc <= card.last_atc:
        raise Refused(
            "clone_suspected",
            f"card counter {request.atc} is not above the {card.last_atc} already seen",
            card.card_id,
        )


def online_session(
    tx: RegistryTx, keys: KeyRing, policy: Policy, now: int, raw: bytes, load: int = 0
) -> SessionReply:
    card, request = open_request(tx, raw)
    cid = card.card_id
    if not tx.note_request(cid, request.card_nonce, now):
        raise Refused("replayed_request", "this request was answered before", cid)
    _check_not_clone(card, request)
    applied = _resolve_pending(tx, card, request, now)
    transfers.apply_totals(card, request)
    logged = transfers.record_log(tx, card, request, now)
    if request.balance > card.shadow_balance:
        raise Refused(
            "clone_suspected",
            f"card balance {request.balance} is above the shadow balance {card.shadow_balance}",
            cid,
        )
    card.last_atc, card.last_balance = request.atc, request.balance
    card.reported_atc = request.atc

    if card.status is CardState.TERMINATED:
        raise Refused("terminated", "the card is terminated", cid)
    if card.status in (CardState.LOST, CardState.STOLEN):
        entry = tx.listing(cid)
        if entry is None:
            raise RegistryError(f"card {printable_id(cid)} is {card.status.value} but not listed")
        tx.save_card(card)
        tx.audit(
            now,
            "lock_order_sent",
            cid,
            f"card reported {card.status.value}; {_applied_note(applied)}",
        )
        return SessionReply(ReplyKind.LOCK, cid, entry.lock_order)
    if request.state == LifeCycle.LOCKED and not card.unlock_requested:
        raise Refused("card_locked", "the card is locked; the issuer must unlock it first", cid)
    if now >= card.cert_expires_at:
        raise Refused("certificate_expired", "the card's certificate has expired; reissue", cid)
    if load < 0:
        raise Refused("bad_amount", "a load must not be negative", cid)
    if load:
        funds = tx.holder_balance(card.holder) or 0
        if funds < load:
            raise Refused(
                "insufficient_account_funds",
                f"holder account {card.holder!r} has {funds}, the load needs {load}",
                cid,
            )
        if request.balance + load > card.max_balance:
            raise Refused("over_max_balance", "the load would exceed the card's maximum", cid)

    actions = UpdateAction.RENEW
    if load:
        actions |= UpdateAction.LOAD
    lost = transfers.to_restore(tx, cid)
    restore = sum(x.amount for x in lost)
    if restore and request.balance + load + restore > card.max_balance:
        tx.audit(now, "restore_deferred", cid, f"{restore} to restore does not fit the card yet")
        lost, restore = [], 0
    if restore:
        actions |= UpdateAction.RESTORE
    if card.unlock_requested:
        actions |= UpdateAction.UNLOCK
        card.unlocked_at = now
    if card.unblock_requested:
        actions |= UpdateAction.UNBLOCK_PIN
    # above anything the card holds, even if the registry lost a commit (power loss)
    serial = max(card.credential_serial, request.credential_serial) + 1
    expires = min(now + policy.credential_lifetime, card.cert_expires_at)
    key = keys.get(card.issuer_key_id)
    credential = key.credential(
        Credential(
            card_id=cid,
            serial=serial,
            issued_at=now,
            expires_at=expires,
            offline_cap=policy.offline_cap,
            per_payment_limit=policy.per_payment_limit,
            no_pin_limit=policy.no_pin_limit,
            tolerance=policy.tolerance,
            card_nonce=request.card_nonce,
        )
    )
    update = key.update(
        cid,
        request.card_nonce,
        now,
        actions,
        load_amount=load,
        credential=credential,
        restore_amount=restore,
        log_cleared=logged,
    )
    if load:
        tx.adjust_holder(card.holder, -load)
    tx.add_renewal(
        Renewal(cid, serial, now, expires, actions, load, card.holder, restore=restore), now
    )
    for x in lost:
        tx.set_restore(x.key, serial)
    card.credential_serial = serial
    tx.save_card(card)
    tx.audit(
        now,
        "renewal",
        cid,
        f"serial {serial} until {expires}; actions {actions.value:#04x}; load {load}; "
        f"restore {restore}; {logged} exception(s) recorded; {_applied_note(applied)}",
    )
    return SessionReply(ReplyKind.UPDATE, cid, update, serial, now, expires, load, actions, restore)
