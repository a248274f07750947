"""``purse issuer``: the centre's operator commands, on the home folder's issuer."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import click

from apdu.clock import SetClock
from apdu.purse import printable_id
from issuer.centre import IssuerCentre
from issuer.errors import IssuerError
from issuer.policy import DAY, Policy
from issuer.registry import CardState, RegistryTx
from purse_cli.home import Home, connect
from purse_cli.output import Failure, emit, money, when
from purse_cli.params import (
    AMOUNT,
    ID,
    PIN,
    CardSource,
    card_option,
    clock_of,
    json_option,
    now_option,
)

pass_home = click.make_pass_decorator(Home)


@click.group()
def issuer() -> None:
    """The issuer (the centre): cards, holders, blocklist and settlement."""


@issuer.command()
@click.option(
    "--lifetime-days",
    type=click.IntRange(1, 365),
    default=7,
    show_default=True,
    help="How long a renewed credential lets the card pay offline.",
)
@click.option(
    "--offline-cap",
    type=AMOUNT,
    default=20_000,
    show_default=True,
    help="Most a card may spend between two online sessions (cents).",
)
@click.option(
    "--per-payment-limit",
    type=AMOUNT,
    default=10_000,
    show_default=True,
    help="Largest single payment (cents).",
)
@click.option(
    "--no-pin-limit",
    type=AMOUNT,
    default=2_500,
    show_default=True,
    help="Payments above this need the PIN (cents).",
)
@click.option(
    "--max-balance",
    type=AMOUNT,
    default=100_000,
    show_default=True,
    help="Most a card may hold (cents).",
)
@now_option
@pass_home
def init(
    home: Home,
    lifetime_days: int,
    offline_cap: int,
    per_payment_limit: int,
    no_pin_limit: int,
    max_balance: int,
    now: SetClock | None,
) -> None:
    """Set up a new issuer: a signing key (owner-only file) and an empty registry."""
    if home.has_issuer():
        raise Failure(f"{home.issuer}: an issuer is already set up here")
    try:
        policy = Policy(
            max_balance=max_balance,
            credential_lifetime=lifetime_days * DAY,
            offline_cap=offline_cap,
            per_payment_limit=per_payment_limit,
            no_pin_limit=no_pin_limit,
        )
        centre = IssuerCentre.create(home.issuer, policy, clock_of(now))
    except IssuerError as err:
        raise Failure(str(err)) from None
    key_id = centre.keys.current.key_id.hex().upper()
    centre.close()
    click.echo(f"issuer set up in {home.issuer} (key {key_id}); policy: {policy.to_json()}")


@issuer.command()
@card_option
@click.option("--holder", required=True, help="The holder's name (their account funds loads).")
@click.option("--pin", type=PIN, default=None, help="The card's PIN (default: a random one).")
@json_option
@now_option
@pass_home
def issue(
    home: Home,
    card: CardSource,
    holder: str,
    pin: bytes | None,
    as_json: bool,
    now: SetClock | None,
) -> None:
    """Personalise the blank card given by --card (or --reader), and register it."""
    with home.centre(clock_of(now)) as centre, connect(card) as client:
        card_id, pin = centre.issue(client, holder, pin)
    data = {"card_id": printable_id(card_id), "holder": holder, "pin": pin.decode()}
    emit(
        as_json,
        data,
        f"issued card {printable_id(card_id)} to {holder} in {card}; PIN {pin.decode()} "
        "(shown once)",
    )


@issuer.command()
@click.argument("holder")
@click.argument("amount", type=AMOUNT)
@now_option
@pass_home
def deposit(home: Home, holder: str, amount: int, now: SetClock | None) -> None:
    """Pay AMOUNT into HOLDER's account, which funds the loads of their cards."""
    with home.centre(clock_of(now)) as centre:
        balance = centre.deposit(holder, amount)
        cur = centre.policy.currency
    click.echo(f"account {holder}: {money(balance, cur)}")


@issuer.command()
@click.argument("card_id", type=ID)
@click.option("--reason", type=click.Choice(["lost", "stolen"]), required=True)
@now_option
@pass_home
def report(home: Home, card_id: bytes, reason: str, now: SetClock | None) -> None:
    """Report CARD_ID lost or stolen: it goes on the blocklist with its lock order."""
    with home.centre(clock_of(now)) as centre:
        version = centre.report(card_id, CardState(reason))
    click.echo(f"card {printable_id(card_id)} reported {reason}; blocklist version {version}")


@issuer.command()
@click.argument("card_id", type=ID)
@now_option
@pass_home
def found(home: Home, card_id: bytes, now: SetClock | None) -> None:
    """Undo a report: CARD_ID leaves the blocklist and its next renewal unlocks it."""
    with home.centre(clock_of(now)) as centre:
        version = centre.found(card_id)
    click.echo(
        f"card {printable_id(card_id)} found; blocklist version {version}; "
        "its next ATM visit unlocks it"
    )


@issuer.command()
@click.argument("card_id", type=ID)
@click.option("--pin-unblock", is_flag=True, help="Reset the PIN try counter instead.")
@now_option
@pass_home
def unlock(home: Home, card_id: bytes, pin_unblock: bool, now: SetClock | None) -> None:
    """Have CARD_ID's next online session unlock it (or unblock its PIN)."""
    with home.centre(clock_of(now)) as centre:
        if pin_unblock:
            centre.request_pin_unblock(card_id)
        else:
            centre.request_unlock(card_id)
    what = "PIN unblock" if pin_unblock else "unlock"
    click.echo(f"{what} of card {printable_id(card_id)} waits for its next ATM visit")


