"""A signed blocklist of a million cards at a terminal (a benchmark, not a test).

The issuer's side (not a target): ``--cards`` lock orders of random card IDs of the
issuer's form (``P`` and 7 digits), in card ID order as the issuer's registry lists
them, assembled into one signed full list by ``apdu.blocklist.build_blocklist`` with
the issuer's key.

The terminal's side, each in a fresh process so that its memory is its own:

* load + verify: read the file, then ``TrustedBlocklist.apply`` (parse, the
  header's ECDSA signature, the SHA-256 digest over the entries, the checks of
  every entry, the lookup structure), ``--repeat`` times, the median;
* memory: resident set before and after the load and its peak
  (``/proc/self/statm``, ``VmHWM``), and, in another process, tracemalloc's peak during the
  load and what stays allocated after it (the file's bytes included: the terminal
  keeps them to hand a listed card its lock order);
* lookup: ``TrustedBlocklist.lock_order(card_id)`` (what ``Pos.pay`` asks), for
  random listed and random unlisted card IDs, one ``perf_counter`` pair each.

Signatures: the header is signed for real and its digest covers every entry, so
one ECDSA verification at load is all a terminal checks; each lock order's own
signature is the card's to check, never the terminal's. Signing a million lock
orders takes about a minute here, so by default only every ``--sign-every``-th
entry is signed for real (and one is checked to open with the issuer's key) and
the others carry a copy of a real signature, which no card would accept but
which changes nothing the terminal does; ``--sign-all`` signs them all.

Usage: python bench/blocklist_million.py [--cards N] [--repeat R] [--sign-all] [--profile]
Targets (DESIGN.md section 9): load+verify <= 2 s, lookup <= 5 us, memory <= 150 MB.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from apdu.blocklist import TrustedBlocklist, build_blocklist
from apdu.purse import LockOrder
from apdu.signed import (
    MAGIC,
    VERSION,
    ObjectKind,
    open_envelope,
    parse_envelope,
    public_key_from_bytes,
)
from bench.common import machine, median_p99_ms
from issuer.centre import card_id_for
from issuer.signer import IssuerKey
from terminal.pos_state import PosState

ROOT = Path(__file__).resolve().parent.parent
TARGET_LOAD_S = 2.0
TARGET_LOOKUP_US = 5.0
TARGET_MEMORY_MB = 150.0
MB = 1024 * 1024
LIST_VERSION = 7
ISSUED_AT = 1_800_000_000
LOOKUPS = 20_000  # of each kind, listed and unlisted
CARD_NUMBERS = 10_000_000  # card IDs P0000001 to P9999999
POS_ID = b"POS00001"


# the issuer's side -------------------------------------------------------------------------
def lock_orders(issuer: IssuerKey, card_ids: list[bytes], sign_every: int) -> list[bytes]:
    """One LOCK_ORDER envelope per card, built as ``IssuerKey.lock_order`` builds them
    (checked on the first), signed for real every ``sign_every``-th."""
    head = MAGIC + bytes((VERSION, ObjectKind.LOCK_ORDER)) + issuer.key_id
    body = struct.Struct(
        ">H8sIBI"
    )  # body length, then LockOrder: card_id issued_at reason list_version
    ecdsa = ec.ECDSA(hashes.SHA256())
    orders: list[bytes] = []
    signature = b""
    for n, card_id in enumerate(card_ids):
        signed = head + body.pack(17, card_id, ISSUED_AT, 2, LIST_VERSION)
        if n % sign_every == 0:
            r, s = decode_dss_signature(issuer.private.sign(signed, ecdsa))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        orders.append(signed + signature)
    reference = issuer.lock_order(card_ids[0], ISSUED_AT, 2, LIST_VERSION)
    if orders[0][:-64] != reference[:-64]:
        raise RuntimeError("the fast lock orders differ from IssuerKey.lock_order's")
    return orders


def card_id(number: int) -> bytes:
    return card_id_for(number)  # as the issuer numbers cards: P and 7 digits


def listed_numbers(count: int, rng: random.Random) -> list[int]:
    """``count`` card numbers of the issuer's 9,999,999, at random, in card ID order."""
    return sorted(rng.sample(range(1, CARD_NUMBERS), count))


