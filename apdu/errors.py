"""Typed errors of the wire layer (other than status words, see :mod:`apdu.status`)."""

from __future__ import annotations


class WireError(ValueError):
    """Bytes that do not parse as the structure they claim to be."""


class MalformedApdu(WireError):
    """A command or response APDU whose bytes fit no ISO 7816-4 case."""


class TlvError(WireError):
    """Bytes that are not valid BER-TLV (as this project encodes it: minimal, DER-like)."""


class TransportError(Exception):
    """The link to the card failed: no card, no power, reader gone, timeout."""
