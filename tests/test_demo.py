"""The main job: ``purse demo`` tells the purse's story, and its facts hold."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from purse_cli.main import cli


def test_demo_story_facts(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.count("card-signed receipt verified") == 3
    # the card itself refuses after expiry, and nothing is debited
    assert re.search(r"9C02: purse: credential expired.*balance stays 57\.50 EUR", out)
    assert re.search(r"9C03: .*time mark; balance stays 52\.50 EUR", out)
    assert "unchanged: the payment never happened" in out
    assert re.search(r"9C07: purse: card is locked; balance stays 52\.50 EUR", out)
    assert "is LOCKED, balance 52.50 EUR, ATC 6" in out
    history = [line.split()[2] for line in out.splitlines() if line.strip().startswith("ATC ")]
    assert history == ["LOCK", "PAY", "RENEW", "PAY", "PAY", "LOAD", "RENEW"]
    assert (tmp_path / "demo-card.img").exists()


def test_demo_help_explains() -> None:
    result = CliRunner().invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0
    assert "expiry" in result.output