@issuer.command()
@click.option("--since", type=click.IntRange(0), default=0, help="A delta from this version.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@now_option
@pass_home
def blocklist(home: Home, since: int, out: Path, now: SetClock | None) -> None:
    """Write the signed blocklist (full, or a delta --since a version) to --out."""
    with home.centre(clock_of(now)) as centre:
        raw = centre.blocklist(since)
    out.write_bytes(raw)
    click.echo(f"blocklist written to {out} ({len(raw)} bytes)")


@issuer.command()
@click.argument("terminal_id", type=ID)
@click.option("--merchant", required=True, help="Who is credited for this terminal's sales.")
@now_option
@pass_home
def terminal(home: Home, terminal_id: bytes, merchant: str, now: SetClock | None) -> None:
    """Register a POS terminal, so its batches can be settled."""
    with home.centre(clock_of(now)) as centre:
        centre.register_terminal(terminal_id, merchant)
    click.echo(f"terminal {printable_id(terminal_id)} registered for {merchant}")


@issuer.command()
@json_option
@pass_home
def cards(home: Home, as_json: bool) -> None:
    """List the registered cards with their status, counters and shadow balance."""
    with home.centre(clock_of(None)) as centre:
        rows = centre.cards()
        cur = centre.policy.currency
    data: list[dict[str, Any]] = [
        {
            "card_id": printable_id(c.card_id),
            "holder": c.holder,
            "status": c.status.value,
            "last_atc": c.last_atc,
            "shadow_balance": c.shadow_balance,
            "credential_serial": c.credential_serial,
            "issued_at": when(c.issued_at),
        }
        for c in rows
    ]
    lines = [
        f"{d['card_id']}  {d['status']:<10} {d['holder']:<16} ATC {d['last_atc']:<5} "
        f"shadow {money(d['shadow_balance'], cur)}"
        for d in data
    ]
    emit(as_json, data, lines or ["no cards"])


_STATUS_WORDS = {
    "lost": "LOST: both cards logged it",
    "maybe_lost": "maybe lost: waiting for the other card's report",
    "completed": "completed: the payee got it",
    "not_sent": "not sent: the payer never debited",
}


@issuer.command()
@json_option
@pass_home
def transfers(home: Home, as_json: bool) -> None:
    """Card-to-card transfers a card logged as aborted, reconciled from both sides.

    Lost value (both cards logged the transfer) goes back to the payer at its
    next online session; `restored` says when that update was applied.
    """
    with home.centre(clock_of(None)) as centre:
        rows = centre.transfers()
        cur = centre.policy.currency
    data: list[dict[str, Any]] = []
    for r in rows:
        x = r.transfer
        data.append(
            {
                "from": printable_id(x.from_id),
                "from_seq": x.from_seq,
                "to": printable_id(x.to_id),
                "to_seq": x.to_seq,
                "amount": x.amount,
                "status": r.status.value,
                "payer_logged": x.payer_logged is not None,
                "payee_logged": x.payee_logged is not None,
                "restored": x.restored,
                "restore_pending": x.restore_serial is not None and not x.restored,
            }
        )
    lines = []
    for d in data:
        restored = (
            ", restored to the payer"
            if d["restored"]
            else ", restore sent"
            if d["restore_pending"]
            else ""
        )
        lines.append(
            f"{d['from']} #{d['from_seq']} -> {d['to']} #{d['to_seq']}  "
            f"{money(d['amount'], cur):>14}  {_STATUS_WORDS[d['status']]}{restored}"
        )
    emit(as_json, data, lines or ["no aborted transfers reported"])


@issuer.command()
@json_option
@pass_home
def settle(home: Home, as_json: bool) -> None:
    """Show settlement: each terminal's batches and what its merchant was credited."""

    def read(tx: RegistryTx) -> list[dict[str, Any]]:
        settled = Counter(r.terminal_id for r in tx.receipts())
        return [
            {
                "terminal_id": printable_id(t.terminal_id),
                "merchant": t.merchant,
                "credited": t.credited,
                "receipts": settled[t.terminal_id],
            }
            for t in tx.terminals()
            if settled[t.terminal_id]
        ]

    with home.centre(clock_of(None)) as centre:
        data = centre.read(read)
        cur = centre.policy.currency
    lines = [
        f"{d['terminal_id']} ({d['merchant']}): {d['receipts']} receipts settled, "
        f"credited {money(d['credited'], cur)}"
        for d in data
    ]
    emit(as_json, data, lines or ["nothing settled yet"])


@issuer.command()
@click.argument("card_id", type=ID, required=False)
@json_option
@pass_home
def audit(home: Home, card_id: bytes | None, as_json: bool) -> None:
    """Print the audit log (of one card, when CARD_ID is given)."""
    with home.centre(clock_of(None)) as centre:
        entries = centre.audit_log(card_id)
    data = [
        {
            "seq": e.seq,
            "at": when(e.at),
            "event": e.event,
            "card_id": printable_id(e.card_id) if e.card_id else None,
            "detail": e.detail,
        }
        for e in entries
    ]
    lines = [
        f"{d['seq']:>5} {d['at']} {d['event']:<28} {d['card_id'] or '-':<9} {d['detail']}"
        for d in data
    ]
    emit(as_json, data, lines or ["the audit log is empty"])


@issuer.command("rotate-key")
@now_option
@pass_home
def rotate_key(home: Home, now: SetClock | None) -> None:
    """Make a new signing key current; cards keep the key they were issued with."""
    with home.centre(clock_of(now)) as centre:
        key_id = centre.rotate_key()
    click.echo(f"new current issuer key {key_id.hex().upper()}")
