"""The issuer centre's online sessions, blocklist, keys and policy, end to end over APDUs.

Every test runs a real :class:`issuer.centre.IssuerCentre` (SQLite in a
temporary folder, a set clock) against emulated purse cards, through
``tests/issuer_kit.py``. Sections:

* the whole story of one card (issue, load, stolen, locked, found, unlocked);
* clones: a counter that goes back, a counter seen with another balance, a
  balance above what the issuer ever let onto the card;
* reconciliation of updates that did or did not reach the card;
* refusals: each has its reason code, one audit entry, and changes nothing else;
* operator requests (PIN unblock, unlock), key rotation, key files, the
  credential policy, and issuing.

Clones are made the way an attacker would: by copying the card's memory
(its committed store, or its image file) into a second card.
"""

from __future__ import annotations

import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from apdu.blocklist import verify_blocklist
from apdu.purse import (
    PURSE_AID,
    Credential,
    IssuerUpdate,
    LifeCycle,
    OnlineRequest,
    Tag,
    UpdateAction,
)
from apdu.purse_client import PurseClient
from apdu.signed import KEY_ID_LEN, ObjectKind, SignedObjectError, parse_envelope
from apdu.status import SW, CardError
from apdu.transport import CardChannel, LocalTransport
from card_os.card import Card
from card_os.purse import PurseApplet
from card_os.store import MemoryBackend
from issuer.centre import IssuerCentre, card_id_for
from issuer.errors import IssuerError, KeyFileError, Refused
from issuer.keys import KeyRing
from issuer.policy import Policy
from issuer.registry import CardRecord, CardState, ListEntry, Outcome, Renewal
from issuer.session import ReplyKind, SessionReply
from tests.issuer_kit import DAY, POS_ID, T0, CardHandle, IssuerRig, blank_card, make_issuer

DEPOSIT = 5_000
LOAD = 1_000
#: where the body of an envelope starts: magic 2, version 1, kind 1, key ID 8, length 2
BODY_OFFSET = 2 + 1 + 1 + KEY_ID_LEN + 2


# helpers -----------------------------------------------------------------------------------
@pytest.fixture
def rig(tmp_path: Path) -> IssuerRig:
    return make_issuer(tmp_path)


def loaded_card(rig: IssuerRig, holder: str = "Alice", load: int = LOAD) -> CardHandle:
    """A new card whose holder paid in DEPOSIT and which was loaded with ``load``."""
    handle = rig.new_card(holder)
    rig.centre.deposit(holder, DEPOSIT)
    reply = rig.session(handle, load=load)
    assert reply.kind is ReplyKind.UPDATE
    return handle


def connect(card: Card) -> PurseClient:
    card.install(PURSE_AID, PurseApplet)
    card.power_on()
    return PurseClient(CardChannel(LocalTransport(card)))


def clone(handle: CardHandle) -> CardHandle:
    """A second card holding a copy of everything the first one has committed."""
    twin = Card(MemoryBackend(handle.card.store.snapshot()))
    return CardHandle(twin, connect(twin), handle.card_id, handle.pin)


def record(rig: IssuerRig, handle: CardHandle) -> CardRecord:
    return rig.centre.card(handle.card_id)


def renewals(rig: IssuerRig, handle: CardHandle) -> list[Renewal]:
    return renewals_of(rig.centre, handle.card_id)


def listing(rig: IssuerRig, card_id: bytes) -> ListEntry | None:
    return rig.centre.read(lambda tx: tx.listing(card_id))


def events(rig: IssuerRig, handle: CardHandle) -> list[str]:
    return [entry.event for entry in rig.centre.audit_log(handle.card_id)]


def credential_on(handle: CardHandle) -> Credential:
    """The credential the card holds (GET DATA), decoded."""
    handle.client.select()
    return Credential.decode(parse_envelope(handle.client.get_data(Tag.CREDENTIAL)).body)


def request_body(raw: bytes) -> OnlineRequest:
    return OnlineRequest.decode(parse_envelope(raw).body)


def update_body(reply: SessionReply) -> IssuerUpdate:
    return IssuerUpdate.decode(parse_envelope(reply.envelope).body)


def data_int(handle: CardHandle, tag: Tag) -> int:
    handle.client.select()
    return int.from_bytes(handle.client.get_data(tag), "big")


def card_state(handle: CardHandle) -> LifeCycle:
    handle.client.select()
    return handle.client.status().state


def balance_of(handle: CardHandle) -> int:
    handle.client.select()
    return handle.client.status().balance


