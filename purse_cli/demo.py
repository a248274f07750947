"""``purse demo``: the main job, run on the embedded defaults."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from apdu.command import CommandApdu
from apdu.status import describe
from apdu.transport import CardChannel, LocalTransport
from card_os.applets.tally import TALLY_AID, TallyApplet
from card_os.card import Card
from card_os.tear import PowerLoss, TearInjector


def _show(label: str, sent: bytes, answer: bytes) -> None:
    sw = int.from_bytes(answer[-2:], "big")
    data = answer[:-2]
    click.echo(f"  > {sent.hex(' ').upper():<40} {label}")
    shown = data.hex(" ").upper() if data else ""
    click.echo(f"  < {shown + (' ' if shown else '')}{sw:04X}  ({describe(sw)})")


@click.command()
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the card image (default: a temporary folder).",
)
def demo(home: Path | None) -> None:
    """Run an in-process APDU session on a card image, with a power cut.

    A blank card is created in an image file, the Tally test applet is
    selected and driven with APDUs, power is cut in the middle of a command,
    and the card is reloaded from its image to show that it kept exactly its
    last committed state.
    """
    with tempfile.TemporaryDirectory() as scratch:
        folder = home or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "demo-card.img"
        path.unlink(missing_ok=True)
        click.echo(f"1. A blank card in {path}")
        card = Card.create(path)
        card.install(TALLY_AID, TallyApplet)
        click.echo(f"   ATR {card.power_on().hex(' ').upper()}")
        labels: list[str] = []
        channel = CardChannel(
            LocalTransport(card), trace=lambda s, r: _show(labels[-1] if labels else "", s, r)
        )

        def send(label: str, hex_apdu: str) -> bytes:
            labels.append(label)
            return channel.send(CommandApdu.parse(bytes.fromhex(hex_apdu))).data

        click.echo("2. Select the applet and add 5, then 37")
        send("SELECT Tally", "00 A4 04 00 07 F0 54 41 4C 4C 59 01 00")
        send("ADD 5", "80 10 00 00 04 00 00 00 05")
        send("ADD 37", "80 10 00 00 04 00 00 00 25")
        send("READ with a wrong Le: the card says 6C18, the terminal resends", "80 12 00 00 04")

        click.echo("3. Cut the power in the middle of ADD 100 (after its first write)")
        tear = TearInjector()
        torn = Card.open(path, tear=tear.point)
        torn.install(TALLY_AID, TallyApplet)
        torn_channel = CardChannel(LocalTransport(torn))
        torn.power_on()
        torn_channel.send(CommandApdu.parse(bytes.fromhex("00A4040007F054414C4C5901")))
        tear.arm(2)
        try:
            torn_channel.send(CommandApdu(0x80, 0x10, 0, 0, (100).to_bytes(4, "big")))
        except PowerLoss as cut:
            click.echo(f"   {cut}")

        click.echo("4. Reload the card from its image file and read it")
        again = Card.open(path)
        again.install(TALLY_AID, TallyApplet)
        again.power_on()
        channel = CardChannel(
            LocalTransport(again), trace=lambda s, r: _show(labels[-1] if labels else "", s, r)
        )
        send("SELECT Tally", "00 A4 04 00 07 F0 54 41 4C 4C 59 01 00")
        data = send("READ", "80 12 00 00 00")
        total = int.from_bytes(data[:4], "big")
        count = int.from_bytes(data[4:8], "big")
        click.echo(f"   total {total} after {count} additions: the torn ADD 100 left no trace")
