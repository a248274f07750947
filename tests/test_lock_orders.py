"""Lock orders cannot outlive the issuer's decision to unlock."""

from __future__ import annotations

import pytest

from apdu.purse import LifeCycle, UpdateAction
from apdu.status import SW, CardError
from tests.purse_kit import CARD_ID, T0, funded_rig


def test_lock_order_older_than_an_unlock_of_an_active_card_is_void() -> None:
    """A card reported stolen, then found before any terminal locked it.

    The issuer sends UNLOCK at the next online session although the card is
    active; the lock order that circulated in old blocklists must then no
    longer lock it.
    """
    rig = funded_rig()
    stale_order = rig.issuer.lock_order(CARD_ID, T0 + 100)
    request = rig.begin()
    rig.client.issuer_update(
        rig.issuer.update(CARD_ID, request.card_nonce, T0 + 200, UpdateAction.UNLOCK)
    )
    before = rig.snapshot()
    with pytest.raises(CardError) as refused:
        rig.client.lock(stale_order)
    assert refused.value.sw == SW.STALE_OBJECT
    assert rig.snapshot() == before
    assert rig.client.status().state is LifeCycle.ACTIVE
    # a lock order issued after the unlock still works
    rig.client.lock(rig.issuer.lock_order(CARD_ID, T0 + 300))
    assert rig.client.status().state is LifeCycle.LOCKED