def sw_of(call: Callable[[], object]) -> int:
    """The status word of the CardError that ``call`` must raise."""
    with pytest.raises(CardError) as caught:
        call()
    return caught.value.sw


def verify_sw(handle: CardHandle, pin: bytes) -> int:
    handle.client.select()
    try:
        handle.client.verify_pin(pin)
    except CardError as err:
        return err.sw
    return SW.OK


@dataclass(frozen=True)
class RegistryState:
    """Everything a decision may change in the registry, except the audit log."""

    cards: list[CardRecord]
    renewals: dict[bytes, list[Renewal]]
    holders: dict[str, int | None]
    blocklist_version: int
    listed: list[ListEntry]
    policy: str | None


def renewals_of(centre: IssuerCentre, card_id: bytes) -> list[Renewal]:
    return centre.read(lambda tx: tx.renewals(card_id))


def registry_state(centre: IssuerCentre) -> RegistryState:
    cards = centre.cards()
    return RegistryState(
        cards=cards,
        renewals={c.card_id: renewals_of(centre, c.card_id) for c in cards},
        holders={c.holder: centre.holder_balance(c.holder) for c in cards},
        blocklist_version=centre.read(lambda tx: tx.blocklist_version()),
        listed=centre.read(lambda tx: tx.listed(tx.blocklist_version())),
        policy=centre.read(lambda tx: tx.setting("policy")),
    )


def assert_refused(rig: IssuerRig, reason: str, attempt: Callable[[], object]) -> Refused:
    """``attempt`` is refused for ``reason``: one audit entry, nothing else changed."""
    before = registry_state(rig.centre)
    audit_before = rig.centre.audit_log()
    with pytest.raises(Refused) as caught:
        attempt()
    refusal = caught.value
    assert refusal.reason == reason, str(refusal)
    assert registry_state(rig.centre) == before
    audit_after = rig.centre.audit_log()
    assert audit_after[: len(audit_before)] == audit_before
    added = audit_after[len(audit_before) :]
    assert [(e.event, e.card_id, e.at) for e in added] == [
        (f"refused_{reason}", refusal.card_id, rig.clock())
    ]
    assert added[0].detail == str(refusal)
    return refusal


def session_refused(rig: IssuerRig, reason: str, request: bytes, load: int = 0) -> Refused:
    return assert_refused(rig, reason, lambda: rig.centre.online_session(request, load))


# 1. the story -------------------------------------------------------------------------------
def test_story_issue_load_steal_lock_find_unlock(rig: IssuerRig) -> None:
    alice = rig.new_card("Alice", b"4321")
    assert alice.card_id == card_id_for(1) == b"P0000001"
    assert card_state(alice) is LifeCycle.ACTIVE
    assert record(rig, alice).status is CardState.ACTIVE
    assert rig.centre.deposit("Alice", DEPOSIT) == DEPOSIT

    # renewal with a load: the money moves from the account to the card
    reply = rig.session(alice, load=LOAD)
    assert reply.kind is ReplyKind.UPDATE
    assert reply.serial == 1
    assert reply.actions == UpdateAction.RENEW | UpdateAction.LOAD
    assert balance_of(alice) == LOAD
    assert credential_on(alice).serial == 1
    assert record(rig, alice).credential_serial == 1
    assert rig.centre.holder_balance("Alice") == DEPOSIT - LOAD
    alice.pay(300, rig.clock())
    assert balance_of(alice) == LOAD - 300

    # stolen: the next session answers the lock order, and the card obeys it
    version = rig.centre.report(alice.card_id, CardState.STOLEN)
    assert record(rig, alice).status is CardState.STOLEN
    entry = listing(rig, alice.card_id)
    assert entry is not None
    assert entry.added_version == version
    rig.clock.advance(60)
    locked = rig.session(alice)
    assert locked.kind is ReplyKind.LOCK
    assert locked.envelope == entry.lock_order
    assert parse_envelope(locked.envelope).kind == ObjectKind.LOCK_ORDER
    assert card_state(alice) is LifeCycle.LOCKED
    assert sw_of(lambda: alice.pay(100, rig.clock())) == SW.CARD_LOCKED
    assert balance_of(alice) == LOAD - 300

    # still stolen: the lock order again, no renewal
    rig.clock.advance(60)
    again = rig.session(alice)
    assert again.kind is ReplyKind.LOCK
    assert again.envelope == entry.lock_order
    assert card_state(alice) is LifeCycle.LOCKED
    assert record(rig, alice).credential_serial == 1
    assert [r.serial for r in renewals(rig, alice)] == [1]
    assert credential_on(alice).serial == 1
    assert events(rig, alice).count("lock_order_sent") == 2

    # found: off the list, and the next session unlocks and renews
    rig.centre.found(alice.card_id)
    assert listing(rig, alice.card_id) is None
    assert record(rig, alice).status is CardState.ACTIVE
    assert record(rig, alice).unlock_requested
    rig.clock.advance(60)
    unlocked = rig.session(alice)
    assert unlocked.kind is ReplyKind.UPDATE
    assert unlocked.actions == UpdateAction.RENEW | UpdateAction.UNLOCK
    assert update_body(unlocked).actions == UpdateAction.RENEW | UpdateAction.UNLOCK
    assert card_state(alice) is LifeCycle.ACTIVE
    assert credential_on(alice).serial == 2
    alice.pay(100, rig.clock())
    assert balance_of(alice) == LOAD - 400

    # the card's next request proves the unlock arrived: no UNLOCK any more
    plain = rig.session(alice)
    assert plain.actions == UpdateAction.RENEW
    assert not record(rig, alice).unlock_requested
    assert [r.outcome for r in renewals(rig, alice)] == [
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.PENDING,
    ]
    log = events(rig, alice)
    for event in ("card_issued", "renewal", "reported_stolen", "found"):
        assert event in log


