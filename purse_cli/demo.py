"""``purse demo``: the main job, the purse's story on the embedded defaults."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import click

from apdu.purse import (
    PURSE_AID,
    Credential,
    HistoryKind,
    OnlineRequest,
    PayData,
    PersonaliseData,
    Receipt,
    UpdateAction,
)
from apdu.purse_client import PurseClient
from apdu.signed import ObjectKind, open_envelope, public_key_from_bytes
from apdu.status import CardError
from apdu.transport import CardChannel, LocalTransport
from card_os.card import Card
from card_os.purse import PurseApplet
from card_os.tear import PowerLoss, TearInjector
from issuer.signer import IssuerKey

START = 1_800_000_000  # 2027-01-15 08:00 UTC
HOUR, DAY = 3_600, 86_400
CARD_ID = b"DEMO0001"
PIN = b"2468"
POS_ID = b"POS-0042"


def _when(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _money(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d} EUR"


class _Story:
    """The issuer's key, one card on an image file, and a client for it."""

    def __init__(self, path: Path, issuer: IssuerKey) -> None:
        self.path = path
        self.issuer = issuer
        self.serial = 0
        self.card_public = b""
        self.client = self._insert(Card.create(path))

    def _insert(self, card: Card) -> PurseClient:
        card.install(PURSE_AID, PurseApplet)
        card.power_on()
        client = PurseClient(CardChannel(LocalTransport(card)))
        client.select()
        return client

    def reinsert(self, tear: TearInjector | None = None) -> None:
        self.client = self._insert(Card.open(self.path, tear=tear.point if tear else None))

    def renew(self, now: int, load: int) -> None:
        raw_request = self.client.begin_online()
        env = open_envelope(
            raw_request,
            ObjectKind.ONLINE_REQUEST,
            {CARD_ID: public_key_from_bytes(self.card_public)},
        )
        request = OnlineRequest.decode(env.body)
        self.serial += 1
        credential = self.issuer.credential(
            Credential(
                card_id=CARD_ID,
                serial=self.serial,
                issued_at=now,
                expires_at=now + 7 * DAY,
                offline_cap=15_000,
                per_payment_limit=5_000,
                no_pin_limit=2_000,
                tolerance=5 * 60,
                card_nonce=request.card_nonce,
            )
        )
        actions = UpdateAction.RENEW | (UpdateAction.LOAD if load else UpdateAction(0))
        update = self.issuer.update(
            CARD_ID, request.card_nonce, now, actions, load_amount=load, credential=credential
        )
        self.client.issuer_update(update)
        click.echo(
            f"   card-signed request checked (ATC {request.atc}, balance "
            f"{_money(request.balance)}); credential #{self.serial} valid until "
            f"{_when(now + 7 * DAY)}" + (f", loaded {_money(load)}" if load else "")
        )

    def pay(self, amount: int, now: int, nonce: bytes = bytes(16)) -> None:
        try:
            raw = self.client.pay(PayData(amount, now, POS_ID, nonce))
        except CardError as err:
            balance = self.client.status().balance
            click.echo(f"   REFUSED by the card: {err}; balance stays {_money(balance)}")
            return
        env = open_envelope(
            raw, ObjectKind.RECEIPT, {CARD_ID: public_key_from_bytes(self.card_public)}
        )
        receipt = Receipt.decode(env.body)
        click.echo(
            f"   paid {_money(amount)}: card-signed receipt verified (ATC {receipt.atc}, "
            f"balance after {_money(receipt.balance)})"
        )


@click.command()
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the card image (default: a temporary folder, removed afterwards).",
)
def demo(home: Path | None) -> None:
    """Run the purse's story on a card image file, step by step.

    The issuer personalises a blank card, renews its credential online and
    loads it; a POS is paid offline; the clock passes the credential's expiry
    and the card itself refuses to pay; after a renewal it pays again; a
    terminal that lies about the time is refused; the power is cut in the
    middle of a payment; a lock order for the stolen card locks it.
    """
    with tempfile.TemporaryDirectory() as scratch:
        folder = home or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "demo-card.img"
        path.unlink(missing_ok=True)
        issuer = IssuerKey.generate()

        click.echo(
            f"1. Personalisation: a blank card in {path.name} gets its ID, PIN and issuer key"
        )
        story = _Story(path, issuer)
        story.card_public = story.client.personalise(
            PersonaliseData(CARD_ID, 978, 100_000, PIN, issuer.key_id, issuer.public)
        )
        story.client.store_certificate(
            issuer.certificate(CARD_ID, story.card_public, START, START + 3 * 365 * DAY)
        )
        click.echo(
            f"   card {CARD_ID.decode()} generated its own key pair; the issuer certified "
            f"key {story.card_public[1:9].hex()}..."
        )

        click.echo(f"2. Online at an ATM, {_when(START)}: renew the credential and load")
        story.renew(START, 10_000)

        click.echo(f"3. Offline at the POS, {_when(START + HOUR)}")
        story.pay(1_250, START + HOUR)
        story.client.verify_pin(PIN)
        click.echo("   PIN verified for a larger amount")
        story.pay(3_000, START + HOUR + 60, bytes([1]) * 16)

        late = START + 8 * DAY
        click.echo(f"4. Eight days later, {_when(late)}: the credential has expired")
        story.pay(500, late)

        click.echo(f"5. Online again at {_when(late + HOUR)}: renewed, no load")
        story.renew(late + HOUR, 0)
        story.pay(500, late + 2 * HOUR)

        click.echo("6. A terminal whose clock claims it is two days earlier than the card has seen")
        story.pay(500, late - 2 * DAY)

        click.echo("7. Power cut in the middle of a payment (after its third write)")
        before = story.client.status().balance
        tear = TearInjector()
        story.reinsert(tear)
        tear.arm(3)
        try:
            story.client.pay(PayData(700, late + 3 * HOUR, POS_ID, bytes([2]) * 16))
        except PowerLoss as cut:
            click.echo(f"   {cut}")
        story.reinsert()
        after = story.client.status().balance
        click.echo(
            f"   card reloaded from its image: balance {_money(after)} "
            f"({'unchanged: the payment never happened' if after == before else 'debited'})"
        )

        click.echo("8. The card is reported stolen; a terminal presents the issuer's lock order")
        story.client.lock(issuer.lock_order(CARD_ID, late + 4 * HOUR))
        story.pay(100, late + 5 * HOUR)

        status = story.client.status()
        click.echo(
            f"Final: card {status.card_id.decode()} is {status.state.name}, balance "
            f"{_money(status.balance)}, ATC {status.atc}, credential spent "
            f"{_money(status.offline_spent)}"
        )
        story.client.verify_pin(PIN)
        click.echo("History, newest first:")
        for entry in story.client.history():
            kind = HistoryKind(entry.kind).name
            click.echo(
                f"   ATC {entry.atc:>3}  {kind:<9} {_money(entry.amount):>12}  "
                f"balance {_money(entry.balance):>12}  {_when(entry.time)}"
            )
