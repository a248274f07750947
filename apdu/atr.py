"""Answer-to-Reset (ISO 7816-3): build one with a correct TCK, and parse one.

Only what terminals need: the protocols offered (T=0, T=1), the historical
bytes, and a TCK check. Interface bytes TA/TB/TC are carried, not interpreted.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

from apdu.errors import WireError

DIRECT_CONVENTION = 0x3B
INVERSE_CONVENTION = 0x3F


class AtrError(WireError):
    """Bytes that are not a well-formed ATR."""


@dataclass(frozen=True, slots=True)
class Atr:
    raw: bytes
    protocols: tuple[int, ...]
    historical: bytes

    @property
    def has_tck(self) -> bool:
        return any(p != 0 for p in self.protocols)


def _xor(data: bytes) -> int:
    return reduce(lambda a, b: a ^ b, data, 0)


def build_atr(historical: bytes, protocols: tuple[int, ...] = (0, 1)) -> bytes:
    """A direct-convention ATR offering ``protocols`` (TD bytes only) and a TCK."""
    if len(historical) > 15:
        raise AtrError("at most 15 historical bytes")
    if not protocols or any(not 0 <= p <= 15 for p in protocols):
        raise AtrError("protocols must be numbers 0..15")
    body = bytearray()
    y_first = 0x80 if protocols else 0
    body.append(y_first | len(historical))  # T0: TD1 follows, K historical bytes
    for i, proto in enumerate(protocols):
        more = 0x80 if i + 1 < len(protocols) else 0
        body.append(more | proto)
    body += historical
    atr = bytes([DIRECT_CONVENTION]) + bytes(body)
    if any(p != 0 for p in protocols):
        atr += bytes([_xor(bytes(body))])
    return atr


def parse_atr(raw: bytes) -> Atr:
    """Parse ``raw``; raise :class:`AtrError` on structure or TCK errors."""
    if len(raw) < 2:
        raise AtrError(f"an ATR has at least 2 bytes, got {len(raw)}")
    if raw[0] not in (DIRECT_CONVENTION, INVERSE_CONVENTION):
        raise AtrError(f"TS {raw[0]:02X} is neither 3B nor 3F")
    t0 = raw[1]
    k = t0 & 0x0F
    y = t0 >> 4
    pos = 2
    protocols: list[int] = []
    while True:
        for bit in (0x1, 0x2, 0x4):  # TA, TB, TC
            if y & bit:
                pos += 1
        if not y & 0x8:
            break
        if pos >= len(raw):
            raise AtrError("ATR ends inside its interface bytes")
        td = raw[pos]
        pos += 1
        protocols.append(td & 0x0F)
        y = td >> 4
    if pos + k > len(raw):
        raise AtrError("ATR ends inside its historical bytes")
    historical = bytes(raw[pos : pos + k])
    pos += k
    needs_tck = any(p != 0 for p in protocols)
    if needs_tck:
        if pos + 1 != len(raw):
            raise AtrError("ATR is missing its TCK or has trailing bytes")
        if _xor(raw[1:]) != 0:
            raise AtrError("ATR check byte (TCK) is wrong")
    elif pos != len(raw):
        raise AtrError("ATR has trailing bytes")
    return Atr(bytes(raw), tuple(protocols) or (0,), historical)
