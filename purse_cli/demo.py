"""``purse demo``: the main job, the whole story of the purse on the embedded defaults.

An issuer on SQLite, two cards in image files, an ATM and a POS, all in one
process, on a simulated clock. Every step goes through the same classes the
``purse`` commands use; every card step is an APDU exchange.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from apdu.clock import SetClock, parse_instant
from apdu.purse import Tag, printable_id
from apdu.purse_client import PurseClient
from card_os.tear import PowerLoss, TearInjector
from issuer.centre import IssuerCentre
from issuer.client import InProcessIssuer
from issuer.registry import CardState
from purse_cli.home import Home, card_file
from purse_cli.output import money, when
from terminal.atm import Atm
from terminal.errors import Declined
from terminal.pos import Pos
from terminal.pos_state import PosState
from terminal.wallet import Wallet

START = "2027-01-15T08:00:00Z"
HOUR, DAY = 3_600, 86_400
POS_ID = b"POS00001"
MARKER = ".purse-demo"


class Story:
    """The demo's world: issuer, terminals, card files and the clock."""

    def __init__(self, folder: Path, clock: SetClock) -> None:
        self.folder = folder
        self.clock = clock
        self.centre = IssuerCentre.create(folder / "issuer", clock=clock)
        self.issuer = InProcessIssuer(self.centre)
        self.atm = Atm(self.issuer, clock)
        self.pos = Pos(PosState(POS_ID), clock, self.issuer)
        self.pins: dict[str, bytes] = {}
        self.step = 0

    def say(self, text: str) -> None:
        self.step += 1
        click.echo(f"\n{self.step}. [{when(self.clock())}] {text}")

    def path(self, name: str) -> Path:
        return self.folder / f"{name.lower()}.img"

    @contextmanager
    def card(self, name: str, tear: TearInjector | None = None) -> Iterator[PurseClient]:
        hook = tear.point if tear is not None else None
        with card_file(self.path(name), tear=hook) as (_card, client):
            yield client

    def balance(self, name: str) -> int:
        with self.card(name) as client:
            client.select()
            return client.status().balance

    def atm_visit(self, name: str, load: int = 0) -> None:
        with self.card(name) as client:
            try:
                result = self.atm.visit(client, load, self.pins[name] if load else None)
            except Declined as refused:
                click.echo(f"   ATM: REFUSED: {refused}")
                return
        if result.session.locked:
            click.echo("   ATM: the issuer answered with a lock order: card locked and kept")
            return
        reply = result.session.reply
        loaded = f", loaded {money(reply.load)}" if reply.load else ""
        if reply.restore:
            loaded += f", {money(reply.restore)} of lost card-to-card value restored"
        click.echo(
            f"   ATM: {name}'s card renewed: credential #{reply.serial} until "
            f"{when(reply.expires_at)}{loaded}; balance {money(result.after.balance)}"
        )

    def pay(self, name: str, amount: int, pin: bool = False, pos: Pos | None = None) -> None:
        till = pos or self.pos
        try:
            with self.card(name) as client:
                sale = till.pay(client, amount, self.pins[name] if pin else None)
        except Declined as refused:
            click.echo(f"   POS: REFUSED: {refused}; balance stays {money(self.balance(name))}")
            return
        how = " with PIN" if pin else ""
        click.echo(
            f"   POS: {name} paid {money(amount)}{how}: card-signed receipt verified "
            f"(ATC {sale.atc}), balance {money(sale.balance)}"
        )

    def transfer(self, payer: str, payee: str, amount: int) -> None:
        with self.card(payer) as paying, self.card(payee) as receiving:
            try:
                done = Wallet(self.clock).transfer(paying, receiving, amount)
            except Declined as refused:
                click.echo(f"   wallet: REFUSED: {refused}")
                return
        click.echo(
            f"   wallet: {money(amount)} from {payer} to {payee}, acknowledged by both cards; "
            f"balances {money(done.payer_balance)} and {money(done.payee_balance)}"
        )

    def cut_transfer(self, payer: str, payee: str, amount: int) -> None:
        """A transfer whose payee is pulled out after the payer debited."""
        with self.card(payer) as paying, self.card(payee) as receiving:
            paying.select()
            receiving.select()
            asked = receiving.transfer_ask(
                amount, paying.status().atc + 1, paying.get_data(Tag.CERTIFICATE)
            )
            paying.transfer_out(self.clock(), receiving.get_data(Tag.CERTIFICATE), asked)
            left = paying.status().balance
        click.echo(
            f"   {payer}'s card debited {money(amount)} (balance {money(left)}); {payee}'s "
            "card is pulled out before the value reaches it: the value is in flight"
        )


def _fresh_folder(home: Home) -> Path:
    folder = home.root / "demo"
    if folder.exists():
        if not (folder / MARKER).exists():
            raise click.ClickException(f"{folder} exists and is not a demo folder; move it")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("made by `purse demo`; removed by its next run\n")
    return folder


