"""Attacks by a terminal on the card's clock and on the holder's PIN."""

from __future__ import annotations

import pytest

from apdu.purse import Tag, UpdateAction
from apdu.status import SW, CardError
from tests.purse_kit import DAY, PIN, T0, funded_rig


def test_future_claiming_terminal_blockade_ends_at_the_next_online_session() -> None:
    """A POS claims a time just before expiry; honest terminals are refused, until renewal."""
    rig = funded_rig()
    expires = T0 + rig.policy.lifetime
    rig.pay(10, expires - 1)  # the liar: accepted, it is before expiry
    honest = T0 + 3600
    with pytest.raises(CardError) as refused:
        rig.pay(10, honest)
    assert refused.value.sw == SW.CLOCK_ROLLBACK
    rig.renew(honest + 60)  # online: the issuer's time sets the mark back
    assert int.from_bytes(rig.client.get_data(Tag.TIME_MARK), "big") == honest + 60
    rig.pay(10, honest + 120)


def test_the_push_forward_is_bounded_by_expiry() -> None:
    rig = funded_rig()
    expires = T0 + rig.policy.lifetime
    with pytest.raises(CardError) as refused:
        rig.pay(10, expires + 365 * DAY)
    assert refused.value.sw == SW.CREDENTIAL_EXPIRED
    assert int.from_bytes(rig.client.get_data(Tag.TIME_MARK), "big") == T0


def test_one_verify_covers_one_payment_above_the_no_pin_limit() -> None:
    rig = funded_rig()
    big = rig.policy.no_pin_limit + 1
    rig.client.verify_pin(PIN)
    rig.pay(big, T0 + 60)
    with pytest.raises(CardError) as refused:
        rig.pay(big, T0 + 61)  # the terminal tries to reuse the holder's PIN
    assert refused.value.sw == SW.SECURITY_STATUS_NOT_SATISFIED
    rig.pay(rig.policy.no_pin_limit, T0 + 62)  # small payments need no PIN


def test_reselect_starts_a_new_session() -> None:
    rig = funded_rig()
    rig.client.verify_pin(PIN)
    rig.client.select()
    with pytest.raises(CardError) as refused:
        rig.pay(rig.policy.no_pin_limit + 1, T0 + 60)
    assert refused.value.sw == SW.SECURITY_STATUS_NOT_SATISFIED
    request = rig.begin()
    rig.client.select()
    with pytest.raises(CardError) as stale:
        rig.client.issuer_update(
            rig.issuer.update(request.card_id, request.card_nonce, T0 + 90, UpdateAction.UNLOCK)
        )
    assert stale.value.sw == SW.STALE_SESSION
