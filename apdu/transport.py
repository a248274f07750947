"""Transports: how a terminal reaches a card, and the chaining done on top.

A :class:`Transport` moves raw APDU bytes and controls power. Every
transport (in-process, PC/SC) has the same five operations, so terminals do
not care what is behind it. :class:`CardChannel` is the one place where the
terminal side handles ``61XX`` (GET RESPONSE) and ``6CXX`` (resend with the
right Le).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from apdu.command import CommandApdu
from apdu.errors import TransportError
from apdu.response import ResponseApdu

GET_RESPONSE_LIMIT = 256  # GET RESPONSE rounds before a card is called broken


class Transport(Protocol):
    """Raw link to one card."""

    @property
    def atr(self) -> bytes: ...

    def power_on(self) -> bytes: ...

    def power_off(self) -> None: ...

    def reset(self) -> bytes: ...

    def transmit(self, apdu: bytes) -> bytes: ...


class CardLike(Protocol):
    """What an in-process card offers (``card_os.Card`` is one)."""

    @property
    def atr(self) -> bytes: ...

    def power_on(self) -> bytes: ...

    def power_off(self) -> None: ...

    def reset(self) -> bytes: ...

    def process(self, apdu: bytes) -> bytes: ...


class LocalTransport:
    """An in-process transport: the terminal calls the card object directly."""

    def __init__(self, card: CardLike) -> None:
        self.card = card

    @property
    def atr(self) -> bytes:
        return self.card.atr

    def power_on(self) -> bytes:
        return self.card.power_on()

    def power_off(self) -> None:
        self.card.power_off()

    def reset(self) -> bytes:
        return self.card.reset()

    def transmit(self, apdu: bytes) -> bytes:
        return self.card.process(apdu)


Trace = Callable[[bytes, bytes], None]


class CardChannel:
    """Sends command APDUs and returns complete responses.

    ``trace`` (if given) sees every raw exchange, GET RESPONSE rounds included.
    """

    def __init__(self, transport: Transport, trace: Trace | None = None) -> None:
        self.transport = transport
        self.trace = trace

    def _exchange(self, raw: bytes) -> ResponseApdu:
        answer = self.transport.transmit(raw)
        if self.trace is not None:
            self.trace(raw, answer)
        return ResponseApdu.parse(answer)

    def send(self, cmd: CommandApdu) -> ResponseApdu:
        resp = self._exchange(cmd.to_bytes())
        if resp.sw1 == 0x6C:
            resp = self._exchange(cmd.with_ne(resp.sw2 or 256).to_bytes())
        data = bytearray(resp.data)
        rounds = 0
        while resp.sw1 == 0x61:
            rounds += 1
            if rounds > GET_RESPONSE_LIMIT:
                raise TransportError("card keeps answering 61XX; giving up")
            resp = self._exchange(
                CommandApdu(0x00, 0xC0, 0x00, 0x00, b"", resp.sw2 or 256).to_bytes()
            )
            data += resp.data
        return ResponseApdu(bytes(data), resp.sw)

    def transceive(self, cmd: CommandApdu) -> bytes:
        """The response data; :class:`apdu.status.CardError` unless 9000."""
        return self.send(cmd).check()
