"""APDU round trips through pcscd + vpcd: our card, the stack's floor, and vicc.

A benchmark, not a test. Each peer is a separate process inserted into vpcd
slot 0, one after the other; this process connects through pcscd with
pyscard (``apdu.pcsc.PcscTransport``, exclusive) and times short APDUs, one
``SCardTransmit`` each:

* the floor: a minimal echo responder (a loop over the vpcd framing that
  answers every APDU ``90 00``): what the stack itself costs on this machine;
* our card: ``purse card serve`` on an issued card image, GET DATA of the
  balance (``00 CA DF 03 00``, answered with 5 bytes and ``90 00``);
* vsmartcard's ``vicc -t iso7816`` (Debian ``vsmartcard-vpicc``), GET
  CHALLENGE (``00 84 00 00 08``), where it can run: it needs pycryptodome,
  which this script installs with pip into ``.bench-cache/vicc`` on first use.

Usage: python bench/pcsc_roundtrip.py [--rounds N] [--vicc-rounds M] [--no-vicc]
Needs pcscd with the vsmartcard-vpcd driver; started here (as root) if none runs.
Target (DESIGN.md section 9): median <= 0.3 ms, within 1.5x of the floor.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apdu.clock import SetClock  # noqa: E402
from apdu.pcsc import PcscTransport  # noqa: E402
from apdu.purse import PURSE_AID  # noqa: E402
from bench.common import machine, median_p99_ms  # noqa: E402
from bench.vicc import vicc_environment  # noqa: E402
from card_os.card import DEFAULT_ATR  # noqa: E402
from card_os.vpcd import VPCD_HOST, VPCD_PORT, Control, LinkClosed, VpcdLink  # noqa: E402
from tests.pcsc_kit import READERS, StackMissing, start_stack, wait_for_slot  # noqa: E402

SELECT_PURSE = bytes.fromhex("00A4040008") + PURSE_AID
GET_BALANCE = bytes.fromhex("00CADF0300")
GET_CHALLENGE = bytes.fromhex("0084000008")
T0 = 1_800_000_000


def echo_peer(port: int) -> None:
    """The floor: answer the ATR request with our ATR and every APDU with 90 00."""
    import socket  # noqa: PLC0415

    link = VpcdLink(socket.create_connection((VPCD_HOST, port)))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            message = link.read(lambda: True)
            if len(message) > 1:
                link.write(b"\x90\x00")
            elif message[0] == Control.GET_ATR:
                link.write(DEFAULT_ATR)
    except LinkClosed:
        pass


@dataclass
class Result:
    peer: str
    apdu: str
    rounds: int
    median_ms: float
    p99_ms: float


@contextmanager
def inserted(command: list[str], env: dict[str, str] | None = None) -> Iterator[None]:
    """A peer process in slot 0, for the block; removed (and awaited) after it."""
    peer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        try:
            wait_for_slot(0, present=True, timeout=15)
        except AssertionError:
            peer.kill()
            err = peer.communicate(timeout=5)[1].decode(errors="replace").strip()
            raise RuntimeError(f"the peer never appeared in the reader: {err[-300:]}") from None
        yield
    finally:
        if peer.poll() is None:
            peer.send_signal(signal.SIGINT)
            try:
                peer.wait(5)
            except subprocess.TimeoutExpired:
                peer.kill()
                peer.wait(5)
        wait_for_slot(0, present=False, timeout=15)


def measure(peer: str, apdu: bytes, rounds: int, setup: tuple[bytes, ...] = ()) -> Result:
    with PcscTransport(READERS[0], wait=10) as reader:
        for command in setup:
            reader.transmit(command)
        for _ in range(min(rounds // 10, 200)):  # warm-up
            reader.transmit(apdu)
        timings = []
        for _ in range(rounds):
            start = time.perf_counter()
            answer = reader.transmit(apdu)
            timings.append(time.perf_counter() - start)
        if answer[-2:] != b"\x90\x00":
            raise RuntimeError(f"{peer} answered {answer.hex().upper()} to {apdu.hex().upper()}")
    median, p99 = median_p99_ms(timings)
    return Result(peer, apdu.hex(" ").upper(), rounds, median, p99)


def issued_card(folder: Path) -> Path:
    """An issued card image with some money, made with the in-process issuer."""
    from issuer.centre import IssuerCentre  # noqa: PLC0415
    from purse_cli.home import card_file  # noqa: PLC0415

    path = folder / "bench.img"
    centre = IssuerCentre.create(folder / "issuer", clock=SetClock(T0))
    try:
        with card_file(path, create=True) as (_card, client):
            centre.issue(client, "Bench", b"1234")
    finally:
        centre.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5000, help="APDUs per peer")
    parser.add_argument("--vicc-rounds", type=int, default=200, help="APDUs for vicc (slow)")
    parser.add_argument("--no-vicc", action="store_true", help="skip vsmartcard's vicc")
    parser.add_argument("--echo-peer", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_peer:
        echo_peer(args.echo_peer)
        return
    try:
        stack = start_stack()
    except StackMissing as missing:
        sys.exit(f"pcsc_roundtrip: cannot run: {missing}")
    print(f"machine: {machine()}")
    print(f"pcscd: {'started here' if stack.started else 'already running'}; reader {READERS[0]}")
    results: list[Result] = []
    notes: list[str] = []
    try:
        echo = [sys.executable, __file__, "--echo-peer", str(VPCD_PORT)]
        with inserted(echo):
            results.append(measure("echo responder (the floor)", GET_BALANCE, args.rounds))
        with tempfile.TemporaryDirectory() as tmp:
            image = issued_card(Path(tmp))
            serve = [sys.executable, "-m", "purse_cli.main", "card", "serve", str(image)]
            with inserted(serve):
                results.append(
                    measure(
                        "our card (purse card serve)", GET_BALANCE, args.rounds, (SELECT_PURSE,)
                    )
                )
        if args.no_vicc:
            notes.append("vicc: not run (--no-vicc)")
        else:
            env, reason = vicc_environment()
            if env is None:
                notes.append(f"vicc: not run: {reason}")
            else:
                with inserted(["vicc", "-t", "iso7816", "-P", str(VPCD_PORT)], env):
                    results.append(
                        measure("vsmartcard vicc -t iso7816", GET_CHALLENGE, args.vicc_rounds)
                    )
    finally:
        stack.stop()
    report(results, notes)


def report(results: list[Result], notes: list[str]) -> None:
    floor = results[0].median_ms
    print()
    print("| peer | APDU | rounds | median ms | p99 ms | median / floor |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        ratio = r.median_ms / floor
        print(
            f"| {r.peer} | `{r.apdu}` | {r.rounds:,} | {r.median_ms:.3f} | {r.p99_ms:.3f} | "
            f"{ratio:.2f}x |"
        )
    for note in notes:
        print(note)
    ours = next(r for r in results if r.peer.startswith("our card"))
    met = ours.median_ms <= 0.3 and ours.median_ms <= 1.5 * floor
    print(
        f"\ntarget: median <= 0.300 ms and <= 1.5x the floor: our card {ours.median_ms:.3f} ms, "
        f"{ours.median_ms / floor:.2f}x: {'MET' if met else 'MISSED'}"
    )
    vicc = next((r for r in results if "vicc" in r.peer), None)
    if vicc is not None:
        print(f"vicc / our card: {vicc.median_ms / ours.median_ms:,.0f}x")


if __name__ == "__main__":
    main()