# the terminal's side, in a child process ---------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, it does not carry over the
    parent's peak across fork and exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(mode: str, folder: Path) -> dict[str, Any]:
    keys = {
        bytes.fromhex(k): public_key_from_bytes(bytes.fromhex(v))
        for k, v in json.loads((folder / "keys.json").read_text()).items()
    }
    path = folder / "blocklist.bin"
    if mode == "trace":
        import tracemalloc  # noqa: PLC0415

        tracemalloc.start()
        raw = path.read_bytes()
        trusted = TrustedBlocklist()
        trusted.apply(raw, keys)
        held, peak = tracemalloc.get_traced_memory()
        top = tracemalloc.take_snapshot().statistics("lineno")[:8]
        return {
            "held": held,
            "peak": peak,
            "top": [f"{s.size / MB:8.1f} MB {s.count:>9,} blocks  {s.traceback[0]}" for s in top],
        }
    if mode == "profile":
        import cProfile  # noqa: PLC0415
        import io  # noqa: PLC0415
        import pstats  # noqa: PLC0415

        raw = path.read_bytes()
        profile = cProfile.Profile()
        profile.enable()
        TrustedBlocklist().apply(raw, keys)
        profile.disable()
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(12)
        return {"profile": out.getvalue()}
    if mode == "pos-state":  # how the POS stub keeps its state: JSON, the lists beside it
        before = rss_bytes()
        start = time.perf_counter()
        state = PosState.load(folder / "pos.json", POS_ID)
        loaded = time.perf_counter() - start
        return {
            "load_s": loaded,
            "rss_peak": peak_rss_bytes() - before,
            "listed": len(state.blocklist),
        }
    # mode "load": time, resident memory, lookups
    before = rss_bytes()
    start = time.perf_counter()
    raw = path.read_bytes()
    read = time.perf_counter() - start
    trusted = TrustedBlocklist()
    trusted.apply(raw, keys)
    total = time.perf_counter() - start
    after = rss_bytes()
    peak = peak_rss_bytes()
    probes = json.loads((folder / "probes.json").read_text())
    lookups: dict[str, list[float]] = {}
    for kind in ("listed", "unlisted"):
        card_ids = [bytes.fromhex(c) for c in probes[kind]]
        timings = []
        clock = time.perf_counter
        for card_id in card_ids:
            t0 = clock()
            order = trusted.lock_order(card_id)
            timings.append(clock() - t0)
            if (order is None) != (kind == "unlisted"):
                raise RuntimeError(f"lookup of a {kind} card is wrong")
        lookups[kind] = timings
    sample = trusted.lock_order(bytes.fromhex(probes["signed"]))
    assert sample is not None
    order = LockOrder.decode(open_envelope(sample, ObjectKind.LOCK_ORDER, keys).body)
    return {
        "read_s": read,
        "load_s": total,
        "listed": len(trusted),
        "rss_before": before,
        "rss_after": after,
        "rss_peak": peak,
        "lookups": lookups,
        "signed_order_opens": order.list_version == LIST_VERSION,
    }


