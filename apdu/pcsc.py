"""PC/SC readers through pyscard: real cards, real readers, and the virtual one.

A :class:`PcscTransport` is a :class:`apdu.transport.Transport` like the
in-process one, so terminals and the APDU tool drive a card in a reader
exactly as they drive a card object. It talks to ``pcscd`` through
pyscard's thin ``smartcard.scard`` layer (one call per exchange):

* readers are picked by index (``0``) or by name: the exact name, or a part
  of it that only one reader's name contains (``"00 01"``);
* it waits for a card up to ``wait`` seconds, then fails with a clear error;
* the connection is exclusive: no other program talks to the card meanwhile;
* the protocol (T=0 or T=1) is what the card's ATR offers, T=1 preferred;
* every PC/SC failure becomes a :class:`PcscError` whose message says what
  happened in words (no service, no reader, busy, no card, card removed...).

pyscard is an optional dependency (``pip install 'purse-card[pcsc]'``); without
it every call here raises :class:`PcscError` saying so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any

from apdu.atr import AtrError, parse_atr
from apdu.errors import TransportError

_POLL_MS = 250  # how long one wait for a reader-state change may block


class PcscError(TransportError):
    """A PC/SC failure, in words; ``code`` is the PC/SC return code when there is one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class NoCard(PcscError):
    """The reader is there but holds no (usable) card."""


def _scard() -> ModuleType:
    try:
        from smartcard import scard  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise PcscError(
            "PC/SC needs pyscard: pip install 'purse-card[pcsc]' "
            "(it builds against libpcsclite-dev, with swig)"
        ) from None
    module: ModuleType = scard
    return module


def _u32(code: int) -> int:
    return code & 0xFFFFFFFF


# PC/SC return codes (pcsc-lite's pcsclite.h) this module acts on by name
E_TIMEOUT = 0x8010000A
E_SHARING_VIOLATION = 0x8010000B
E_NO_SMARTCARD = 0x8010000C
E_NO_READERS_AVAILABLE = 0x8010002E
W_UNRESPONSIVE_CARD = 0x80100066
W_UNPOWERED_CARD = 0x80100067
W_REMOVED_CARD = 0x80100069

# What each PC/SC return code means for a person at a terminal.
_MEANINGS = {
    0x8010001D: "the PC/SC service is not running (start pcscd)",
    0x8010001E: "the PC/SC service stopped",
    E_NO_READERS_AVAILABLE: "no PC/SC readers are connected",
    0x80100009: "no such reader",
    0x80100017: "the reader is unavailable (unplugged?)",
    E_SHARING_VIOLATION: "the reader is busy: another program holds the card",
    E_NO_SMARTCARD: "no card in the reader",
    W_REMOVED_CARD: "the card was removed",
    W_UNRESPONSIVE_CARD: "the card does not answer (mute)",
    W_UNPOWERED_CARD: "the card is not powered",
    0x80100068: "the card was reset by another program",
    E_TIMEOUT: "timed out",
    0x80100016: "the exchange with the card failed",
    0x8010000F: "the card offers no protocol the reader can use",
    0x80100002: "cancelled",
    0x80100008: "the answer did not fit the buffer",
}
_NO_CARD = frozenset((E_NO_SMARTCARD, W_REMOVED_CARD, W_UNRESPONSIVE_CARD, W_UNPOWERED_CARD))


def _check(hresult: int, doing: str) -> None:
    if hresult == 0:
        return
    code = _u32(hresult)
    meaning = _MEANINGS.get(code)
    if meaning is None:
        meaning = str(_scard().SCardGetErrorMessage(hresult)).strip().rstrip(".")
    kind = NoCard if code in _NO_CARD else PcscError
    raise kind(f"{doing}: {meaning} (PC/SC {code:08X})", code)


class Context:
    """A PC/SC resource-manager context (released on close)."""

    def __init__(self) -> None:
        scard = _scard()
        self.scard = scard
        hresult, self.handle = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        _check(hresult, "connecting to the PC/SC service")

    def close(self) -> None:
        if self.handle is not None:
            self.scard.SCardReleaseContext(self.handle)
            self.handle = None

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def readers(self) -> list[str]:
        hresult, names = self.scard.SCardListReaders(self.handle, [])
        if _u32(hresult) == E_NO_READERS_AVAILABLE:
            return []
        _check(hresult, "listing readers")
        return list(names)

    def state(
        self, reader: str, timeout_ms: int = 0, known: int | None = None
    ) -> tuple[int, bytes]:
        """The reader's state flags and the ATR of the card in it (b"" when none)."""
        scard = self.scard
        current = scard.SCARD_STATE_UNAWARE if known is None else known
        hresult, states = scard.SCardGetStatusChange(self.handle, timeout_ms, [(reader, current)])
        if _u32(hresult) == E_TIMEOUT:  # nothing changed
            return current, b""
        _check(hresult, f"reading the state of {reader!r}")
        _name, flags, atr = states[0]
        return int(flags), bytes(atr)

    def wait_for_card(self, reader: str, wait: float) -> bytes:
        """The ATR (b"" if unpowered) once a card is present; :class:`NoCard` after ``wait`` s."""
        scard = self.scard
        deadline = time.monotonic() + wait
        flags, atr = self.state(reader)
        # present and not mute; an unpowered card has no ATR yet: connecting powers it
        while not (flags & scard.SCARD_STATE_PRESENT and not flags & scard.SCARD_STATE_MUTE):
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoCard(f"no card in reader {reader!r} (waited {wait:g} s)")
            known = flags & ~scard.SCARD_STATE_CHANGED
            flags, atr = self.state(reader, int(min(left * 1000, _POLL_MS)) + 1, known)
        return atr


