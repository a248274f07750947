"""The purse's commands as method calls, over any transport.

Used by the issuer (personalisation) and by every terminal; it builds the
command APDUs of ``docs/protocol.md`` and decodes the answers. Errors from
the card arrive as :class:`apdu.status.CardError` with the status word.
"""

from __future__ import annotations

from dataclasses import dataclass

from apdu.command import CommandApdu
from apdu.purse import (
    PURSE_AID,
    ChangePinData,
    HistoryRecord,
    LifeCycle,
    PayData,
    PersonaliseData,
    Tag,
    TransferAskData,
    TransferOutData,
)
from apdu.status import SW, CardError
from apdu.tlv import Tlv, find, parse_one
from apdu.transport import CardChannel

_CLA = 0x80


@dataclass(frozen=True, slots=True)
class CardStatus:
    """The card's public state (GET DATA ``BF10``)."""

    card_id: bytes
    state: LifeCycle
    balance: int
    currency: int
    atc: int
    time_mark: int
    offline_spent: int


def _int(tlv: Tlv | None) -> int:
    if tlv is None or tlv.constructed:
        return 0
    return int.from_bytes(tlv.value_bytes, "big")


class PurseClient:
    """Drives the purse applet through a :class:`CardChannel`."""

    def __init__(self, channel: CardChannel) -> None:
        self.channel = channel

    def _call(
        self, cla: int, ins: int, p1: int = 0, p2: int = 0, data: bytes = b"", ne: int | None = 256
    ) -> bytes:
        return self.channel.transceive(CommandApdu(cla, ins, p1, p2, data, ne))

    # interindustry ----------------------------------------------------------------
    def select(self) -> bytes:
        """SELECT the purse applet; returns the FCI."""
        return self._call(0x00, 0xA4, 0x04, 0x00, PURSE_AID)

    def get_data(self, tag: Tag) -> bytes:
        """The value of one data object (``6A88`` as CardError when absent)."""
        raw = self._call(0x00, 0xCA, tag >> 8, tag & 0xFF)
        return parse_one(raw).value_bytes

    def status(self) -> CardStatus:
        template = parse_one(self._call(0x00, 0xCA, Tag.STATUS >> 8, Tag.STATUS & 0xFF))
        card_id = find(template, Tag.CARD_ID)
        return CardStatus(
            card_id=card_id.value_bytes if card_id is not None else b"",
            state=LifeCycle(_int(find(template, Tag.STATE))),
            balance=_int(find(template, Tag.BALANCE)),
            currency=_int(find(template, Tag.CURRENCY)),
            atc=_int(find(template, Tag.ATC)),
            time_mark=_int(find(template, Tag.TIME_MARK)),
            offline_spent=_int(find(template, Tag.OFFLINE_SPENT)),
        )

    def verify_pin(self, pin: bytes) -> None:
        self._call(0x00, 0x20, 0x00, 0x80, pin, None)

    def change_pin(self, old: bytes, new: bytes) -> None:
        self._call(0x00, 0x24, 0x00, 0x80, ChangePinData(old, new).encode(), None)

    def read_record(self, number: int) -> HistoryRecord:
        """History entry ``number`` (1 = newest); needs the PIN."""
        return HistoryRecord.decode(self._call(0x00, 0xB2, number, 0x04))

    def history(self) -> list[HistoryRecord]:
        """Every entry the card keeps, newest first (needs the PIN)."""
        out: list[HistoryRecord] = []
        number = 1
        while number <= 0xFF:
            try:
                out.append(self.read_record(number))
            except CardError as err:
                if err.sw == SW.RECORD_NOT_FOUND:
                    break
                raise
            number += 1
        return out

    # proprietary --------------------------------------------------------------------
    def personalise(self, data: PersonaliseData) -> bytes:
        """Identity, PIN and issuer key; returns the card's new public key."""
        return self._call(_CLA, 0xE2, 0x00, 0x00, data.encode())

    def store_certificate(self, certificate: bytes) -> None:
        self._call(_CLA, 0xE2, 0x80, 0x00, certificate, None)

    def begin_online(self) -> bytes:
        """A card-signed OnlineRequest envelope with a fresh nonce."""
        return self._call(_CLA, 0x50)

    def issuer_update(self, update: bytes) -> int:
        """Apply an issuer-signed update; returns the card's new ATC."""
        return int.from_bytes(self._call(_CLA, 0x52, data=update), "big")

    def pay(self, request: PayData) -> bytes:
        """Offline debit; returns the card-signed Receipt envelope."""
        return self._call(_CLA, 0x54, data=request.encode())

    def lock(self, order: bytes) -> None:
        self._call(_CLA, 0x1E, data=order, ne=None)

    # card to card ---------------------------------------------------------------------
    def transfer_ask(self, amount: int, from_seq: int, payer_certificate: bytes) -> bytes:
        """Payee: ask for value; returns the payee-signed request."""
        data = TransferAskData(amount, from_seq, payer_certificate).encode()
        return self._call(_CLA, 0x58, 0x00, 0x00, data)

    def transfer_out(self, terminal_time: int, payee_certificate: bytes, request: bytes) -> bytes:
        """Payer: debit for the payee's request; returns the payer-signed value."""
        data = TransferOutData(terminal_time, payee_certificate, request).encode()
        return self._call(_CLA, 0x56, data=data)

    def transfer_receive(self, value: bytes) -> bytes:
        """Payee: credit the payer's value; returns the payee-signed acknowledgement."""
        return self._call(_CLA, 0x58, 0x01, 0x00, value)

    def transfer_ack(self, ack: bytes) -> None:
        """Payer: the payee's acknowledgement closes the transfer."""
        self._call(_CLA, 0x5A, data=ack, ne=None)
