"""``purse atm`` and ``purse pos``: the terminal stubs on card files.

In this process, the terminals reach the home folder's issuer through its
client interface, and every step runs at ``--now`` when given: the issuer
signs with that same time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from apdu.clock import SetClock
from apdu.purse import UpdateAction, printable_id
from issuer.client import InProcessIssuer
from purse_cli.home import Home, connect
from purse_cli.output import Failure, emit, money, when
from purse_cli.params import (
    AMOUNT,
    ID,
    CardSource,
    card_option,
    clock_of,
    json_option,
    now_option,
    pin_option,
)
from terminal.atm import Atm, AtmResult
from terminal.pos import Pos
from terminal.pos_state import PosState

pass_home = click.make_pass_decorator(Home)
DEFAULT_POS = b"POS00001"


# ATM ---------------------------------------------------------------------------------
@click.group()
def atm() -> None:
    """The ATM: online sessions with the issuer (renew, load, unlock)."""


def _visit(
    home: Home, card: CardSource, now: SetClock | None, load: int, pin: bytes | None
) -> AtmResult:
    clock = clock_of(now)
    with home.centre(clock) as centre, connect(card) as client:
        return Atm(InProcessIssuer(centre), clock).visit(client, load, pin)


def _report(result: AtmResult, as_json: bool) -> None:
    reply, after = result.session.reply, result.after
    cur = after.currency
    if result.session.locked:
        data: dict[str, Any] = {"card_id": printable_id(after.card_id), "outcome": "locked"}
        emit(
            as_json,
            data,
            f"card {printable_id(after.card_id)} is reported lost or stolen: "
            "the issuer's lock order locked it; the ATM keeps the card",
        )
        return
    actions = UpdateAction(reply.actions)
    data = {
        "card_id": printable_id(after.card_id),
        "outcome": "updated",
        "actions": [a.name.lower() for a in UpdateAction if a in actions and a.name],
        "serial": reply.serial,
        "issued_at": when(reply.issued_at),
        "expires_at": when(reply.expires_at),
        "loaded": reply.load,
        "restored": reply.restore,
        "balance": after.balance,
        "atc": after.atc,
    }
    lines = [f"card {data['card_id']}: credential #{reply.serial} valid until {data['expires_at']}"]
    if reply.load:
        lines.append(f"loaded {money(reply.load, cur)} from the holder's account")
    if reply.restore:
        lines.append(
            f"restored {money(reply.restore, cur)}: card-to-card value the issuer found lost"
        )
    if actions & UpdateAction.UNLOCK:
        lines.append("unlocked by the issuer")
    if actions & UpdateAction.UNBLOCK_PIN:
        lines.append("PIN try counter reset by the issuer")
    lines.append(f"balance {money(after.balance, cur)}, ATC {after.atc}")
    emit(as_json, data, lines)


@atm.command()
@card_option
@pin_option
@json_option
@now_option
@pass_home
def renew(
    home: Home, card: CardSource, pin: bytes | None, as_json: bool, now: SetClock | None
) -> None:
    """Renew the card's credential online (and whatever the issuer has for it)."""
    _report(_visit(home, card, now, 0, pin), as_json)


@atm.command()
@click.option("--amount", type=AMOUNT, required=True, help="Cents (1250) or 12.50.")
@card_option
@pin_option
@json_option
@now_option
@pass_home
def load(
    home: Home,
    amount: int,
    card: CardSource,
    pin: bytes | None,
    as_json: bool,
    now: SetClock | None,
) -> None:
    """Load the card from its holder's account (needs --pin); renews as well."""
    if pin is None:
        raise click.UsageError("a load needs the card's PIN (--pin)")
    _report(_visit(home, card, now, amount, pin), as_json)


@atm.command()
@card_option
@json_option
@now_option
@pass_home
def unlock(home: Home, card: CardSource, as_json: bool, now: SetClock | None) -> None:
    """Collect an unlock (or PIN unblock) the issuer's operator granted this card."""
    result = _visit(home, card, now, 0, None)
    granted = UpdateAction.UNLOCK | UpdateAction.UNBLOCK_PIN
    if not result.session.locked and not UpdateAction(result.session.reply.actions) & granted:
        _report(result, as_json)
        raise Failure("the issuer had no unlock or PIN unblock for this card (renewed only)")
    _report(result, as_json)


