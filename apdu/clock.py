"""Time for terminals and the issuer: Unix seconds from a clock that can be set.

Every party reads the time through a :data:`Clock`, so a demo or a test can
run the whole story at a chosen instant (``--now`` on the command line): the
terminal and the in-process issuer then agree on what "now" is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], int]


def system_clock() -> int:
    return int(time.time())


class SetClock:
    """A clock that stands still at a set instant until moved."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += seconds


def parse_instant(text: str) -> int:
    """ISO 8601 (``2026-12-01T09:00:00Z``; no zone means UTC) to Unix seconds."""
    try:
        when = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = int(when.timestamp())
    if not 0 <= seconds < 1 << 32:
        raise ValueError(f"time out of range for the card (1970..2106): {text!r}")
    return seconds


def format_instant(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
