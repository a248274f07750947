"""``purse card``: make a blank card file, show what a card holds, serve it to PC/SC."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from apdu.purse import HISTORY_SLOTS, PURSE_AID, HistoryKind, LifeCycle, printable_id
from card_os.purse import PurseApplet
from card_os.purse.state import PurseState
from card_os.vpcd import VPCD_PORT, VPCD_SLOTS, VpcdBridge, parse_endpoint
from purse_cli.home import card_file
from purse_cli.output import emit, money, when
from purse_cli.params import json_option

FILE = click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))


@click.group()
def card() -> None:
    """Card image files: the emulated card's memory, one file per card."""


@card.command("new")
@FILE
def new(path: Path) -> None:
    """Create FILE holding a blank card (the purse installed, not yet issued)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with card_file(path, create=True):
        pass
    click.echo(f"blank card created in {path}; issue it with `purse issuer issue --card {path}`")


def card_facts(state: PurseState) -> dict[str, Any]:
    """The documented ``card show --json`` object (docs/cli.md)."""
    cred = state.credential()
    history = []
    for number in range(1, min(state.history_count, HISTORY_SLOTS) + 1):
        entry = state.history(number)
        if entry is None:
            break
        history.append(
            {
                "atc": entry.atc,
                "kind": HistoryKind(entry.kind).name.lower(),
                "amount": entry.amount,
                "balance": entry.balance,
                "time": when(entry.time),
                "counterparty": printable_id(entry.counterparty)
                if any(entry.counterparty)
                else None,
            }
        )
    return {
        "card_id": printable_id(state.card_id) if state.card_id else None,
        "state": state.life_cycle.name.lower(),
        "balance": state.balance,
        "currency": state.currency,
        "atc": state.atc,
        "pin_tries": state.pin_tries,
        "credential": None
        if cred is None
        else {
            "serial": cred.serial,
            "issued_at": when(cred.issued_at),
            "expires_at": when(cred.expires_at),
            "offline_cap": cred.offline_cap,
            "offline_spent": state.offline_spent,
            "per_payment_limit": cred.per_payment_limit,
            "no_pin_limit": cred.no_pin_limit,
        },
        "history": history,
    }


@card.command("show")
@FILE
@json_option
def show(path: Path, as_json: bool) -> None:
    """Show the card in FILE: ID, state, balance, ATC, credential and history.

    This reads the card's memory directly, as a debugger would (the history
    needs no PIN here); terminals see the same facts only through APDUs.
    """
    with card_file(path) as (the_card, _client):
        applet = the_card.applets[PURSE_AID]
        assert isinstance(applet, PurseApplet)
        facts = card_facts(applet.state)
    emit(as_json, facts, _lines(facts))


def _lines(f: dict[str, Any]) -> list[str]:
    if f["state"] == LifeCycle.BLANK.name.lower():
        return ["card: blank (not issued)"]
    cur = f["currency"]
    out = [
        f"card {f['card_id']}: {f['state']}, balance {money(f['balance'], cur)}, "
        f"ATC {f['atc']}, PIN tries left {f['pin_tries']}"
    ]
    cred = f["credential"]
    if cred is None:
        out.append("credential: none (the card cannot pay until renewed)")
    else:
        left = cred["offline_cap"] - cred["offline_spent"]
        out.append(
            f"credential #{cred['serial']}: issued {cred['issued_at']}, expires "
            f"{cred['expires_at']}, offline cap left {money(left, cur)}"
        )
    out.append(f"history ({len(f['history'])} newest first):" if f["history"] else "history: empty")
    for h in f["history"]:
        other = f" at {h['counterparty']}" if h["counterparty"] else ""
        out.append(
            f"  #{h['atc']:<4} {h['time']}  {h['kind']:<11} {money(h['amount'], cur):>14}"
            f"  balance {money(h['balance'], cur)}{other}"
        )
    return out


@contextmanager
def _stop_on_signals(bridge: VpcdBridge) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM ask the bridge to finish its command and stop."""

    def stop(_signum: int, _frame: object) -> None:
        bridge.stop()

    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _event(text: str) -> None:
    click.echo(f"{datetime.now(UTC):%H:%M:%S} {text}")


@card.command("serve")
@FILE
@click.option(
    "--slot",
    type=click.IntRange(0, VPCD_SLOTS - 1),
    default=0,
    show_default=True,
    help=f"The vpcd slot: reader 'Virtual PCD 00 0N', TCP port {VPCD_PORT} + N.",
)
@click.option(
    "--vpcd",
    "endpoint",
    metavar="HOST[:PORT]",
    default="",
    help="Where vpcd listens (default 127.0.0.1, and the slot's port).",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds to wait for vpcd, at the start and whenever it goes away (0: forever).",
)
def serve(path: Path, slot: int, endpoint: str, wait: float) -> None:
    """Insert the card in FILE into vsmartcard's virtual PC/SC reader, until Ctrl-C.

    Any PC/SC program then sees the card: `purse apdu readers`, `purse pos pay
    --reader 0`, opensc-tool, scriptor, pcsc_scan. It needs pcscd running with
    the vsmartcard-vpcd driver (Debian: apt-get install pcscd vsmartcard-vpcd).

    \b
    Every command is committed to FILE before its answer goes out, so the
    image is always whole. Power off and reset from the reader clear the
    card's session (selection, PIN, online session); a dropped connection
    does the same, and the card is inserted again when vpcd comes back.
    While it is served, FILE is locked: other `purse` commands refuse it.
    """
    try:
        host, port = parse_endpoint(endpoint, slot)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--vpcd") from None
    with card_file(path) as (the_card, _client):
        the_card.power_off()  # the reader powers it on
        bridge = VpcdBridge(the_card, host, port, wait=wait or None, event=_event)
        click.echo(f"serving {path} to vpcd at {host}:{port}; Ctrl-C removes the card")
        with _stop_on_signals(bridge):
            bridge.serve()
    stats = bridge.stats
    click.echo(
        f"stopped: {stats.commands} command(s) answered over {stats.connections} "
        f"connection(s); {path} holds the card's state"
    )
