"""What terminals may ask of the issuer, and the in-process implementation.

Terminals hold an :class:`IssuerService` and nothing else of the issuer: they
never see the registry or the keys. :class:`InProcessIssuer` answers from a
centre in the same process; a network service can implement the same
protocol later without any change to the terminals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from issuer.centre import IssuerCentre
from issuer.session import ReplyKind, SessionReply
from issuer.settlement import ItemResult, SettlementItem, SettlementReport


class IssuerService(Protocol):
    def trusted_keys(self) -> dict[bytes, bytes]:
        """Issuer key ID -> public point: the keys terminals verify issuer objects with."""

    def online_session(self, request: bytes, load: int = 0) -> SessionReply:
        """Answer a card-signed request (raises :class:`issuer.errors.IssuerError`)."""

    def blocklist(self, since: int = 0) -> bytes:
        """The signed blocklist file: full, or a delta from version ``since``."""

    def settle(self, terminal_id: bytes, items: Sequence[SettlementItem]) -> SettlementReport:
        """Settle a batch of receipts."""


class InProcessIssuer:
    """An :class:`IssuerService` backed by a centre in this process."""

    def __init__(self, centre: IssuerCentre) -> None:
        self._centre = centre

    def trusted_keys(self) -> dict[bytes, bytes]:
        return self._centre.keys.public_keys()

    def online_session(self, request: bytes, load: int = 0) -> SessionReply:
        return self._centre.online_session(request, load)

    def blocklist(self, since: int = 0) -> bytes:
        return self._centre.blocklist(since)

    def settle(self, terminal_id: bytes, items: Sequence[SettlementItem]) -> SettlementReport:
        return self._centre.settle(terminal_id, items)


__all__ = [
    "InProcessIssuer",
    "IssuerService",
    "ItemResult",
    "ReplyKind",
    "SessionReply",
    "SettlementItem",
    "SettlementReport",
]
