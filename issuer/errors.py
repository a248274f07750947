"""The issuer's errors: every one carries a message fit for one line on stderr."""

from __future__ import annotations


class IssuerError(Exception):
    """Something the issuer cannot do, or will not do; nothing was changed."""


class RegistryError(IssuerError):
    """The registry database cannot be used (not ours, newer than this code, unreadable)."""


class KeyFileError(IssuerError):
    """An issuer key file that is missing, unreadable, or readable by others."""


class Refused(IssuerError):
    """A decision against a request (audited); ``reason`` is a short stable code."""

    def __init__(self, reason: str, message: str, card_id: bytes | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.card_id = card_id
