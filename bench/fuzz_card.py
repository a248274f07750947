"""A long fuzz campaign against the purse card (a benchmark-style script, not a test).

Random and mutated APDUs go to a personalised, funded card with a credential
(the ``funded`` card of docs/protocol.md, built by ``tests/fuzz_kit.py``), and
every answer meets the oracle of ``tests/fuzz_kit.py``: no exception out of
``Card.process``, a status word documented for the command, the store
byte-identical after every answer but 9000/61XX (a wrong PIN spends exactly one
try), and on success exactly the state change the command is documented to
make. Every ``--pay-every`` APDUs, and at the end, the card must still make a
valid PAY whose receipt verifies with its certified key.

Generators (``--engine random``, a ``random.Random(seed)`` loop):

* ``random``: random bytes, 0..300 long;
* ``structured``: CLA 00/80/random, INS of the purse or random, documented or
  random P1 P2, data that is empty, random, a protocol structure or a corpus
  data field, short or extended Lc/Le forms;
* ``message``: one of the structures of ``apdu.purse.MESSAGES`` with
  valid-looking field values, in an envelope (unsigned, zero, or signed by an
  issuer the card does not know) when it is a signed object, mutated or not,
  sent to the command that takes it;
* ``corpus``: an APDU of the corpus (docs/protocol.md's examples, real
  sessions with genuine signed objects) with bit flips, insertions, deletions,
  interesting values, length bytes altered, or spliced with another;
* ``replay``: a whole session of the corpus in order (from the card image
  half of the time), some steps mutated or left out;
* ``sequence``: SELECT, then 2..8 APDUs of the other generators.

``--engine atheris`` feeds libFuzzer's inputs (length-prefixed APDUs, seeded
with the corpus) through the same oracle, with coverage of the card's code;
it needs ``pip install atheris``.

The card goes back to its image every ``--reset-every`` APDUs (and when it
can legitimately no longer pay: locked or terminated by a genuine object of
the corpus, balance spent). A finding is minimised (fewer preceding APDUs,
then a shorter APDU) and printed with the card state and the oracle.

Usage: python bench/fuzz_card.py [--apdus N] [--seed S] [--engine random|atheris]
                                 [--jobs J] [--pay-every K] [--reset-every R]
Target: 1,000,000 APDUs, zero findings.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apdu.command import CommandApdu
from apdu.errors import MalformedApdu
from apdu.purse import MESSAGES
from bench.common import machine
from tests.fuzz_kit import (
    COMMANDS,
    KEY_IDS,
    KINDS,
    MUTATIONS,
    PURSE_INS,
    ROUTES,
    SELECT,
    SIGNERS,
    FuzzCard,
    Image,
    Violation,
    World,
    build_message,
    bytes_pool,
    field_specs,
    int_pool,
    mutate,
    mutate_data,
    splice,
    sw_family,
    world,
    wrap,
)

Case = tuple[str, list[bytes], bool]  # generator, APDUs, restore the card first


# generators -------------------------------------------------------------------------
def _ne(rng: random.Random) -> tuple[int | None, bool]:
    r = rng.random()
    if r < 0.35:
        return None, False
    if r < 0.8:
        return rng.choice((1, 2, 4, 16, 128, 255, 256, rng.randint(1, 256))), False
    return rng.choice((1, 256, 257, 4096, 65536, rng.randint(1, 65536))), True


def _command(rng: random.Random, cla: int, ins: int, p1: int, p2: int, data: bytes) -> bytes:
    ne, extended = _ne(rng)
    if len(data) > 65535:
        data = data[:65535]
    return CommandApdu(cla, ins, p1, p2, data, ne, extended).to_bytes()


def gen_random(rng: random.Random, w: World) -> bytes:
    n = rng.randrange(17) if rng.random() < 0.5 else rng.randrange(301)
    return rng.randbytes(n)


def random_message(rng: random.Random, w: World) -> tuple[type, bytes]:
    """A structure with valid-looking field values, encoded, perhaps in an envelope."""
    message = rng.choice(MESSAGES)
    values: dict[str, int | bytes] = {}
    for spec in field_specs(message):
        if spec.kind == "int":
            if rng.random() < 0.8:
                values[spec.name] = rng.choice(int_pool(spec.name, spec.size))
            else:
                values[spec.name] = rng.getrandbits(8 * spec.size)
            continue
        size = spec.size if spec.kind == "bytes" else None
        pool = bytes_pool(w, spec.name, size)
        if pool and rng.random() < 0.8:
            values[spec.name] = rng.choice(pool)
        else:
            values[spec.name] = rng.randbytes(size if size is not None else rng.randrange(40))
    body = build_message(message, values)
    kinds = KINDS.get(message)
    if kinds and rng.random() < 0.85:
        kind = rng.choice(kinds) if rng.random() < 0.9 else rng.randrange(256)
        signer = rng.choice(SIGNERS)
        body = wrap(kind, rng.choice(KEY_IDS), body, signer, rng.randbytes(64))
    return message, body


def _mutations(rng: random.Random, data: bytes, low: int, high: int) -> bytes:
    for _ in range(rng.randint(low, high)):
        data = mutate(data, rng.choice(MUTATIONS), rng.randrange(512), rng.randrange(256))
    return data


def gen_structured(rng: random.Random, w: World) -> bytes:
    known = rng.random() < 0.85
    ins = rng.choice(tuple(COMMANDS)) if known else rng.randrange(256)
    spec = COMMANDS.get(ins)
    r = rng.random()
    if spec is not None and r < 0.6:
        cla = spec.cla
    elif r < 0.8:
        cla = rng.choice((0x00, 0x80))
    else:
        cla = rng.randrange(256)
    if spec is not None and rng.random() < 0.7:
        p1, p2 = rng.choice(spec.p1p2)
    else:
        p1, p2 = rng.randrange(256), rng.randrange(256)
    r = rng.random()
    if r < 0.25:
        data = b""
    elif r < 0.5:
        data = rng.randbytes(rng.randrange(301))
    elif r < 0.8:
        data = random_message(rng, w)[1]
    else:
        data = _data_field(rng.choice(w.corpus))
    return _command(rng, cla, ins, p1, p2, data)


def _data_field(raw: bytes) -> bytes:
    try:
        return CommandApdu.parse(raw).data
    except MalformedApdu:
        return raw[5:]


def gen_message(rng: random.Random, w: World) -> bytes:
    message, body = random_message(rng, w)
    if rng.random() < 0.5:
        body = _mutations(rng, body, 1, 3)
    if rng.random() < 0.85:
        cla, ins, p1, p2 = rng.choice(ROUTES[message])
    else:
        ins = rng.choice(PURSE_INS)
        cla, (p1, p2) = COMMANDS[ins].cla, rng.choice(COMMANDS[ins].p1p2)
    return _command(rng, cla, ins, p1, p2, body)


def gen_corpus(rng: random.Random, w: World) -> bytes:
    raw = rng.choice(w.corpus)
    if rng.random() < 0.5:  # the data field only, Lc kept right: the handlers see it
        ops = [
            (rng.choice(MUTATIONS), rng.randrange(512), rng.randrange(256))
            for _ in range(rng.randint(1, 4))
        ]
        return mutate_data(raw, ops)
    if rng.random() < 0.2:
        other = rng.choice(w.corpus)
        raw = splice(raw, other, rng.randrange(512), rng.randrange(512))
    return _mutations(rng, raw, 1, 4)


def gen_replay(rng: random.Random, w: World) -> tuple[list[bytes], bool]:
    session = rng.choice(w.sessions)
    out: list[bytes] = [SELECT]
    for raw in session.apdus:
        r = rng.random()
        if r < 0.1:
            continue
        if r < 0.2:
            out.append(_mutations(rng, raw, 1, 2))
        elif r < 0.3:
            op = (rng.choice(MUTATIONS), rng.randrange(512), rng.randrange(256))
            out.append(mutate_data(raw, [op]))
        else:
            out.append(raw)
    return out, rng.random() < 0.5


SINGLE: dict[str, Callable[[random.Random, World], bytes]] = {
    "random": gen_random,
    "structured": gen_structured,
    "message": gen_message,
    "corpus": gen_corpus,
}


def gen_sequence(rng: random.Random, w: World) -> list[bytes]:
    out = [SELECT]
    for _ in range(rng.randint(2, 8)):
        if rng.random() < 0.3:
            out.append(rng.choice(w.corpus))
        else:
            out.append(SINGLE[rng.choice(tuple(SINGLE))](rng, w))
    return out


# per case; a replay is ~12 APDUs and a sequence ~6, so each generator sends 12..20 % of them
WEIGHTS = {
    "random": 15,
    "structured": 20,
    "message": 20,
    "corpus": 25,
    "replay": 2,
    "sequence": 4,
}


def next_case(rng: random.Random, w: World) -> Case:
    name = rng.choices(tuple(WEIGHTS), weights=tuple(WEIGHTS.values()))[0]
    if name == "replay":
        apdus, restore = gen_replay(rng, w)
        return name, apdus, restore
    if name == "sequence":
        return name, gen_sequence(rng, w), False
    return name, [SINGLE[name](rng, w)], False


# the campaign ---------------------------------------------------------------------------
@dataclass
class Finding:
    oracle: str
    detail: str
    generator: str
    apdu: bytes
    state: str
    trail: list[bytes]
    count: int = 1
    minimal: list[bytes] = field(default_factory=list)


@dataclass
class Stats:
    seed: int
    apdus: int = 0
    harness: int = 0
    seconds: float = 0.0
    restores: int = 0
    pay_checks: int = 0
    pay_restores: int = 0
    by_generator: Counter[str] = field(default_factory=Counter)
    by_sw: Counter[int] = field(default_factory=Counter)
    successes: Counter[str] = field(default_factory=Counter)
    pairs: Counter[tuple[int, int]] = field(default_factory=Counter)  # (INS, SW family)
    findings: dict[tuple[str, str], Finding] = field(default_factory=dict)

    def merge(self, other: Stats) -> None:
        self.apdus += other.apdus
        self.harness += other.harness
        self.seconds = max(self.seconds, other.seconds)
        self.restores += other.restores
        self.pay_checks += other.pay_checks
        self.pay_restores += other.pay_restores
        self.by_generator.update(other.by_generator)
        self.by_sw.update(other.by_sw)
        self.successes.update(other.successes)
        self.pairs.update(other.pairs)
        for key, finding in other.findings.items():
            if key in self.findings:
                self.findings[key].count += finding.count
            else:
                self.findings[key] = finding


def _key(violation: Violation, raw: bytes) -> tuple[str, str]:
    ins = f"{raw[0]:02X} {raw[1]:02X}" if len(raw) >= 2 else "--"
    return violation.oracle, ins


class Campaign:
    """One fuzz loop on one card."""

    def __init__(self, stats: Stats, pay_every: int, reset_every: int) -> None:
        self.w = world()
        self.card = FuzzCard(self.w)
        self.stats = stats
        self.pay_every = pay_every
        self.reset_every = reset_every
        self.since_reset = 0
        self.next_pay = pay_every
        self.card.restore()

    def note(self, generator: str, raw: bytes, before: Image, found: list[Violation]) -> None:
        for violation in found:
            key = _key(violation, raw)
            known = self.stats.findings.get(key)
            if known is not None:
                known.count += 1
                continue
            self.stats.findings[key] = Finding(
                violation.oracle,
                violation.detail,
                generator,
                raw,
                before.summary(),
                list(self.card.trail),
            )

    def run_case(self, generator: str, apdus: list[bytes], restore: bool) -> None:
        stats, card = self.stats, self.card
        if restore or self.since_reset >= self.reset_every:
            self.note("harness", SELECT, card.image, card.restore(select=False))
            self.since_reset = 0
        for raw in apdus:
            before_cells = card.cells
            answer, found = card.send(raw)
            stats.apdus += 1
            self.since_reset += 1
            stats.by_generator[generator] += 1
            sw = int.from_bytes(answer[-2:], "big") if len(answer) >= 2 else -1
            stats.by_sw[sw] += 1
            spec = COMMANDS.get(raw[1]) if len(raw) >= 2 else None
            if spec is not None and raw[0] == spec.cla:
                stats.pairs[raw[1], sw_family(sw)] += 1
                if sw_family(sw) in (0x9000, 0x6100) and raw[1] not in (0xA4, 0xC0, 0xCA, 0xB2):
                    stats.successes[spec.name] += 1
            if found:
                self.note(generator, raw, Image.of(before_cells), found)
        if stats.apdus >= self.next_pay:
            self.pay_check()

    def pay_check(self) -> None:
        self.next_pay = self.stats.apdus + self.pay_every
        before = self.card.image
        found, restored = self.card.pay_check()
        self.stats.pay_checks += 1
        self.stats.pay_restores += restored
        if restored:
            self.since_reset = 0
        if found:
            self.note("pay check", self.card.trail[-1], before, found)

    def finish(self) -> None:
        self.pay_check()
        self.stats.restores = self.card.resets
        self.stats.harness = self.card.harness_apdus


def run_random(seed: int, apdus: int, pay_every: int, reset_every: int, tag: str) -> Stats:
    stats = Stats(seed)
    rng = random.Random(seed)
    campaign = Campaign(stats, pay_every, reset_every)
    start = time.perf_counter()
    step = 100_000
    next_report = step
    while stats.apdus < apdus:
        generator, batch, restore = next_case(rng, campaign.w)
        campaign.run_case(generator, batch[: apdus - stats.apdus], restore)
        if stats.apdus >= next_report:
            elapsed = time.perf_counter() - start
            print(
                f"{tag}{stats.apdus:>10,} APDUs  {elapsed:7.1f} s  "
                f"{stats.apdus / elapsed:8,.0f} APDUs/s  findings {len(stats.findings)}  "
                f"distinct SW {len(stats.by_sw)}",
                flush=True,
            )
            next_report += step
    campaign.finish()
    stats.seconds = time.perf_counter() - start
    minimise_all(campaign.w, stats)
    return stats


def _job(args: tuple[int, int, int, int, str]) -> Stats:
    return run_random(*args)


# minimising a finding ---------------------------------------------------------------------
def reproduces(w: World, trail: list[bytes], oracle: str) -> bool:
    """The last APDU of ``trail`` fails ``oracle`` on a card restored to the image."""
    card = FuzzCard(w)
    card.restore(select=False)
    for raw in trail[:-1]:
        card.send(raw)
    _answer, found = card.send(trail[-1])
    return any(v.oracle == oracle for v in found)


def minimise(w: World, trail: list[bytes], oracle: str, budget: int = 400) -> list[bytes]:
    """Fewer preceding APDUs (chunk removal), then a shorter last APDU."""
    if not trail or not reproduces(w, trail, oracle):
        return trail
    tries = 0
    prefix, last = trail[:-1], trail[-1]
    chunk = max(1, len(prefix) // 2)
    while chunk >= 1 and tries < budget:
        i = 0
        while i < len(prefix) and tries < budget:
            candidate = prefix[:i] + prefix[i + chunk :]
            tries += 1
            if reproduces(w, [*candidate, last], oracle):
                prefix = candidate
            else:
                i += chunk
        chunk //= 2
    improved = True
    while improved and tries < budget:
        improved = False
        for shorter in _shorter(last):
            if tries >= budget:
                break
            tries += 1
            if reproduces(w, [*prefix, shorter], oracle):
                last, improved = shorter, True
                break
    return [*prefix, last]


def _shorter(raw: bytes) -> list[bytes]:
    out: list[bytes] = []
    try:
        cmd = CommandApdu.parse(raw)
    except MalformedApdu:
        cmd = None
    if cmd is not None:
        for ne in (None, cmd.ne):
            for size in sorted({0, len(cmd.data) // 2, len(cmd.data) - 1}):
                if 0 <= size < len(cmd.data):
                    out.append(
                        CommandApdu(
                            cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data[:size], ne
                        ).to_bytes()
                    )
        if cmd.ne is not None:
            out.append(CommandApdu(cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data).to_bytes())
    out += [raw[:i] + raw[i + 1 :] for i in range(len(raw) - 1, -1, -1)]
    return out


def state_after(w: World, apdus: list[bytes]) -> str:
    """The card's state after ``apdus``, sent from the image."""
    card = FuzzCard(w)
    card.restore(select=False)
    for raw in apdus:
        card.send(raw)
    return card.image.summary()