# 2. and 3. clones -------------------------------------------------------------------------------
def test_clone_whose_counter_went_back_is_refused(rig: IssuerRig, tmp_path: Path) -> None:
    """The card lives in an image file; the clone is a copy of that file."""
    image = tmp_path / "alice.card"
    card = Card.create(image)
    client = connect(card)
    card_id, pin = rig.centre.issue(client, "Alice", b"1234")
    alice = CardHandle(card, client, card_id, pin)
    rig.centre.deposit("Alice", DEPOSIT)
    rig.session(alice, load=LOAD)

    shutil.copy(image, tmp_path / "copy.card")
    copy = Card.open(tmp_path / "copy.card")
    twin = CardHandle(copy, connect(copy), card_id, pin)
    twin.client.select()
    alice.client.select()
    assert twin.client.status() == alice.client.status()

    # the genuine card moves on: a renewal and two payments
    rig.session(alice)
    alice.pay(100, rig.clock())
    alice.pay(100, rig.clock())
    rig.session(alice)
    genuine = record(rig, alice)
    # BEGIN ONLINE and the update each take an ATC: 1-2 loaded (copied here),
    # 3-4 renewal, 5-6 payments, 7 the last request
    assert genuine.last_atc == 7
    assert data_int(twin, Tag.ATC) == 2

    refusal = session_refused(rig, "clone_suspected", rig.request(twin))
    assert "counter 3 is not above the 7 already seen" in str(refusal)
    after = record(rig, alice)
    assert (after.last_atc, after.shadow_balance, after.credential_serial) == (
        genuine.last_atc,
        genuine.shadow_balance,
        genuine.credential_serial,
    )
    # the genuine card is not disturbed
    assert rig.session(alice).kind is ReplyKind.UPDATE


def test_old_request_sent_after_the_card_moved_on_is_refused(rig: IssuerRig) -> None:
    alice = loaded_card(rig)
    early = rig.request(alice)
    alice.pay(100, rig.clock())
    rig.session(alice)
    session_refused(rig, "clone_suspected", early)


def test_clone_reaching_a_counter_already_seen_is_refused(rig: IssuerRig) -> None:
    """Every request has its own ATC: a second request with an ATC seen before is a copy."""
    alice = loaded_card(rig)  # ATC 2
    twin = clone(alice)
    alice.pay(100, rig.clock())  # ATC 3, balance 900
    rig.session(alice)  # request ATC 4 seen, update ATC 5
    twin.pay(50, rig.clock())  # ATC 3, balance 950
    assert record(rig, alice).last_atc == 4

    refusal = session_refused(rig, "clone_suspected", rig.request(twin))  # its request: ATC 4
    assert "counter 4 is not above the 4 already seen" in str(refusal)


