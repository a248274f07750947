"""The card image file: restart, and refusal of bad files without overwriting them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from card_os.card import Card
from card_os.image import FORMAT_VERSION, ImageError, ImageFile, decode_image, encode_image
from tests.cards import add, read, tally_on


def test_restart_in_another_process_sees_the_same_state(tmp_path: Path) -> None:
    path = tmp_path / "card.img"
    sim = tally_on(path, create=True)
    assert add(sim, 5) == 0x9000
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from tests.cards import add, tally_on
        sim = tally_on(Path({str(path)!r}))
        assert add(sim, 37) == 0x9000
        """
    )
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", script], check=True, cwd=root)
    again = tally_on(path)
    assert read(again) == (42, 2)
    assert again.card.store.snapshot() == ImageFile(path).load()


def test_state_equal_after_reload(tmp_path: Path) -> None:
    path = tmp_path / "card.img"
    sim = tally_on(path, create=True)
    for amount in (1, 2, 3, 4, 5):
        add(sim, amount)
    before = sim.card.store.snapshot()
    del sim
    reloaded = tally_on(path)
    assert reloaded.card.store.snapshot() == before
    assert read(reloaded) == (15, 5)


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "card.img"
    path.write_bytes(b"precious")
    with pytest.raises(ImageError, match="already exists"):
        Card.create(path)
    assert path.read_bytes() == b"precious"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such card image"),
        (b"", "not a card image"),
        (b"GIF89a this is a picture", "wrong magic"),
        (b"PURSEIMG\x00\x63" + bytes(40), "newer version"),
    ],
)
def test_bad_files_are_refused_with_one_line(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    path = tmp_path / "card.img"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError) as info:
        Card.open(path)
    message = str(info.value)
    assert problem in message
    assert str(path) in message
    assert "\n" not in message
    if content is not None:
        assert path.read_bytes() == content  # never overwritten


def test_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="folder"):
        Card.open(tmp_path)


def _good_image() -> bytes:
    return encode_image({"f054414c4c5901/total": b"\x00\x00\x00\x2a", "x": b"hello"})


@settings(max_examples=300)
@given(data=st.data())
def test_any_truncation_or_byte_change_is_refused(data: st.DataObject) -> None:
    good = _good_image()
    if data.draw(st.booleans(), label="truncate"):
        cut = data.draw(st.integers(0, len(good) - 1), label="keep")
        bad = good[:cut]
    else:
        pos = data.draw(st.integers(0, len(good) - 1), label="pos")
        flip = data.draw(st.integers(1, 255), label="xor")
        bad = good[:pos] + bytes([good[pos] ^ flip]) + good[pos + 1 :]
    with pytest.raises(ImageError):
        decode_image(bad, Path("card.img"))


def test_trailing_garbage_is_refused() -> None:
    with pytest.raises(ImageError, match="unexpected bytes"):
        decode_image(_good_image() + b"\x00", Path("card.img"))


def test_round_trip_and_version() -> None:
    cells = {"a": b"", "b": bytes(range(256)), "c/d": b"\x01"}
    raw = encode_image(cells)
    assert raw[8:10] == FORMAT_VERSION.to_bytes(2, "big")
    assert decode_image(raw, Path("x")) == cells


def test_commit_leaves_no_temporary_file_and_owner_only_mode(tmp_path: Path) -> None:
    path = tmp_path / "card.img"
    sim = tally_on(path, create=True)
    add(sim, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.img"]
    assert os.stat(path).st_mode & 0o077 == 0
