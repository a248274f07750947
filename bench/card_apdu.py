"""In-process APDUs: our card beside vsmartcard's vicc, in the same run (a benchmark, not a test).

Our card is a personalised, funded purse card in memory (``tests/purse_kit.py``
``funded_rig``) with the purse selected. Timed, one ``perf_counter`` pair per APDU:

* GET DATA of the balance (``00 CA DF 03 00``) through ``Card.process`` with raw
  bytes: the card itself (the figure of DESIGN.md section 9);
* the same through ``CardChannel`` (a prebuilt ``CommandApdu``: encoding, the local
  transport, response parsing, 61XX/6CXX handling) and through
  ``PurseClient.get_data`` (also builds the command and parses the TLV): what a
  terminal in this process pays;
* SELECT of the purse by AID (``P2=0C``, no FCI, as vicc's SELECT below; and with
  the FCI) and an unknown INS (``00 FE 00 00``, answered 6D00), through ``Card.process``.

vicc: ``Iso7816OS.execute(apdu)`` of the ISO 7816 card that ``vicc -t iso7816`` runs,
timed in a subprocess that can import vicc's modules (``bench/vicc.py``): GET
CHALLENGE, SELECT of the MF and an unknown INS. Ratios are vicc / ours.

Usage: python bench/card_apdu.py [--rounds N] [--vicc-rounds M] [--no-vicc]
Target (DESIGN.md section 9): GET DATA through Card.process, median <= 10 us.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apdu.command import CommandApdu
from apdu.purse import PURSE_AID, Tag
from bench.common import machine, median_p99_ms, timed
from bench.vicc import vicc_execute_timings
from tests.purse_kit import funded_rig

TARGET_US = 10.0
GET_BALANCE = bytes.fromhex("00CADF0300")
SELECT_NO_FCI = bytes.fromhex("00A4040C08") + PURSE_AID
SELECT_FCI = bytes.fromhex("00A4040008") + PURSE_AID + b"\x00"
UNKNOWN_INS = bytes.fromhex("00FE0000")
# DESIGN.md section 9's anchor, as measured when the targets were set (us)
DESIGN_ANCHOR_US = {"GET CHALLENGE": 32.0, "SELECT": 49.0, "unknown INS": 146.0}


@dataclass
class Row:
    name: str
    apdu: str
    rounds: int
    median_us: float
    p99_us: float


def row(name: str, apdu: bytes | str, timings: list[float]) -> Row:
    median, p99 = median_p99_ms(timings)
    label = apdu if isinstance(apdu, str) else apdu.hex(" ").upper()
    return Row(name, label, len(timings), median * 1e3, p99 * 1e3)


def measure_ours(rounds: int) -> list[Row]:
    rig = funded_rig()
    card, client = rig.card, rig.client
    channel = client.channel
    client.select()

    def expect(apdu: bytes, sw: bytes) -> None:
        answer = card.process(apdu)
        if answer[-2:] != sw:
            raise RuntimeError(f"{apdu.hex()} answered {answer.hex()}, not ...{sw.hex()}")

    expect(GET_BALANCE, b"\x90\x00")
    command = CommandApdu.parse(GET_BALANCE)
    rows = [
        row(
            "GET DATA, Card.process (raw bytes)",
            GET_BALANCE,
            timed(lambda: card.process(GET_BALANCE), rounds),
        ),
        row(
            "GET DATA, CardChannel.transceive",
            GET_BALANCE,
            timed(lambda: channel.transceive(command), rounds),
        ),
        row(
            "GET DATA, PurseClient.get_data",
            GET_BALANCE,
            timed(lambda: client.get_data(Tag.BALANCE), rounds),
        ),
    ]
    for name, apdu, sw in (
        ("SELECT purse, no FCI, Card.process", SELECT_NO_FCI, b"\x90\x00"),
        ("SELECT purse + FCI, Card.process", SELECT_FCI, b"\x90\x00"),
        ("unknown INS, Card.process", UNKNOWN_INS, b"\x6d\x00"),
    ):
        expect(apdu, sw)
        rows.append(row(name, apdu, timed(lambda apdu=apdu: card.process(apdu), rounds)))  # type: ignore[misc]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20_000, help="APDUs per figure, ours")
    parser.add_argument("--vicc-rounds", type=int, default=5_000, help="APDUs per figure, vicc")
    parser.add_argument("--no-vicc", action="store_true", help="skip vsmartcard's vicc")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    ours = measure_ours(args.rounds)
    vicc: dict[str, Row] = {}
    note = "vicc: not run (--no-vicc)"
    if not args.no_vicc:
        figures, reason = vicc_execute_timings(args.vicc_rounds)
        if figures is None:
            note = f"vicc: not run: {reason}"
        else:
            note = "vicc: Iso7816OS.execute of `vicc -t iso7816`'s card, in a subprocess"
            for name, f in figures.items():
                vicc[name] = Row(
                    f"vicc {name}, execute",
                    bytes.fromhex(f["apdu"]).hex(" ").upper(),
                    f["rounds"],
                    f["median_ms"] * 1e3,
                    f["p99_ms"] * 1e3,
                )
    print()
    print("| card | APDU | rounds | median us | p99 us |")
    print("|---|---|---:|---:|---:|")
    for r in [*ours, *vicc.values()]:
        print(f"| {r.name} | `{r.apdu}` | {r.rounds:,} | {r.median_us:.2f} | {r.p99_us:.2f} |")
    print(note)

    if args.json:
        figures = {"ours": [vars(r) for r in ours], "vicc": {k: vars(r) for k, r in vicc.items()}}
        args.json.write_text(json.dumps({**figures, "note": note}))
    get_data = ours[0]
    met = get_data.median_us <= TARGET_US
    print(
        f"\ntarget: GET DATA through Card.process, median <= {TARGET_US:.0f} us: "
        f"{get_data.median_us:.2f} us: {'MET' if met else 'MISSED'}"
    )
    if vicc:
        pairs = (
            ("GET CHALLENGE", ours[0]),  # DESIGN.md's pairing: vicc's GET CHALLENGE, our GET DATA
            ("SELECT", ours[3]),
            ("unknown INS", ours[5]),
        )
        print()
        print(
            "| vicc execute | vicc median us | ours | our median us | vicc / ours | "
            "DESIGN anchor us |"
        )
        print("|---|---:|---|---:|---:|---:|")
        for name, mine in pairs:
            theirs = vicc[name]
            print(
                f"| {name} | {theirs.median_us:.2f} | {mine.name} | {mine.median_us:.2f} | "
                f"{theirs.median_us / mine.median_us:.1f}x | {DESIGN_ANCHOR_US[name]:.0f} |"
            )


if __name__ == "__main__":
    main()