def test_balance_above_the_shadow_balance_is_refused(rig: IssuerRig) -> None:
    """A clone keeps money the genuine card spent: its balance exceeds what the issuer allows.

    The clone also runs its counter past the genuine card's, so only the
    shadow balance (confirmed loads minus settled payments) can tell.
    """
    alice = loaded_card(rig)  # balance 1000
    twin = clone(alice)
    receipt = alice.pay(600, rig.clock())
    report = rig.centre.settle(POS_ID, [alice.item(receipt)])
    assert report.credited == 600
    rig.session(alice)  # confirms the load: shadow 1000 - 600
    assert record(rig, alice).shadow_balance == 400
    for _ in range(3):
        twin.pay(10, rig.clock())
    assert data_int(twin, Tag.ATC) > record(rig, alice).last_atc
    assert balance_of(twin) == 970

    refusal = session_refused(rig, "clone_suspected", rig.request(twin))
    for part in ("shadow balance", "970", "400"):
        assert part in str(refusal)
    # the genuine card's pending renewal was not voided by the clone's request
    assert renewals(rig, alice)[-1].outcome is Outcome.PENDING
    rig.session(alice)
    assert renewals(rig, alice)[1].outcome is Outcome.APPLIED


# 4. reconciliation of updates ----------------------------------------------------------------
def test_update_that_never_reached_the_card_is_void_and_refunded(rig: IssuerRig) -> None:
    alice = rig.new_card("Alice")
    rig.centre.deposit("Alice", DEPOSIT)
    lost = rig.centre.online_session(rig.request(alice), LOAD)  # never sent to the card
    assert lost.load == LOAD
    assert rig.centre.holder_balance("Alice") == DEPOSIT - LOAD
    assert [(r.serial, r.load, r.outcome) for r in renewals(rig, alice)] == [
        (1, LOAD, Outcome.PENDING)
    ]

    rig.clock.advance(60)
    reply = rig.session(alice)
    assert reply.serial == 2
    assert [(r.serial, r.outcome) for r in renewals(rig, alice)] == [
        (1, Outcome.VOID),
        (2, Outcome.PENDING),
    ]
    assert rig.centre.holder_balance("Alice") == DEPOSIT
    assert balance_of(alice) == 0
    assert record(rig, alice).shadow_balance == 0
    assert credential_on(alice).serial == 2
    assert "update_void" in events(rig, alice)


def test_applied_update_adds_its_load_to_the_shadow_balance(rig: IssuerRig) -> None:
    alice = loaded_card(rig)
    assert balance_of(alice) == LOAD
    assert record(rig, alice).shadow_balance == 0  # not confirmed yet
    rig.clock.advance(60)
    rig.session(alice)
    assert record(rig, alice).shadow_balance == LOAD
    assert [(r.serial, r.outcome) for r in renewals(rig, alice)] == [
        (1, Outcome.APPLIED),
        (2, Outcome.PENDING),
    ]
    assert rig.centre.holder_balance("Alice") == DEPOSIT - LOAD
    assert "update_void" not in events(rig, alice)


def test_stale_request_cannot_void_a_load_the_card_applied(rig: IssuerRig) -> None:
    """The holder asks the card for two requests and keeps the first one back.

    The second opens a session that loads the card. Were the first sent then
    and taken for news, its credential serial (older than the load's) would
    make the issuer void the applied load and pay it back: money twice. Each
    request has its own ATC, so the held-back one shows a counter going
    backwards and is refused.
    """
    alice = rig.new_card("Alice")
    rig.centre.deposit("Alice", DEPOSIT)
    kept_back = rig.request(alice)
    rig.session(alice, load=LOAD)
    assert balance_of(alice) == LOAD
    session_refused(rig, "clone_suspected", kept_back)
    assert renewals(rig, alice)[-1].outcome is Outcome.PENDING
    account = rig.centre.holder_balance("Alice")
    assert account is not None
    assert account + balance_of(alice) == DEPOSIT


# 5. refusals ---------------------------------------------------------------------------------
def test_request_from_another_issuers_card_is_refused(rig: IssuerRig, tmp_path: Path) -> None:
    other = make_issuer(tmp_path / "other")
    stranger = other.new_card("Mallory")
    refusal = session_refused(rig, "unknown_card", rig.request(stranger))
    assert refusal.card_id is None

    # once this issuer has a card with the same number, the key tells them apart
    alice = rig.new_card("Alice")
    assert alice.card_id == stranger.card_id
    session_refused(rig, "bad_signature", rig.request(stranger))


