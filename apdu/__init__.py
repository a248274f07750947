"""The wire: ISO 7816-4 APDUs, status words, BER-TLV, ATRs and transports."""

from apdu.command import Case, CommandApdu
from apdu.errors import MalformedApdu, TlvError, TransportError, WireError
from apdu.response import ResponseApdu
from apdu.status import SW, CardError, describe
from apdu.transport import CardChannel, LocalTransport, Transport

__all__ = [
    "SW",
    "CardChannel",
    "CardError",
    "Case",
    "CommandApdu",
    "LocalTransport",
    "MalformedApdu",
    "ResponseApdu",
    "TlvError",
    "Transport",
    "TransportError",
    "WireError",
    "describe",
]