# POS ---------------------------------------------------------------------------------
def terminal_option(f: Any) -> Any:
    return click.option(
        "--terminal",
        "terminal_id",
        type=ID,
        default=DEFAULT_POS.decode(),
        show_default=True,
        help="The POS terminal's ID (its state lives in the home folder).",
    )(f)


@contextmanager
def _pos(
    home: Home, terminal_id: bytes, now: SetClock | None, online: bool = True
) -> Iterator[Pos]:
    """A POS with its saved state; the state is saved when the block succeeds."""
    path = home.terminal_state(terminal_id)
    state = PosState.load(path, terminal_id)
    clock = clock_of(now)
    if online and home.has_issuer():
        with home.centre(clock) as centre:
            yield Pos(state, clock, InProcessIssuer(centre))
    else:
        yield Pos(state, clock, None)
    state.save(path)


@click.group()
def pos() -> None:
    """The POS: offline payments, its blocklist, and settlement of its sales."""


@pos.command()
@terminal_option
@now_option
@pass_home
def sync(home: Home, terminal_id: bytes, now: SetClock | None) -> None:
    """Fetch the issuer's keys and newest blocklist, verify them, keep them."""
    with _pos(home, terminal_id, now) as the_pos:
        before = the_pos.state.blocklist.version
        header = the_pos.sync()
        listed = len(the_pos.state.blocklist)
    kind = "full list" if header.base_version == 0 else f"delta from version {before}"
    click.echo(
        f"POS {printable_id(terminal_id)}: blocklist version {header.version} ({kind}, "
        f"verified), {listed} card(s) listed"
    )


@pos.command()
@click.option("--amount", type=AMOUNT, required=True, help="Cents (1250) or 12.50.")
@card_option
@terminal_option
@pin_option
@click.option("--offline", is_flag=True, help="Do not reach the issuer (no renewal).")
@json_option
@now_option
@pass_home
def pay(
    home: Home,
    amount: int,
    card: CardSource,
    terminal_id: bytes,
    pin: bytes | None,
    offline: bool,
    as_json: bool,
    now: SetClock | None,
) -> None:
    """Take a payment from the card offline, verify its receipt, record the sale."""
    with (
        _pos(home, terminal_id, now, online=not offline) as the_pos,
        connect(card) as client,
    ):
        sale = the_pos.pay(client, amount, pin)
        currency = client.status().currency
    data = {
        "card_id": printable_id(sale.card_id),
        "terminal_id": printable_id(terminal_id),
        "amount": sale.amount,
        "balance": sale.balance,
        "atc": sale.atc,
        "time": when(sale.time),
    }
    emit(
        as_json,
        data,
        f"paid {money(amount, currency)} at {printable_id(terminal_id)}: receipt verified "
        f"(card {data['card_id']}, ATC {sale.atc}), balance {money(sale.balance, currency)}",
    )


@pos.command()
@terminal_option
@json_option
@now_option
@pass_home
def upload(home: Home, terminal_id: bytes, as_json: bool, now: SetClock | None) -> None:
    """Send the batch of sales to the issuer for settlement."""
    with _pos(home, terminal_id, now) as the_pos:
        report = the_pos.upload()
    data = {
        "batch_id": report.batch_id,
        "accepted": len(report.accepted),
        "refused": [{"index": r.index, "reason": r.reason} for r in report.refused],
        "credited": report.credited,
    }
    lines = [
        f"batch {report.batch_id}: {len(report.accepted)} receipt(s) accepted, "
        f"{len(report.refused)} refused, {money(report.credited)} credited"
    ]
    lines += [f"  refused receipt {r.index}: {r.reason}" for r in report.refused]
    emit(as_json, data, lines)


@pos.command()
@terminal_option
@json_option
@pass_home
def sales(home: Home, terminal_id: bytes, as_json: bool) -> None:
    """The POS's sales history (and which sales still wait for upload)."""
    state = PosState.load(home.terminal_state(terminal_id), terminal_id)
    waiting = {(s.card_id, s.atc) for s in state.batch}
    data: list[dict[str, Any]] = [
        {
            "card_id": printable_id(s.card_id),
            "atc": s.atc,
            "amount": s.amount,
            "time": when(s.time),
            "settled": (s.card_id, s.atc) not in waiting,
        }
        for s in state.sales
    ]
    lines = [
        f"{d['time']}  {d['card_id']}  ATC {d['atc']:<4} {money(d['amount']):>14}  "
        f"{'settled' if d['settled'] else 'in batch'}"
        for d in data
    ]
    emit(as_json, data, lines or ["no sales yet"])
