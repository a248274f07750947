"""The README's Python examples run as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from purse_cli.main import cli
from purse_cli.output import EXIT_REFUSED

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "sw=36864" in out  # every example prints a 9000 response


def _walkthrough() -> list[str]:
    text = README.read_text()
    section = text[text.index("## The same story by hand") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_walkthrough_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command of the walk-through, in order, in a fresh folder; refusals where marked."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PURSE_HOME", raising=False)
    runner = CliRunner()
    lines = _walkthrough()
    assert len(lines) >= 10
    for line in lines:
        command, _, comment = line.partition("#")
        args = shlex.split(command)
        assert args[0] == "purse"
        result = runner.invoke(cli, args[1:])
        expected = EXIT_REFUSED if "refused" in comment else 0
        assert result.exit_code == expected, f"{line}\n{result.output}{result.stderr}"
        if expected:
            assert "refused" in result.stderr
    assert (tmp_path / "purse-data" / "issuer" / "registry.sqlite").exists()
    assert "stolen" in result.output  # `issuer cards`, last: the card is listed as stolen
