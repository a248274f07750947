"""``purse apdu``: raw APDUs to a card (file or reader), one by one, from a script, or by hand.

Hex in the style of opensc-tool: ``00A4040008F045505552534501`` or with
spaces or colons between bytes (quote it then). Every answer is decoded:
the status word's meaning, the TLV tree, and our signed objects field by
field. ``--trace`` logs every raw exchange (GET RESPONSE rounds included).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

import click

from apdu.atr import AtrError, parse_atr
from apdu.command import CommandApdu
from apdu.decode import response_lines
from apdu.errors import MalformedApdu
from apdu.pcsc import list_readers
from apdu.response import ResponseApdu
from purse_cli.home import connect
from purse_cli.output import Refusal, emit
from purse_cli.params import CardSource, card_option, json_option

_SEPARATORS = re.compile(r"[\s:]+")
_EXPECT = re.compile(r"^\s*(?P<apdu>[^#]*?)\s*(?:=>\s*(?P<sw>[0-9A-Fa-fXx]{4}))?\s*(?:#.*)?$")


def parse_hex_apdu(text: str) -> CommandApdu:
    """One command APDU from hex (ValueError with a reason when it is not one)."""
    compact = _SEPARATORS.sub("", text)
    if not compact:
        raise ValueError("empty APDU")
    try:
        raw = bytes.fromhex(compact)
    except ValueError:
        raise ValueError(f"{text!r} is not hex") from None
    try:
        return CommandApdu.parse(raw)
    except MalformedApdu as err:
        raise ValueError(f"{text!r} is not a command APDU: {err}") from None


@dataclass(frozen=True)
class ScriptLine:
    number: int
    cmd: CommandApdu
    expect: str | None  # four hex digits, X as a wildcard digit


def parse_script(lines: Iterable[str]) -> list[ScriptLine]:
    """``APDU [=> SW]  # comment`` per line; blank lines and comments skipped."""
    out = []
    for number, line in enumerate(lines, 1):
        match = _EXPECT.match(line)
        if match is None or not match.group("apdu"):
            if line.split("#", 1)[0].strip():
                raise ValueError(f"line {number}: not `APDU [=> SW]`")
            continue
        try:
            cmd = parse_hex_apdu(match.group("apdu"))
        except ValueError as err:
            raise ValueError(f"line {number}: {err}") from None
        sw = match.group("sw")
        out.append(ScriptLine(number, cmd, sw.upper() if sw else None))
    return out


def sw_matches(expect: str, sw: int) -> bool:
    return all(e in ("X", g) for e, g in zip(expect, f"{sw:04X}", strict=True))


def _trace(raw: bytes, answer: bytes) -> None:
    click.echo(f"> {raw.hex(' ').upper()}", err=True)
    click.echo(f"< {answer.hex(' ').upper()}", err=True)


def _show(cmd: CommandApdu, resp: ResponseApdu) -> None:
    click.echo(f"-> {cmd.to_bytes().hex(' ').upper()}")
    for line in response_lines(cmd, resp):
        click.echo(f"   {line}")


@click.group()
def apdu() -> None:
    """Raw APDUs to a card (--card FILE or --reader R), every answer decoded; list readers."""


trace_option = click.option(
    "--trace", is_flag=True, help="Log every raw exchange on stderr (> sent, < received)."
)


@apdu.command()
@card_option
@trace_option
@click.argument("apdus", metavar="HEX...", nargs=-1, required=True)
def send(card: CardSource, trace: bool, apdus: tuple[str, ...]) -> None:
    """Send each HEX argument as one APDU (quote an APDU written with spaces).

    Example: purse apdu send --card alice.img "00 A4 04 00 08 F0 45 50 55 52 53 45 01"
    """
    try:
        commands = [parse_hex_apdu(text) for text in apdus]
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="HEX") from None
    with connect(card, _trace if trace else None) as client:
        channel = client.channel
        for cmd in commands:
            _show(cmd, channel.send(cmd))


@apdu.command()
@card_option
@trace_option
@click.argument("script", type=click.File("r"))
def script(card: CardSource, trace: bool, script: TextIO) -> None:
    """Run SCRIPT: one APDU a line, optional `=> SW` to check (X: any digit), # comments.

    \b
    Example script:
      # select the purse, then read the balance
      00 A4 04 00 08 F045505552534501 => 9000
      00 CA DF 03 00                  => 9000
      00 20 00 80 04 39393939         => 63CX   # a wrong PIN
    Stops at the first answer that does not match (exit code 3).
    """
    try:
        lines = parse_script(script)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="SCRIPT") from None
    with connect(card, _trace if trace else None) as client:
        channel = client.channel
        for line in lines:
            resp = channel.send(line.cmd)
            _show(line.cmd, resp)
            if line.expect is not None and not sw_matches(line.expect, resp.sw):
                raise Refusal(f"line {line.number}: expected SW {line.expect}, got {resp.sw:04X}")
    click.echo(f"{len(lines)} APDU(s) sent, every expected status word matched")


@apdu.command()
@card_option
@trace_option
def shell(card: CardSource, trace: bool) -> None:
    """Type APDUs in hex, one per line; see each answer decoded. `quit` or Ctrl-D ends."""
    with connect(card, _trace if trace else None) as client:
        channel = client.channel
        while True:
            try:
                text = click.prompt("apdu", prompt_suffix="> ", default="", show_default=False)
            except click.Abort:
                break
            if text.strip().lower() in {"quit", "exit"}:
                break
            if not text.strip():
                continue
            try:
                cmd = parse_hex_apdu(text)
            except ValueError as err:
                click.echo(f"   {err}")
                continue
            _show(cmd, channel.send(cmd))


def _protocols(atr: bytes) -> str:
    try:
        return "/".join(f"T={p}" for p in parse_atr(atr).protocols)
    except AtrError as err:
        return f"ATR not understood: {err}"


@apdu.command()
@json_option
def readers(as_json: bool) -> None:
    """List the PC/SC readers (index and name) and the ATR of each card present.

    Use the index or the name with --reader in any command that takes --card.
    """
    found = list_readers()
    data = [
        {
            "index": r.index,
            "name": r.name,
            "atr": r.atr.hex().upper() if r.card_present else None,
            "protocols": _protocols(r.atr) if r.card_present else None,
        }
        for r in found
    ]
    lines = [
        f"{d['index']}: {d['name']}  "
        + (f"card ATR {d['atr']} ({d['protocols']})" if d["atr"] else "no card")
        for d in data
    ]
    emit(as_json, data, lines or ["no PC/SC readers (is pcscd running?)"])