def test_request_with_a_bad_signature_is_refused(rig: IssuerRig) -> None:
    alice = loaded_card(rig)
    raw = rig.request(alice)
    flipped = raw[:-1] + bytes([raw[-1] ^ 0x01])
    refusal = session_refused(rig, "bad_signature", flipped)
    assert refusal.card_id == alice.card_id

    # a raised balance in a genuine envelope breaks the signature too
    body = request_body(raw)
    assert body.balance == LOAD
    richer = replace(body, balance=50_000).encode()
    assert len(richer) == len(body.encode())
    forged = raw[:BODY_OFFSET] + richer + raw[BODY_OFFSET + len(richer) :]
    assert request_body(forged).balance == 50_000
    session_refused(rig, "bad_signature", forged)
    # neither refusal spent the genuine request
    assert rig.centre.online_session(raw).kind is ReplyKind.UPDATE


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda raw: b"", id="empty"),
        pytest.param(lambda raw: b"not a request at all", id="garbage"),
        pytest.param(lambda raw: raw[:-1], id="truncated"),
        pytest.param(lambda raw: raw + b"\x00", id="trailing-byte"),
    ],
)
def test_malformed_request_is_refused(rig: IssuerRig, mangle: Callable[[bytes], bytes]) -> None:
    alice = loaded_card(rig)
    session_refused(rig, "malformed", mangle(rig.request(alice)))


@pytest.mark.parametrize("kind", ["certificate", "credential", "receipt"])
def test_signed_object_of_another_kind_is_refused(rig: IssuerRig, kind: str) -> None:
    """Even a receipt, signed by the card's own key, is not a request."""
    alice = loaded_card(rig)
    alice.client.select()
    envelope = {
        "certificate": lambda: alice.client.get_data(Tag.CERTIFICATE),
        "credential": lambda: alice.client.get_data(Tag.CREDENTIAL),
        "receipt": lambda: alice.pay(100, rig.clock()),
    }[kind]()
    refusal = session_refused(rig, "malformed", envelope)
    assert "not a request" in str(refusal)


def test_replayed_request_is_refused(rig: IssuerRig) -> None:
    alice = loaded_card(rig)
    raw = rig.request(alice)
    reply = rig.centre.online_session(raw)
    alice.client.issuer_update(reply.envelope)
    refusal = session_refused(rig, "replayed_request", raw)
    assert refusal.card_id == alice.card_id


def test_load_above_the_holders_funds_is_refused(rig: IssuerRig) -> None:
    alice = rig.new_card("Alice")
    rig.centre.deposit("Alice", 500)
    raw = rig.request(alice)
    session_refused(rig, "insufficient_account_funds", raw, load=501)
    # the refused request was not spent: the same request may load what there is
    reply = rig.centre.online_session(raw, 500)
    alice.client.issuer_update(reply.envelope)
    assert balance_of(alice) == 500
    assert rig.centre.holder_balance("Alice") == 0


def test_load_above_the_cards_max_balance_is_refused(rig: IssuerRig) -> None:
    alice = loaded_card(rig)  # balance 1000
    rig.centre.deposit("Alice", 200_000)
    max_balance = record(rig, alice).max_balance
    assert max_balance == rig.centre.policy.max_balance == data_int(alice, Tag.MAX_BALANCE)
    raw = rig.request(alice)
    session_refused(rig, "over_max_balance", raw, load=max_balance - LOAD + 1)
    reply = rig.centre.online_session(raw, max_balance - LOAD)
    alice.client.issuer_update(reply.envelope)
    assert balance_of(alice) == max_balance


def test_negative_load_is_refused(rig: IssuerRig) -> None:
    alice = loaded_card(rig)
    session_refused(rig, "bad_amount", rig.request(alice), load=-1)


def test_locked_card_without_an_unlock_request_is_refused(rig: IssuerRig) -> None:
    """The card is locked although the registry has it active, with no unlock asked.

    No operation of the centre leads there (a found card always has its
    unlock requested), so the card is locked by a lock order signed with its
    issuer key outside the blocklist.
    """
    alice = loaded_card(rig)
    alice.client.select()
    alice.client.lock(rig.centre.keys.current.lock_order(alice.card_id, rig.clock() + 1))
    assert card_state(alice) is LifeCycle.LOCKED
    session_refused(rig, "card_locked", rig.request(alice))

    # once the operator asks, the next session unlocks it
    rig.centre.request_unlock(alice.card_id)
    rig.clock.advance(60)
    reply = rig.session(alice)
    assert reply.actions & UpdateAction.UNLOCK
    assert card_state(alice) is LifeCycle.ACTIVE


def test_report_of_an_unknown_card_is_refused(rig: IssuerRig) -> None:
    rig.new_card("Alice")
    refusal = assert_refused(
        rig, "unknown_card", lambda: rig.centre.report(b"P9999999", CardState.LOST)
    )
    assert refusal.card_id == b"P9999999"


def test_report_of_a_reported_card_is_refused(rig: IssuerRig) -> None:
    alice = loaded_card(rig)
    rig.centre.report(alice.card_id, CardState.LOST)
    assert_refused(rig, "not_active", lambda: rig.centre.report(alice.card_id, CardState.STOLEN))
    assert record(rig, alice).status is CardState.LOST


