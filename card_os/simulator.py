"""A five-line test API, in the spirit of jCardSim::

sim = Simulator()
sim.install(TALLY_AID, TallyApplet)
sim.select(TALLY_AID)
resp = sim.transmit("80 10 00 00 04 00 00 00 05")
assert resp.sw == SW.OK
"""

from __future__ import annotations

from apdu.command import CommandApdu
from apdu.response import ResponseApdu
from apdu.transport import CardChannel, LocalTransport
from card_os.applet import Applet
from card_os.card import Card


class Simulator:
    """A powered card and a channel to it, in this process."""

    def __init__(self, card: Card | None = None) -> None:
        self.card = card if card is not None else Card()
        self.card.power_on()
        self.channel = CardChannel(LocalTransport(self.card))

    def install(self, aid: bytes, applet_class: type[Applet]) -> Applet:
        return self.card.install(aid, applet_class)

    def select(self, aid: bytes) -> ResponseApdu:
        return self.transmit(CommandApdu(0x00, 0xA4, 0x04, 0x00, aid, 256))

    def transmit(self, cmd: CommandApdu | bytes | str) -> ResponseApdu:
        """Send one command (object, raw bytes or hex) with 61XX/6CXX chaining."""
        if isinstance(cmd, str):
            cmd = bytes.fromhex(cmd)
        if isinstance(cmd, bytes):
            cmd = CommandApdu.parse(cmd)
        return self.channel.send(cmd)

    def reset(self) -> bytes:
        return self.card.reset()
