"""A purse card, its issuer key and a terminal-side client, ready for tests.

``make_rig()`` gives an ACTIVE card (personalised, certificate stored) with
no credential and no money; ``rig.renew(...)`` runs a full online session
(BEGIN ONLINE, issuer-signed update bound to its nonce).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from apdu.purse import (
    PURSE_AID,
    Credential,
    OnlineRequest,
    PayData,
    PersonaliseData,
    UpdateAction,
)
from apdu.purse_client import PurseClient
from apdu.signed import parse_envelope
from card_os.card import Card
from card_os.purse import PurseApplet
from card_os.simulator import Simulator
from card_os.tear import TearHook
from issuer.signer import IssuerKey

T0 = 1_800_000_000  # 2027-01-15T08:00:00Z
DAY = 86_400
CARD_ID = b"CARD0001"
PIN = b"1234"
CURRENCY = 978
MAX_BALANCE = 100_000
TERMINAL_ID = b"POS00001"
NONCE = bytes(range(16))


@dataclass
class Policy:
    lifetime: int = 7 * DAY
    offline_cap: int = 20_000
    per_payment_limit: int = 5_000
    no_pin_limit: int = 1_000
    tolerance: int = 300


@dataclass
class PurseRig:
    sim: Simulator
    client: PurseClient
    issuer: IssuerKey
    card_public: bytes
    serial: int = 0
    policy: Policy = field(default_factory=Policy)

    @property
    def card(self) -> Card:
        return self.sim.card

    def snapshot(self) -> dict[str, bytes]:
        return self.card.store.snapshot()

    def begin(self) -> OnlineRequest:
        return OnlineRequest.decode(parse_envelope(self.client.begin_online()).body)

    def credential_for(self, nonce: bytes, now: int, **changes: int) -> bytes:
        self.serial += 1
        p = self.policy
        values = {
            "serial": self.serial,
            "issued_at": now,
            "expires_at": now + p.lifetime,
            "offline_cap": p.offline_cap,
            "per_payment_limit": p.per_payment_limit,
            "no_pin_limit": p.no_pin_limit,
            "tolerance": p.tolerance,
        }
        values.update(changes)
        return self.issuer.credential(Credential(card_id=CARD_ID, card_nonce=nonce, **values))

    def update_for(self, request: OnlineRequest, now: int, load: int = 0) -> bytes:
        """The issuer's answer to ``request``: renew the credential, and load ``load``."""
        actions = UpdateAction.RENEW | (UpdateAction.LOAD if load else UpdateAction(0))
        return self.issuer.update(
            CARD_ID,
            request.card_nonce,
            now,
            actions,
            load_amount=load,
            credential=self.credential_for(request.card_nonce, now),
        )

    def renew(self, now: int, load: int = 0) -> int:
        """A whole online session: renew the credential, and load ``load``."""
        return self.client.issuer_update(self.update_for(self.begin(), now, load))

    def pay(self, amount: int, now: int, terminal: bytes = TERMINAL_ID) -> bytes:
        return self.client.pay(PayData(amount, now, terminal, NONCE))


def make_rig(
    path: Path | None = None, *, tear: TearHook | None = None, issuer: IssuerKey | None = None
) -> PurseRig:
    """An ACTIVE purse card (in memory, or on a new image file at ``path``)."""
    card = Card.create(path) if path is not None else Card(tear=tear)
    sim = Simulator(card)
    sim.install(PURSE_AID, PurseApplet)
    client = PurseClient(sim.channel)
    client.select()
    key = issuer or IssuerKey.generate()
    public = client.personalise(
        PersonaliseData(CARD_ID, CURRENCY, MAX_BALANCE, PIN, key.key_id, key.public)
    )
    client.store_certificate(key.certificate(CARD_ID, public, T0 - DAY, T0 + 365 * DAY))
    return PurseRig(sim, client, key, public)


def reopen(path: Path, rig: PurseRig, *, tear: TearHook | None = None) -> PurseRig:
    """The same card image opened again (a new process would see this)."""
    sim = Simulator(Card.open(path, tear=tear))
    sim.install(PURSE_AID, PurseApplet)
    client = PurseClient(sim.channel)
    client.select()
    return PurseRig(sim, client, rig.issuer, rig.card_public, rig.serial, rig.policy)


def funded_rig(path: Path | None = None, balance: int = 10_000) -> PurseRig:
    rig = make_rig(path)
    rig.renew(T0, load=balance)
    return rig
