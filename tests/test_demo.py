"""The main job: ``purse demo`` tells the purse's story, and its facts hold."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from purse_cli.main import cli


def _demo(home: Path) -> str:
    result = CliRunner().invoke(cli, ["--home", str(home), "demo"])
    assert result.exit_code == 0, result.output
    return result.output


def test_demo_story_facts(tmp_path: Path) -> None:
    out = _demo(tmp_path)
    # two cards issued, renewed and loaded through the issuer
    assert "Alice: card P0000001" in out
    assert "Bob: card P0000002" in out
    assert "loaded 200.00 EUR; balance 200.00 EUR" in out
    assert "loaded 100.00 EUR; balance 100.00 EUR" in out
    # offline payments with verified receipts; the PIN rule holds
    assert out.count("card-signed receipt verified") == 3
    assert "6982" in out
    # card to card: one transfer acknowledged; one cut off midway, lost, restored to the payer
    assert "10.00 EUR from Bob to Alice, acknowledged by both cards" in out
    assert "the value is in flight" in out
    assert "5.00 EUR of lost card-to-card value restored; balance 205.50 EUR" in out
    assert "of 5.00 EUR: lost, restored to the payer" in out
    # the card itself refuses after expiry, and nothing is debited
    assert re.search(r"9C02: purse: credential expired.*balance stays 205\.50 EUR", out)
    # the lying clock and the power cut change nothing
    assert re.search(r"9C03: .*time mark; balance stays 202\.50 EUR", out)
    assert "unchanged: the payment never happened" in out
    # the stolen card is locked out by the POS's blocklist, and by the ATM
    assert "blocklist version 1" in out
    assert "P0000002 is on the blocklist: locked and ejected" in out
    assert "lock order: card locked and kept" in out
    # settlement credits exactly the three payments
    assert "3 receipts accepted, 0 refused, 42.50 EUR credited" in out
    # the clone is caught by its counter going back
    assert re.search(r"card counter \d+ is not above the \d+ already seen", out)
    assert re.search(r"Alice +card P0000001 ACTIVE +balance +202\.50 EUR +shadow +202\.50", out)
    assert re.search(r"Bob +card P0000002 LOCKED +balance +55\.00 EUR +shadow +55.*stolen", out)
    assert "1 clone flagged" in out


def test_demo_runs_again_in_the_same_home(tmp_path: Path) -> None:
    first = _demo(tmp_path)
    assert (tmp_path / "demo" / "alice.img").exists()
    assert _demo(tmp_path).splitlines()[1:] == first.splitlines()[1:]


def test_demo_leaves_a_foreign_folder_alone(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "mine.txt").write_text("keep me")
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "demo"])
    assert result.exit_code != 0
    assert (tmp_path / "demo" / "mine.txt").read_text() == "keep me"


def test_demo_help_explains() -> None:
    result = CliRunner().invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0
    assert "expiry" in result.output