def test_report_for_a_reason_other_than_lost_or_stolen_is_refused(rig: IssuerRig) -> None:
    alice = loaded_card(rig)
    assert_refused(
        rig, "bad_reason", lambda: rig.centre.report(alice.card_id, CardState.TERMINATED)
    )


def test_found_of_an_active_card_is_refused(rig: IssuerRig) -> None:
    alice = loaded_card(rig)
    assert_refused(rig, "not_reported", lambda: rig.centre.found(alice.card_id))
    assert_refused(rig, "unknown_card", lambda: rig.centre.found(b"P9999999"))


def test_operator_requests_on_unknown_or_reported_cards_are_refused(rig: IssuerRig) -> None:
    alice = loaded_card(rig)
    rig.centre.report(alice.card_id, CardState.STOLEN)
    assert_refused(rig, "not_active", lambda: rig.centre.request_unlock(alice.card_id))
    assert_refused(rig, "unknown_card", lambda: rig.centre.request_unlock(b"P9999999"))
    assert_refused(rig, "unknown_card", lambda: rig.centre.request_pin_unblock(b"P9999999"))


# 6. operator requests ------------------------------------------------------------------------
def test_pin_unblock_request_resets_the_try_counter(rig: IssuerRig) -> None:
    alice = loaded_card(rig, load=3_000)
    assert [verify_sw(alice, b"9999") for _ in range(3)] == [0x63C2, 0x63C1, 0x63C0]
    assert verify_sw(alice, alice.pin) == SW.AUTH_METHOD_BLOCKED
    assert data_int(alice, Tag.PIN_TRIES) == 0

    # an ordinary session does not unblock
    assert not rig.session(alice).actions & UpdateAction.UNBLOCK_PIN
    assert data_int(alice, Tag.PIN_TRIES) == 0

    rig.centre.request_pin_unblock(alice.card_id)
    assert record(rig, alice).unblock_requested
    reply = rig.session(alice)
    assert reply.actions == UpdateAction.RENEW | UpdateAction.UNBLOCK_PIN
    assert data_int(alice, Tag.PIN_TRIES) == 3
    assert verify_sw(alice, alice.pin) == SW.OK
    alice.pay(rig.centre.policy.no_pin_limit + 1, rig.clock())  # needs the PIN

    assert not rig.session(alice).actions & UpdateAction.UNBLOCK_PIN
    assert not record(rig, alice).unblock_requested
    assert "pin_unblock_requested" in events(rig, alice)


def test_unlock_of_an_active_card_voids_its_older_lock_orders(rig: IssuerRig) -> None:
    """Reported, then found before the card ever met its lock order."""
    alice = loaded_card(rig)
    rig.centre.report(alice.card_id, CardState.LOST)
    entry = listing(rig, alice.card_id)
    assert entry is not None
    old_order = entry.lock_order
    rig.centre.found(alice.card_id)
    before_unlock = clone(alice)

    rig.clock.advance(60)
    reply = rig.session(alice)
    assert reply.actions == UpdateAction.RENEW | UpdateAction.UNLOCK
    alice.client.select()
    assert sw_of(lambda: alice.client.lock(old_order)) == SW.STALE_OBJECT
    assert card_state(alice) is LifeCycle.ACTIVE
    alice.pay(100, rig.clock())

    # the order itself is genuine: a copy of the card from before the unlock obeys it
    before_unlock.client.select()
    before_unlock.client.lock(old_order)
    assert card_state(before_unlock) is LifeCycle.LOCKED

    # a new report, in the very second of the unlock, still locks the card
    rig.centre.report(alice.card_id, CardState.STOLEN)
    assert rig.session(alice).kind is ReplyKind.LOCK
    assert card_state(alice) is LifeCycle.LOCKED


def test_unlock_request_on_an_active_card(rig: IssuerRig) -> None:
    alice = loaded_card(rig)
    rig.centre.request_unlock(alice.card_id)
    assert record(rig, alice).unlock_requested
    assert rig.session(alice).actions & UpdateAction.UNLOCK
    assert card_state(alice) is LifeCycle.ACTIVE
    assert not rig.session(alice).actions & UpdateAction.UNLOCK
    assert "unlock_requested" in events(rig, alice)


# 7. key rotation -----------------------------------------------------------------------------
def issuer_keys_on(handle: CardHandle) -> bytes:
    handle.client.select()
    return handle.client.get_data(Tag.ISSUER_KEYS)


