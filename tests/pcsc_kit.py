"""The PC/SC stack for tests: pcscd with the vpcd driver, and cards inserted into it.

``pcsc_stack()`` (the session fixture ``pcsc`` in ``conftest.py``) makes sure
pcscd is running with vsmartcard's vpcd reader driver: it uses a pcscd that
already runs, or starts its own ``pcscd -f`` (as root) and stops it at the
end. Where something is missing (pyscard, pcscd, the driver, root) the tests
that need it skip with the reason, except under CI (``CI`` set), where
``.ci/run`` installs everything and a missing piece is a failure.

``served(card, slot)`` inserts a card object into a vpcd slot with the
bridge running in a thread, and waits until pcscd sees it; leaving the block
removes the card and waits until pcscd sees the slot empty again.

``start_stack()`` is the same set-up without pytest, for bench/pcsc_roundtrip.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from card_os.vpcd import VPCD_HOST, Chip, VpcdBridge, slot_port

READERS = ("Virtual PCD 00 00", "Virtual PCD 00 01")
DRIVER_DIRS = (Path("/usr/lib/pcsc/drivers"), Path("/usr/local/lib/pcsc/drivers"))
PCSCD = ("/usr/sbin/pcscd", "/usr/local/sbin/pcscd")
STARTUP = 10.0  # seconds pcscd may take to list the vpcd readers


@dataclass
class PcscStack:
    readers: tuple[str, ...]
    started: subprocess.Popen[bytes] | None  # the pcscd we started, if any

    def stop(self) -> None:
        """Stop the pcscd this stack started (a running one is left alone)."""
        if self.started is not None:
            self.started.terminate()
            try:
                self.started.wait(5)
            except subprocess.TimeoutExpired:
                self.started.kill()


class StackMissing(Exception):
    """A piece of the PC/SC stack is missing here; the message says which."""


def _vpcd_driver() -> Path | None:
    for folder in DRIVER_DIRS:
        if folder.is_dir():
            for found in folder.rglob("libifdvpcd.so*"):
                return found
    return None


def _vpcd_readers() -> tuple[str, ...]:
    """The vpcd readers pcscd lists now (empty when pcscd does not answer)."""
    from apdu.pcsc import Context, PcscError  # noqa: PLC0415

    try:
        with Context() as ctx:
            return tuple(name for name in ctx.readers() if name in READERS)
    except PcscError:
        return ()


def start_stack() -> PcscStack:
    """pcscd with both vpcd readers: the running one, or a ``pcscd -f`` started here."""
    try:
        import smartcard.scard  # noqa: F401, PLC0415
    except ImportError:
        raise StackMissing("pyscard is not installed (pip install -e '.[pcsc]')") from None
    if _vpcd_driver() is None:
        raise StackMissing("the vsmartcard-vpcd reader driver is not installed")
    readers = _vpcd_readers()
    if len(readers) == len(READERS):
        return PcscStack(readers, None)
    pcscd = shutil.which("pcscd") or next((p for p in PCSCD if Path(p).exists()), None)
    if pcscd is None:
        raise StackMissing("pcscd is not installed")
    if os.geteuid() != 0:
        raise StackMissing("pcscd is not running, and starting it needs root")
    started = subprocess.Popen([pcscd, "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + STARTUP
    while len(readers) < len(READERS) and time.monotonic() < deadline:
        if started.poll() is not None:
            raise StackMissing(f"pcscd -f exited at once (code {started.returncode})")
        time.sleep(0.1)
        readers = _vpcd_readers()
    stack = PcscStack(readers, started)
    if len(readers) < len(READERS):
        stack.stop()
        raise StackMissing(f"pcscd lists no vpcd readers after {STARTUP:g} s")
    return stack


def pcsc_stack() -> Iterator[PcscStack]:
    """The stack for a test session: skip where it cannot run, fail under CI."""
    try:
        stack = start_stack()
    except StackMissing as missing:
        if os.environ.get("CI"):
            pytest.fail(f"PC/SC tests must run under CI, but {missing}")
        pytest.skip(str(missing))
    try:
        yield stack
    finally:
        stack.stop()


def wait_for_slot(slot: int, present: bool, timeout: float = 10.0) -> None:
    """Until pcscd sees a card in (or no card in) the slot's reader."""
    from apdu.pcsc import Context  # noqa: PLC0415

    with Context() as ctx:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            flags, atr = ctx.state(READERS[slot])
            if bool(flags & ctx.scard.SCARD_STATE_PRESENT and atr) == present:
                return
            time.sleep(0.02)
    raise AssertionError(f"slot {slot}: card {'never came' if present else 'never left'}")


@contextmanager
def served(card: Chip, slot: int = 0) -> Iterator[VpcdBridge]:
    """``card`` in vpcd slot ``slot`` (bridge in a thread) for the block."""
    bridge = VpcdBridge(card, VPCD_HOST, slot_port(slot), wait=5.0, retry=0.05)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            bridge.serve()
        except BaseException as err:  # reported by the test, not lost in the thread
            failure.append(err)

    thread = threading.Thread(target=run, name=f"vpcd-slot-{slot}", daemon=True)
    thread.start()
    try:
        wait_for_slot(slot, present=True)
        yield bridge
    finally:
        bridge.stop()
        thread.join(5)
        wait_for_slot(slot, present=False)
    if failure:
        raise failure[0]
