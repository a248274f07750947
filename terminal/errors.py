"""What a terminal reports when a step cannot go on."""

from __future__ import annotations


class TerminalError(Exception):
    """The terminal cannot work (not set up, a card that is not genuine, a broken answer)."""


class Declined(TerminalError):
    """A refusal, by the card (``sw``), by the issuer, or by the terminal's own checks.

    ``reason`` is a short stable code; the message is one line for a person.
    """

    def __init__(self, reason: str, message: str, sw: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.sw = sw
