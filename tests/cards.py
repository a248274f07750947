"""Shared helpers for tests that build Tally cards on image files."""

from __future__ import annotations

from pathlib import Path

from apdu.status import SW
from card_os.applets.tally import TALLY_AID, TallyApplet
from card_os.card import Card
from card_os.simulator import Simulator
from card_os.tear import TearHook


def tally_on(path: Path, *, create: bool = False, tear: TearHook | None = None) -> Simulator:
    """A powered Tally card on ``path``, selected."""
    card = Card.create(path) if create else Card.open(path, tear=tear)
    sim = Simulator(card)
    sim.install(TALLY_AID, TallyApplet)
    assert sim.select(TALLY_AID).sw == SW.OK
    return sim


def add(sim: Simulator, amount: int) -> int:
    return sim.transmit(b"\x80\x10\x00\x00\x04" + amount.to_bytes(4, "big")).sw


def read(sim: Simulator) -> tuple[int, int]:
    data = sim.transmit("80 12 00 00 00").check()
    return int.from_bytes(data[:4], "big"), int.from_bytes(data[4:8], "big")
