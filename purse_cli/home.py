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
from apdu.pcsc import PcscTransport
from apdu.purse import PURSE_AID
from apdu.purse_client import PurseClient
from apdu.transport import CardChannel, LocalTransport, Trace
from card_os.card import Card
from card_os.image import image_lock
from card_os.purse import PurseApplet
from card_os.tear import TearHook
from issuer.centre import REGISTRY_FILE, IssuerCentre
from issuer.errors import IssuerError
from purse_cli.output import Failure
from purse_cli.params import CardSource


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

    The image is locked meanwhile, so no other program (a `card serve`) uses it.
    ``tear`` (for demos and tests) can cut the power at a chosen write.
    """
    if create and path.exists():
        raise Failure(f"{path}: already exists; a new card needs a new file")
    if not create and not path.exists():
        raise Failure(f"{path}: no such card file")
    with image_lock(path):
        card = Card.create(path) if create else Card.open(path, tear=tear)
        card.install(PURSE_AID, PurseApplet)
        card.power_on()
        try:
            yield card, PurseClient(CardChannel(LocalTransport(card)))
        finally:
            if card.powered:
                card.power_off()


@contextmanager
def connect(source: CardSource, trace: Trace | None = None) -> Iterator[PurseClient]:
    """A client for the card wherever it is: an image file here, or a PC/SC reader."""
    if source.path is not None:
        with card_file(source.path) as (_card, client):
            client.channel.trace = trace
            yield client
        return
    assert source.reader is not None
    with PcscTransport(source.reader, wait=source.wait) as transport:
        yield PurseClient(CardChannel(transport, trace))
