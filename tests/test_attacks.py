"""Attacks that no other module's tests covered when docs/security.md was written.

Each test plays one row of the catalogue in docs/security.md end to end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from apdu.purse import PURSE_AID, Tag
from apdu.purse_client import PurseClient
from apdu.transport import CardChannel, LocalTransport
from card_os.card import Card
from card_os.purse import PurseApplet
from card_os.store import MemoryBackend
from issuer.errors import Refused
from tests.issuer_kit import CardHandle, IssuerRig, make_issuer


def _copy(handle: CardHandle) -> PurseClient:
    """A clone: a second card made from a copy of the first card's memory."""
    clone = Card(MemoryBackend(dict(handle.card.store.snapshot())))
    clone.install(PURSE_AID, PurseApplet)
    clone.power_on()
    return PurseClient(CardChannel(LocalTransport(clone)))


@pytest.fixture
def rig(tmp_path: Path) -> IssuerRig:
    return make_issuer(tmp_path)


def test_clone_that_transferred_less_is_refused(rig: IssuerRig) -> None:
    """A16: a copy made before the original sent value to another card, pushed past
    the original's counter offline, reports lower transfer totals: refused as a clone,
    and the issuer's view of the card does not move."""
    rig.centre.deposit("Alice", 10_000)
    alice, bob = rig.new_card("Alice"), rig.new_card("Bob")
    rig.session(alice, 5_000)
    rig.session(bob)
    clone = _copy(alice)

    a, b = alice.client, bob.client
    a.select()
    b.select()
    request = b.transfer_ask(1_000, a.status().atc + 1, a.get_data(Tag.CERTIFICATE))
    value = a.transfer_out(rig.clock(), b.get_data(Tag.CERTIFICATE), request)
    a.transfer_ack(b.transfer_receive(value))
    rig.session(alice)  # the issuer now knows Alice sent 1,000
    seen = rig.centre.card(alice.card_id)
    assert seen.transfers_out == 1_000

    clone.select()
    while clone.status().atc <= seen.last_atc:  # offline, the clone catches up the counter
        clone.begin_online()
    with pytest.raises(Refused) as refused:
        rig.centre.online_session(clone.begin_online())
    assert refused.value.reason == "clone_suspected"
    assert "transfer totals went backwards" in str(refused.value)
    after = rig.centre.card(alice.card_id)
    assert (after.last_atc, after.shadow_balance, after.transfers_out) == (
        seen.last_atc,
        seen.shadow_balance,
        seen.transfers_out,
    )
