"""Every refusal of the purse: its exact status word, and not one byte of state changed.

Each negative case runs through :func:`refused`: it snapshots the card's
persistent store (``rig.snapshot()``, the committed cells, ATC included) and
its public status, runs the command, expects :class:`CardError` with the
documented status word, and checks the store is byte-for-byte what it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apdu.command import CommandApdu
from apdu.purse import (
    PIN_TRIES,
    PURSE_AID,
    CardCertificate,
    Credential,
    IssuerUpdate,
    LifeCycle,
    LockOrder,
    PayData,
    PersonaliseData,
    Tag,
    UpdateAction,
)
from apdu.purse_client import PurseClient
from apdu.response import ResponseApdu
from apdu.signed import SIGNATURE_LEN, ObjectKind, parse_envelope, seal
from apdu.status import SW, CardError
from card_os.card import Card
from card_os.purse import PurseApplet
from card_os.simulator import Simulator
from card_os.store import MemoryBackend
from card_os.tear import PowerLoss, TearHook, TearInjector
from issuer.signer import IssuerKey
from tests.purse_kit import (
    CARD_ID,
    CURRENCY,
    DAY,
    MAX_BALANCE,
    NONCE,
    PIN,
    T0,
    TERMINAL_ID,
    PurseRig,
    funded_rig,
    make_rig,
)

OTHER_CARD = b"CARD0002"
WRONG_PIN = b"9999"
NOW = T0 + DAY  # the issuer's time of the online sessions below
PREFIX = PURSE_AID.hex() + "/"
TRIES_CELL = PREFIX + "pin_tries"
KIND_OFFSET = 3  # magic (2) + version (1)
BODY_OFFSET = 2 + 1 + 1 + 8 + 2  # magic, version, kind, key ID, body length


# helpers -------------------------------------------------------------------------
def _without(cells: Mapping[str, bytes], ignore: Iterable[str]) -> dict[str, bytes]:
    suffixes = tuple(ignore)
    return {k: v for k, v in cells.items() if not (suffixes and k.endswith(suffixes))}


def refused(
    rig: PurseRig,
    sw: int,
    action: Callable[[], object],
    *,
    ignore: Iterable[str] = (),
) -> None:
    """``action`` is refused with ``sw`` and leaves the persistent state as it was.

    ``ignore`` names cell suffixes left out of the comparison (only the PIN
    try counter, which a wrong PIN must change).
    """
    ignore = tuple(ignore)
    before = rig.snapshot()
    status_before = rig.client.status()
    with pytest.raises(CardError) as info:
        action()
    assert info.value.sw == sw, f"expected {sw:04X}, got {info.value.sw:04X}"
    assert _without(rig.snapshot(), ignore) == _without(before, ignore)
    assert rig.client.status() == status_before  # ATC, balance, state, time mark, spent


def send(rig: PurseRig, cla: int, ins: int, p1: int, p2: int, data: bytes) -> ResponseApdu:
    return rig.sim.transmit(CommandApdu(cla, ins, p1, p2, data, 256))


def tries(rig: PurseRig) -> int:
    return rig.client.get_data(Tag.PIN_TRIES)[0]


def flip(raw: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(raw)
    out[offset] ^= mask
    return bytes(out)


def relabel(raw: bytes, kind: ObjectKind) -> bytes:
    """The same envelope with its (signed) kind byte edited."""
    out = bytearray(raw)
    out[KIND_OFFSET] = kind
    return bytes(out)


def credential_body(nonce: bytes, *, card_id: bytes = CARD_ID, serial: int = 100) -> bytes:
    return Credential(
        card_id=card_id,
        serial=serial,
        issued_at=NOW,
        expires_at=NOW + 7 * DAY,
        offline_cap=20_000,
        per_payment_limit=5_000,
        no_pin_limit=1_000,
        tolerance=300,
        card_nonce=nonce,
    ).encode()


def update_body(
    nonce: bytes,
    actions: UpdateAction,
    *,
    card_id: bytes = CARD_ID,
    load: int = 0,
    credential: bytes = b"",
) -> bytes:
    return IssuerUpdate(card_id, nonce, NOW, actions, load, credential).encode()


def renewal(rig: PurseRig, nonce: bytes, credential: bytes) -> bytes:
    """An update for this card and session, correctly signed, carrying ``credential``."""
    return rig.issuer.update(CARD_ID, nonce, NOW, UpdateAction.RENEW, credential=credential)


def blank_rig(tear: TearHook | None = None, backend: MemoryBackend | None = None) -> PurseRig:
    card = Card(backend, tear=tear)
    sim = Simulator(card)
    sim.install(PURSE_AID, PurseApplet)
    client = PurseClient(sim.channel)
    client.select()
    return PurseRig(sim, client, IssuerKey.generate(), b"")


def personalised_rig() -> PurseRig:
    """A card that has its identity but no certificate yet (PERSONALISED)."""
    rig = blank_rig()
    rig.card_public = rig.client.personalise(
        PersonaliseData(CARD_ID, CURRENCY, MAX_BALANCE, PIN, rig.issuer.key_id, rig.issuer.public)
    )
    assert rig.client.status().state is LifeCycle.PERSONALISED
    return rig


def activate(rig: PurseRig) -> None:
    cert = rig.issuer.certificate(CARD_ID, rig.card_public, T0 - DAY, T0 + 365 * DAY)
    rig.client.store_certificate(cert)


# signatures ------------------------------------------------------------------------
def test_update_signed_by_an_unknown_key() -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    stranger = IssuerKey.generate()
    update = stranger.update(CARD_ID, nonce, NOW, UpdateAction.LOAD, load_amount=100)
    refused(rig, SW.UNKNOWN_KEY, lambda: rig.client.issuer_update(update))


def test_credential_signed_by_an_unknown_key_inside_a_valid_update() -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    stranger = IssuerKey.generate()
    cred = stranger.sign(ObjectKind.CREDENTIAL, credential_body(nonce))
    refused(rig, SW.UNKNOWN_KEY, lambda: rig.client.issuer_update(renewal(rig, nonce, cred)))


def test_update_forged_under_the_real_key_id() -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    forger = IssuerKey.generate()
    body = update_body(nonce, UpdateAction.LOAD, load=100)
    forged = seal(ObjectKind.ISSUER_UPDATE, rig.issuer.key_id, body, forger.private)
    refused(rig, SW.BAD_SIGNATURE, lambda: rig.client.issuer_update(forged))


def test_credential_forged_under_the_real_key_id() -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    forger = IssuerKey.generate()
    cred = seal(ObjectKind.CREDENTIAL, rig.issuer.key_id, credential_body(nonce), forger.private)
    refused(rig, SW.BAD_SIGNATURE, lambda: rig.client.issuer_update(renewal(rig, nonce, cred)))


@pytest.mark.parametrize("offset", [-1, -17, -32, -33, -48, -SIGNATURE_LEN])
def test_update_with_flipped_signature_bytes(offset: int) -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    update = rig.issuer.update(CARD_ID, nonce, NOW, UpdateAction.LOAD, load_amount=100)
    refused(rig, SW.BAD_SIGNATURE, lambda: rig.client.issuer_update(flip(update, offset, 0x80)))
    rig.client.issuer_update(update)  # the genuine one, same session, is accepted


@pytest.mark.parametrize("field_offset", [0, 7, 8, 12, 20, 35, 43])
def test_tampered_credential_body(field_offset: int) -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    cred = rig.issuer.sign(ObjectKind.CREDENTIAL, credential_body(nonce))
    tampered = flip(cred, BODY_OFFSET + field_offset)
    refused(rig, SW.BAD_SIGNATURE, lambda: rig.client.issuer_update(renewal(rig, nonce, tampered)))


@pytest.mark.parametrize(
    "field_offset",
    [0, 8, 24, 28, 29, 32],  # card ID, nonce, issuer time, actions, load amount (twice)
)
def test_tampered_update_body(field_offset: int) -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    update = rig.issuer.update(CARD_ID, nonce, NOW, UpdateAction.LOAD, load_amount=100)
    refused(
        rig,
        SW.BAD_SIGNATURE,
        lambda: rig.client.issuer_update(flip(update, BODY_OFFSET + field_offset)),
    )


def test_tampered_key_id_is_an_unknown_key() -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    update = rig.issuer.update(CARD_ID, nonce, NOW, UpdateAction.LOAD, load_amount=100)
    refused(rig, SW.UNKNOWN_KEY, lambda: rig.client.issuer_update(flip(update, 4)))


# wrong card ----------------------------------------------------------------------------
def test_credential_for_another_card_inside_a_valid_update() -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    cred = rig.issuer.sign(ObjectKind.CREDENTIAL, credential_body(nonce, card_id=OTHER_CARD))
    refused(rig, SW.WRONG_CARD, lambda: rig.client.issuer_update(renewal(rig, nonce, cred)))


def test_update_for_another_card() -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    update = rig.issuer.update(OTHER_CARD, nonce, NOW, UpdateAction.LOAD, load_amount=100)
    refused(rig, SW.WRONG_CARD, lambda: rig.client.issuer_update(update))


# stale sessions --------------------------------------------------------------------------
def test_credential_from_an_earlier_session() -> None:
    rig = funded_rig()
    old_nonce = rig.begin().card_nonce
    old_cred = rig.credential_for(old_nonce, NOW)
    new_nonce = rig.begin().card_nonce
    assert new_nonce != old_nonce
    update = renewal(rig, new_nonce, old_cred)
    refused(rig, SW.STALE_SESSION, lambda: rig.client.issuer_update(update))


def test_update_replayed() -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    update = rig.issuer.update(CARD_ID, nonce, NOW, UpdateAction.LOAD, load_amount=100)
    rig.client.issuer_update(update)
    refused(rig, SW.STALE_SESSION, lambda: rig.client.issuer_update(update))
    rig.begin()  # a new session does not revive the old update either
    refused(rig, SW.STALE_SESSION, lambda: rig.client.issuer_update(update))
    assert rig.client.status().balance == 10_100


def test_update_without_begin_online() -> None:
    rig = funded_rig()
    update = rig.issuer.update(CARD_ID, NONCE, NOW, UpdateAction.LOAD, load_amount=100)
    refused(rig, SW.STALE_SESSION, lambda: rig.client.issuer_update(update))


def test_update_after_a_card_reset() -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    update = rig.issuer.update(CARD_ID, nonce, NOW, UpdateAction.LOAD, load_amount=100)
    rig.sim.reset()
    rig.client.select()
    refused(rig, SW.STALE_SESSION, lambda: rig.client.issuer_update(update))


# domain separation ------------------------------------------------------------------------
def test_receipt_offered_as_issuer_update_or_lock_order() -> None:
    rig = funded_rig()
    receipt = rig.pay(100, T0 + 60)
    assert parse_envelope(receipt).kind == ObjectKind.RECEIPT
    rig.begin()
    refused(rig, SW.WRONG_OBJECT_KIND, lambda: rig.client.issuer_update(receipt))
    refused(rig, SW.WRONG_OBJECT_KIND, lambda: rig.client.lock(receipt))


def test_online_request_offered_as_issuer_update() -> None:
    rig = funded_rig()
    request = rig.client.begin_online()
    refused(rig, SW.WRONG_OBJECT_KIND, lambda: rig.client.issuer_update(request))


def test_lock_order_offered_as_issuer_update() -> None:
    rig = funded_rig()
    rig.begin()
    order = rig.issuer.lock_order(CARD_ID, NOW)
    refused(rig, SW.WRONG_OBJECT_KIND, lambda: rig.client.issuer_update(order))


def test_credential_sent_directly_as_issuer_update() -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    cred = rig.credential_for(nonce, NOW)
    refused(rig, SW.WRONG_OBJECT_KIND, lambda: rig.client.issuer_update(cred))


def test_credential_sent_to_lock() -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    cred = rig.credential_for(nonce, NOW)
    refused(rig, SW.WRONG_OBJECT_KIND, lambda: rig.client.lock(cred))


def test_update_inside_an_update_as_credential() -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    inner = rig.issuer.update(CARD_ID, nonce, NOW, UpdateAction.LOAD, load_amount=100)
    update = renewal(rig, nonce, inner)
    refused(rig, SW.WRONG_OBJECT_KIND, lambda: rig.client.issuer_update(update))


def test_relabelled_lock_order_as_issuer_update() -> None:
    """The kind byte is signed: re-labelling passes the kind check, then fails the signature."""
    rig = funded_rig()
    rig.begin()
    order = relabel(rig.issuer.lock_order(CARD_ID, NOW), ObjectKind.ISSUER_UPDATE)
    refused(rig, SW.BAD_SIGNATURE, lambda: rig.client.issuer_update(order))


def test_relabelled_credential_as_lock_order() -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    cred = relabel(rig.credential_for(nonce, NOW), ObjectKind.LOCK_ORDER)
    refused(rig, SW.BAD_SIGNATURE, lambda: rig.client.lock(cred))


def test_relabelled_update_as_credential() -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    inner = rig.issuer.update(CARD_ID, nonce, NOW, UpdateAction.LOAD, load_amount=100)
    update = renewal(rig, nonce, relabel(inner, ObjectKind.CREDENTIAL))
    refused(rig, SW.BAD_SIGNATURE, lambda: rig.client.issuer_update(update))


def test_relabelled_receipt_as_issuer_update() -> None:
    """A card-signed object names the card ID as its key: no issuer key has it."""
    rig = funded_rig()
    receipt = relabel(rig.pay(100, T0 + 60), ObjectKind.ISSUER_UPDATE)
    rig.begin()
    refused(rig, SW.UNKNOWN_KEY, lambda: rig.client.issuer_update(receipt))


# PAY ---------------------------------------------------------------------------------------
def test_pay_clock_rollback() -> None:
    rig = funded_rig()  # time mark T0, tolerance 300
    refused(rig, SW.CLOCK_ROLLBACK, lambda: rig.pay(100, T0 - 301))
    rig.pay(100, T0 - 300)  # within the tolerance
    rig.pay(100, T0 + 5_000)  # raises the mark
    refused(rig, SW.CLOCK_ROLLBACK, lambda: rig.pay(100, T0 + 4_699))
    rig.pay(100, T0 + 4_700)


def test_pay_at_expiry() -> None:
    rig = funded_rig()
    expires_at = T0 + rig.policy.lifetime
    refused(rig, SW.CREDENTIAL_EXPIRED, lambda: rig.pay(100, expires_at))
    refused(rig, SW.CREDENTIAL_EXPIRED, lambda: rig.pay(100, expires_at + 365 * DAY))
    rig.pay(100, expires_at - 1)
    assert rig.client.status().balance == 9_900


def test_pay_over_the_per_payment_limit() -> None:
    rig = funded_rig()
    rig.client.verify_pin(PIN)
    refused(rig, SW.OVER_PAYMENT_LIMIT, lambda: rig.pay(5_001, T0 + 60))
    rig.pay(5_000, T0 + 60)


def test_pay_over_the_balance() -> None:
    rig = funded_rig(balance=500)
    refused(rig, SW.INSUFFICIENT_FUNDS, lambda: rig.pay(501, T0 + 60))
    rig.pay(500, T0 + 60)
    refused(rig, SW.INSUFFICIENT_FUNDS, lambda: rig.pay(1, T0 + 61))


def test_pay_over_the_offline_cap_left() -> None:
    rig = funded_rig(balance=50_000)  # cap 20 000, per payment 5 000
    for i in range(4):
        rig.client.verify_pin(PIN)  # one VERIFY per payment above the no-PIN limit
        rig.pay(5_000, T0 + 60 + i)
    assert rig.client.status().offline_spent == 20_000
    refused(rig, SW.OFFLINE_CAP_EXCEEDED, lambda: rig.pay(1, T0 + 100))
    rig.renew(T0 + 200)  # a renewal resets what was spent
    rig.pay(1, T0 + 300)


def test_pay_partly_over_the_offline_cap_left() -> None:
    rig = funded_rig(balance=50_000)
    for i in range(3):
        rig.client.verify_pin(PIN)
        rig.pay(5_000, T0 + 60 + i)
    rig.client.verify_pin(PIN)
    rig.pay(4_000, T0 + 70)
    rig.client.verify_pin(PIN)
    refused(rig, SW.OFFLINE_CAP_EXCEEDED, lambda: rig.pay(1_001, T0 + 100))
    rig.pay(1_000, T0 + 100)


def test_pay_above_the_no_pin_limit_needs_verify() -> None:
    rig = funded_rig()
    refused(rig, SW.SECURITY_STATUS_NOT_SATISFIED, lambda: rig.pay(1_001, T0 + 60))
    rig.pay(1_000, T0 + 60)
    rig.client.verify_pin(PIN)
    rig.pay(1_001, T0 + 61)
    rig.sim.reset()  # the verified flag is transient
    rig.client.select()
    refused(rig, SW.SECURITY_STATUS_NOT_SATISFIED, lambda: rig.pay(1_001, T0 + 62))


def test_pay_without_credential() -> None:
    rig = make_rig()
    refused(rig, SW.NO_CREDENTIAL, lambda: rig.pay(100, T0))


def test_pay_zero() -> None:
    rig = funded_rig()
    refused(rig, SW.WRONG_DATA, lambda: rig.pay(0, T0 + 60))


def test_pay_on_a_locked_card() -> None:
    rig = funded_rig()
    rig.client.lock(rig.issuer.lock_order(CARD_ID, T0 + 10))
    refused(rig, SW.CARD_LOCKED, lambda: rig.pay(100, T0 + 60))


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        7,
        8,
        16,
        31,
        33,
        64,
    ],
)
def test_pay_malformed_data(size: int) -> None:
    rig = funded_rig()
    data = PayData(100, T0 + 60, TERMINAL_ID, NONCE).encode()
    data = (data + bytes(64))[:size]
    refused(rig, SW.WRONG_LENGTH, lambda: send(rig, 0x80, 0x54, 0, 0, data).check())


def test_pay_wrong_p1p2() -> None:
    rig = funded_rig()
    data = PayData(100, T0 + 60, TERMINAL_ID, NONCE).encode()
    refused(rig, SW.INCORRECT_P1P2, lambda: send(rig, 0x80, 0x54, 1, 0, data).check())


# PIN ----------------------------------------------------------------------------------------
def test_pin_brute_force_blocks() -> None:
    rig = funded_rig()
    for left in (2, 1, 0):
        refused(
            rig,
            SW.tries_left(left),
            lambda: rig.client.verify_pin(WRONG_PIN),
            ignore=["pin_tries"],
        )
        assert tries(rig) == left
    # blocked: the right PIN is refused too, and that refusal writes nothing at all
    refused(rig, SW.AUTH_METHOD_BLOCKED, lambda: rig.client.verify_pin(PIN))
    refused(rig, SW.AUTH_METHOD_BLOCKED, lambda: rig.client.change_pin(PIN, b"5678"))
    refused(rig, SW.AUTH_METHOD_BLOCKED, lambda: send(rig, 0x00, 0x20, 0, 0x80, b"").check())
    refused(rig, SW.SECURITY_STATUS_NOT_SATISFIED, lambda: rig.pay(1_001, T0 + 60))


def test_wrong_pin_via_change_pin_costs_a_try() -> None:
    rig = funded_rig()
    refused(
        rig,
        SW.tries_left(2),
        lambda: rig.client.change_pin(WRONG_PIN, b"5678"),
        ignore=["pin_tries"],
    )
    assert tries(rig) == 2
    rig.client.change_pin(PIN, b"5678")
    assert tries(rig) == PIN_TRIES
    refused(rig, SW.tries_left(2), lambda: rig.client.verify_pin(PIN), ignore=["pin_tries"])
    rig.client.verify_pin(b"5678")


def test_pin_tries_survive_a_reset() -> None:
    rig = funded_rig()
    for _ in range(2):
        with pytest.raises(CardError):
            rig.client.verify_pin(WRONG_PIN)
    rig.sim.reset()
    rig.client.select()
    assert tries(rig) == 1
    with pytest.raises(CardError) as info:
        rig.client.verify_pin(WRONG_PIN)
    assert info.value.sw == SW.tries_left(0)
    rig.sim.reset()
    rig.client.select()
    assert tries(rig) == 0
    refused(rig, SW.AUTH_METHOD_BLOCKED, lambda: rig.client.verify_pin(PIN))


def test_correct_pin_resets_the_counter() -> None:
    rig = funded_rig()
    for _ in range(2):
        with pytest.raises(CardError):
            rig.client.verify_pin(WRONG_PIN)
    assert tries(rig) == 1
    rig.client.verify_pin(PIN)
    assert tries(rig) == PIN_TRIES
    assert rig.snapshot()[TRIES_CELL] == bytes([PIN_TRIES])


def test_empty_verify_reports_the_tries() -> None:
    rig = funded_rig()
    refused(rig, SW.tries_left(3), lambda: send(rig, 0x00, 0x20, 0, 0x80, b"").check())
    with pytest.raises(CardError):
        rig.client.verify_pin(WRONG_PIN)
    refused(rig, SW.tries_left(2), lambda: send(rig, 0x00, 0x20, 0, 0x80, b"").check())
    rig.client.verify_pin(PIN)
    assert send(rig, 0x00, 0x20, 0, 0x80, b"").sw == SW.OK


def test_unblock_pin_update_restores_a_blocked_pin() -> None:
    rig = funded_rig()
    for _ in range(3):
        with pytest.raises(CardError):
            rig.client.verify_pin(WRONG_PIN)
    assert tries(rig) == 0
    nonce = rig.begin().card_nonce  # BEGIN ONLINE needs no PIN
    rig.client.issuer_update(rig.issuer.update(CARD_ID, nonce, NOW, UpdateAction.UNBLOCK_PIN))
    assert tries(rig) == PIN_TRIES
    rig.client.verify_pin(PIN)
    rig.pay(1_001, NOW + 60)


def test_wrong_pin_torn_at_every_point_never_answers_and_never_refunds() -> None:
    """A tear anywhere in a wrong VERIFY comes before the comparison: no answer leaks."""
    injector = TearInjector()
    rig = make_rig(tear=injector.point)
    injector.arm(None)
    with pytest.raises(CardError):
        rig.client.verify_pin(WRONG_PIN)
    points, labels = injector.count, list(injector.labels)
    assert labels[0] == f"write-through:{TRIES_CELL}"
    assert tries(rig) == 2
    for k in range(1, points + 1):
        injector.arm(k)
        with pytest.raises(PowerLoss):
            rig.client.verify_pin(WRONG_PIN)
        rig.card.power_on()
        rig.client.select()
        assert tries(rig) == 2  # a memory card's save is the last point: nothing written
    injector.arm(None)
    with pytest.raises(CardError) as info:
        rig.client.verify_pin(WRONG_PIN)
    assert info.value.sw == SW.tries_left(1)


def test_tear_right_after_the_try_is_spent_costs_the_try() -> None:
    """Torn after the counter is written but before the reset: the try is gone."""
    injector = TearInjector()
    rig = make_rig(tear=injector.point)
    injector.arm(None)
    rig.client.verify_pin(PIN)
    reset_point = injector.labels.index(f"write:{TRIES_CELL}") + 1
    assert injector.labels[: reset_point - 1] == [f"write-through:{TRIES_CELL}", "memory:save"]
    for left in (2, 1, 0):
        injector.arm(reset_point)
        with pytest.raises(PowerLoss):
            rig.client.verify_pin(PIN)
        rig.card.power_on()
        rig.client.select()
        assert tries(rig) == left
        assert send(rig, 0x00, 0x20, 0, 0x80, b"").sw != SW.OK  # not verified
    refused(rig, SW.AUTH_METHOD_BLOCKED, lambda: rig.client.verify_pin(PIN))


class _CutAfterSave(MemoryBackend):
    """EEPROM that loses power just after a save, when armed: the tear the PIN counter fears."""

    armed = False

    def save(self, cells: Mapping[str, bytes], tear: TearHook) -> None:
        super().save(cells, tear)
        if self.armed:
            self.armed = False
            raise PowerLoss("power cut right after the write")


def test_wrong_guesses_cut_after_the_counter_write_still_block() -> None:
    backend = _CutAfterSave()
    rig = blank_rig(backend=backend)
    rig.card_public = rig.client.personalise(
        PersonaliseData(CARD_ID, CURRENCY, MAX_BALANCE, PIN, rig.issuer.key_id, rig.issuer.public)
    )
    activate(rig)
    for left in (2, 1, 0):
        backend.armed = True
        with pytest.raises(PowerLoss):
            rig.client.verify_pin(WRONG_PIN)
        rig.card.power_on()
        rig.client.select()
        assert tries(rig) == left
    refused(rig, SW.AUTH_METHOD_BLOCKED, lambda: rig.client.verify_pin(PIN))


# LOCK ---------------------------------------------------------------------------------------
def test_lock_order_for_another_card() -> None:
    rig = funded_rig()
    order = rig.issuer.lock_order(OTHER_CARD, NOW)
    refused(rig, SW.WRONG_CARD, lambda: rig.client.lock(order))
    assert rig.client.status().state is LifeCycle.ACTIVE


def test_lock_order_signed_by_an_unknown_key() -> None:
    rig = funded_rig()
    order = IssuerKey.generate().lock_order(CARD_ID, NOW)
    refused(rig, SW.UNKNOWN_KEY, lambda: rig.client.lock(order))


def test_lock_order_forged_under_the_real_key_id() -> None:
    rig = funded_rig()
    body = LockOrder(CARD_ID, NOW, 1, 0).encode()
    forged = seal(ObjectKind.LOCK_ORDER, rig.issuer.key_id, body, IssuerKey.generate().private)
    refused(rig, SW.BAD_SIGNATURE, lambda: rig.client.lock(forged))
    refused(
        rig,
        SW.BAD_SIGNATURE,
        lambda: rig.client.lock(flip(rig.issuer.lock_order(CARD_ID, NOW), BODY_OFFSET)),
    )


def test_lock_then_update_then_unlock_then_stale_replay() -> None:
    rig = funded_rig()
    order = rig.issuer.lock_order(CARD_ID, T0 + 100)
    rig.client.lock(order)
    assert rig.client.status().state is LifeCycle.LOCKED
    rig.client.lock(order)  # locking a locked card changes nothing
    # an update without UNLOCK is refused on a locked card
    for actions, load in ((UpdateAction.LOAD, 100), (UpdateAction.UNBLOCK_PIN, 0)):
        nonce = rig.begin().card_nonce
        update = rig.issuer.update(CARD_ID, nonce, T0 + 200, actions, load_amount=load)
        refused(rig, SW.CARD_LOCKED, partial(rig.client.issuer_update, update))
    nonce = rig.begin().card_nonce
    cred = rig.credential_for(nonce, T0 + 200)
    update = renewal(rig, nonce, cred)
    refused(rig, SW.CARD_LOCKED, lambda: rig.client.issuer_update(update))
    # UNLOCK unlocks
    nonce = rig.begin().card_nonce
    rig.client.issuer_update(rig.issuer.update(CARD_ID, nonce, T0 + 200, UpdateAction.UNLOCK))
    assert rig.client.status().state is LifeCycle.ACTIVE
    rig.pay(100, T0 + 300)
    # the old lock order is stale now, also an order issued at the unlock's time
    refused(rig, SW.STALE_OBJECT, lambda: rig.client.lock(order))
    same_time = rig.issuer.lock_order(CARD_ID, T0 + 200)
    refused(rig, SW.STALE_OBJECT, lambda: rig.client.lock(same_time))
    rig.client.lock(rig.issuer.lock_order(CARD_ID, T0 + 201))  # a newer one still locks
    assert rig.client.status().state is LifeCycle.LOCKED


# PERSONALISE ----------------------------------------------------------------------------------
def _identity(rig: PurseRig, card_id: bytes = CARD_ID) -> PersonaliseData:
    return PersonaliseData(
        card_id, CURRENCY, MAX_BALANCE, PIN, rig.issuer.key_id, rig.issuer.public
    )


def test_personalise_a_personalised_card() -> None:
    rig = funded_rig()
    refused(rig, SW.CONDITIONS_NOT_SATISFIED, lambda: rig.client.personalise(_identity(rig)))
    cert = rig.issuer.certificate(CARD_ID, rig.card_public, T0, T0 + DAY)
    refused(rig, SW.CONDITIONS_NOT_SATISFIED, lambda: rig.client.store_certificate(cert))
    half = personalised_rig()
    refused(half, SW.CONDITIONS_NOT_SATISFIED, lambda: half.client.personalise(_identity(half)))


def test_certificate_for_another_card() -> None:
    rig = personalised_rig()
    cert = rig.issuer.certificate(OTHER_CARD, rig.card_public, T0, T0 + DAY)
    refused(rig, SW.WRONG_CARD, lambda: rig.client.store_certificate(cert))
    activate(rig)
    assert rig.client.status().state is LifeCycle.ACTIVE


def test_certificate_for_another_public_key() -> None:
    rig = personalised_rig()
    other_public = IssuerKey.generate().public
    cert = rig.issuer.certificate(CARD_ID, other_public, T0, T0 + DAY)
    refused(rig, SW.WRONG_DATA, lambda: rig.client.store_certificate(cert))


def test_certificate_signed_by_an_unknown_key_or_of_another_kind() -> None:
    rig = personalised_rig()
    stranger = IssuerKey.generate().certificate(CARD_ID, rig.card_public, T0, T0 + DAY)
    refused(rig, SW.UNKNOWN_KEY, lambda: rig.client.store_certificate(stranger))
    body = CardCertificate(CARD_ID, rig.card_public, T0, T0 + DAY).encode()
    as_credential = rig.issuer.sign(ObjectKind.CREDENTIAL, body)
    refused(rig, SW.WRONG_OBJECT_KIND, lambda: rig.client.store_certificate(as_credential))
    relabelled = relabel(as_credential, ObjectKind.CARD_CERTIFICATE)
    refused(rig, SW.BAD_SIGNATURE, lambda: rig.client.store_certificate(relabelled))


def test_certificate_before_identity() -> None:
    rig = blank_rig()
    cert = rig.issuer.certificate(CARD_ID, IssuerKey.generate().public, T0, T0 + DAY)
    refused(rig, SW.CONDITIONS_NOT_SATISFIED, lambda: rig.client.store_certificate(cert))


@pytest.mark.parametrize(
    "change",
    [
        {"pin": b"12a4"},
        {"pin": b"123"},
        {"pin": b"1234567890123"},
        {"currency": 0},
        {"currency": 1000},
        {"max_balance": 0},
        {"card_id": bytes(8)},
        {"issuer_public_key": b"\x04" + bytes(64)},
        {"issuer_public_key": b"\x02" + bytes(64)},
        {"issuer_key_id": b"WRONG-ID"},
    ],
)
def test_personalise_bad_identity(change: dict[str, object]) -> None:
    rig = blank_rig()
    values: dict[str, object] = {
        "card_id": CARD_ID,
        "currency": CURRENCY,
        "max_balance": MAX_BALANCE,
        "pin": PIN,
        "issuer_key_id": rig.issuer.key_id,
        "issuer_public_key": rig.issuer.public,
    }
    values.update(change)
    data = PersonaliseData(**values).encode()  # type: ignore[arg-type]
    refused(rig, SW.WRONG_DATA, lambda: send(rig, 0x80, 0xE2, 0, 0, data).check())


# LOAD and RENEW ---------------------------------------------------------------------------
def test_load_beyond_the_maximum_balance() -> None:
    rig = funded_rig()  # 10 000 of 100 000
    nonce = rig.begin().card_nonce
    update = rig.issuer.update(CARD_ID, nonce, NOW, UpdateAction.LOAD, load_amount=90_001)
    refused(rig, SW.OVER_MAX_BALANCE, lambda: rig.client.issuer_update(update))
    nonce = rig.begin().card_nonce
    update = rig.issuer.update(CARD_ID, nonce, NOW, UpdateAction.LOAD, load_amount=90_000)
    rig.client.issuer_update(update)
    assert rig.client.status().balance == MAX_BALANCE


def test_load_beyond_the_maximum_with_a_valid_renewal_changes_nothing() -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    update = rig.issuer.update(
        CARD_ID,
        nonce,
        NOW,
        UpdateAction.RENEW | UpdateAction.LOAD,
        load_amount=2**32 - 1,
        credential=rig.credential_for(nonce, NOW),
    )
    refused(rig, SW.OVER_MAX_BALANCE, lambda: rig.client.issuer_update(update))


@pytest.mark.parametrize("serial", [0, 1])
def test_renew_with_a_serial_not_newer(serial: int) -> None:
    rig = funded_rig()  # holds serial 1
    nonce = rig.begin().card_nonce
    cred = rig.credential_for(nonce, NOW, serial=serial)
    refused(rig, SW.STALE_OBJECT, lambda: rig.client.issuer_update(renewal(rig, nonce, cred)))


@pytest.mark.parametrize(
    ("actions", "load", "with_credential"),
    [
        (0, 0, False),  # no action
        (0x20, 0, False),  # unknown action bit
        (UpdateAction.LOAD, 0, False),  # load of zero
        (UpdateAction.UNBLOCK_PIN, 100, False),  # amount without LOAD
        (UpdateAction.UNBLOCK_PIN, 0, True),  # credential without RENEW
        (UpdateAction.RENEW, 0, False),  # RENEW without credential
    ],
)
def test_malformed_update(actions: int, load: int, with_credential: bool) -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    cred = rig.credential_for(nonce, NOW) if with_credential else b""
    body = IssuerUpdate(CARD_ID, nonce, NOW, actions, load, cred).encode()
    update = rig.issuer.sign(ObjectKind.ISSUER_UPDATE, body)
    refused(rig, SW.WRONG_DATA, lambda: rig.client.issuer_update(update))


def test_credential_expiring_before_issue() -> None:
    rig = funded_rig()
    nonce = rig.begin().card_nonce
    cred = rig.credential_for(nonce, NOW, expires_at=NOW)
    refused(rig, SW.WRONG_DATA, lambda: rig.client.issuer_update(renewal(rig, nonce, cred)))


# bad input, generated --------------------------------------------------------------------------
_COMMON = {SW.WRONG_LENGTH, SW.INCORRECT_P1P2, SW.WRONG_DATA}
_SIGNED = {SW.BAD_SIGNATURE, SW.UNKNOWN_KEY, SW.WRONG_OBJECT_KIND, SW.WRONG_CARD}
_TRIES = {SW.tries_left(n) for n in range(PIN_TRIES + 1)}  # 63C3: empty VERIFY
ALLOWED: dict[int, set[int]] = {
    0x20: {SW.OK, SW.AUTH_METHOD_BLOCKED, *_TRIES},
    0x24: {SW.OK, SW.AUTH_METHOD_BLOCKED, *_TRIES},
    0xB2: {SW.OK, SW.SECURITY_STATUS_NOT_SATISFIED, SW.RECORD_NOT_FOUND},
    0xE2: {SW.CONDITIONS_NOT_SATISFIED},
    0x50: {SW.OK},
    0x52: {SW.STALE_SESSION, SW.OVER_MAX_BALANCE, SW.STALE_OBJECT, *_SIGNED},
    0x54: {
        SW.OK,
        SW.CLOCK_ROLLBACK,
        SW.CREDENTIAL_EXPIRED,
        SW.OVER_PAYMENT_LIMIT,
        SW.SECURITY_STATUS_NOT_SATISFIED,
        SW.INSUFFICIENT_FUNDS,
        SW.OFFLINE_CAP_EXCEEDED,
    },
    0x1E: {SW.STALE_OBJECT, *_SIGNED},
    0xCA: {SW.OK, SW.REFERENCED_DATA_NOT_FOUND},
}
CLA_OF = {0x20: 0x00, 0x24: 0x00, 0xB2: 0x00, 0xCA: 0x00}
USUAL_P1P2 = {0x20: (0, 0x80), 0x24: (0, 0x80), 0xB2: (1, 4), 0xCA: (0xDF, 0x03)}
FUZZ = settings(max_examples=25, deadline=None)


def _fuzz_once(ins: int, p1: int, p2: int, data: bytes, prepared: bool) -> None:
    rig = funded_rig()
    if prepared:  # PIN verified and an online session open: the deeper paths
        rig.client.verify_pin(PIN)
        rig.begin()
    before = rig.snapshot()
    resp = send(rig, CLA_OF.get(ins, 0x80), ins, p1, p2, data)
    assert resp.sw != SW.UNKNOWN_ERROR
    assert resp.sw in ALLOWED[ins] | _COMMON, f"INS {ins:02X}: {resp.sw:04X}"
    if resp.sw != SW.OK:
        ignore = ("pin_tries",) if ins in (0x20, 0x24) else ()
        assert _without(rig.snapshot(), ignore) == _without(before, ignore)


@pytest.mark.parametrize("ins", sorted(ALLOWED))
@FUZZ
@given(data=st.binary(max_size=300), prepared=st.booleans())
def test_random_data_usual_p1p2(ins: int, data: bytes, prepared: bool) -> None:
    p1, p2 = USUAL_P1P2.get(ins, (0, 0))
    _fuzz_once(ins, p1, p2, data, prepared)


@pytest.mark.parametrize("ins", sorted(ALLOWED))
@FUZZ
@given(
    p1=st.integers(0, 255),
    p2=st.integers(0, 255),
    data=st.binary(max_size=40),
    prepared=st.booleans(),
)
def test_random_p1p2_and_data(ins: int, p1: int, p2: int, data: bytes, prepared: bool) -> None:
    _fuzz_once(ins, p1, p2, data, prepared)


@pytest.mark.parametrize("ins", [0x52, 0x1E])
@FUZZ
@given(
    kind=st.sampled_from(list(ObjectKind)),
    real_key=st.booleans(),
    body=st.binary(max_size=120),
    signature=st.binary(min_size=SIGNATURE_LEN, max_size=SIGNATURE_LEN),
    sign=st.booleans(),
)
def test_random_signed_objects(
    ins: int, kind: ObjectKind, real_key: bool, body: bytes, signature: bytes, sign: bool
) -> None:
    """Well-formed envelopes: random bodies, correctly signed or with random signatures."""
    rig = funded_rig()
    rig.begin()
    key = rig.issuer if real_key else IssuerKey.generate()
    envelope = key.sign(kind, body)
    if not sign:
        envelope = envelope[:-SIGNATURE_LEN] + signature
    before = rig.snapshot()
    resp = send(rig, 0x80, ins, 0, 0, envelope)
    assert resp.sw in ALLOWED[ins] | _COMMON, f"{resp.sw:04X}"
    assert rig.snapshot() == before


@FUZZ
@given(
    issuer_time=st.integers(0, 2**32 - 1),
    actions=st.integers(0, 255),
    load=st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 100_000)),
    credential=st.sampled_from(["none", "valid", "random", "other-nonce"]),
    locked=st.booleans(),
)
def test_random_correctly_signed_updates(
    issuer_time: int, actions: int, load: int, credential: str, locked: bool
) -> None:
    """Any update the issuer signs is applied whole or refused whole, never 6F00."""
    rig = funded_rig()
    if locked:
        rig.client.lock(rig.issuer.lock_order(CARD_ID, T0 + 1))
    nonce = rig.begin().card_nonce
    cred = {
        "none": b"",
        "valid": rig.credential_for(nonce, NOW),
        "random": bytes(range(40)),
        "other-nonce": rig.credential_for(NONCE, NOW),
    }[credential]
    body = IssuerUpdate(CARD_ID, nonce, issuer_time, actions, load, cred).encode()
    update = rig.issuer.sign(ObjectKind.ISSUER_UPDATE, body)
    before = rig.snapshot()
    resp = send(rig, 0x80, 0x52, 0, 0, update)
    allowed = {SW.OK, SW.CARD_LOCKED, *ALLOWED[0x52], *_COMMON}
    assert resp.sw in allowed, f"{resp.sw:04X}"
    if resp.sw != SW.OK:
        assert rig.snapshot() == before
    else:
        status = rig.client.status()
        assert status.atc == int.from_bytes(before[PREFIX + "atc"], "big") + 1
        assert status.balance <= MAX_BALANCE


@FUZZ
@given(
    card_id=st.one_of(st.just(bytes(8)), st.binary(min_size=8, max_size=8)),
    currency=st.one_of(st.integers(0, 1_001), st.integers(0, 0xFFFF)),
    max_balance=st.one_of(st.just(0), st.integers(0, 2**32 - 1)),
    pin=st.one_of(st.binary(max_size=14), st.text("0123456789", max_size=14).map(str.encode)),
    key_id=st.binary(min_size=8, max_size=8),
    public=st.one_of(st.just(b""), st.binary(min_size=65, max_size=65)),
    trailing=st.binary(max_size=3),
)
def test_random_personalisation_of_a_blank_card(
    card_id: bytes,
    currency: int,
    max_balance: int,
    pin: bytes,
    key_id: bytes,
    public: bytes,
    trailing: bytes,
) -> None:
    rig = blank_rig()
    key = public or rig.issuer.public
    data = PersonaliseData(card_id, currency, max_balance, pin, key_id, key).encode() + trailing
    before = rig.snapshot()
    resp = send(rig, 0x80, 0xE2, 0, 0, data)
    assert resp.sw in {SW.OK, SW.WRONG_DATA}, f"{resp.sw:04X}"
    if resp.sw == SW.OK:
        assert not trailing
        assert rig.client.status().state is LifeCycle.PERSONALISED
    else:
        assert rig.snapshot() == before
