"""Parameter types and options shared by the ``purse`` commands."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from apdu.clock import SetClock, parse_instant, system_clock

F = TypeVar("F", bound=Callable[..., Any])
_ID_TEXT = re.compile(r"^[\x21-\x7e]{8}$")
_HEX16 = re.compile(r"^[0-9A-Fa-f]{16}$")
_AMOUNT = re.compile(r"(?P<units>[0-9]{1,12})(?:\.(?P<cents>[0-9]{2}))?", re.ASCII)


class Amount(click.ParamType[int, Any]):
    """Minor units (``1250``) or major units with two decimals (``12.50``)."""

    name = "amount"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value).strip()
        if _AMOUNT.fullmatch(text.removeprefix("-")) and text.startswith("-"):
            self.fail(f"{value!r}: an amount must be positive", param, ctx)
        match = _AMOUNT.fullmatch(text)
        if match is None:
            self.fail(f"{value!r} is not an amount (cents like 1250, or 12.50)", param, ctx)
        minor = int(match["units"]) * (100 if match["cents"] else 1) + int(match["cents"] or 0)
        if minor == 0:
            self.fail(f"{value!r}: an amount must be positive", param, ctx)
        if minor >= 1 << 32:
            self.fail(f"{value!r}: too large (at most 42949672.95)", param, ctx)
        return minor


class EightByteId(click.ParamType[bytes, Any]):
    """A card or terminal ID: 8 printable ASCII characters, or 16 hex digits."""

    name = "id"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> bytes:
        if isinstance(value, bytes):
            return value
        text = str(value)
        if _HEX16.match(text):
            return bytes.fromhex(text)
        if _ID_TEXT.match(text):
            return text.encode("ascii")
        self.fail(f"{value!r} is not an ID (8 characters, or 16 hex digits)", param, ctx)


class Pin(click.ParamType[bytes, Any]):
    name = "pin"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> bytes:
        text = str(value)
        if not (4 <= len(text) <= 12 and text.isdigit() and text.isascii()):
            self.fail("a PIN is 4 to 12 digits", param, ctx)
        return text.encode("ascii")


class Instant(click.ParamType[SetClock, Any]):
    """An ISO 8601 time; the clock then stands at it."""

    name = "iso8601"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> SetClock:
        if isinstance(value, SetClock):
            return value
        try:
            return SetClock(parse_instant(str(value)))
        except ValueError as err:
            self.fail(str(err), param, ctx)


AMOUNT, ID, PIN, INSTANT = Amount(), EightByteId(), Pin(), Instant()


def clock_of(now: SetClock | None) -> Callable[[], int]:
    return now if now is not None else system_clock


def now_option(f: F) -> F:
    return click.option(
        "--now",
        type=INSTANT,
        default=None,
        help="The simulated time of this step, ISO 8601 (2026-12-01T09:00:00Z); "
        "default: the system clock. The in-process issuer signs with the same time.",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for programs.")(f)


@dataclass(frozen=True)
class CardSource:
    """Where the card is: an image file, or a PC/SC reader (name or index)."""

    path: Path | None = None
    reader: str | None = None
    wait: float = 10.0

    def __str__(self) -> str:
        return str(self.path) if self.path is not None else f"reader {self.reader}"


def card_source_option(
    file_flag: str = "card", reader_flag: str = "reader", dest: str = "card", whose: str = "The"
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--FILE_FLAG FILE`` or ``--READER_FLAG NAME|INDEX``, passed as one CardSource.

    The wait for a card in a reader comes from the command's ``--wait``
    (:func:`wait_option`), shared by all its card sources.
    """
    path_key, reader_key = f"{dest}_path", f"{dest}_reader"

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*args: Any, **kw: Any) -> Any:
            path, reader = kw.pop(path_key), kw.pop(reader_key)
            if (path is None) == (reader is None):
                raise click.UsageError(
                    f"give {whose.lower()} card as --{file_flag} FILE or "
                    f"--{reader_flag} NAME|INDEX (one of them)"
                )
            kw[dest] = CardSource(path, reader, kw["wait"])
            return f(*args, **kw)

        wrapper = click.option(
            f"--{reader_flag}",
            reader_key,
            metavar="NAME|INDEX",
            help=f"{whose} card in a PC/SC reader instead: its index in `purse apdu readers`, "
            "its name, or a part of the name only it has.",
        )(wrapper)
        return click.option(
            f"--{file_flag}",
            path_key,
            type=click.Path(dir_okay=False, path_type=Path),
            help=f"{whose} card's image file (an emulated card, in this process).",
        )(wrapper)

    return decorate


def wait_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--wait",
        type=click.FloatRange(min=0),
        default=10.0,
        show_default=True,
        help="With a reader: seconds to wait for a card.",
    )(f)


def card_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--card FILE`` or ``--reader NAME|INDEX`` (with ``--wait``), passed as ``card``."""
    return card_source_option()(wait_option(_drop_wait(f)))


def _drop_wait(f: Callable[..., Any]) -> Callable[..., Any]:
    """The card source has taken ``--wait``; the command itself does not."""

    @functools.wraps(f)
    def wrapper(*args: Any, wait: float, **kw: Any) -> Any:
        return f(*args, **kw)

    return wrapper


def pin_option(f: F) -> F:
    return click.option("--pin", type=PIN, default=None, help="The card's PIN.")(f)
