"""Insert a card into the virtual PC/SC reader of vsmartcard-vpcd.

The vpcd reader driver (Debian ``vsmartcard-vpcd``) runs inside ``pcscd`` and
listens on TCP port 35963 for its slot 0 and 35964 for slot 1. A card is
*inserted* by connecting to that port and *removed* by closing the
connection. Every message, both ways, is a 2-byte big-endian length and that
many bytes. From the reader, a 1-byte payload is a control message:
``00`` power off, ``01`` power on, ``02`` reset, ``04`` get ATR (the only one
answered: with the ATR). A longer payload is a command APDU, answered with
the response APDU. The reader does no T=0 GET RESPONSE of its own: the card
answers ``61XX`` itself.

Two details make a round trip take 0.2 ms instead of 40 ms: each message is
written in one ``send`` (length and payload together) with ``TCP_NODELAY``,
and ``TCP_QUICKACK`` is set again before every read. vpcd writes the length
and the payload in two writes, and a delayed ACK on our side would hold its
second write back for the peer's delayed-ACK timeout.

:class:`VpcdLink` is the framing on one connection. :class:`VpcdBridge`
keeps one card in one slot: it connects (waiting for vpcd if it is not
there yet), answers the reader with the card's own semantics (power off and
reset clear its transient state; a dropped connection is a power loss), and
reconnects when the reader goes away and comes back. Each command runs to
completion and is committed to the card's store before its answer is sent,
so a connection lost in the middle of an exchange is, for the card, a power
loss after that command: the image holds every committed command, never
half of one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from apdu.errors import TransportError
from apdu.transport import CardLike
from card_os.tear import PowerLoss

log = logging.getLogger(__name__)

VPCD_HOST = "127.0.0.1"
VPCD_PORT = 35963  # slot 0; slot N listens on VPCD_PORT + N
VPCD_SLOTS = 2  # as the Debian package is built (readers "Virtual PCD 00 00" and "00 01")
MAX_PAYLOAD = 0xFFFF  # what a 2-byte length can say
TICK = 0.2  # seconds between checks for a stop request while the reader is idle
FRAME_DEADLINE = 5.0  # seconds a started message may take to arrive in full

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class Control(IntEnum):
    """The reader's 1-byte control messages."""

    POWER_OFF = 0x00
    POWER_ON = 0x01
    RESET = 0x02
    GET_ATR = 0x04


class VpcdError(TransportError):
    """vpcd cannot be reached, or spoke something that is not its protocol."""


class LinkClosed(VpcdError):
    """The reader closed the connection (pcscd stopped, or the driver reloaded)."""


class FramingError(VpcdError):
    """A message that breaks the framing: cut short, stalled, or too long to frame."""


def slot_port(slot: int, base: int = VPCD_PORT) -> int:
    if not 0 <= slot < VPCD_SLOTS:
        raise ValueError(f"vpcd has slots 0 to {VPCD_SLOTS - 1}, not {slot}")
    return base + slot


