"""The foundation's tear sweep applied to the purse: PAY, ISSUER UPDATE, LOCK, VERIFY.

For each command: one untorn run on a copy of the base image gives the state
after and the number of tear points; then, for every point k, a fresh copy is
reopened with a :class:`TearInjector` armed at k, the command is cut there,
and the image on disk must be exactly the state before or the state after.
The card must then power up and answer consistently with its image.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from apdu.purse import (
    HISTORY_SLOTS,
    PURSE_AID,
    Credential,
    HistoryKind,
    LifeCycle,
    Tag,
    UpdateAction,
)
from apdu.signed import ObjectKind, open_envelope, public_key_from_bytes
from apdu.status import SW, CardError
from card_os.image import ImageFile
from card_os.tear import PowerLoss, TearInjector
from tests.purse_kit import CARD_ID, DAY, PIN, T0, PurseRig, funded_rig, reopen

PREFIX = PURSE_AID.hex() + "/"
CRED_CELL = PREFIX + "credential"
NOW = T0 + DAY
NEW_SERIAL = 2
LOAD = 5_000


def _int(cells: Mapping[str, bytes], name: str) -> int:
    return int.from_bytes(cells.get(PREFIX + name, b""), "big")


def _base(tmp_path: Path) -> tuple[Path, PurseRig]:
    """A funded card that has also paid once (so offline spent is not zero)."""
    base = tmp_path / "base.img"
    rig = funded_rig(base)
    rig.pay(700, T0 + 60)
    return base, rig


@dataclass
class Run:
    """One command on a reopened card: ``prepare`` before arming, ``act`` is torn."""

    prepare: Callable[[PurseRig], object]
    act: Callable[[PurseRig, object], object]


def _untorn(tmp_path: Path, base: Path, rig: PurseRig, run: Run) -> tuple[dict[str, bytes], int]:
    clean = tmp_path / "clean.img"
    shutil.copy(base, clean)
    counter = TearInjector()
    r = reopen(clean, rig, tear=counter.point)
    prepared = run.prepare(r)
    counter.arm(None)
    run.act(r, prepared)
    assert counter.labels[-5:] == [
        "image:write",
        "image:fsync",
        "image:rename",
        "image:dirsync",
        "commit:done",
    ]
    return ImageFile(clean).load(), counter.count


def _check_powered_up(r: PurseRig, on_disk: Mapping[str, bytes]) -> None:
    """The torn card powers up on its image and answers consistently with it."""
    r.card.power_on()
    r.client.select()
    assert r.card.store.snapshot() == on_disk
    status = r.client.status()
    assert status.balance == _int(on_disk, "balance")
    assert int.from_bytes(r.client.get_data(Tag.BALANCE), "big") == _int(on_disk, "balance")
    assert status.atc == _int(on_disk, "atc")
    assert status.offline_spent == _int(on_disk, "offline_spent")
    # records in ATC order, none with an ATC the card has not reached
    count = _int(on_disk, "hist_count")
    if status.state is not LifeCycle.TERMINATED:
        r.client.verify_pin(PIN)
        history = r.client.history()
        assert len(history) == min(count, HISTORY_SLOTS)
        # BEGIN ONLINE takes an ATC without a record; other ATCs have records
        assert history[0].atc <= status.atc
        assert [h.atc for h in history] == sorted((h.atc for h in history), reverse=True)
        if count <= HISTORY_SLOTS:
            assert {h.atc for h in history} <= set(range(1, status.atc + 1))
        assert history[0].balance == status.balance


def _sweep(
    tmp_path: Path,
    base: Path,
    rig: PurseRig,
    run: Run,
    same: Callable[[Mapping[str, bytes], Mapping[str, bytes], object], bool],
) -> tuple[dict[str, bytes], dict[str, bytes], list[bool]]:
    """Cut ``run`` at every tear point; returns before, after and which cuts landed after."""
    before = ImageFile(base).load()
    after, points = _untorn(tmp_path, base, rig, run)
    assert points >= 6
    outcomes: list[bool] = []
    for k in range(1, points + 1):
        work = tmp_path / f"torn{k}.img"
        shutil.copy(base, work)
        injector = TearInjector()
        r = reopen(work, rig, tear=injector.point)
        prepared = run.prepare(r)
        before = ImageFile(work).load()  # preparing may commit (BEGIN ONLINE's ATC)
        injector.arm(k)
        with pytest.raises(PowerLoss):
            run.act(r, prepared)
        assert not r.card.powered
        label = injector.labels[-1]
        on_disk = ImageFile(work).load()
        is_before = on_disk == before
        is_after = same(on_disk, after, prepared)
        assert is_before != is_after, f"tear at point {k} ({label}): neither before nor after"
        outcomes.append(is_after)
        _check_powered_up(r, on_disk)
    # cut before the image's rename: the old image; after it: the new one
    assert outcomes == [False] * (points - 2) + [True] * 2
    return before, after, outcomes


def _exact(on_disk: Mapping[str, bytes], after: Mapping[str, bytes], _: object) -> bool:
    return dict(on_disk) == dict(after)


# PAY -----------------------------------------------------------------------------------
def test_tear_sweep_pay(tmp_path: Path) -> None:
    base, rig = _base(tmp_path)
    run = Run(lambda r: None, lambda r, _: r.pay(987, T0 + 120))
    before, after, _ = _sweep(tmp_path, base, rig, run, _exact)
    assert _int(after, "balance") == _int(before, "balance") - 987
    assert _int(after, "atc") == _int(before, "atc") + 1
    assert _int(after, "offline_spent") == _int(before, "offline_spent") + 987
    assert _int(after, "time_mark") == T0 + 120
    assert _int(after, "hist_count") == _int(before, "hist_count") + 1
    changed = {k for k in after if after.get(k) != before.get(k)}
    assert changed == {
        PREFIX + name
        for name in ("atc", "balance", "offline_spent", "time_mark", "hist_count", "hist3")
    }


# ISSUER UPDATE (renew + load) -------------------------------------------------------------
def _open_update(r: PurseRig) -> tuple[bytes, bytes, bytes]:
    """BEGIN ONLINE on this card, then the update for its nonce (fresh per card)."""
    nonce = r.begin().card_nonce
    cred = r.credential_for(nonce, NOW, serial=NEW_SERIAL)
    update = r.issuer.update(
        CARD_ID,
        nonce,
        NOW,
        UpdateAction.RENEW | UpdateAction.LOAD,
        load_amount=LOAD,
        credential=cred,
    )
    return update, cred, nonce


def _apply_update(r: PurseRig, prepared: object) -> object:
    assert isinstance(prepared, tuple)
    return r.client.issuer_update(prepared[0])


def _valid_new_credential(raw: bytes, rig: PurseRig) -> Credential:
    keys = {rig.issuer.key_id: public_key_from_bytes(rig.issuer.public)}
    cred = Credential.decode(open_envelope(raw, ObjectKind.CREDENTIAL, keys).body)
    assert cred.card_id == CARD_ID
    assert cred.serial == NEW_SERIAL
    return cred


def test_tear_sweep_issuer_update(tmp_path: Path) -> None:
    base, rig = _base(tmp_path)
    old_cred = ImageFile(base).load()[CRED_CELL]

    def same(on_disk: Mapping[str, bytes], after: Mapping[str, bytes], prepared: object) -> bool:
        """Equal to the untorn after-state but for the credential, which is this run's."""
        assert isinstance(prepared, tuple)
        sent: bytes = prepared[1]
        rest_equal = {k: v for k, v in on_disk.items() if k != CRED_CELL} == {
            k: v for k, v in after.items() if k != CRED_CELL
        }
        cred_cell = on_disk[CRED_CELL]
        assert cred_cell in (old_cred, sent)  # never half written, never another one
        if cred_cell == sent:
            assert _valid_new_credential(cred_cell, rig).card_nonce == prepared[2]
        assert rest_equal == (cred_cell == sent)
        return rest_equal

    run = Run(_open_update, _apply_update)
    before, after, _ = _sweep(tmp_path, base, rig, run, same)
    assert _int(after, "balance") == _int(before, "balance") + LOAD
    assert _int(after, "atc") == _int(before, "atc") + 1
    assert _int(after, "offline_spent") == 0
    assert _int(after, "time_mark") == NOW
    assert _int(after, "hist_count") == _int(before, "hist_count") + 2
    assert _valid_new_credential(after[CRED_CELL], rig).expires_at == NOW + rig.policy.lifetime


