"""Tally: a small test applet that exercises the runtime.

Not the purse. It keeps a running total, a count and the last four amounts,
so one command writes several cells (what the tear tests need), and it has
commands for long and extended responses and for an unexpected failure.

=====  ====  ===========================================================
INS    CLA   command
=====  ====  ===========================================================
10     80    ADD: data = amount, 4 bytes big-endian, not 0 (3 writes)
12     80    READ: total (4) || count (4) || last amounts (4 x 4)
14     80    PATTERN: returns P1P2 bytes 00 01 02 ... (max 4096)
16     80    FAIL: writes, then fails unexpectedly (answered 6F00)
18     80    ECHO: returns the data field
=====  ====  ===========================================================
"""

from __future__ import annotations

from apdu.command import CommandApdu
from apdu.status import SW, CardError
from card_os.applet import Applet, command

TALLY_AID = bytes.fromhex("F054414C4C5901")
LOG_SLOTS = 4
MAX_PATTERN = 4096


def _u32(data: bytes | None) -> int:
    return int.from_bytes(data, "big") if data else 0


class TallyApplet(Applet):
    @command(0x10)
    def add(self, cmd: CommandApdu) -> bytes:
        if len(cmd.data) != 4:
            raise CardError(SW.WRONG_LENGTH, "ADD takes a 4-byte amount")
        amount = int.from_bytes(cmd.data, "big")
        if amount == 0:
            raise CardError(SW.WRONG_DATA, "amount must not be zero")
        total = _u32(self.store.get("total")) + amount
        if total > 0xFFFFFFFF:
            raise CardError(SW.CONDITIONS_NOT_SATISFIED, "total would overflow")
        count = _u32(self.store.get("count"))
        self.store.write("total", total.to_bytes(4, "big"))
        self.store.write("count", (count + 1).to_bytes(4, "big"))
        self.store.write(f"log{count % LOG_SLOTS}", cmd.data)
        return b""

    @command(0x12)
    def read(self, cmd: CommandApdu) -> bytes:
        out = bytearray()
        out += _u32(self.store.get("total")).to_bytes(4, "big")
        out += _u32(self.store.get("count")).to_bytes(4, "big")
        for slot in range(LOG_SLOTS):
            out += self.store.get(f"log{slot}") or bytes(4)
        return bytes(out)

    @command(0x14)
    def pattern(self, cmd: CommandApdu) -> bytes:
        n = cmd.p1 << 8 | cmd.p2
        if n > MAX_PATTERN:
            raise CardError(SW.INCORRECT_P1P2, f"at most {MAX_PATTERN} bytes")
        return bytes(i & 0xFF for i in range(n))

    @command(0x16)
    def fail(self, cmd: CommandApdu) -> bytes:
        self.store.write("total", b"\xff\xff\xff\xff")
        raise RuntimeError("a bug in card code")

    @command(0x18)
    def echo(self, cmd: CommandApdu) -> bytes:
        return cmd.data
