"""Command APDUs: all ISO 7816-4 cases, short and extended.

``Nc`` is the length of the data field, ``Ne`` the maximum number of
response bytes expected (``None`` when the command carries no Le).
Short Le ``00`` means 256, extended Le ``0000`` means 65536.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from apdu.errors import MalformedApdu

SHORT_MAX_NC = 255
SHORT_MAX_NE = 256
EXTENDED_MAX_NC = 65535
EXTENDED_MAX_NE = 65536


class Case(IntEnum):
    """ISO 7816-4 command cases: 1 no data no Le; 2 Le; 3 data; 4 data and Le."""

    ONE = 1
    TWO = 2
    THREE = 3
    FOUR = 4


@dataclass(frozen=True, slots=True)
class CommandApdu:
    """One command APDU. ``extended`` selects the extended length encoding."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    ne: int | None = None
    extended: bool = False

    def __post_init__(self) -> None:
        if not (
            0 <= self.cla <= 0xFF
            and 0 <= self.ins <= 0xFF
            and 0 <= self.p1 <= 0xFF
            and 0 <= self.p2 <= 0xFF
        ):
            for name in ("cla", "ins", "p1", "p2"):
                value = getattr(self, name)
                if not 0 <= value <= 0xFF:
                    raise MalformedApdu(f"{name.upper()} {value} is not a byte")
        nc = len(self.data)
        ne = self.ne
        if ne is not None and not 1 <= ne <= EXTENDED_MAX_NE:
            raise MalformedApdu(f"Ne {ne} is outside 1..65536")
        if nc > EXTENDED_MAX_NC:
            raise MalformedApdu(f"data of {nc} bytes is longer than 65535")
        if not self.extended and (nc > SHORT_MAX_NC or (ne is not None and ne > SHORT_MAX_NE)):
            object.__setattr__(self, "extended", True)

    @property
    def case(self) -> Case:
        if self.data:
            return Case.FOUR if self.ne is not None else Case.THREE
        return Case.TWO if self.ne is not None else Case.ONE

    @property
    def header(self) -> bytes:
        return bytes((self.cla, self.ins, self.p1, self.p2))

    def to_bytes(self) -> bytes:
        nc = len(self.data)
        ne = self.ne
        out = bytearray(self.header)
        if self.extended:
            if nc:
                out += b"\x00" + nc.to_bytes(2, "big") + self.data
                if ne is not None:
                    out += (ne & 0xFFFF).to_bytes(2, "big")
            elif ne is not None:
                out += b"\x00" + (ne & 0xFFFF).to_bytes(2, "big")
        else:
            if nc:
                out.append(nc)
                out += self.data
            if ne is not None:
                out.append(ne & 0xFF)
        return bytes(out)

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def with_ne(self, ne: int | None) -> CommandApdu:
        """The same command asking for ``ne`` response bytes."""
        return CommandApdu(self.cla, self.ins, self.p1, self.p2, self.data, ne, self.extended)

    @classmethod
    def parse(cls, raw: bytes) -> CommandApdu:
        """Parse any case; bytes that fit no case raise :class:`MalformedApdu`."""
        n = len(raw)
        if n < 4:
            raise MalformedApdu(f"a command APDU has at least 4 bytes, got {n}")
        cla, ins, p1, p2 = raw[0], raw[1], raw[2], raw[3]
        if n == 4:
            return cls(cla, ins, p1, p2)
        b5 = raw[4]
        if n == 5:
            return cls(cla, ins, p1, p2, b"", b5 or SHORT_MAX_NE)
        if b5:
            if n == 5 + b5:
                return cls(cla, ins, p1, p2, bytes(raw[5:]))
            if n == 6 + b5:
                return cls(cla, ins, p1, p2, bytes(raw[5:-1]), raw[-1] or SHORT_MAX_NE)
            raise MalformedApdu(f"short Lc {b5} does not match the {n - 5} bytes that follow")
        if n < 7:
            raise MalformedApdu("extended length field is truncated")
        word = int.from_bytes(raw[5:7], "big")
        if n == 7:
            return cls(cla, ins, p1, p2, b"", word or EXTENDED_MAX_NE, extended=True)
        if word == 0:
            raise MalformedApdu("extended Lc of zero")
        if n == 7 + word:
            return cls(cla, ins, p1, p2, bytes(raw[7:]), extended=True)
        if n == 9 + word:
            le = int.from_bytes(raw[-2:], "big") or EXTENDED_MAX_NE
            return cls(cla, ins, p1, p2, bytes(raw[7:-2]), le, extended=True)
        raise MalformedApdu(f"extended Lc {word} does not match the {n - 7} bytes that follow")