def test_torn_update_cannot_be_replayed(tmp_path: Path) -> None:
    """After a tear the session nonce is gone: the same update is stale, whatever landed."""
    base, rig = _base(tmp_path)
    for k in (1, 8, 14):
        work = tmp_path / f"replay{k}.img"
        shutil.copy(base, work)
        injector = TearInjector()
        r = reopen(work, rig, tear=injector.point)
        update = _open_update(r)[0]
        injector.arm(k)
        with pytest.raises(PowerLoss):
            r.client.issuer_update(update)
        r.card.power_on()
        r.client.select()
        balance = r.client.status().balance
        with pytest.raises(CardError) as info:
            r.client.issuer_update(update)
        assert info.value.sw == SW.STALE_SESSION
        assert r.client.status().balance == balance


# LOCK ---------------------------------------------------------------------------------------
def test_tear_sweep_lock(tmp_path: Path) -> None:
    base, rig = _base(tmp_path)
    order = rig.issuer.lock_order(CARD_ID, NOW)  # signed once, reused for every cut
    run = Run(lambda r: None, lambda r, _: r.client.lock(order))
    before, after, _ = _sweep(tmp_path, base, rig, run, _exact)
    assert _int(after, "state") == LifeCycle.LOCKED
    assert _int(before, "state") == LifeCycle.ACTIVE
    assert _int(after, "atc") == _int(before, "atc") + 1
    assert _int(after, "time_mark") == NOW
    assert _int(after, "hist_count") == _int(before, "hist_count") + 1
    r = reopen(tmp_path / "clean.img", rig)
    r.client.verify_pin(PIN)
    assert r.client.read_record(1).kind == HistoryKind.LOCK


