"""vsmartcard's vicc (Debian ``vsmartcard-vpicc``) as a reference: where it runs, and its
in-process ``execute`` timed.

vicc's modules are Python 3 modules of the system, installed where Python does not
look, and they need pycryptodome, which the Debian package does not pull in
(DESIGN.md section 8): :func:`vicc_environment` gives the environment in which they
import, installing pycryptodome with pip into ``.bench-cache/vicc`` on first use.

Run as a script in that environment (``python bench/vicc.py --execute ROUNDS``), this
module times ``Iso7816OS.execute(apdu)`` of the card ``vicc -t iso7816`` runs (the OS
that ``VirtualICC`` builds, without its socket to vpcd) and prints the figures as
JSON: it imports nothing of this project, only vicc.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VICC_MODULES = Path("/usr/lib/python3/site-packages/virtualsmartcard")
VICC_DEPS = ROOT / ".bench-cache" / "vicc"

# what the in-process comparison sends to vicc's ISO 7816 card
VICC_APDUS = {
    "GET CHALLENGE": "0084000008",  # 8 random bytes, 90 00
    "SELECT": "00A4000C023F00",  # the MF by file ID, no FCI (vicc cannot build the FCP)
    "unknown INS": "00FE0000",  # 6D 00
}


def vicc_environment(need_binary: bool = True) -> tuple[dict[str, str] | None, str]:
    """The environment in which vicc runs here, or None and the reason it cannot.

    ``need_binary``: whether the ``vicc`` program must be installed too (for a peer
    in a reader); the in-process comparison needs only the modules.
    """
    if need_binary and shutil.which("vicc") is None:
        return None, "vicc is not installed (Debian package vsmartcard-vpicc)"
    if not VICC_MODULES.is_dir():
        return None, f"vicc's modules are not in {VICC_MODULES}"
    probe = [sys.executable, "-c", "import Crypto.Cipher"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(VICC_MODULES), str(VICC_DEPS)])
    if subprocess.run(probe, env=env, capture_output=True, check=False).returncode != 0:
        print(f"installing pycryptodome for vicc into {VICC_DEPS} ...", flush=True)
        install = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(VICC_DEPS)]
        done = subprocess.run([*install, "pycryptodome"], capture_output=True, check=False)
        if done.returncode != 0:
            return None, "pycryptodome could not be installed for vicc (offline?)"
    return env, ""


def vicc_execute_timings(rounds: int) -> tuple[dict[str, Any] | None, str]:
    """vicc's in-process execute, timed in a subprocess: {name: {apdu, answer, median_ms,
    p99_ms, rounds}}, or None and the reason it could not run."""
    env, reason = vicc_environment(need_binary=False)
    if env is None:
        return None, reason
    command = [sys.executable, str(Path(__file__).resolve()), "--execute", str(rounds)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None, f"vicc's execute did not run: {done.stderr.strip()[-300:]}"
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures, ""


# the child: runs in vicc's environment, imports only vicc ---------------------------------
def _time_execute(rounds: int) -> dict[str, Any]:
    import logging  # noqa: PLC0415

    # what `vicc` does without -v: only critical messages are logged
    logging.basicConfig(level=logging.CRITICAL)
    from virtualsmartcard.CardGenerator import CardGenerator  # noqa: PLC0415
    from virtualsmartcard.VirtualSmartcard import Iso7816OS  # noqa: PLC0415

    mf, sam = CardGenerator("iso7816").getCard()
    card = Iso7816OS(mf, sam)  # what VirtualICC(..., "iso7816", ...) runs
    card.powerUp()
    out: dict[str, Any] = {}
    for name, hexa in VICC_APDUS.items():
        apdu = bytes.fromhex(hexa)
        answer = card.execute(apdu)
        for _ in range(min(rounds // 10, 1000)):  # warm-up
            card.execute(apdu)
        timings = []
        for _ in range(rounds):
            start = time.perf_counter()
            card.execute(apdu)
            timings.append(time.perf_counter() - start)
        p99 = statistics.quantiles(timings, n=100)[98] if rounds > 1 else timings[0]
        out[name] = {
            "apdu": hexa,
            "answer": answer.hex(),
            "rounds": rounds,
            "median_ms": statistics.median(timings) * 1e3,
            "p99_ms": p99 * 1e3,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--execute", type=int, metavar="ROUNDS", required=True)
    args = parser.parse_args()
    print(json.dumps(_time_execute(args.execute)))


if __name__ == "__main__":
    main()
