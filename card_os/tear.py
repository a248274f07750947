"""Power loss, real and simulated.

Every persistent write and every step of a commit passes a *tear point*.
A :class:`TearInjector` armed at ``k`` cuts the power at the k-th point it
sees, by raising :class:`PowerLoss`; tests then power the card up again and
check that its state is exactly the state before or after the command.
"""

from __future__ import annotations

from collections.abc import Callable

from apdu.errors import TransportError


class PowerLoss(TransportError):
    """The card lost power in the middle of a command (a tear)."""


class TearInjector:
    """Counts tear points; raises :class:`PowerLoss` at the ``at``-th one."""

    def __init__(self, at: int | None = None) -> None:
        self.at = at
        self.count = 0
        self.labels: list[str] = []

    def arm(self, at: int | None) -> None:
        self.at = at
        self.count = 0
        self.labels = []

    def point(self, label: str) -> None:
        self.count += 1
        self.labels.append(label)
        if self.count == self.at:
            self.at = None
            raise PowerLoss(f"power cut at tear point {self.count} ({label})")


TearHook = Callable[[str], None]


def no_tear(label: str) -> None:
    """The tear hook of a card with no injector: nothing happens."""
