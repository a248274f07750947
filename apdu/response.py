"""Response APDUs: data followed by SW1 SW2."""

from __future__ import annotations

from dataclasses import dataclass

from apdu.errors import MalformedApdu
from apdu.status import SW, CardError, describe


@dataclass(frozen=True, slots=True)
class ResponseApdu:
    data: bytes
    sw: int

    @property
    def sw1(self) -> int:
        return self.sw >> 8

    @property
    def sw2(self) -> int:
        return self.sw & 0xFF

    @property
    def ok(self) -> bool:
        return self.sw == SW.OK

    @property
    def meaning(self) -> str:
        return describe(self.sw)

    def to_bytes(self) -> bytes:
        return self.data + self.sw.to_bytes(2, "big")

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def check(self) -> bytes:
        """The data, or :class:`CardError` when the status word is not 9000."""
        if self.sw != SW.OK:
            raise CardError(self.sw)
        return self.data

    @classmethod
    def parse(cls, raw: bytes) -> ResponseApdu:
        if len(raw) < 2:
            raise MalformedApdu(f"a response APDU has at least 2 bytes, got {len(raw)}")
        return cls(bytes(raw[:-2]), int.from_bytes(raw[-2:], "big"))
