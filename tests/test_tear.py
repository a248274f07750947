"""Power cut at every write point and every commit step: before or after, nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from card_os.applets.tally import TALLY_AID, TallyApplet
from card_os.card import Card
from card_os.image import ImageFile
from card_os.simulator import Simulator
from card_os.store import MemoryBackend
from card_os.tear import PowerLoss, TearInjector
from tests.cards import add, read, tally_on

ADD_SEVEN = b"\x80\x10\x00\x00\x04\x00\x00\x00\x07"


def _prepared(tmp_path: Path) -> Path:
    base = tmp_path / "base.img"
    sim = tally_on(base, create=True)
    for amount in (3, 4, 5):
        assert add(sim, amount) == 0x9000
    return base


def test_tear_at_every_point_of_a_multi_write_command(tmp_path: Path) -> None:
    base = _prepared(tmp_path)
    before = ImageFile(base).load()

    # One untorn run tells the state after and how many tear points there are.
    clean = tmp_path / "clean.img"
    shutil.copy(base, clean)
    counter = TearInjector()
    sim = tally_on(clean, tear=counter.point)
    counter.arm(None)
    assert sim.transmit(ADD_SEVEN).sw == 0x9000
    after = ImageFile(clean).load()
    points = counter.count
    assert after != before
    # 3 cell writes + 2 commit steps + 4 steps of the image file's replacement
    assert counter.labels == [
        "write:f054414c4c5901/total",
        "write:f054414c4c5901/count",
        "write:f054414c4c5901/log3",
        "commit:begin",
        "image:write",
        "image:fsync",
        "image:rename",
        "image:dirsync",
        "commit:done",
    ]

    outcomes = []
    for k in range(1, points + 1):
        work = tmp_path / f"torn{k}.img"
        shutil.copy(base, work)
        injector = TearInjector()
        sim = tally_on(work, tear=injector.point)
        injector.arm(k)
        with pytest.raises(PowerLoss):
            sim.transmit(ADD_SEVEN)
        assert not sim.card.powered
        on_disk = ImageFile(work).load()  # the file loads, whatever the cut
        assert on_disk in (before, after), f"tear at point {k} ({injector.labels[-1]})"
        sim.card.power_on()  # the same card, powered up again
        assert sim.card.store.snapshot() == on_disk
        outcomes.append(on_disk == after)
        # and the card still works after the tear
        assert sim.select(TALLY_AID).sw == 0x9000
        total, count = read(sim)
        assert (total, count) == ((19, 4) if on_disk == after else (12, 3))
    # cut before the rename: the old image; cut after it: the new one
    assert outcomes == [False] * 7 + [True] * 2


def test_tear_on_a_memory_card_rolls_back_uncommitted_writes() -> None:
    backend = MemoryBackend()
    injector = TearInjector()
    sim = Simulator(Card(backend, tear=injector.point))
    sim.install(TALLY_AID, TallyApplet)
    sim.select(TALLY_AID)
    add(sim, 10)
    before = backend.load()
    for k in (1, 2, 3, 4, 5):  # the three writes, the commit start, the save itself
        injector.arm(k)
        with pytest.raises(PowerLoss):
            sim.transmit(ADD_SEVEN)
        sim.card.power_on()
        assert backend.load() == before
        sim.select(TALLY_AID)
        assert read(sim) == (10, 1)
    injector.arm(6)  # after the backend save: the command is done
    with pytest.raises(PowerLoss):
        sim.transmit(ADD_SEVEN)
    sim.card.power_on()
    sim.select(TALLY_AID)
    assert read(sim) == (17, 2)