def tell(story: Story) -> None:
    clock, centre = story.clock, story.centre
    story.say("The issuer sets up: a P-256 signing key (file mode 0600) and a SQLite registry")
    centre.register_terminal(POS_ID, "Corner Cafe")
    click.echo(f"   policy: {centre.policy.to_json()}")

    story.say("Two blank cards are issued over APDUs, each generating its own key pair")
    for name, pin in (("Alice", b"2468"), ("Bob", b"1357")):
        with card_file(story.path(name), create=True) as (_card, client):
            card_id, _ = centre.issue(client, name, pin)
        story.pins[name] = pin
        centre.deposit(name, 50_000)
        click.echo(
            f"   {name}: card {printable_id(card_id)} in {story.path(name).name}; "
            f"account {money(50_000)}"
        )

    story.say("At the ATM: each card's signed request is checked, renewed and loaded")
    story.atm_visit("Alice", 20_000)
    story.atm_visit("Bob", 10_000)

    clock.advance(HOUR)
    story.say("The POS syncs the blocklist and takes payments offline")
    header = story.pos.sync()
    click.echo(
        f"   blocklist version {header.version} verified, {len(story.pos.state.blocklist)} listed"
    )
    story.pay("Alice", 450)
    story.pay("Bob", 3_500, pin=True)
    click.echo("   (a second 35.00 EUR without the PIN: above the no-PIN limit)")
    story.pay("Bob", 3_500)

    story.say("In the wallet terminal, Bob's card pays Alice's card 10.00 EUR, card to card")
    story.transfer("Bob", "Alice", 1_000)
    story.say("Alice starts a 5.00 EUR transfer to Bob; Bob's card is pulled out midway")
    story.cut_transfer("Alice", "Bob", 500)
    story.say("Both cards go online: each reports the aborted transfer from its exception log")
    story.atm_visit("Bob")
    story.atm_visit("Alice")
    for reconciled in story.centre.transfers():
        x = reconciled.transfer
        click.echo(
            f"   issuer: transfer {printable_id(x.from_id)} -> {printable_id(x.to_id)} of "
            f"{money(x.amount)}: {reconciled.status.value}"
            + (", restored to the payer" if x.restore_serial is not None else "")
        )

    clock.advance(8 * DAY)
    story.say("Eight days later the credential has expired; an offline POS asks Alice to pay")
    offline = Pos(story.pos.state, clock, None)
    story.pay("Alice", 300, pos=offline)

    story.say("Alice renews at the ATM and pays again")
    alice_copy = story.folder / "alice-copy.img"
    shutil.copyfile(story.path("Alice"), alice_copy)
    story.atm_visit("Alice")
    story.pay("Alice", 300)

    story.say("A terminal whose clock is two days behind what the card has seen")
    liar = Pos(story.pos.state, SetClock(clock() - 2 * DAY), None)
    story.pay("Alice", 300, pos=liar)

    story.say("The power is cut in the middle of a payment (after its third write)")
    before = story.balance("Alice")
    tear = TearInjector()
    with story.card("Alice", tear) as client:
        tear.arm(3)
        try:
            story.pos.pay(client, 700)
        except PowerLoss as cut:
            click.echo(f"   {cut}")
    after = story.balance("Alice")
    verdict = "unchanged: the payment never happened" if after == before else "DEBITED"
    click.echo(f"   card reloaded from its image: balance {money(after)} ({verdict})")

    clock.advance(HOUR)
    story.say("Bob reports his card stolen; the POS syncs the new blocklist")
    with story.card("Bob") as client:
        client.select()
        bob_id = client.status().card_id
    version = centre.report(bob_id, CardState.STOLEN)
    header = story.pos.sync()
    click.echo(
        f"   issuer: blocklist version {version}; POS: delta verified, now version "
        f"{header.version} with {len(story.pos.state.blocklist)} card listed"
    )
    story.say("The thief tries Bob's card at the POS, then at an ATM")
    story.pay("Bob", 1_000)
    story.atm_visit("Bob")

    story.say("The POS uploads its batch for settlement")
    report = story.pos.upload()
    click.echo(
        f"   batch {report.batch_id}: {len(report.accepted)} receipts accepted, "
        f"{len(report.refused)} refused, {money(report.credited)} credited to Corner Cafe"
    )

    story.say(
        "A copy of Alice's card image, made before her renewal, goes to the ATM: "
        "its counter is behind the one her settled receipts proved"
    )
    shutil.copyfile(alice_copy, story.path("Clone"))
    story.pins["Clone"] = story.pins["Alice"]
    story.atm_visit("Clone")

    click.echo("\nFinal balances:")
    for card in centre.cards():
        name = card.holder
        with story.card(name) as client:
            client.select()
            status = client.status()
        click.echo(
            f"   {name:<6} card {printable_id(card.card_id)} {status.state.name:<7} "
            f"balance {money(status.balance):>12}  shadow {money(card.shadow_balance):>12}  "
            f"account {money(centre.holder_balance(name) or 0):>12}  issuer status "
            f"{card.status.value}"
        )
    flagged = [e for e in centre.audit_log() if e.event == "refused_clone_suspected"]
    click.echo(
        f"Audit log: {len(centre.audit_log())} decisions recorded, {len(flagged)} clone flagged"
    )


@click.command()
@click.option("--start", default=START, show_default=True, help="Simulated start time.")
@click.pass_obj
def demo(home: Home, start: str) -> None:
    """Run the whole story on the embedded defaults, step by step.

    In HOME/demo (recreated at every run): an issuer on SQLite issues two
    cards in image files; an ATM renews and loads them; a POS is paid
    offline; one card pays the other in the wallet, and a transfer cut off
    midway is restored to the payer by the issuer; the clock passes the
    credential's expiry and the card itself refuses to pay; after a renewal
    it pays again; a lying clock and a power
    cut change nothing; a cloned card is caught; a stolen card is locked out
    by the POS's blocklist; the POS's batch is settled.
    """
    try:
        clock = SetClock(parse_instant(start))
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--start") from None
    folder = _fresh_folder(home)
    click.echo(f"The purse's story, in {folder}")
    story = Story(folder, clock)
    try:
        tell(story)
    finally:
        story.centre.close()