def parse_endpoint(text: str, slot: int = 0) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST`` (port from the slot), ``:PORT``, ``[IPv6]:PORT``; else ValueError."""
    text = text.strip()
    if text.startswith("["):  # [IPv6] or [IPv6]:PORT
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not host or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: write an IPv6 address as [ADDRESS] or [ADDRESS]:PORT")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:  # a bare IPv6 address
        host, port_text = text, None
    else:
        host, sep, after = text.partition(":")
        port_text = after if sep else None
    if port_text is None:
        return host or VPCD_HOST, slot_port(slot)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host or VPCD_HOST, int(port_text)


class VpcdLink:
    """The framing on one connected socket (either side of it)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(TICK)

    def _quickack(self) -> None:
        if _QUICKACK is not None:
            self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def _read_exact(self, size: int, idle: Callable[[], bool] | None, first: bool) -> bytes:
        """``size`` bytes. ``first``: they start a message, so a close before any of
        them is the reader leaving, not a broken message; and while none has come,
        ``idle()`` (if given) says whether to keep waiting."""
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        started: float | None = None
        while got < size:
            self._quickack()
            try:
                n = self.sock.recv_into(view[got:])
            except TimeoutError:
                if got == 0 and first:
                    if idle is not None and not idle():
                        raise LinkClosed("stopped while waiting for the reader") from None
                    if idle is not None:
                        continue
                started = self._stalled(started, f"a message stalled after {got} of {size} bytes")
                continue
            except OSError as err:
                raise LinkClosed(f"connection lost ({err.strerror or err})") from None
            if n == 0:
                if got == 0 and first:
                    raise LinkClosed("the reader closed the connection")
                raise FramingError(f"connection closed inside a message ({got} of {size} bytes)")
            got += n
        return bytes(buf)

    @staticmethod
    def _stalled(started: float | None, what: str) -> float:
        """The time the stall began; :class:`FramingError` once it passes the deadline."""
        now = time.monotonic()
        if started is None:
            return now
        if now - started > FRAME_DEADLINE:
            raise FramingError(f"{what} for {FRAME_DEADLINE:g} s")
        return started

    def read(self, idle: Callable[[], bool] | None = None) -> bytes:
        """One message's payload; ``idle`` as in :meth:`_read_exact`."""
        size = int.from_bytes(self._read_exact(2, idle, first=True), "big")
        if size == 0:
            raise FramingError("an empty message (length 0) is not part of the protocol")
        return self._read_exact(size, None, first=False)

    def write(self, payload: bytes) -> None:
        """Length and payload in one send (more only when the peer reads slowly)."""
        if len(payload) > MAX_PAYLOAD:
            raise FramingError(f"{len(payload)} bytes do not fit the 2-byte length")
        view = memoryview(len(payload).to_bytes(2, "big") + payload)
        sent = 0
        started: float | None = None
        while sent < len(view):
            try:
                sent += self.sock.send(view[sent:])
            except TimeoutError:
                started = self._stalled(started, f"the reader took {sent} of {len(view)} bytes")
            except OSError as err:
                raise LinkClosed(
                    f"connection lost while answering ({err.strerror or err})"
                ) from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def connect(host: str, port: int, timeout: float = 2.0) -> VpcdLink:
    """One connection attempt; :class:`VpcdError` with the reason when it fails."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        reason = err.strerror or str(err)
        if isinstance(err, ConnectionRefusedError) or err.errno == errno.ECONNREFUSED:
            reason = "nothing listens there"
        raise VpcdError(f"cannot reach vpcd at {host}:{port}: {reason}") from None
    return VpcdLink(sock)


Event = Callable[[str], None]


class Chip(CardLike, Protocol):
    """What the bridge needs of a card (``card_os.Card`` is one)."""

    @property
    def powered(self) -> bool: ...


@dataclass
class BridgeStats:
    connections: int = 0
    commands: int = 0
    drops: int = 0


class VpcdBridge:
    """One card in one vpcd slot, until :meth:`stop`.

    ``wait`` bounds how long to wait for vpcd, at the start and after the
    reader goes away (``None``: forever). ``event`` hears what happens, in
    words (inserted, removed, reconnecting), for a person watching.
    """

    def __init__(
        self,
        card: Chip,
        host: str = VPCD_HOST,
        port: int = VPCD_PORT,
        *,
        wait: float | None = 30.0,
        retry: float = 0.5,
        event: Event | None = None,
    ) -> None:
        self.card = card
        self.host = host
        self.port = port
        self.wait = wait
        self.retry = retry
        self.event = event or (lambda text: log.info("%s", text))
        self.stats = BridgeStats()
        self._stopping = False

    @property
    def where(self) -> str:
        return f"vpcd at {self.host}:{self.port}"

    def stop(self) -> None:
        """Ask :meth:`serve` to end; it does within :data:`TICK` of an idle reader."""
        self._stopping = True

    def _keep_waiting(self) -> bool:
        return not self._stopping

    def serve(self) -> None:
        """Serve until :meth:`stop`; :class:`VpcdError` when vpcd stays away too long."""
        while not self._stopping:
            link = self._connect()
            if link is None:
                return
            self.stats.connections += 1
            self.event(f"card inserted into {self.where}")
            try:
                self._exchange(link)
            except LinkClosed as err:
                if not self._keep_waiting():
                    break
                self.stats.drops += 1
                self.event(f"reader gone ({err}); waiting for it to come back")
            except (FramingError, PowerLoss) as err:
                self.stats.drops += 1
                self.event(f"connection dropped ({err}); reconnecting")
            finally:
                link.close()
                if self.card.powered:
                    self.card.power_off()
        self.event(f"card removed from {self.where}")

    def _connect(self) -> VpcdLink | None:
        deadline = None if self.wait is None else time.monotonic() + self.wait
        told = False
        while not self._stopping:
            try:
                return connect(self.host, self.port)
            except VpcdError as err:
                if deadline is not None and time.monotonic() >= deadline:
                    raise VpcdError(
                        f"{err} (waited {self.wait:g} s; is pcscd running with the "
                        "vsmartcard-vpcd driver?)"
                    ) from None
                if not told:
                    self.event(f"{err}; retrying every {self.retry:g} s")
                    told = True
                time.sleep(self.retry)
        return None

    def _exchange(self, link: VpcdLink) -> None:
        card = self.card
        while not self._stopping:
            message = link.read(self._keep_waiting)
            if len(message) == 1:
                answer = self._control(message[0])
                if answer is not None:
                    link.write(answer)
                continue
            if not card.powered:  # vpcd powers the card first; a stray APDU wakes it
                card.power_on()
            self.stats.commands += 1
            response = card.process(message)
            if len(response) > MAX_PAYLOAD:
                log.warning("a %d-byte response does not fit vpcd's framing", len(response))
                response = b"\x6f\x00"
            link.write(response)

    def _control(self, code: int) -> bytes | None:
        card = self.card
        if code == Control.POWER_OFF:
            card.power_off()
        elif code == Control.POWER_ON:
            card.power_on()
        elif code == Control.RESET:
            card.reset()
        elif code == Control.GET_ATR:
            return card.atr
        else:
            log.warning("unknown vpcd control message %02X ignored", code)
        return None
