"""The POS's saved state: its signed blocklist files kept as binary files beside the JSON.

They are named by their SHA-256 and re-verified at load, so an edited or
missing file is refused, never trusted; files a newer full list replaced are
removed; a state file of the first format (lists inline, in hex) still loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from issuer.registry import CardState
from terminal.errors import TerminalError
from terminal.pos_state import PosState
from tests.issuer_kit import POS_ID, IssuerRig, make_issuer


@pytest.fixture
def rig(tmp_path: Path) -> IssuerRig:
    return make_issuer(tmp_path)


def _state(rig: IssuerRig, *lists: bytes) -> PosState:
    state = PosState(POS_ID, trusted_keys=rig.centre.keys.public_keys())
    state.blocklist_files = list(lists)
    state.rebuild_blocklist()
    return state


def _listed(rig: IssuerRig) -> tuple[bytes, bytes]:
    """A full list with one stolen card, and a delta listing a second one."""
    first, second = rig.new_card("Alice"), rig.new_card("Bob")
    rig.centre.report(first.card_id, CardState.STOLEN)
    full = rig.centre.blocklist()
    rig.centre.report(second.card_id, CardState.LOST)
    delta = rig.centre.blocklist(since=1)
    return full, delta


def test_lists_are_saved_as_binary_files_named_by_their_digest(
    rig: IssuerRig, tmp_path: Path
) -> None:
    full, delta = _listed(rig)
    path = tmp_path / "terminals" / "POS.json"
    _state(rig, full, delta).save(path)
    names = json.loads(path.read_text())["blocklist_files"]
    folder = path.with_name("POS.blocklist")
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    assert [(folder / n).read_bytes() for n in names] == [full, delta]
    loaded = PosState.load(path, POS_ID)
    assert len(loaded.blocklist) == 2
    assert loaded.blocklist_files == [full, delta]


@pytest.mark.parametrize("harm", ["edited", "missing"])
def test_an_edited_or_missing_list_file_is_refused(
    rig: IssuerRig, tmp_path: Path, harm: str
) -> None:
    full, delta = _listed(rig)
    path = tmp_path / "POS.json"
    _state(rig, full, delta).save(path)
    name = json.loads(path.read_text())["blocklist_files"][1]
    victim = path.with_name("POS.blocklist") / name
    if harm == "edited":
        raw = victim.read_bytes()
        victim.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    else:
        victim.unlink()
    with pytest.raises(TerminalError, match="blocklist file"):
        PosState.load(path, POS_ID)


def test_a_new_full_list_removes_the_files_it_replaced(rig: IssuerRig, tmp_path: Path) -> None:
    full, delta = _listed(rig)
    path = tmp_path / "POS.json"
    _state(rig, full, delta).save(path)
    newest = rig.centre.blocklist()
    _state(rig, newest).save(path)
    folder = path.with_name("POS.blocklist")
    assert [p.read_bytes() for p in folder.iterdir()] == [newest]
    assert len(PosState.load(path, POS_ID).blocklist) == 2


def test_a_state_file_of_the_first_format_still_loads(rig: IssuerRig, tmp_path: Path) -> None:
    full, delta = _listed(rig)
    state = _state(rig, full, delta)
    data = json.loads(state.to_json())
    data["version"] = 1
    data["blocklist_files"] = [full.hex(), delta.hex()]
    path = tmp_path / "POS.json"
    path.write_text(json.dumps(data))
    loaded = PosState.load(path, POS_ID)
    assert loaded.blocklist_files == [full, delta]
    assert len(loaded.blocklist) == 2