# VERIFY (the PIN try counter) ------------------------------------------------------------------
def test_tear_sweep_wrong_pin(tmp_path: Path) -> None:
    """The try is spent before the comparison: once it is on disk, no tear gives it back."""
    base, rig = _base(tmp_path)
    before = ImageFile(base).load()
    tries_cell = PREFIX + "pin_tries"
    counter = TearInjector()
    clean = tmp_path / "clean.img"
    shutil.copy(base, clean)
    r = reopen(clean, rig, tear=counter.point)
    counter.arm(None)
    with pytest.raises(CardError) as info:
        r.client.verify_pin(b"9999")
    assert info.value.sw == SW.tries_left(2)
    points = counter.count
    assert counter.labels == [
        f"write-through:{tries_cell}",
        "image:write",
        "image:fsync",
        "image:rename",
        "image:dirsync",
    ]
    spent = {**before, tries_cell: b"\x02"}
    assert ImageFile(clean).load() == spent
    outcomes = []
    for k in range(1, points + 1):
        work = tmp_path / f"pin{k}.img"
        shutil.copy(base, work)
        injector = TearInjector()
        r = reopen(work, rig, tear=injector.point)
        injector.arm(k)
        with pytest.raises(PowerLoss):  # cut before any answer: nothing learnt about the PIN
            r.client.verify_pin(b"9999")
        on_disk = ImageFile(work).load()
        assert on_disk in (before, spent)
        outcomes.append(on_disk == spent)
        r.card.power_on()
        r.client.select()
        assert r.client.get_data(Tag.PIN_TRIES) == on_disk[tries_cell]
    assert outcomes == [False] * 4 + [True]  # spent once the new image is renamed in
