"""The ATM stub: the card's online session with the issuer.

Renewal (always), a load paid from the holder's account (after the PIN),
and whatever the operator asked the issuer for (unlock, PIN unblock): the
ATM does not decide any of it, it carries the card's signed request to the
issuer and the issuer's signed answer back. A card reported lost or stolen
receives its lock order instead, and the ATM keeps it (says so).
"""

from __future__ import annotations

from dataclasses import dataclass

from apdu.clock import Clock, system_clock
from apdu.purse import LifeCycle
from apdu.purse_client import CardStatus, PurseClient
from apdu.status import CardError
from issuer.client import IssuerService
from terminal.errors import Declined
from terminal.session import SessionOutcome, card_step, online_session


@dataclass(frozen=True, slots=True)
class AtmResult:
    before: CardStatus
    after: CardStatus
    session: SessionOutcome


class Atm:
    def __init__(self, issuer: IssuerService, clock: Clock = system_clock) -> None:
        self.issuer = issuer
        self.clock = clock

    def _start(self, client: PurseClient, pin: bytes | None) -> CardStatus:
        try:
            client.select()
            status = client.status()
            if status.state in (LifeCycle.BLANK, LifeCycle.PERSONALISED):
                raise Declined("not_issued", "the card has not been issued")
            if pin is not None:
                client.verify_pin(pin)
        except CardError as err:
            raise card_step("the PIN" if pin is not None else "SELECT", err) from None
        return status

    def visit(self, client: PurseClient, load: int = 0, pin: bytes | None = None) -> AtmResult:
        """One online session: renew, plus ``load`` (which needs the PIN)."""
        if load < 0:
            raise Declined("bad_amount", "a load must not be negative")
        if load and pin is None:
            raise Declined("pin_required", "a load needs the card's PIN")
        before = self._start(client, pin)
        outcome = online_session(client, self.issuer, load)
        return AtmResult(before, client.status(), outcome)
