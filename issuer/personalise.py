"""Personalisation: a blank card becomes an issued, registered card, through APDUs only.

The issuer selects the purse on the blank card, sends PERSONALISE with the
card ID, currency, maximum balance, PIN and its current public key, receives
the public key the card generated, signs the card's certificate and stores
it on the card (which turns the card ACTIVE). The caller then registers the
card; nothing here touches the registry.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from apdu.purse import LifeCycle, PersonaliseData, Tag, valid_pin
from apdu.purse_client import PurseClient
from apdu.signed import MalformedObject, public_key_from_bytes
from apdu.status import CardError
from issuer.errors import IssuerError, Refused
from issuer.policy import Policy
from issuer.signer import IssuerKey


@dataclass(frozen=True, slots=True)
class Personalised:
    card_id: bytes
    public_key: bytes
    certificate: bytes
    issued_at: int
    expires_at: int


def new_pin() -> bytes:
    return f"{secrets.randbelow(10_000):04d}".encode()


def check_blank(client: PurseClient) -> None:
    """SELECT the purse and make sure the card is blank (refused otherwise)."""
    try:
        client.select()
        state = LifeCycle(int.from_bytes(client.get_data(Tag.STATE), "big"))
    except CardError as err:
        raise Refused("not_a_purse", f"the card has no purse applet ({err})") from None
    if state is not LifeCycle.BLANK:
        raise Refused("not_blank", f"the card is already personalised ({state.name.lower()})")


def personalise(
    client: PurseClient, key: IssuerKey, policy: Policy, card_id: bytes, pin: bytes, now: int
) -> Personalised:
    if not valid_pin(pin):
        raise IssuerError("a PIN is 4 to 12 digits")
    data = PersonaliseData(
        card_id=card_id,
        currency=policy.currency,
        max_balance=policy.max_balance,
        pin=pin,
        issuer_key_id=key.key_id,
        issuer_public_key=key.public,
    )
    try:
        card_public = client.personalise(data)
        public_key_from_bytes(card_public)
    except CardError as err:
        raise Refused("personalisation_refused", f"the card refused PERSONALISE: {err}") from None
    except MalformedObject:
        raise Refused("personalisation_refused", "the card answered no public key") from None
    expires = now + policy.certificate_lifetime
    certificate = key.certificate(card_id, card_public, now, expires)
    try:
        client.store_certificate(certificate)
    except CardError as err:
        raise Refused("personalisation_refused", f"certificate refused: {err}") from None
    return Personalised(card_id, card_public, certificate, now, expires)
