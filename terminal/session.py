"""The online session as a terminal runs it (ATM, and a connected POS).

BEGIN ONLINE on the card, the card's signed request to the issuer, and the
issuer's answer back to the card: an ISSUER UPDATE, or a LOCK order for a
card reported lost or stolen. Issuer refusals and card refusals come back as
:class:`terminal.errors.Declined`.
"""

from __future__ import annotations

from dataclasses import dataclass

from apdu.purse_client import PurseClient
from apdu.status import CardError
from issuer.client import IssuerService, ReplyKind, SessionReply
from issuer.errors import IssuerError, Refused
from terminal.errors import Declined


@dataclass(frozen=True, slots=True)
class SessionOutcome:
    reply: SessionReply
    atc: int  # the card's ATC after the update (0 when locked)

    @property
    def locked(self) -> bool:
        return self.reply.kind is ReplyKind.LOCK


def card_step(what: str, error: CardError) -> Declined:
    return Declined(f"card_{error.sw:04x}", f"the card refused {what}: {error}", error.sw)


def online_session(client: PurseClient, issuer: IssuerService, load: int = 0) -> SessionOutcome:
    try:
        request = client.begin_online()
    except CardError as err:
        raise card_step("BEGIN ONLINE", err) from None
    try:
        reply = issuer.online_session(request, load)
    except Refused as refusal:
        raise Declined(refusal.reason, f"the issuer refused: {refusal}") from None
    except IssuerError as err:
        raise Declined("issuer_error", f"the issuer could not answer: {err}") from None
    if reply.kind is ReplyKind.LOCK:
        try:
            client.lock(reply.envelope)
        except CardError as err:
            raise card_step("the issuer's lock order", err) from None
        return SessionOutcome(reply, 0)
    try:
        atc = client.issuer_update(reply.envelope)
    except CardError as err:
        raise card_step("the issuer's update", err) from None
    return SessionOutcome(reply, atc)