def run_child(mode: str, folder: Path) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {mode} process failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cards", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="load+verify runs, the median")
    parser.add_argument("--sign-every", type=int, default=1_000)
    parser.add_argument("--sign-all", action="store_true", help="sign every lock order (slow)")
    parser.add_argument("--profile", action="store_true", help="profile the load even if met")
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument(
        "--no-pos-state", dest="pos_state", action="store_false", help="skip the POS state file"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return
    print(f"machine: {machine()}")
    rng = random.Random(args.seed)
    issuer = IssuerKey.generate()
    sign_every = 1 if args.sign_all else args.sign_every
    start = time.perf_counter()
    numbers = listed_numbers(args.cards, rng)
    card_ids = [card_id(n) for n in numbers]
    orders = lock_orders(issuer, card_ids, sign_every)
    made = time.perf_counter() - start
    start = time.perf_counter()
    raw = build_blocklist(issuer.sign, LIST_VERSION, 0, ISSUED_AT, orders)
    built = time.perf_counter() - start
    del orders
    header = parse_envelope(raw[2 : 2 + int.from_bytes(raw[:2], "big")])
    assert header.kind == ObjectKind.BLOCKLIST
    signed = "every" if sign_every == 1 else f"1 in {sign_every:,}"
    print(
        f"issuer: {args.cards:,} lock orders made in {made:.1f} s (signed for real: {signed}), "
        f"file built and signed in {built:.1f} s (build_blocklist)"
    )
    listed = set(numbers)
    unlisted: list[bytes] = []
    while len(unlisted) < LOOKUPS:
        candidate = rng.randrange(1, CARD_NUMBERS)
        if candidate not in listed:
            unlisted.append(card_id(candidate))
    probes = {
        "listed": [c.hex() for c in rng.choices(card_ids, k=LOOKUPS)],
        "unlisted": [c.hex() for c in unlisted],
        "signed": card_ids[sign_every * (len(card_ids) // 2 // sign_every)].hex(),
    }
    del listed, numbers, card_ids
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        folder = Path(tmp)
        (folder / "blocklist.bin").write_bytes(raw)
        (folder / "keys.json").write_text(json.dumps({issuer.key_id.hex(): issuer.public.hex()}))
        (folder / "probes.json").write_text(json.dumps(probes))
        size = len(raw)
        del raw
        loads = [run_child("load", folder) for _ in range(args.repeat)]
        trace = run_child("trace", folder)
        report(args.cards, size, loads, trace)
        if args.json:
            args.json.write_text(json.dumps({"cards": args.cards, **summary(loads, trace)}))
        if args.pos_state:
            pos_state(folder, issuer)
        if args.profile or not met(loads, trace)[0]:
            print("\nprofile of one load (cProfile, by own time):")
            print(run_child("profile", folder)["profile"].rstrip())
            print("\ntracemalloc, largest allocations alive after the load:")
            for line in trace["top"]:
                print(f"  {line}")


def pos_state(folder: Path, issuer: IssuerKey) -> None:
    """Informational: the POS stub's own state (JSON, and its lists as binary files beside)."""
    state = PosState(POS_ID, trusted_keys={issuer.key_id: issuer.public})
    state.blocklist_files = [(folder / "blocklist.bin").read_bytes()]
    start = time.perf_counter()
    state.save(folder / "pos.json")
    saved = time.perf_counter() - start
    size = (folder / "pos.json").stat().st_size + sum(
        p.stat().st_size for p in (folder / "pos.blocklist").glob("*.bin")
    )
    del state
    loaded = run_child("pos-state", folder)
    print(
        f"\n(not a target) the POS stub's saved state (terminal/pos_state.py: JSON, and each "
        f"signed list as a binary file beside it, re-verified on load): {size / MB:.1f} MB; "
        f"PosState.save {saved:.2f} s (a list already saved is not written again); "
        f"PosState.load {loaded['load_s']:.2f} s, resident peak "
        f"{loaded['rss_peak'] / MB:.0f} MB over the process before it"
    )


def summary(loads: list[dict[str, Any]], trace: dict[str, Any]) -> dict[str, float]:
    load = statistics.median(r["load_s"] for r in loads)
    lookups = {kind: median_p99_ms(loads[0]["lookups"][kind]) for kind in ("listed", "unlisted")}
    rss_peak = max(r["rss_peak"] - r["rss_before"] for r in loads)
    return {
        "load_s": load,
        "read_s": statistics.median(r["read_s"] for r in loads),
        "lookup_listed_us": lookups["listed"][0] * 1e3,
        "lookup_listed_p99_us": lookups["listed"][1] * 1e3,
        "lookup_unlisted_us": lookups["unlisted"][0] * 1e3,
        "lookup_unlisted_p99_us": lookups["unlisted"][1] * 1e3,
        "rss_held_mb": statistics.median(r["rss_after"] - r["rss_before"] for r in loads) / MB,
        "rss_peak_mb": rss_peak / MB,
        "traced_held_mb": trace["held"] / MB,
        "traced_peak_mb": trace["peak"] / MB,
    }


def met(loads: list[dict[str, Any]], trace: dict[str, Any]) -> tuple[bool, bool, bool, bool]:
    s = summary(loads, trace)
    load = s["load_s"] <= TARGET_LOAD_S
    lookup = max(s["lookup_listed_us"], s["lookup_unlisted_us"]) <= TARGET_LOOKUP_US
    memory = max(s["rss_peak_mb"], s["traced_peak_mb"]) <= TARGET_MEMORY_MB
    return load and lookup and memory, load, lookup, memory


def report(cards: int, size: int, loads: list[dict[str, Any]], trace: dict[str, Any]) -> None:
    s = summary(loads, trace)
    _, load_ok, lookup_ok, memory_ok = met(loads, trace)
    if not all(r["signed_order_opens"] for r in loads):
        raise RuntimeError("a signed lock order from the list does not open")
    yes = {True: "MET", False: "MISSED"}
    print(
        f"terminal: {loads[0]['listed']:,} cards listed; file {size:,} bytes ({size / MB:.1f} MB)"
    )
    print()
    print("| figure | measured | target | met? |")
    print("|---|---:|---:|---|")
    times = ", ".join(f"{r['load_s']:.2f}" for r in loads)
    print(
        f"| load+verify (read {s['read_s']:.2f} s + apply), median of {len(loads)} "
        f"({times} s) | {s['load_s']:.2f} s | <= {TARGET_LOAD_S:.0f} s | {yes[load_ok]} |"
    )
    for kind in ("listed", "unlisted"):
        print(
            f"| lookup, {kind} card, median (p99 {s[f'lookup_{kind}_p99_us']:.2f} us) | "
            f"{s[f'lookup_{kind}_us']:.2f} us | <= {TARGET_LOOKUP_US:.0f} us | {yes[lookup_ok]} |"
        )
    print(
        f"| memory: resident peak during the load, over the process before it | "
        f"{s['rss_peak_mb']:.1f} MB | <= {TARGET_MEMORY_MB:.0f} MB | {yes[memory_ok]} |"
    )
    print(
        f"| memory: tracemalloc peak during the load | {s['traced_peak_mb']:.1f} MB | "
        f"<= {TARGET_MEMORY_MB:.0f} MB | {yes[memory_ok]} |"
    )
    print(
        f"| memory held after the load: resident / tracemalloc (the file's "
        f"{size / MB:.1f} MB included) | {s['rss_held_mb']:.1f} / {s['traced_held_mb']:.1f} MB | "
        f"- | - |"
    )
    print(
        "anchor: transit hotlists are pushed daily; a daily load of "
        f"{s['load_s']:.2f} s is {86_400 / s['load_s']:,.0f}x inside a day"
    )


if __name__ == "__main__":
    main()
