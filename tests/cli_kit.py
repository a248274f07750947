"""Running the ``purse`` command in tests: its output, its failures, the files it leaves.

Shared by the CLI test modules (``test_cli``, ``test_pcsc``, ``test_wallet_cli``).
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from purse_cli.main import cli

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


def seconds(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp())


def run(
    args: Sequence[str],
    home: Path | None,
    *,
    stdin: str | None = None,
    env: Mapping[str, str | None] | None = None,
) -> Result:
    """``purse [--home HOME] ARGS``; a Python exception escaping the command fails the test."""
    argv = (["--home", str(home)] if home is not None else []) + list(args)
    result = CliRunner().invoke(cli, argv, input=stdin, env=env, prog_name="purse")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        trace = "".join(traceback.format_exception(result.exception))
        raise AssertionError(f"purse {' '.join(argv)} crashed:\n{trace}")
    return result


def ok(args: Sequence[str], home: Path | None, **kwargs: Any) -> str:
    """Run a command that must succeed, quietly on stderr; its stdout."""
    result = run(args, home, **kwargs)
    assert result.exit_code == EXIT_OK, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr == ""
    return result.stdout


def ok_json(args: Sequence[str], home: Path | None) -> Any:
    return json.loads(ok([*args, "--json"], home))


def one_line(result: Result) -> str:
    """The single ``purse: ...`` line of a failure: nothing on stdout, no traceback."""
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("purse: "), lines
    return lines[0]


def fails(result: Result, code: int) -> str:
    """The one line that tells why ``result`` failed with exit ``code``.

    Every failure, usage errors (2) included, is exactly one ``purse: ...``
    line on stderr, never a traceback, and nothing on stdout; a usage error
    says where to look (``--help``).
    """
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    line = one_line(result)
    if code == EXIT_USAGE:
        assert "--help" in line, line
    return line


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes; a symlink by its target) and folder (None) under ``root``."""
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        if p.is_symlink():
            out[key] = b"-> " + str(p.readlink()).encode()
        else:
            out[key] = p.read_bytes() if p.is_file() else None
    return out


def show(card: Path, home: Path) -> dict[str, Any]:
    facts: dict[str, Any] = ok_json(["card", "show", str(card)], home)
    return facts
