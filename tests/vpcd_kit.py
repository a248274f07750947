"""Playing vpcd's side in tests: a listener where the virtual reader would be.

``FakeVpcd`` listens on a loopback port of the OS's choosing (never vpcd's
own); each accepted connection is one card insertion, driven by a
``Reader``, which speaks the framing with :class:`card_os.vpcd.VpcdLink` and
is also a :class:`apdu.transport.Transport`, so a ``PurseClient`` can drive
the card through the bridge. Shared by ``test_vpcd_bridge`` and ``test_crash``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from apdu.purse_client import PurseClient
from apdu.transport import CardChannel
from card_os.vpcd import Control, LinkClosed, VpcdLink

PATIENCE = 3.0  # seconds any single wait may take before the test fails


def sw(response: bytes) -> int:
    return int.from_bytes(response[-2:], "big")


def patience(seconds: float = PATIENCE) -> Callable[[], bool]:
    """An ``idle`` callback that keeps waiting, and fails the test after ``seconds``."""
    end = time.monotonic() + seconds

    def idle() -> bool:
        if time.monotonic() > end:
            raise AssertionError(f"nothing came within {seconds} s")
        return True

    return idle


class Reader:
    """What vpcd does on one accepted connection; also a Transport for PurseClient."""

    def __init__(self, sock: socket.socket, wait: float = PATIENCE) -> None:
        self.link = VpcdLink(sock)
        self.wait = wait

    def control(self, code: int) -> None:
        self.link.write(bytes([code]))

    def receive(self) -> bytes:
        return self.link.read(patience(self.wait))

    def send(self, apdu: bytes) -> bytes:
        self.link.write(apdu)
        return self.receive()

    def expect_closed(self) -> None:
        """The bridge closes the connection without answering."""
        with pytest.raises(LinkClosed):
            self.link.read(patience(self.wait))

    def close(self) -> None:
        self.link.close()

    # the Transport protocol (apdu.transport), so that a PurseClient can drive the card
    @property
    def atr(self) -> bytes:
        self.control(Control.GET_ATR)
        return self.receive()

    def power_on(self) -> bytes:
        self.control(Control.POWER_ON)
        return self.atr

    def power_off(self) -> None:
        self.control(Control.POWER_OFF)

    def reset(self) -> bytes:
        self.control(Control.RESET)
        return self.atr

    def transmit(self, apdu: bytes) -> bytes:
        return self.send(apdu)

    def client(self) -> PurseClient:
        return PurseClient(CardChannel(self))


class FakeVpcd:
    """A listener where vpcd would be; each accept is one card insertion."""

    def __init__(self, wait: float = PATIENCE) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.wait = wait
        self._open: list[socket.socket] = []

    def accept_raw(self, timeout: float | None = None) -> socket.socket:
        self.server.settimeout(self.wait if timeout is None else timeout)
        sock, _ = self.server.accept()
        sock.settimeout(self.wait)
        self._open.append(sock)
        return sock

    def accept(self, timeout: float | None = None) -> Reader:
        return Reader(self.accept_raw(timeout), self.wait)

    def drain(self) -> int:
        """Close connections a killed bridge left in the backlog; how many there were."""
        closed = 0
        self.server.settimeout(0.05)
        for _ in range(16):
            try:
                sock, _ = self.server.accept()
            except TimeoutError:
                break
            sock.close()
            closed += 1
        return closed

    def close(self) -> None:
        for sock in self._open:
            sock.close()
        self.server.close()
