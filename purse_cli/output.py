"""How the ``purse`` command speaks: money, times, JSON, and one-line failures.

Exit codes: 0 done; 1 an error (a file that cannot be used, a terminal that is
not set up); 2 a usage error (click's); 3 a refusal (by the card, the issuer,
or a terminal's own checks).
"""

from __future__ import annotations

import json
from typing import Any

import click

from apdu.clock import format_instant

EXIT_ERROR, EXIT_USAGE, EXIT_REFUSED = 1, 2, 3
CURRENCIES = {978: "EUR", 840: "USD", 826: "GBP", 392: "JPY", 756: "CHF"}


class Failure(click.ClickException):
    """An error: one line on stderr, exit code 1."""

    exit_code = EXIT_ERROR

    def show(self, file: Any = None) -> None:
        click.echo(f"purse: {self.format_message()}", err=True)


class Refusal(Failure):
    """A refusal by the card, the issuer or a terminal: one line on stderr, exit code 3."""

    exit_code = EXIT_REFUSED


def money(minor: int, currency: int = 978) -> str:
    code = CURRENCIES.get(currency, f"#{currency}")
    sign = "-" if minor < 0 else ""
    minor = abs(minor)
    return f"{sign}{minor // 100}.{minor % 100:02d} {code}"


def when(seconds: int) -> str:
    return format_instant(seconds)


def emit(as_json: bool, data: Any, lines: list[str] | str) -> None:
    """Print ``data`` as JSON, or the human lines."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    for line in [lines] if isinstance(lines, str) else lines:
        click.echo(line)