def test_key_rotation(rig: IssuerRig) -> None:
    keys = rig.centre.keys
    first = keys.current.key_id
    alice = loaded_card(rig, "Alice")
    assert record(rig, alice).issuer_key_id == first
    assert issuer_keys_on(alice) == first + keys.get(first).public

    second = rig.centre.rotate_key()
    assert second != first
    assert keys.current.key_id == second
    assert set(keys.public_keys()) == {first, second}
    bob = loaded_card(rig, "Bob")
    assert record(rig, bob).issuer_key_id == second
    assert issuer_keys_on(bob) == second + keys.get(second).public
    assert issuer_keys_on(alice) == first + keys.get(first).public

    # each card is renewed with the key it trusts
    for handle, key_id in ((alice, first), (bob, second)):
        reply = rig.session(handle)
        assert parse_envelope(reply.envelope).key_id == key_id
        assert parse_envelope(update_body(reply).credential).key_id == key_id
        assert credential_on(handle).serial == 2

    # lock orders too; the blocklist file is signed by the current key
    rig.centre.report(alice.card_id, CardState.STOLEN)
    blocklist = rig.centre.blocklist()
    checked = verify_blocklist(blocklist, rig.trusted_keys())
    assert parse_envelope(checked.added[alice.card_id]).key_id == first
    only_new = {second: rig.trusted_keys()[second]}
    only_old = {first: rig.trusted_keys()[first]}
    assert set(verify_blocklist(blocklist, only_new).added) == {alice.card_id}
    with pytest.raises(SignedObjectError):
        verify_blocklist(blocklist, only_old)
    assert rig.session(alice).kind is ReplyKind.LOCK
    assert card_state(alice) is LifeCycle.LOCKED
    assert [e.detail for e in rig.centre.audit_log() if e.event == "key_rotated"] == [
        second.hex().upper()
    ]


def test_reopened_centre_keeps_every_key_and_the_current_one(rig: IssuerRig) -> None:
    first = rig.centre.keys.current.key_id
    alice = loaded_card(rig)
    second = rig.centre.rotate_key()
    public = rig.centre.keys.public_keys()
    rig.centre.close()

    reopened = IssuerCentre.open(rig.folder, clock=rig.clock)
    try:
        assert reopened.keys.current.key_id == second
        assert reopened.keys.public_keys() == public
        again = IssuerRig(reopened, rig.clock, rig.folder)
        reply = again.session(alice)  # the old card, from keys read back from disk
        assert parse_envelope(reply.envelope).key_id == first
        assert credential_on(alice).serial == 2
        bob = again.new_card("Bob")
        assert again.centre.card(bob.card_id).issuer_key_id == second
    finally:
        reopened.close()


# 8. key files --------------------------------------------------------------------------------
def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_files_are_readable_by_their_owner_only(rig: IssuerRig) -> None:
    rig.centre.rotate_key()
    folder = rig.folder / "keys"
    assert mode(folder) == 0o700
    names = sorted(p.name for p in folder.iterdir())
    expected = [f"{kid.hex().upper()}.pem" for kid in rig.centre.keys.public_keys()]
    assert names == sorted([*expected, "current"])
    for path in folder.iterdir():
        assert mode(path) == 0o600, path.name
    current = (folder / "current").read_text().strip()
    assert current == rig.centre.keys.current.key_id.hex().upper()


@pytest.mark.parametrize("which", ["pem", "current"])
def test_key_file_open_to_others_is_refused(rig: IssuerRig, which: str) -> None:
    folder = rig.folder / "keys"
    target = folder / "current" if which == "current" else next(folder.glob("*.pem"))
    KeyRing.open(folder)  # fine while private
    target.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        KeyRing.open(folder)
    with pytest.raises(KeyFileError, match="open to other users"):
        IssuerCentre.open(rig.folder, clock=rig.clock)
    target.chmod(0o600)
    assert KeyRing.open(folder).current.key_id == rig.centre.keys.current.key_id


def test_key_folder_made_beforehand_is_made_private(tmp_path: Path) -> None:
    folder = tmp_path / "issuer" / "keys"
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    centre = IssuerCentre.create(tmp_path / "issuer")
    try:
        assert mode(folder) == 0o700
    finally:
        centre.close()


def test_missing_key_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no issuer key ring"):
        KeyRing.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeyFileError):
        KeyRing.open(tmp_path / "empty")


# 9. the credential policy --------------------------------------------------------------------
def assert_credential_follows(cred: Credential, policy: Policy, now: int) -> None:
    assert cred.issued_at == now
    assert cred.expires_at == now + policy.credential_lifetime
    assert cred.offline_cap == policy.offline_cap
    assert cred.per_payment_limit == policy.per_payment_limit
    assert cred.no_pin_limit == policy.no_pin_limit
    assert cred.tolerance == policy.tolerance


