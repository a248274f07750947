"""An issuer centre in a temporary folder, blank cards, and an ATM-like session.

``make_issuer(tmp_path)`` gives a centre on SQLite with a set clock;
``issuer.new_card("Alice")`` issues a card over APDUs and returns a
:class:`CardHandle` (the card, a client, its ID and PIN);
``issuer.session(handle, load=...)`` runs BEGIN ONLINE, the issuer's decision and
the ISSUER UPDATE or LOCK, as an ATM does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from apdu.clock import SetClock
from apdu.purse import PURSE_AID, PayData, Tag
from apdu.purse_client import PurseClient
from apdu.signed import public_keys
from apdu.transport import CardChannel, LocalTransport
from card_os.card import Card
from card_os.purse import PurseApplet
from issuer.centre import IssuerCentre
from issuer.session import ReplyKind, SessionReply
from issuer.settlement import SettlementItem

T0 = 1_800_000_000  # 2027-01-15T08:00:00Z
DAY = 86_400
POS_ID = b"POS00001"


def blank_card() -> tuple[Card, PurseClient]:
    card = Card()
    card.install(PURSE_AID, PurseApplet)
    card.power_on()
    return card, PurseClient(CardChannel(LocalTransport(card)))


@dataclass
class CardHandle:
    card: Card
    client: PurseClient
    card_id: bytes
    pin: bytes

    def pay(self, amount: int, now: int, terminal_id: bytes = POS_ID) -> bytes:
        """A PAY (with the PIN first when needed); returns the receipt envelope."""
        self.client.select()
        self.client.verify_pin(self.pin)
        return self.client.pay(PayData(amount, now, terminal_id, bytes(16)))

    def item(self, receipt: bytes) -> SettlementItem:
        return SettlementItem(receipt, self.client.get_data(Tag.CERTIFICATE))


@dataclass
class IssuerRig:
    centre: IssuerCentre
    clock: SetClock
    folder: Path

    def new_card(self, holder: str = "Alice", pin: bytes = b"1234") -> CardHandle:
        card, client = blank_card()
        card_id, pin = self.centre.issue(client, holder, pin)
        return CardHandle(card, client, card_id, pin)

    def request(self, handle: CardHandle) -> bytes:
        handle.client.select()
        return handle.client.begin_online()

    def session(self, handle: CardHandle, load: int = 0) -> SessionReply:
        """A whole online session, the reply delivered to the card."""
        reply = self.centre.online_session(self.request(handle), load)
        if reply.kind is ReplyKind.UPDATE:
            handle.client.issuer_update(reply.envelope)
        else:
            handle.client.lock(reply.envelope)
        return reply

    def trusted_keys(self) -> dict[bytes, ec.EllipticCurvePublicKey]:
        return public_keys(self.centre.keys.public_keys())


def make_issuer(folder: Path, now: int = T0) -> IssuerRig:
    clock = SetClock(now)
    centre = IssuerCentre.create(folder / "issuer", clock=clock)
    centre.register_terminal(POS_ID, "Corner Shop")
    return IssuerRig(centre, clock, folder / "issuer")
