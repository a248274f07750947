"""Renewals per second at the issuer, one process, SQLite (a benchmark, not a test).

Issues a set of cards, then runs online sessions round after round: each
card signs a request (not timed), the issuer decides and signs a credential
and an update (timed: ``IssuerCentre.online_session``, one SQLite transaction
each), and the card applies the update (not timed). Printed for both commit
modes of the registry: ``durable`` (synchronous=FULL, every commit synced)
and ``process-safe`` (synchronous=NORMAL in WAL: a commit survives a crash of
the process, not of the machine).

Usage: python bench/issuer_renewals.py [--cards N] [--rounds R]
Target (DESIGN.md section 9): >= 2,000 renewals per second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apdu.clock import SetClock
from apdu.purse import PURSE_AID
from apdu.purse_client import PurseClient
from apdu.transport import CardChannel, LocalTransport
from bench.common import machine, median_p99_ms
from card_os.card import Card
from card_os.purse import PurseApplet
from issuer.centre import IssuerCentre

T0 = 1_800_000_000


def run(durable: bool, cards: int, rounds: int) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        clock = SetClock(T0)
        IssuerCentre.create(Path(tmp), clock=clock).close()
        centre = IssuerCentre.open(Path(tmp), clock=clock, durable=durable)
        clients = []
        for n in range(cards):
            card = Card()
            card.install(PURSE_AID, PurseApplet)
            card.power_on()
            client = PurseClient(CardChannel(LocalTransport(card)))
            centre.issue(client, f"holder {n}", b"1234")
            clients.append(client)
        timings: list[float] = []
        for _ in range(rounds):
            clock.advance(60)
            for client in clients:
                client.select()
                request = client.begin_online()
                start = time.perf_counter()
                reply = centre.online_session(request)
                timings.append(time.perf_counter() - start)
                client.issuer_update(reply.envelope)
        centre.close()
    return len(timings) / sum(timings), timings


def fsync_ms(rounds: int = 200) -> float:
    """Median time of a 4 KiB write + fsync in this folder's file system: the floor of a
    durable commit."""
    with tempfile.NamedTemporaryFile() as f:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            os.write(f.fileno(), b"x" * 4096)
            os.fsync(f.fileno())
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cards", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"{args.cards} cards x {args.rounds} rounds of online sessions, renew only")
    print(f"{'registry commits':<34}{'renewals/s':>12}{'median ms':>11}{'p99 ms':>9}")
    for durable, label in (
        (True, "durable (synchronous=FULL)"),
        (False, "process-safe (NORMAL, WAL)"),
    ):
        rate, timings = run(durable, args.cards, args.rounds)
        median, p99 = median_p99_ms(timings)
        print(f"{label:<34}{rate:>12,.0f}{median:>11.3f}{p99:>9.3f}")
    print(f"one 4 KiB write + fsync here: {fsync_ms():.3f} ms (a durable commit pays it once)")
    print("target: >= 2,000 renewals/s")


if __name__ == "__main__":
    main()
