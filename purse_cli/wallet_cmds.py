"""``purse wallet``: the wallet terminal, two cards and a remittance button."""

from __future__ import annotations

import os
from contextlib import ExitStack

import click

from apdu.clock import SetClock
from apdu.purse import printable_id
from purse_cli.home import connect
from purse_cli.output import emit, money, when
from purse_cli.params import (
    AMOUNT,
    CardSource,
    card_source_option,
    clock_of,
    json_option,
    now_option,
    pin_option,
    wait_option,
)
from terminal.wallet import Wallet


def _same_card(one: CardSource, other: CardSource) -> bool:
    """The same file (under any name: relative, absolute, a link) or the same reader text."""
    if one.path is not None and other.path is not None:
        try:
            return os.path.samefile(one.path, other.path)
        except OSError:  # a missing file: the open says so
            return one.path.resolve() == other.path.resolve()
    return one.reader is not None and one.reader == other.reader


@click.group()
def wallet() -> None:
    """The wallet terminal: value from one card to another, offline, card to card."""


@wallet.command()
@card_source_option("from", "from-reader", "payer", "The paying")
@card_source_option("to", "to-reader", "payee", "The receiving")
@wait_option
@click.option("--amount", type=AMOUNT, required=True, help="Cents (1250) or 12.50.")
@pin_option
@json_option
@now_option
def transfer(
    payer: CardSource,
    payee: CardSource,
    wait: float,
    amount: int,
    pin: bytes | None,
    as_json: bool,
    now: SetClock | None,
) -> None:
    """Move AMOUNT from the --from card to the --to card (files or readers).

    The cards check each other (issuer-signed certificates, card-signed
    messages bound to both cards' counters); the wallet needs no issuer. The
    payer's PIN (--pin) is needed above its no-PIN limit. If the transfer
    stops midway, the message says where, and what became of the value: value
    in flight is kept in both cards' exception logs, and the issuer gives lost
    value back to the payer at its next online session.
    """
    if _same_card(payer, payee):
        raise click.UsageError("the paying and the receiving card must differ")
    clock = clock_of(now)
    with ExitStack() as stack:
        paying = stack.enter_context(connect(payer))
        receiving = stack.enter_context(connect(payee))
        result = Wallet(clock).transfer(paying, receiving, amount, pin)
    done = result.transfer
    cur = done.currency
    data = {
        "from": printable_id(done.from_id),
        "to": printable_id(done.to_id),
        "amount": amount,
        "from_seq": done.from_seq,
        "to_seq": done.to_seq,
        "payer_balance": result.payer_balance,
        "payee_balance": result.payee_balance,
        "time": when(clock()),
    }
    emit(
        as_json,
        data,
        [
            f"transferred {money(amount, cur)} from {data['from']} to {data['to']} "
            f"(sequence {done.from_seq} -> {done.to_seq}), acknowledged",
            f"balances: {data['from']} {money(result.payer_balance, cur)}, "
            f"{data['to']} {money(result.payee_balance, cur)}",
        ],
    )
