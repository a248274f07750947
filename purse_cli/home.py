"""The home folder: where the issuer, the terminals and the default card files live.

Layout::

    <home>/issuer/        the issuer centre (key ring and registry)
    <home>/terminals/     one JSON state file per POS terminal
    <home>/cards/         a suggested place for card image files

``--home``, or the environment variable ``PURSE_HOME``; default ``./purse-data``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from apdu.clock import Clock
from apdu.purse import PURSE_AID
from apdu.purse_client import PurseClient
from apdu.transport import CardChannel, LocalTransport
from card_os.card import Card
from card_os.image import ImageError
from card_os.purse import PurseApplet
from card_os.tear import TearHook
from issuer.centre import REGISTRY_FILE, IssuerCentre
from issuer.errors import IssuerError
from purse_cli.output import Failure


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def issuer(self) -> Path:
        return self.root / "issuer"

    def terminal_state(self, terminal_id: bytes) -> Path:
        return self.root / "terminals" / f"{terminal_id.hex().upper()}.json"

    def has_issuer(self) -> bool:
        return (self.issuer / REGISTRY_FILE).exists()

    @contextmanager
    def centre(self, clock: Clock) -> Iterator[IssuerCentre]:
        if not self.has_issuer():
            raise Failure(f"no issuer in {self.root} (run `purse issuer init`)")
        try:
            centre = IssuerCentre.open(self.issuer, clock=clock)
        except IssuerError as err:
            raise Failure(str(err)) from None
        try:
            yield centre
        finally:
            centre.close()


@contextmanager
def card_file(
    path: Path, *, create: bool = False, tear: TearHook | None = None
) -> Iterator[tuple[Card, PurseClient]]:
    """A card from its image file, powered, with a client; the card saves itself.

    ``tear`` (for demos and tests) can cut the power at a chosen write.
    """
    try:
        if create:
            if path.exists():
                raise Failure(f"{path}: already exists; a new card needs a new file")
            card = Card.create(path)
        else:
            if not path.exists():
                raise Failure(f"{path}: no such card file")
            card = Card.open(path, tear=tear)
    except (ImageError, OSError) as err:
        raise Failure(str(err)) from None
    card.install(PURSE_AID, PurseApplet)
    card.power_on()
    try:
        yield card, PurseClient(CardChannel(LocalTransport(card)))
    finally:
        if card.powered:
            card.power_off()