@dataclass(frozen=True)
class ReaderInfo:
    index: int
    name: str
    atr: bytes  # b"" when no card is present

    @property
    def card_present(self) -> bool:
        return bool(self.atr)


def list_readers() -> list[ReaderInfo]:
    """Every reader pcscd knows, with the ATR of the card in it (if any)."""
    with Context() as ctx:
        out = []
        for index, name in enumerate(ctx.readers()):
            flags, atr = ctx.state(name)
            present = flags & ctx.scard.SCARD_STATE_PRESENT
            out.append(ReaderInfo(index, name, atr if present else b""))
        return out


def pick_reader(spec: str, readers: list[str]) -> str:
    """The reader ``spec`` names: an index, an exact name, or a unique part of one."""
    if not readers:
        raise PcscError("no PC/SC readers are connected")
    text = spec.strip()
    if text.isdigit():
        index = int(text)
        if index >= len(readers):
            raise PcscError(
                f"no reader {index}: there are {len(readers)} (0 to {len(readers) - 1})"
            )
        return readers[index]
    if text in readers:
        return text
    matches = [name for name in readers if text.lower() in name.lower()]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(repr(name) for name in readers)
    if not matches:
        raise PcscError(f"no reader named {spec!r} (readers: {listed})")
    raise PcscError(f"{spec!r} names more than one reader: {', '.join(map(repr, matches))}")


def _protocols(scard: ModuleType, atr: bytes) -> int:
    """T=1 and/or T=0, as the ATR offers them (both when it cannot be parsed)."""
    try:
        offered = parse_atr(atr).protocols
    except AtrError:
        offered = (0, 1)
    mask = 0
    if 1 in offered:
        mask |= scard.SCARD_PROTOCOL_T1
    if 0 in offered:
        mask |= scard.SCARD_PROTOCOL_T0
    return mask or scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1


class PcscTransport:
    """An exclusive connection to the card in one reader."""

    def __init__(self, reader: str, *, wait: float = 10.0, exclusive: bool = True) -> None:
        self.context = Context()
        try:
            self.reader = pick_reader(reader, self.context.readers())
            self._wait = wait
            scard = self.context.scard
            self._share = scard.SCARD_SHARE_EXCLUSIVE if exclusive else scard.SCARD_SHARE_SHARED
            self._card: Any = None
            self._pci: Any = None
            self.protocol = 0
            self._atr = b""
            self.power_on()
        except BaseException:
            self.context.close()
            raise

    def __enter__(self) -> PcscTransport:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def atr(self) -> bytes:
        return self._atr

    def _connected(self, hresult: int, handle: Any, protocol: int, doing: str) -> None:
        _check(hresult, f"{doing} in {self.reader!r}")
        scard = self.context.scard
        self._card = handle
        self.protocol = 1 if protocol == scard.SCARD_PROTOCOL_T1 else 0
        self._pci = scard.SCARD_PCI_T1 if self.protocol == 1 else scard.SCARD_PCI_T0
        self._read_atr()

    def _read_atr(self) -> None:
        hresult, _reader, _state, _protocol, atr = self.context.scard.SCardStatus(self._card)
        _check(hresult, f"reading the ATR in {self.reader!r}")
        self._atr = bytes(atr)

    def power_on(self) -> bytes:
        if self._card is not None:
            return self._atr
        scard = self.context.scard
        atr = self.context.wait_for_card(self.reader, self._wait)
        hresult, handle, protocol = scard.SCardConnect(
            self.context.handle, self.reader, self._share, _protocols(scard, atr)
        )
        self._connected(hresult, handle, protocol, "connecting to the card")
        return self._atr

    def power_off(self) -> None:
        if self._card is not None:
            card, self._card = self._card, None
            self.context.scard.SCardDisconnect(card, self.context.scard.SCARD_UNPOWER_CARD)

    def _drop(self) -> None:
        """Let go of a connection that failed, leaving the card to pcscd as it is."""
        if self._card is not None:
            card, self._card = self._card, None
            self.context.scard.SCardDisconnect(card, self.context.scard.SCARD_LEAVE_CARD)

    def reset(self) -> bytes:
        scard = self.context.scard
        if self._card is None:
            return self.power_on()
        hresult, protocol = scard.SCardReconnect(
            self._card, self._share, _protocols(scard, self._atr), scard.SCARD_RESET_CARD
        )
        self._connected(hresult, self._card, protocol, "resetting the card")
        return self._atr

    def transmit(self, apdu: bytes) -> bytes:
        if self._card is None:
            raise PcscError(f"no connection to the card in {self.reader!r}")
        hresult, response = self.context.scard.SCardTransmit(self._card, self._pci, list(apdu))
        doing = f"exchanging an APDU with the card in {self.reader!r}"
        if hresult != 0:
            self._drop()  # a failed exchange leaves no usable connection
            _check(hresult, doing)
        if len(response) < 2:  # vpcd's answer for a card that lost power mid-command
            self._drop()
            raise PcscError(f"{doing}: the card gave no answer (torn, or mute)")
        return bytes(response)

    def close(self) -> None:
        """Reset the card as we leave, and release the context.

        A reset, not "leave the card": the next program must not inherit this
        one's session (the applet selected, the PIN verified).
        """
        if self._card is not None:
            card, self._card = self._card, None
            self.context.scard.SCardDisconnect(card, self.context.scard.SCARD_RESET_CARD)
        self.context.close()