def test_renewed_credential_follows_the_policy(rig: IssuerRig) -> None:
    alice = rig.new_card("Alice")
    rig.clock.advance(3_600)
    request = rig.request(alice)
    reply = rig.centre.online_session(request)
    alice.client.issuer_update(reply.envelope)

    cred = credential_on(alice)
    assert rig.centre.policy == Policy()
    assert_credential_follows(cred, rig.centre.policy, T0 + 3_600)
    assert cred.card_id == alice.card_id
    assert cred.serial == reply.serial == 1
    assert cred.card_nonce == request_body(request).card_nonce
    assert (reply.issued_at, reply.expires_at) == (cred.issued_at, cred.expires_at)
    assert parse_envelope(update_body(reply).credential).body == cred.encode()


def test_new_policy_changes_the_next_credential(rig: IssuerRig) -> None:
    alice = loaded_card(rig)
    policy = Policy(
        credential_lifetime=DAY, offline_cap=5_000, per_payment_limit=400, no_pin_limit=200
    )
    rig.centre.set_policy(policy)
    assert rig.centre.policy == policy
    rig.clock.advance(600)
    rig.session(alice)
    assert_credential_follows(credential_on(alice), policy, T0 + 600)
    assert sw_of(lambda: alice.pay(401, rig.clock())) == SW.OVER_PAYMENT_LIMIT
    alice.pay(400, rig.clock())

    reopened = IssuerCentre.open(rig.folder, clock=rig.clock)
    try:
        assert reopened.policy == policy
    finally:
        reopened.close()


def test_credential_does_not_outlive_the_certificate(rig: IssuerRig) -> None:
    alice = rig.new_card("Alice")
    cert_end = record(rig, alice).cert_expires_at
    assert cert_end == T0 + rig.centre.policy.certificate_lifetime
    rig.clock.now = cert_end - DAY
    reply = rig.session(alice)
    assert reply.expires_at == credential_on(alice).expires_at == cert_end

    rig.clock.now = cert_end
    session_refused(rig, "certificate_expired", rig.request(alice))


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"credential_lifetime": 0}, id="no-lifetime"),
        pytest.param({"max_balance": 0}, id="no-max-balance"),
        pytest.param({"currency": 1000}, id="currency-out-of-range"),
        pytest.param({"no_pin_limit": 10_001}, id="no-pin-above-per-payment"),
        pytest.param({"per_payment_limit": 20_001}, id="per-payment-above-cap"),
        pytest.param({"certificate_lifetime": DAY}, id="certificate-before-credential"),
        pytest.param({"tolerance": -1}, id="negative"),
        pytest.param({"offline_cap": 1 << 32}, id="above-u32"),
    ],
)
def test_inconsistent_policy_is_rejected(rig: IssuerRig, settings: dict[str, int]) -> None:
    with pytest.raises(IssuerError, match="policy"):
        Policy(**settings)
    assert rig.centre.policy == Policy()


# 10. issuing ---------------------------------------------------------------------------------
def test_issuing_a_card_that_is_not_blank_is_refused(rig: IssuerRig) -> None:
    alice = rig.new_card("Alice")
    with pytest.raises(Refused) as caught:
        rig.centre.issue(alice.client, "Bob")
    assert caught.value.reason == "not_blank"
    assert [c.card_id for c in rig.centre.cards()] == [alice.card_id]
    assert rig.centre.holder_balance("Bob") is None
    assert alice.client.status().card_id == alice.card_id
    assert rig.new_card("Carol").card_id == card_id_for(2)


def test_refused_issue_is_audited(rig: IssuerRig) -> None:
    alice = rig.new_card("Alice")
    before = rig.centre.audit_log()
    with pytest.raises(Refused):
        rig.centre.issue(alice.client, "Bob")
    assert [e.event for e in rig.centre.audit_log()[len(before) :]] == ["refused_not_blank"]


def test_issuing_a_card_without_a_purse_is_refused(rig: IssuerRig) -> None:
    bare = Card()
    bare.power_on()
    with pytest.raises(Refused) as caught:
        rig.centre.issue(PurseClient(CardChannel(LocalTransport(bare))), "Alice")
    assert caught.value.reason == "not_a_purse"
    assert rig.centre.cards() == []
    _card, client = blank_card()
    assert rig.centre.issue(client, "Alice")[0] == card_id_for(1)
