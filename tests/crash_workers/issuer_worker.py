"""An issuer process under load, for ``tests/test_crash.py`` to kill with SIGKILL.

Usage::

    python -m tests.crash_workers.issuer_worker SPEC.json

``SPEC.json`` names the issuer folder, the card image files (and their
holders), the journal file, the seed, the commit mode (``durable``) and the
most operations to run. The worker opens the centre once, then runs a
seeded random mix of operations, each on the real files:

* ``deposit``: money into a holder's account;
* ``load``: an online session (BEGIN ONLINE on the card image, the centre's
  decision with a load, the ISSUER UPDATE back on the card);
* ``renew``: the same without a load;
* ``pay``: a PAY on the card image, then the settlement of its receipt.

Before each operation it appends a ``begin`` line to the journal, after it an
``end`` line; a PAY also has an ``atc`` line (the card's ATC right before the
PAY) and a ``receipt`` line as soon as its receipt is in hand.
Each line is one ``write`` on a file opened with ``O_APPEND``: a SIGKILL
leaves whole lines only. The journal says, after the kill, which operation
was in flight, so the test can account for it exactly.

An unexpected refusal (anything but a lack of funds or room on the card)
ends the worker with a traceback and a non-zero exit, which the test reports.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

from apdu.clock import SetClock
from apdu.purse import PayData, Tag
from apdu.status import SW, CardError
from issuer.centre import IssuerCentre
from issuer.errors import Refused
from issuer.session import ReplyKind
from issuer.settlement import SettlementItem
from purse_cli.home import card_file

EXPECTED_REFUSALS = frozenset({"insufficient_account_funds", "over_max_balance"})
EXPECTED_CARD_REFUSALS = frozenset({SW.INSUFFICIENT_FUNDS, SW.OFFLINE_CAP_EXCEEDED})


class Journal:
    """Whole JSON lines, each in one ``write``: a kill never leaves half a line."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, **entry: Any) -> None:
        data = (json.dumps(entry) + "\n").encode()
        if os.write(self._fd, data) != len(data):
            raise OSError("short journal write")


def run(spec: dict[str, Any]) -> None:
    clock = SetClock(int(spec["now"]))
    terminal = bytes.fromhex(spec["terminal"])
    cards: list[tuple[Path, str]] = [(Path(p), h) for p, h in spec["cards"]]
    holders = sorted({h for _, h in cards})
    rng = random.Random(int(spec["seed"]))
    journal = Journal(Path(spec["journal"]))
    centre = IssuerCentre.open(Path(spec["folder"]), clock=clock, durable=bool(spec["durable"]))
    journal.write(kind="ready", pid=os.getpid())
    for step in range(int(spec["max_ops"])):
        op = rng.choices(["deposit", "load", "renew", "pay"], weights=[1, 3, 1, 5])[0]
        path, holder = rng.choice(cards)
        if op == "deposit":
            holder = rng.choice(holders)
            amount = rng.randint(1_000, 10_000)
            journal.write(kind="begin", op=op, id=step, holder=holder, amount=amount)
            centre.deposit(holder, amount)
            journal.write(kind="end", id=step, outcome="done")
        elif op in ("load", "renew"):
            amount = rng.randint(100, 5_000) if op == "load" else 0
            journal.write(kind="begin", op=op, id=step, card=str(path), amount=amount)
            with card_file(path) as (_card, client):
                client.select()
                request = client.begin_online()
                try:
                    reply = centre.online_session(request, amount)
                except Refused as refusal:
                    if refusal.reason not in EXPECTED_REFUSALS:
                        raise
                    journal.write(kind="end", id=step, outcome=f"refused_{refusal.reason}")
                    continue
                if reply.kind is not ReplyKind.UPDATE:
                    raise AssertionError(f"unexpected reply {reply.kind}")
                client.issuer_update(reply.envelope)
            journal.write(kind="end", id=step, outcome="applied")
        else:
            amount = rng.randint(50, 2_000)  # under the default no-PIN limit
            journal.write(kind="begin", op=op, id=step, card=str(path), amount=amount)
            with card_file(path) as (_card, client):
                client.select()
                atc = client.status().atc
                certificate = client.get_data(Tag.CERTIFICATE)
                journal.write(kind="atc", id=step, atc=atc)  # the card's, right before PAY
                try:
                    receipt = client.pay(PayData(amount, clock(), terminal, os.urandom(16)))
                except CardError as err:
                    if err.sw not in EXPECTED_CARD_REFUSALS:
                        raise
                    journal.write(kind="end", id=step, outcome=f"card_{err.sw:04x}")
                    continue
                journal.write(
                    kind="receipt",
                    id=step,
                    card=str(path),
                    receipt=receipt.hex(),
                    certificate=certificate.hex(),
                )
            report = centre.settle(terminal, [SettlementItem(receipt, certificate)])
            if len(report.accepted) != 1:
                raise AssertionError(f"a fresh receipt was refused: {report.results}")
            journal.write(kind="end", id=step, outcome="settled")
    centre.close()
    journal.write(kind="finished")


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m tests.crash_workers.issuer_worker SPEC.json")
    run(json.loads(Path(sys.argv[1]).read_text()))


if __name__ == "__main__":
    main()
