"""Offline payments at the POS stub, in-process: the card signs, the terminal verifies.

A benchmark, not a test. One payment is ``terminal.pos.Pos.pay(client, 1)`` on an
offline POS: SELECT, GET DATA of the card ID and of the certificate, the
certificate verified against the issuer key (ECDSA P-256), the POS's blocklist
looked up (it lists ``--listed`` other cards, signed by the issuer), GET DATA of the
status, PAY (the card checks its credential, signs the receipt, debits, writes its
history: one store commit) and the receipt verified against the certificate's key
(ECDSA P-256); the sale is recorded in the POS's state (in memory, not saved).

Timed for a card in memory (``MemoryBackend``) and for a durable card on an image
file (``card_os.image.ImageFile``: each commit writes a new image, fsyncs it,
renames it and fsyncs the folder), side by side; then, in memory, the parts: the
card's PAY alone, the terminal's checks alone, and bare ECDSA P-256 sign and
verify (``cryptography``).

Usage: python bench/pos_payment.py [--rounds N] [--durable-rounds M] [--listed K]
Target (DESIGN.md section 9): median <= 0.5 ms in memory; durable reported beside it.
Anchors: the EMV contactless budget (500 ms) and an on-chip ECDSA sign on JCOP4 (32 ms).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from apdu.blocklist import build_blocklist
from apdu.clock import SetClock
from apdu.purse import PayData, Tag
from apdu.signed import generate_key, public_keys
from bench.common import machine, median_p99_ms, timed
from terminal.pos import Pos
from terminal.pos_state import PosState
from terminal.trust import check_certificate, check_receipt
from tests.purse_kit import T0, TERMINAL_ID, PurseRig, funded_rig

TARGET_MS = 0.5
EMV_BUDGET_MS = 500.0
JCOP4_SIGN_MS = 32.0
BALANCE = 10_000  # minor units: one payment of 1 each, so at most this many per card
NOW = T0 + 60


def new_pos(rig: PurseRig, listed: int) -> Pos:
    """An offline POS that trusts the rig's issuer and holds a signed list of other cards."""
    issuer = rig.issuer
    state = PosState(TERMINAL_ID, trusted_keys={issuer.key_id: issuer.public})
    orders = [issuer.lock_order(b"L" + n.to_bytes(7, "big"), NOW - 10, 1, 1) for n in range(listed)]
    raw = build_blocklist(issuer.sign, 1, 0, NOW - 10, orders)
    state.blocklist.apply(raw, public_keys(state.trusted_keys))
    state.blocklist_files = [raw]
    return Pos(state, clock=SetClock(NOW))


def payments(rig: PurseRig, listed: int, rounds: int) -> list[float]:
    if rounds > BALANCE:
        raise SystemExit(f"at most {BALANCE} payments per card")
    pos = new_pos(rig, listed)
    before = rig.client.status().balance
    timings = timed(lambda: pos.pay(rig.client, 1), rounds, warmup=0)
    after = rig.client.status().balance
    if before - after != rounds or len(pos.state.batch) != rounds:
        raise RuntimeError("the payments did not all go through")
    return timings


def parts(listed: int, rounds: int) -> list[tuple[str, list[float]]]:
    """The card's part and the terminal's part of a payment, each alone (in memory)."""
    rig = funded_rig(balance=BALANCE)
    pos = new_pos(rig, listed)
    client = rig.client
    client.select()
    card_id = client.get_data(Tag.CARD_ID)
    cert_raw = client.get_data(Tag.CERTIFICATE)
    keys = public_keys(pos.state.trusted_keys)

    def pay_apdu() -> bytes:
        return client.pay(PayData(1, NOW, TERMINAL_ID, secrets.token_bytes(16)))

    request = PayData(1, NOW, TERMINAL_ID, secrets.token_bytes(16))
    receipt = client.pay(request)
    cert = check_certificate(cert_raw, card_id, keys, NOW)

    def terminal_checks() -> None:
        checked = check_certificate(cert_raw, card_id, public_keys(pos.state.trusted_keys), NOW)
        if pos.state.blocklist.lock_order(card_id) is not None:
            raise RuntimeError("listed")
        check_receipt(receipt, checked, request)

    key = generate_key()
    message = receipt[:-64]
    signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    public = key.public_key()
    steps: list[tuple[str, Callable[[], object]]] = [
        ("card: PAY alone (PurseClient.pay, card signs)", pay_apdu),
        ("terminal: certificate + blocklist + receipt checks", terminal_checks),
        (
            "terminal: receipt check alone (one verify)",
            lambda: check_receipt(receipt, cert, request),
        ),
        (
            "bare ECDSA P-256 sign (cryptography)",
            lambda: key.sign(message, ec.ECDSA(hashes.SHA256())),
        ),
        (
            "bare ECDSA P-256 verify (cryptography)",
            lambda: public.verify(signature, message, ec.ECDSA(hashes.SHA256())),
        ),
    ]
    return [(name, timed(step, rounds)) for name, step in steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2_000, help="payments, card in memory")
    parser.add_argument("--durable-rounds", type=int, default=300, help="payments, card on file")
    parser.add_argument("--listed", type=int, default=1_000, help="cards on the POS's blocklist")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"one payment: Pos.pay(client, 1), offline POS, {args.listed:,} other cards listed")
    memory = payments(funded_rig(balance=BALANCE), args.listed, args.rounds)
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as tmp:
        image = Path(tmp) / "card.img"
        durable = payments(funded_rig(image, balance=BALANCE), args.listed, args.durable_rounds)
    print()
    print(
        "| card | payments | median ms | p99 ms | EMV 500 ms / median | JCOP4 sign 32 ms / median |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label, timings in (
        ("in memory (MemoryBackend)", memory),
        ("durable (image file, fsync per commit)", durable),
    ):
        median, p99 = median_p99_ms(timings)
        print(
            f"| {label} | {len(timings):,} | {median:.3f} | {p99:.3f} | "
            f"{EMV_BUDGET_MS / median:,.0f}x | {JCOP4_SIGN_MS / median:,.1f}x |"
        )
    print()
    print("| part (in memory) | rounds | median ms | p99 ms |")
    print("|---|---:|---:|---:|")
    for name, timings in parts(args.listed, min(args.rounds, BALANCE - 1)):
        median, p99 = median_p99_ms(timings)
        print(f"| {name} | {len(timings):,} | {median:.3f} | {p99:.3f} |")
    median = median_p99_ms(memory)[0]
    if args.json:
        figures = {"memory": median_p99_ms(memory), "durable": median_p99_ms(durable)}
        args.json.write_text(json.dumps(figures))
    met = median <= TARGET_MS
    print(
        f"\ntarget: in memory, median <= {TARGET_MS} ms: {median:.3f} ms: "
        f"{'MET' if met else 'MISSED'}; durable: {median_p99_ms(durable)[0]:.3f} ms (reported)"
    )


if __name__ == "__main__":
    main()