def minimise_all(w: World, stats: Stats) -> None:
    for finding in stats.findings.values():
        if finding.generator in ("pay check", "harness"):
            finding.minimal = finding.trail
            continue
        finding.minimal = minimise(w, finding.trail, finding.oracle)
        if finding.minimal != finding.trail:
            finding.state = state_after(w, finding.minimal[:-1])


# atheris ----------------------------------------------------------------------------------
def split_records(data: bytes) -> list[bytes]:
    """libFuzzer input -> APDUs: each is a length byte (FF: two length bytes follow) and bytes."""
    out: list[bytes] = []
    i = 0
    while i < len(data) and len(out) < 32:
        n = data[i]
        i += 1
        if n == 0xFF and i + 2 <= len(data):
            n = int.from_bytes(data[i : i + 2], "big") % 1024
            i += 2
        out.append(data[i : i + n])
        i += n
    return out


def join_records(apdus: list[bytes]) -> bytes:
    return b"".join(
        (bytes((len(a),)) if len(a) < 0xFF else b"\xff" + len(a).to_bytes(2, "big")) + a
        for a in apdus
    )


def run_atheris(seed: int, apdus: int, pay_every: int, reset_every: int) -> int:
    try:
        atheris = importlib.import_module("atheris")
    except ImportError:
        print("fuzz_card: --engine atheris needs atheris (pip install atheris)", file=sys.stderr)
        return 2
    stats = Stats(seed)
    campaign = Campaign(stats, pay_every, reset_every)
    w = campaign.w
    start = time.perf_counter()
    reports = [100_000]
    seeds = Path(tempfile.mkdtemp(prefix="fuzz-card-corpus-"))  # libFuzzer adds to it

    def one_input(data: bytes) -> None:
        # each input starts from the image: libFuzzer's inputs are sequences of APDUs
        campaign.since_reset = reset_every
        campaign.run_case("atheris", split_records(data)[: apdus - stats.apdus], False)
        if stats.apdus >= reports[0]:
            elapsed = time.perf_counter() - start
            print(
                f"{stats.apdus:>10,} APDUs  {elapsed:7.1f} s  {stats.apdus / elapsed:8,.0f} APDUs/s"
                f"  findings {len(stats.findings)}  distinct SW {len(stats.by_sw)}",
                flush=True,
            )
            reports[0] += 100_000
        if stats.apdus >= apdus:
            campaign.finish()
            stats.seconds = time.perf_counter() - start
            minimise_all(w, stats)
            report(stats, "atheris", 1)
            sys.stdout.flush()
            shutil.rmtree(seeds, ignore_errors=True)
            os._exit(1 if stats.findings else 0)  # libFuzzer would run on

    for n, session in enumerate(w.sessions):
        (seeds / f"session-{n}").write_bytes(join_records(list(session.apdus)))
    for n, raw in enumerate(w.corpus):
        (seeds / f"apdu-{n}").write_bytes(join_records([SELECT, raw]))
    atheris.instrument_all()
    argv = [sys.argv[0], f"-seed={seed or 1}", "-max_len=4096", "-rss_limit_mb=4096", str(seeds)]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0  # not reached: one_input ends the process


