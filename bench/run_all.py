"""Every benchmark of DESIGN.md section 9, with modest sizes, and one summary table.

Runs each script in ``bench/`` as its own process (its output is printed as it
comes), then prints one table: figure, measured, target, met?, anchor, and the
ratio against the anchor measured in the same run. The PC/SC round trip needs
pcscd with the vsmartcard-vpcd driver; where it cannot run, it is skipped with
the reason. A benchmark, not a test: absolute times on shared machines are noisy.

Usage: python bench/run_all.py [--quick] [--skip NAME ...]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine

BENCH = Path(__file__).resolve().parent


@dataclass
class Line:
    figure: str
    measured: str
    target: str
    met: str
    anchor: str
    ratio: str


@dataclass
class Outcome:
    stdout: str
    figures: dict[str, Any] | None  # from --json, where the script writes it
    error: str  # why it did not run, or ""


def run(script: str, args: list[str], json_out: Path | None) -> Outcome:
    command = [sys.executable, str(BENCH / script), *args]
    if json_out is not None:
        command += ["--json", str(json_out)]
    print(f"\n$ python bench/{script} {' '.join(args)}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    print(done.stdout.rstrip(), flush=True)
    print(f"({time.perf_counter() - started:.0f} s)", flush=True)
    if done.returncode != 0:
        error = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        print(f"not run: {error}", flush=True)
        return Outcome(done.stdout, None, error)
    figures = json.loads(json_out.read_text()) if json_out is not None else None
    return Outcome(done.stdout, figures, "")


def yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def skipped(figure: str, target: str, anchor: str, why: str) -> list[Line]:
    return [Line(figure, f"not run ({why})", target, "-", anchor, "-")]


# one function per benchmark: its arguments and its lines in the summary ----------------------
def card_apdu(out: Outcome) -> list[Line]:
    if out.figures is None:
        return skipped("in-process APDU (GET DATA)", "<= 10 us", "vicc execute", out.error)
    ours = {r["name"]: r for r in out.figures["ours"]}
    vicc = out.figures["vicc"]
    get_data = ours["GET DATA, Card.process (raw bytes)"]["median_us"]
    pairs = (
        ("in-process APDU: GET DATA (Card.process)", get_data, "GET CHALLENGE", "<= 10 us"),
        (
            "in-process APDU: SELECT, no FCI",
            ours["SELECT purse, no FCI, Card.process"]["median_us"],
            "SELECT",
            "-",
        ),
        (
            "in-process APDU: unknown INS",
            ours["unknown INS, Card.process"]["median_us"],
            "unknown INS",
            "-",
        ),
    )
    lines = []
    for figure, mine, theirs, target in pairs:
        met = yes(mine <= 10.0) if target != "-" else "-"
        if theirs in vicc:
            v = vicc[theirs]["median_us"]
            anchor, ratio = f"vicc execute {theirs}: {v:.1f} us", f"vicc / ours {v / mine:.1f}x"
        else:
            anchor, ratio = f"vicc execute {theirs}: not run", "-"
        lines.append(Line(figure, f"{mine:.2f} us", target, met, anchor, ratio))
    client = ours["GET DATA, PurseClient.get_data"]["median_us"]
    lines.append(Line("  (through PurseClient.get_data)", f"{client:.2f} us", "-", "-", "-", "-"))
    return lines


def pos_payment(out: Outcome) -> list[Line]:
    figure = "offline payment, POS stub, in-process"
    anchor = "EMV 500 ms budget; JCOP4 sign 32 ms"
    if out.figures is None:
        return skipped(figure, "<= 0.5 ms", anchor, out.error)
    lines = []
    for key, label, target in (
        ("memory", "in memory", "<= 0.5 ms"),
        ("durable", "durable (fsync'd image)", "reported"),
    ):
        median, p99 = out.figures[key]
        met = yes(median <= 0.5) if key == "memory" else "-"
        lines.append(
            Line(
                f"{figure}, {label}",
                f"{median:.3f} ms (p99 {p99:.3f})",
                target,
                met,
                anchor,
                f"{500 / median:,.0f}x; {32 / median:,.1f}x under",
            )
        )
    return lines


def issuer_renewals(out: Outcome) -> list[Line]:
    figure = "issuer renewals, one process, SQLite"
    if out.error:
        return skipped(figure, ">= 2,000/s", "-", out.error)
    lines = []
    for match in re.finditer(r"^(durable|process-safe) \(([^)]*)\)\s+([\d,]+)\s", out.stdout, re.M):
        rate = float(match.group(3).replace(",", ""))
        lines.append(
            Line(
                f"{figure}, {match.group(1)} ({match.group(2)})",
                f"{rate:,.0f}/s",
                ">= 2,000/s",
                yes(rate >= 2000),
                "-",
                "-",
            )
        )
    return lines or skipped(figure, ">= 2,000/s", "-", "no figures in its output")


def blocklist(out: Outcome) -> list[Line]:
    figure = "blocklist of 1,000,000 cards"
    anchor = "hotlists pushed daily"
    if out.figures is None:
        return skipped(figure, "load <= 2 s", anchor, out.error)
    f = out.figures
    cards = f"blocklist of {f['cards']:,} cards"
    lookup = max(f["lookup_listed_us"], f["lookup_unlisted_us"])
    memory = max(f["rss_peak_mb"], f["traced_peak_mb"])
    return [
        Line(
            f"{cards}: load+verify",
            f"{f['load_s']:.2f} s",
            "<= 2 s",
            yes(f["load_s"] <= 2),
            anchor,
            f"{86_400 / f['load_s']:,.0f}x inside a day",
        ),
        Line(
            f"{cards}: lookup (listed / unlisted)",
            f"{f['lookup_listed_us']:.2f} / {f['lookup_unlisted_us']:.2f} us",
            "<= 5 us",
            yes(lookup <= 5),
            "-",
            "-",
        ),
        Line(
            f"{cards}: memory peak (resident / traced)",
            f"{f['rss_peak_mb']:.0f} / {f['traced_peak_mb']:.0f} MB",
            "<= 150 MB",
            yes(memory <= 150),
            "-",
            "-",
        ),
    ]


def pcsc(out: Outcome) -> list[Line]:
    figure = "PC/SC round trip (pcscd + vpcd)"
    target = "<= 0.3 ms, <= 1.5x floor"
    if out.error:
        return skipped(figure, target, "floor; vicc", out.error)
    rows = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^\| ([^|]+?) \| `[^`]*` \| [\d,]+ \| ([\d.]+) \|", out.stdout, re.M)
    }
    floor = next((v for k, v in rows.items() if "floor" in k), None)
    ours = next((v for k, v in rows.items() if k.startswith("our card")), None)
    vicc = next((v for k, v in rows.items() if "vicc" in k), None)
    if floor is None or ours is None:
        return skipped(figure, target, "floor; vicc", "no figures in its output")
    anchor = f"floor {floor:.3f} ms" + (f"; vicc {vicc:.1f} ms" if vicc is not None else "")
    ratio = f"{ours / floor:.2f}x floor" + (f"; vicc / ours {vicc / ours:,.0f}x" if vicc else "")
    met = yes(ours <= 0.3 and ours <= 1.5 * floor)
    return [Line(figure, f"{ours:.3f} ms", target, met, anchor, ratio)]


Bench = tuple[str, str, list[str], list[str], bool, Callable[[Outcome], list[Line]]]
BENCHES: list[Bench] = [
    # name, script, arguments, --quick arguments, writes --json, summary
    (
        "card_apdu",
        "card_apdu.py",
        [],
        ["--rounds", "5000", "--vicc-rounds", "1000"],
        True,
        card_apdu,
    ),
    (
        "pos_payment",
        "pos_payment.py",
        [],
        ["--rounds", "500", "--durable-rounds", "100"],
        True,
        pos_payment,
    ),
    (
        "issuer_renewals",
        "issuer_renewals.py",
        ["--cards", "100", "--rounds", "20"],
        ["--cards", "50", "--rounds", "10"],
        False,
        issuer_renewals,
    ),
    (
        "blocklist_million",
        "blocklist_million.py",
        ["--repeat", "3"],
        ["--repeat", "1", "--no-pos-state"],
        True,
        blocklist,
    ),
    (
        "pcsc_roundtrip",
        "pcsc_roundtrip.py",
        ["--rounds", "3000", "--vicc-rounds", "50"],
        ["--rounds", "1000", "--vicc-rounds", "20"],
        False,
        pcsc,
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a check")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=[b[0] for b in BENCHES], help="benchmarks not run"
    )
    args = parser.parse_args()
    print(f"machine: {machine()}")
    started = time.perf_counter()
    lines: list[Line] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, script, full, quick, writes_json, summarise in BENCHES:
            if name in args.skip:
                lines += summarise(Outcome("", None, "--skip"))
                continue
            json_out = Path(tmp) / f"{name}.json" if writes_json else None
            lines += summarise(run(script, quick if args.quick else full, json_out))
    print(f"\n## summary ({time.perf_counter() - started:.0f} s in all)")
    print(f"machine: {machine()}")
    print("| figure | measured | target | met? | anchor | ratio |")
    print("|---|---:|---|---|---|---|")
    for ln in lines:
        print(
            f"| {ln.figure} | {ln.measured} | {ln.target} | {ln.met} | {ln.anchor} | {ln.ratio} |"
        )


if __name__ == "__main__":
    main()