# the report -------------------------------------------------------------------------------
def report(stats: Stats, engine: str, jobs: int) -> None:
    total = stats.apdus
    print()
    print(
        f"fuzz_card: {total:,} APDUs against the purse card "
        f"(engine {engine}, seed {stats.seed}, jobs {jobs})"
    )
    print(f"machine: {machine()}")
    rate = total / stats.seconds if stats.seconds else 0.0
    print(f"time: {stats.seconds:.1f} s, {rate:,.0f} APDUs/s")
    print(
        f"harness: {stats.harness:,} more APDUs (SELECT after a restore, PAY checks); "
        f"{stats.restores:,} restores to the card image; {stats.pay_checks:,} PAY checks "
        f"({stats.pay_restores:,} on the image restored: the card could legitimately not pay)"
    )
    print("by generator: " + ", ".join(f"{g} {n:,}" for g, n in stats.by_generator.most_common()))
    print(f"status words: {len(stats.by_sw)} distinct; top 20:")
    for sw, n in stats.by_sw.most_common(20):
        label = f"{sw:04X}" if sw >= 0 else "none"
        print(f"  {label}  {n:>10,}  {100 * n / total:5.1f} %")
    print(
        "accepted state-changing commands (checked against the documented effect): "
        + (", ".join(f"{name} {n:,}" for name, n in stats.successes.most_common()) or "none")
    )
    documented = {(ins, sw) for ins, spec in COMMANDS.items() for sw in spec.sws}
    reached = documented & set(stats.pairs)
    print(f"documented (command, status word) pairs reached: {len(reached)} of {len(documented)}")
    missing: dict[str, list[str]] = {}
    for ins, sw in sorted(documented - reached):
        label = {0x6100: "61XX", 0x6C00: "6CXX", 0x63C0: "63CX"}.get(sw, f"{sw:04X}")
        missing.setdefault(COMMANDS[ins].name, []).append(label)
    for name, sws in missing.items():
        print(f"  not reached: {name}: {' '.join(sws)}")
    print(f"FINDINGS: {len(stats.findings)}")
    for n, finding in enumerate(stats.findings.values(), start=1):
        print(
            f"  [{n}] oracle '{finding.oracle}' "
            f"({finding.count:,} times, generator {finding.generator})"
        )
        print(f"      {finding.detail}")
        minimal = finding.minimal or finding.trail
        print(f"      minimal APDU: {minimal[-1].hex(' ').upper() if minimal else '(none)'}")
        if len(minimal) > 1:
            print("      after, from the card image:")
            for raw in minimal[:-1]:
                print(f"        {raw.hex(' ').upper()}")
        print(f"      card state before it: {finding.state}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--apdus", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--engine", choices=("random", "atheris"), default="random")
    parser.add_argument("--jobs", type=int, default=1, help="processes (random engine)")
    parser.add_argument("--pay-every", type=int, default=1000, help="APDUs between PAY checks")
    parser.add_argument("--reset-every", type=int, default=300, help="APDUs between restores")
    args = parser.parse_args(argv)
    if args.engine == "atheris":
        return run_atheris(args.seed, args.apdus, args.pay_every, args.reset_every)
    jobs = max(1, args.jobs)
    print(f"fuzz_card: {args.apdus:,} APDUs, seed {args.seed}, {jobs} job(s)", flush=True)
    if jobs == 1:
        stats = run_random(args.seed, args.apdus, args.pay_every, args.reset_every, "")
    else:
        shares = [args.apdus // jobs + (i < args.apdus % jobs) for i in range(jobs)]
        work = [
            (args.seed * 1000 + i, share, args.pay_every, args.reset_every, f"[job {i}] ")
            for i, share in enumerate(shares)
        ]
        stats = Stats(args.seed)
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            for part in pool.imap_unordered(_job, work):
                stats.merge(part)
    report(stats, "random", jobs)
    return 1 if stats.findings else 0


if __name__ == "__main__":
    sys.exit(main())
