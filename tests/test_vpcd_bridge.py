"""The vpcd bridge without pcscd: this file plays the reader side itself.

A small fake vpcd (a TCP listener on 127.0.0.1, port 0) accepts the bridge's
connection and speaks vpcd's protocol with :class:`VpcdLink`, or with raw
socket bytes where a test needs a broken frame. What is checked:

1. the framing of :class:`VpcdLink`: round trips at the size limits, a too
   long message is refused before anything is sent, and a message that is
   empty, cut short or stalled is a :class:`FramingError`; a peer that closes
   between messages is :class:`LinkClosed`; ``TCP_NODELAY`` is set;
2. :func:`parse_endpoint` and :func:`slot_port`;
3. the bridge answers the reader with the card's semantics: GET ATR, power
   on / off, reset (selection and verified PIN cleared), an unknown control
   message ignored, a stray APDU powers the card, commands are counted;
4. the bridge reconnects when the reader goes away or breaks the framing, and
   the card loses power in between;
5. vpcd not there: a clear :class:`VpcdError` after ``wait``; ``stop()`` ends
   the waiting;
6. a tear during a PAY sent through the reader: no answer, a reconnection,
   and an image holding exactly the state before or after the PAY;
7. a response too long for the framing is answered ``6F00``;
8. ``purse card serve``: errors in one line, usage errors, SIGINT ends it
   cleanly, and the image is locked against other ``purse`` commands meanwhile;
9. :func:`image_lock` itself.

Every socket, accept, read and join has a deadline: no test can hang.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from apdu.atr import build_atr
from apdu.command import CommandApdu
from apdu.purse import PURSE_AID, PayData
from card_os import vpcd
from card_os.card import DEFAULT_ATR, Card
from card_os.image import ImageError, ImageFile, image_lock
from card_os.purse import PurseApplet
from card_os.tear import TearInjector
from card_os.vpcd import (
    MAX_PAYLOAD,
    VPCD_HOST,
    VPCD_PORT,
    Control,
    FramingError,
    LinkClosed,
    VpcdBridge,
    VpcdError,
    VpcdLink,
    parse_endpoint,
    slot_port,
)
from purse_cli.main import cli
from tests.purse_kit import PIN, T0, TERMINAL_ID, funded_rig, make_rig
from tests.vpcd_kit import PATIENCE, FakeVpcd, patience, sw

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
FAST_TICK = 0.05

SELECT_PURSE = bytes.fromhex("00A4040008") + PURSE_AID  # no Le: the card answers 61XX
GET_STATUS = bytes.fromhex("00CABF1000")  # GET DATA of the status template
READ_RECORD_1 = bytes.fromhex("00B2010400")  # needs a verified PIN
SW_OK = 0x9000
SW_INS_NOT_SUPPORTED = 0x6D00  # what the card answers with no applet selected
SW_SECURITY = 0x6982
SW_UNKNOWN_ERROR = 0x6F00


def pay_apdu(amount: int, now: int) -> bytes:
    data = PayData(amount, now, TERMINAL_ID, bytes(range(16))).encode()
    return CommandApdu(0x80, 0x54, 0x00, 0x00, data, 256).to_bytes()


def closed_port() -> int:
    """A loopback port where nothing listens (bound for a moment, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def fast_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bridge notices stop() within 50 ms instead of 200 ms (keeps the file fast)."""
    monkeypatch.setattr(vpcd, "TICK", FAST_TICK)


# the two ends of one TCP connection -----------------------------------------------------
@contextlib.contextmanager
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair (VpcdLink needs TCP: it sets TCP options)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(PATIENCE)
        near = socket.create_connection(server.getsockname()[:2], timeout=PATIENCE)
        far, _ = server.accept()
    far.settimeout(PATIENCE)
    try:
        yield near, far
    finally:
        near.close()
        far.close()


@contextlib.contextmanager
def in_thread(work: Callable[[], object]) -> Iterator[list[BaseException]]:
    """Run ``work`` in a daemon thread for the block; its exceptions, if any, after."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield errors
    finally:
        thread.join(PATIENCE)
    assert not thread.is_alive(), "the helper thread is stuck"


# the fake vpcd -----------------------------------------------------------------------
@pytest.fixture
def fake_vpcd() -> Iterator[FakeVpcd]:
    server = FakeVpcd()
    try:
        yield server
    finally:
        server.close()


@dataclass
class Served:
    bridge: VpcdBridge
    errors: list[BaseException]
    events: list[str] = field(default_factory=list)


@contextlib.contextmanager
def serving(card: vpcd.Chip, port: int, *, wait: float | None = PATIENCE) -> Iterator[Served]:
    """The bridge serving ``card`` in a daemon thread; stopped and joined at the end.

    An exception that ends ``serve`` fails the test unless the test removed it
    from ``errors`` (having checked it).
    """
    events: list[str] = []
    bridge = VpcdBridge(card, "127.0.0.1", port, wait=wait, retry=0.05, event=events.append)
    with in_thread(bridge.serve) as errors:
        served = Served(bridge, errors, events)
        try:
            yield served
        finally:
            bridge.stop()
    assert errors == [], errors


def powered(card: Card) -> bool:
    """The card's power now (a call, so that mypy does not narrow it across exchanges)."""
    return card.powered


def selected(card: Card) -> object:
    """The selected applet now (a call, for the same reason)."""
    return card.selected


def purse_card() -> Card:
    """A personalised purse card in memory (no credential, no money)."""
    return make_rig().card


# 1. framing ------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 2, 255, 256, MAX_PAYLOAD])
def test_round_trip(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    with tcp_pair() as (near, far):
        a, b = VpcdLink(near), VpcdLink(far)
        with in_thread(lambda: a.write(payload)) as errors:  # a reader drains big frames
            assert b.read(patience()) == payload
        assert errors == []
        b.write(payload)  # and the other way
        assert a.read(patience()) == payload


def test_wire_format_is_length_then_payload() -> None:
    with tcp_pair() as (near, far):
        VpcdLink(near).write(b"\x01\x02\x03")
        assert far.recv(16) == b"\x00\x03\x01\x02\x03"


def test_too_long_message_is_refused_and_sends_nothing() -> None:
    with tcp_pair() as (near, far):
        a, b = VpcdLink(near), VpcdLink(far)
        with pytest.raises(FramingError, match="65536 bytes"):
            a.write(bytes(MAX_PAYLOAD + 1))
        a.write(b"ok")
        assert b.read(patience()) == b"ok"  # the first thing on the wire


def test_zero_length_message_is_a_framing_error() -> None:
    with tcp_pair() as (near, far):
        far.sendall(b"\x00\x00")
        with pytest.raises(FramingError, match="length 0"):
            VpcdLink(near).read(patience())


@pytest.mark.parametrize(
    "sent",
    [b"\x00", b"\x00\x05", b"\x00\x05abc"],
    ids=["in-the-length", "after-the-length", "in-the-payload"],
)
def test_closed_inside_a_message_is_a_framing_error(sent: bytes) -> None:
    with tcp_pair() as (near, far):
        far.sendall(sent)
        far.close()
        with pytest.raises(FramingError, match="closed inside a message"):
            VpcdLink(near).read(patience())


def test_closed_between_messages_is_link_closed() -> None:
    with tcp_pair() as (near, far):
        a = VpcdLink(near)
        VpcdLink(far).write(b"last")
        far.close()
        assert a.read(patience()) == b"last"
        with pytest.raises(LinkClosed, match="closed the connection") as caught:
            a.read(patience())
        assert not isinstance(caught.value, FramingError)


def test_closed_before_any_byte_is_link_closed_without_idle_too() -> None:
    with tcp_pair() as (near, far):
        far.close()
        with pytest.raises(LinkClosed) as caught:
            VpcdLink(near).read()
        assert not isinstance(caught.value, FramingError)


def test_idle_callback_can_end_the_wait() -> None:
    with tcp_pair() as (near, _far):
        link = VpcdLink(near)
        near.settimeout(FAST_TICK)
        calls: list[float] = []

        def idle() -> bool:
            calls.append(time.monotonic())
            return len(calls) < 3

        with pytest.raises(LinkClosed, match="stopped while waiting"):
            link.read(idle)
        assert len(calls) == 3


@pytest.mark.parametrize("sent", [b"\x00", b"\x00\x05ab"], ids=["in-the-length", "in-the-payload"])
def test_stalled_message_is_a_framing_error_after_the_deadline(
    monkeypatch: pytest.MonkeyPatch, sent: bytes
) -> None:
    monkeypatch.setattr(vpcd, "TICK", FAST_TICK)
    monkeypatch.setattr(vpcd, "FRAME_DEADLINE", 0.3)
    with tcp_pair() as (near, far):
        link = VpcdLink(near)
        far.sendall(sent)
        start = time.monotonic()
        with pytest.raises(FramingError, match="stalled"):
            link.read(patience())  # an idle callback does not excuse a started message
        elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 1.5


def test_length_and_payload_in_separate_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """As vpcd itself writes; also with a pause longer than a tick in between."""
    monkeypatch.setattr(vpcd, "TICK", FAST_TICK)
    with tcp_pair() as (near, far):
        link = VpcdLink(near)
        far.sendall(b"\x00\x05")
        far.sendall(b"hello")
        assert link.read(patience()) == b"hello"
        far.sendall(b"\x00")
        time.sleep(3 * FAST_TICK)
        far.sendall(b"\x04ab")
        time.sleep(3 * FAST_TICK)
        far.sendall(b"cd")
        assert link.read(patience()) == b"abcd"


def test_messages_back_to_back_in_one_write() -> None:
    with tcp_pair() as (near, far):
        link = VpcdLink(near)
        far.sendall(b"\x00\x01\x04\x00\x02\x90\x00")
        assert link.read(patience()) == b"\x04"
        assert link.read(patience()) == b"\x90\x00"


def test_tcp_nodelay_is_set() -> None:
    with tcp_pair() as (near, _far):
        assert near.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        VpcdLink(near)
        assert near.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_a_write_the_peer_drains_slowly_still_completes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vpcd, "TICK", FAST_TICK)
    monkeypatch.setattr(vpcd, "FRAME_DEADLINE", 1.0)
    payload = bytes(i % 251 for i in range(MAX_PAYLOAD))
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(PATIENCE)
        near = socket.socket()
        near.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        near.connect(server.getsockname())
        far, _ = server.accept()
    got: list[bytes] = []

    def slow_reader() -> None:
        time.sleep(6 * FAST_TICK)  # busy for a moment, as a remote or loaded reader is
        got.append(VpcdLink(far).read(patience()))

    try:
        with in_thread(slow_reader) as errors:
            try:
                VpcdLink(near).write(payload)
            finally:
                time.sleep(10 * FAST_TICK)
                near.close()
        assert errors == []
        assert got == [payload]
    finally:
        near.close()
        far.close()


def test_connect_names_the_address_when_nothing_listens() -> None:
    port = closed_port()
    with pytest.raises(VpcdError, match=f"127.0.0.1:{port}: nothing listens there"):
        vpcd.connect("127.0.0.1", port)


# 2. endpoints ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "slot", "expected"),
    [
        ("", 0, ("127.0.0.1", 35963)),
        ("", 1, ("127.0.0.1", 35964)),
        ("host:1234", 0, ("host", 1234)),
        (":1234", 0, ("127.0.0.1", 1234)),
        ("host", 0, ("host", 35963)),
        ("host", 1, ("host", 35964)),
        ("10.0.0.2:65535", 0, ("10.0.0.2", 65535)),
        ("[::1]:35963", 0, ("::1", 35963)),
        ("x:1", 0, ("x", 1)),
    ],
)
def test_parse_endpoint(text: str, slot: int, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text, slot) == expected


@pytest.mark.parametrize("text", ["x:abc", "x:0", "x:70000", "x:", "x:-1", "x:+80", "x: 80"])
def test_parse_endpoint_refuses_bad_ports(text: str) -> None:
    with pytest.raises(ValueError, match="port must be a number from 1 to 65535"):
        parse_endpoint(text)


@pytest.mark.parametrize("text", ["", "host"])
def test_parse_endpoint_refuses_a_slot_vpcd_does_not_have(text: str) -> None:
    with pytest.raises(ValueError, match="slots 0 to 1, not 2"):
        parse_endpoint(text, 2)


def test_parse_endpoint_bracketed_ipv6_host_alone() -> None:
    assert parse_endpoint("[::1]") == ("::1", 35963)


def test_slot_port() -> None:
    assert VPCD_PORT == 35963
    assert (slot_port(0), slot_port(1)) == (35963, 35964)
    assert slot_port(1, base=4000) == 4001
    for slot in (-1, 2):
        with pytest.raises(ValueError, match="slots 0 to 1"):
            slot_port(slot)
    assert VPCD_HOST == "127.0.0.1"


# 3. what the bridge answers --------------------------------------------------------------
def test_get_atr_answers_the_cards_atr(fake_vpcd: FakeVpcd, fast_tick: None) -> None:
    atr = build_atr(b"\x80\x55OTHER", protocols=(0, 1))
    assert atr != DEFAULT_ATR
    card = Card(atr=atr)
    with serving(card, fake_vpcd.port) as served:
        reader = fake_vpcd.accept()
        assert reader.atr == atr
        assert reader.atr == card.atr  # answered every time, and only GET ATR is answered
        assert served.bridge.stats.commands == 0
    assert served.events[0] == f"card inserted into vpcd at 127.0.0.1:{fake_vpcd.port}"
    assert served.events[-1] == f"card removed from vpcd at 127.0.0.1:{fake_vpcd.port}"


def test_power_on_then_select(fake_vpcd: FakeVpcd, fast_tick: None) -> None:
    card = purse_card()
    card.power_off()
    with serving(card, fake_vpcd.port) as served:
        reader = fake_vpcd.accept()
        reader.control(Control.POWER_ON)
        answer = reader.send(SELECT_PURSE)
        assert answer[0] == 0x61  # no Le: the card itself says how much is waiting
        assert len(answer) == 2
        fci = reader.send(bytes.fromhex("00C00000") + answer[1:])
        assert sw(fci) == SW_OK
        assert len(fci) == 2 + (answer[1] or 256)
        assert powered(card)
        assert selected(card) is card.applets[PURSE_AID]
        status = reader.client().status()  # a whole client over the reader
        assert status.card_id == b"CARD0001"
        assert served.bridge.stats.commands == 3  # SELECT, GET RESPONSE, GET DATA


def test_power_off_clears_the_selection(fake_vpcd: FakeVpcd, fast_tick: None) -> None:
    card = purse_card()
    with serving(card, fake_vpcd.port):
        reader = fake_vpcd.accept()
        reader.control(Control.POWER_ON)
        reader.client().select()
        assert sw(reader.send(GET_STATUS)) == SW_OK
        reader.control(Control.POWER_OFF)
        assert reader.atr == card.atr  # processed in order: the power off is done
        assert not powered(card)
        assert selected(card) is None
        reader.control(Control.POWER_ON)
        assert sw(reader.send(GET_STATUS)) == SW_INS_NOT_SUPPORTED  # nothing selected
        assert powered(card)


def test_reset_clears_the_selection_and_the_verified_pin(
    fake_vpcd: FakeVpcd, fast_tick: None
) -> None:
    card = funded_rig().card  # has a history record, which needs the PIN to read
    with serving(card, fake_vpcd.port):
        reader = fake_vpcd.accept()
        reader.control(Control.POWER_ON)
        client = reader.client()
        client.select()
        assert sw(reader.send(READ_RECORD_1)) == SW_SECURITY
        client.verify_pin(PIN)
        assert sw(reader.send(READ_RECORD_1)) == SW_OK
        reader.control(Control.RESET)
        assert sw(reader.send(GET_STATUS)) == SW_INS_NOT_SUPPORTED  # selection gone
        assert powered(card)  # a reset leaves the card powered
        client.select()  # nothing was selected: no deselect; only the reset forgot the PIN
        assert sw(reader.send(READ_RECORD_1)) == SW_SECURITY


def test_unknown_control_message_is_ignored(fake_vpcd: FakeVpcd, fast_tick: None) -> None:
    card = purse_card()
    with serving(card, fake_vpcd.port) as served:
        reader = fake_vpcd.accept()
        reader.control(Control.POWER_ON)
        reader.client().select()
        for code in (0x03, 0x05, 0xFF):
            reader.control(code)  # no answer, no effect
        assert reader.atr == card.atr
        assert powered(card)
        assert selected(card) is card.applets[PURSE_AID]
        assert sw(reader.send(GET_STATUS)) == SW_OK
        assert served.bridge.stats.drops == 0
        assert served.bridge.stats.connections == 1


def test_apdu_to_an_unpowered_card_powers_it(fake_vpcd: FakeVpcd, fast_tick: None) -> None:
    card = purse_card()
    card.power_off()
    with serving(card, fake_vpcd.port):
        reader = fake_vpcd.accept()
        assert not powered(card)
        assert reader.send(SELECT_PURSE)[0] == 0x61
        assert powered(card)
        reader.control(Control.POWER_OFF)
        assert sw(reader.send(GET_STATUS)) == SW_INS_NOT_SUPPORTED  # woken afresh
        assert powered(card)


def test_stats_count_apdus_not_control_messages(fake_vpcd: FakeVpcd, fast_tick: None) -> None:
    card = purse_card()
    with serving(card, fake_vpcd.port) as served:
        reader = fake_vpcd.accept()
        reader.control(Control.POWER_ON)
        reader.control(Control.RESET)
        assert reader.atr == card.atr
        assert served.bridge.stats.commands == 0
        for _ in range(5):
            reader.send(GET_STATUS)
        reader.send(b"\x00\xa4")  # malformed, still a command: answered 6700
        assert served.bridge.stats.commands == 6
        stats = served.bridge.stats
        assert (stats.connections, stats.drops) == (1, 0)


# 4. reconnection -------------------------------------------------------------------------
def test_reader_goes_away_and_comes_back(fake_vpcd: FakeVpcd, fast_tick: None) -> None:
    card = purse_card()
    with serving(card, fake_vpcd.port) as served:
        first = fake_vpcd.accept()
        first.control(Control.POWER_ON)
        first.client().select()
        assert selected(card) is card.applets[PURSE_AID]
        first.close()  # pcscd stopped: the card is removed
        second = fake_vpcd.accept(timeout=2.0)
        assert second.atr == card.atr
        stats = served.bridge.stats
        assert (stats.connections, stats.drops) == (2, 1)
        assert not powered(card)  # a dropped connection is a power loss
        assert selected(card) is None
        second.control(Control.POWER_ON)
        assert sw(second.send(GET_STATUS)) == SW_INS_NOT_SUPPORTED
    assert any("reader gone" in event for event in served.events)


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\x00", b"\x12\x34ab", b"\x00"],
    ids=["zero-length", "long-length-then-close", "half-a-length-then-close"],
)
def test_framing_error_from_the_reader_drops_and_reconnects(
    fake_vpcd: FakeVpcd, fast_tick: None, garbage: bytes
) -> None:
    card = purse_card()
    with serving(card, fake_vpcd.port) as served:
        raw = fake_vpcd.accept_raw()
        raw.sendall(garbage)
        raw.shutdown(socket.SHUT_WR)
        assert raw.recv(16) == b""  # the bridge closes without answering
        raw.close()
        reader = fake_vpcd.accept(timeout=2.0)
        assert reader.atr == card.atr
        assert sw(reader.send(SELECT_PURSE)) & 0xFF00 == 0x6100
        stats = served.bridge.stats
        assert (stats.connections, stats.drops) == (2, 1)
    assert any("connection dropped" in event for event in served.events)


def test_reader_stalling_mid_message_is_dropped(
    fake_vpcd: FakeVpcd, fast_tick: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vpcd, "FRAME_DEADLINE", 0.3)
    card = purse_card()
    with serving(card, fake_vpcd.port) as served:
        raw = fake_vpcd.accept_raw()
        raw.sendall(b"\x00\x05\x00\xa4")  # and never the rest
        start = time.monotonic()
        assert raw.recv(16) == b""  # dropped after the frame deadline
        assert 0.3 <= time.monotonic() - start < 2.0
        reader = fake_vpcd.accept(timeout=2.0)
        assert reader.atr == card.atr
        assert served.bridge.stats.drops == 1


def test_reader_gone_for_good_ends_serve_with_vpcd_error(fake_vpcd: FakeVpcd) -> None:
    card = purse_card()
    port = fake_vpcd.port
    with serving(card, port, wait=0.3) as served:
        reader = fake_vpcd.accept()
        reader.control(Control.POWER_ON)
        assert reader.atr == card.atr
        fake_vpcd.server.close()  # vpcd stops and does not come back: first no listener,
        reader.close()  # then the card's connection closes
        deadline = time.monotonic() + PATIENCE
        while not served.errors and time.monotonic() < deadline:
            time.sleep(0.02)
        [error] = served.errors
        served.errors.clear()
    assert isinstance(error, VpcdError)
    assert f"127.0.0.1:{port}" in str(error)
    assert served.bridge.stats.drops == 1
    assert not powered(card)


# 5. vpcd not running ---------------------------------------------------------------------
def test_vpcd_not_running_is_a_clear_error() -> None:
    port = closed_port()
    events: list[str] = []
    bridge = VpcdBridge(purse_card(), "127.0.0.1", port, wait=0.3, retry=0.05, event=events.append)
    start = time.monotonic()
    with in_thread(bridge.serve) as errors:
        pass
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 1.5
    [error] = errors
    assert isinstance(error, VpcdError)
    message = str(error)
    assert f"127.0.0.1:{port}" in message
    assert "pcscd" in message
    assert "vsmartcard-vpcd" in message
    assert "waited 0.3 s" in message
    assert bridge.stats.connections == 0
    assert len([e for e in events if "retrying" in e]) == 1  # said once, not every retry


@pytest.mark.parametrize("wait", [None, 30.0], ids=["forever", "30s"])
def test_stop_while_waiting_for_vpcd(wait: float | None) -> None:
    bridge = VpcdBridge(purse_card(), "127.0.0.1", closed_port(), wait=wait, retry=0.05)
    with in_thread(bridge.serve) as errors:
        time.sleep(0.2)
        start = time.monotonic()
        bridge.stop()
    assert time.monotonic() - start < 1.0
    assert errors == []
    assert bridge.stats.connections == 0


def test_stop_while_connected_removes_the_card(fake_vpcd: FakeVpcd, fast_tick: None) -> None:
    card = purse_card()
    with serving(card, fake_vpcd.port) as served:
        reader = fake_vpcd.accept()
        reader.control(Control.POWER_ON)
        assert reader.atr == card.atr
        start = time.monotonic()
        served.bridge.stop()
        reader.expect_closed()
        assert time.monotonic() - start < 1.0
    assert not powered(card)
    assert served.bridge.stats.drops == 0


# 6. a tear through the reader ------------------------------------------------------------
def test_tear_during_pay_drops_the_connection_and_keeps_a_whole_image(
    tmp_path: Path, fake_vpcd: FakeVpcd, fast_tick: None
) -> None:
    path = tmp_path / "card.img"
    funded_rig(path, balance=10_000)
    injector = TearInjector()
    card = Card.open(path, tear=injector.point)
    card.install(PURSE_AID, PurseApplet)
    amount = 500
    with serving(card, fake_vpcd.port) as served:
        reader = fake_vpcd.accept()
        reader.control(Control.POWER_ON)
        reader.client().select()
        # one untorn PAY counts the tear points a PAY passes
        injector.arm(None)
        assert sw(reader.send(pay_apdu(amount, T0 + 60))) == SW_OK
        points = injector.count
        assert points >= 5
        outcomes: list[str] = []
        for k in range(1, points + 1):
            was = reader.client().status()
            balance, atc = was.balance, was.atc
            before = ImageFile(path).load()
            injector.arm(k)
            reader.link.write(pay_apdu(amount, T0 + 60 + k))
            reader.expect_closed()  # torn: no answer, the connection dropped
            assert injector.at is None, f"tear point {k} was not reached"
            reader.close()

            on_disk = ImageFile(path).load()  # loads: a whole image
            reader = fake_vpcd.accept(timeout=2.0)
            reader.control(Control.POWER_ON)
            client = reader.client()
            client.select()  # the card answers again
            status = client.status()
            if on_disk == before:
                outcomes.append("before")
                assert (status.balance, status.atc) == (balance, atc)
            else:
                outcomes.append("after")
                assert (status.balance, status.atc) == (balance - amount, atc + 1)
            stats = served.bridge.stats
            assert (stats.connections, stats.drops) == (k + 1, k)
        assert set(outcomes) == {"before", "after"}, outcomes  # the sweep saw both sides
        assert outcomes == sorted(outcomes, reverse=True)  # before ... before, after ... after
        assert sw(reader.send(pay_apdu(amount, T0 + 3600))) == SW_OK  # and pays again


# 7. an answer too long for the framing ----------------------------------------------------
class ChattyChip:
    """A card whose every answer is 70 000 bytes."""

    def __init__(self) -> None:
        self._powered = False

    @property
    def atr(self) -> bytes:
        return DEFAULT_ATR

    @property
    def powered(self) -> bool:
        return self._powered

    def power_on(self) -> bytes:
        self._powered = True
        return DEFAULT_ATR

    def power_off(self) -> None:
        self._powered = False

    def reset(self) -> bytes:
        return self.power_on()

    def process(self, apdu: bytes) -> bytes:
        return bytes(70_000 - 2) + b"\x90\x00"


def test_oversized_response_is_answered_6f00(fake_vpcd: FakeVpcd, fast_tick: None) -> None:
    with serving(ChattyChip(), fake_vpcd.port) as served:
        reader = fake_vpcd.accept()
        reader.control(Control.POWER_ON)
        assert reader.send(GET_STATUS) == b"\x6f\x00"
        assert reader.send(GET_STATUS) == b"\x6f\x00"  # the link is still in step
        assert reader.atr == DEFAULT_ATR
        stats = served.bridge.stats
        assert (stats.commands, stats.drops) == (2, 0)


# 8. purse card serve -----------------------------------------------------------------------
def purse(args: Sequence[str], home: Path) -> Result:
    result = CliRunner().invoke(cli, ["--home", str(home), *args], prog_name="purse")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"purse {' '.join(args)} crashed") from result.exception
    return result


def one_error_line(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("purse: "), lines
    return lines[0]


@pytest.fixture
def card_image(tmp_path: Path) -> Path:
    path = tmp_path / "alice.img"
    funded_rig(path)
    return path


def test_serve_without_vpcd_fails_in_one_line(tmp_path: Path, card_image: Path) -> None:
    before = card_image.read_bytes()
    port = closed_port()
    args = ["card", "serve", str(card_image), "--vpcd", f"127.0.0.1:{port}", "--wait", "0.3"]
    start = time.monotonic()
    line = one_error_line(purse(args, tmp_path / "home"), EXIT_ERROR)
    assert time.monotonic() - start < 2.0
    assert f"127.0.0.1:{port}" in line
    assert "pcscd" in line
    assert card_image.read_bytes() == before
    assert not Path(f"{card_image}.lock").exists()


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--slot", "2"], "--slot"),
        (["--slot", "-1"], "--slot"),
        (["--vpcd", "host:notaport"], "--vpcd"),
        (["--vpcd", "host:0"], "--vpcd"),
        (["--wait", "-1"], "--wait"),
    ],
)
def test_serve_usage_errors(tmp_path: Path, card_image: Path, extra: list[str], says: str) -> None:
    before = card_image.read_bytes()
    line = one_error_line(
        purse(["card", "serve", str(card_image), *extra], tmp_path / "home"), EXIT_USAGE
    )
    assert says in line
    assert "--help" in line
    assert card_image.read_bytes() == before


def test_serve_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.img"
    port = closed_port()
    args = ["card", "serve", str(missing), "--vpcd", f"127.0.0.1:{port}", "--wait", "0.3"]
    line = one_error_line(purse(args, tmp_path / "home"), EXIT_ERROR)
    assert "no such card file" in line
    assert not missing.exists()
    assert not Path(f"{missing}.lock").exists()


def test_serve_subprocess_locks_the_image_and_stops_on_sigint(
    tmp_path: Path, card_image: Path, fake_vpcd: FakeVpcd
) -> None:
    home = tmp_path / "home"
    lock = Path(f"{card_image}.lock")
    command = [
        sys.executable,
        "-c",
        "from purse_cli.main import main; main()",
        "--home",
        str(home),
        "card",
        "serve",
        str(card_image),
        "--vpcd",
        f"127.0.0.1:{fake_vpcd.port}",
        "--wait",
        "5",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        reader = fake_vpcd.accept(timeout=10.0)  # a cold interpreter start
        reader.control(Control.POWER_ON)
        assert sw(reader.send(SELECT_PURSE)) & 0xFF00 == 0x6100
        before = card_image.read_bytes()
        assert lock.exists()

        # (e) while it serves, other purse commands are refused and change nothing
        shown = one_error_line(purse(["card", "show", str(card_image)], home), EXIT_ERROR)
        assert "in use" in shown
        pay = ["pos", "pay", "--amount", "1.00", "--card", str(card_image), "--offline"]
        paid = one_error_line(purse([*pay, "--now", "2027-01-15T09:00:00Z"], home), EXIT_ERROR)
        assert "in use" in paid
        assert card_image.read_bytes() == before
        assert sw(reader.send(GET_STATUS)) == SW_OK  # still served

        # (d) Ctrl-C: the card is removed, the image released
        proc.send_signal(signal.SIGINT)
        reader.expect_closed()
        out, err = proc.communicate(timeout=5.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5.0)
    assert proc.returncode == EXIT_OK, (out, err)
    assert "Traceback" not in err
    assert f"serving {card_image} to vpcd at 127.0.0.1:{fake_vpcd.port}" in out
    assert "stopped: 2 command(s) answered over 1 connection(s)" in out
    assert not lock.exists()
    assert card_image.read_bytes() == before
    ImageFile(card_image).load()
    shown_after = purse(["card", "show", str(card_image)], home)
    assert shown_after.exit_code == EXIT_OK, shown_after.stderr
    assert "balance 100.00 EUR" in shown_after.stdout
    assert not lock.exists()


# 9. the image lock -----------------------------------------------------------------------
def test_image_lock_is_exclusive_and_removed_on_release(tmp_path: Path) -> None:
    image = tmp_path / "card.img"
    Card.create(image)
    lock = tmp_path / "card.img.lock"
    with image_lock(image):
        assert lock.exists()
        start = time.monotonic()
        with pytest.raises(ImageError, match="in use by another program"), image_lock(image):
            pass
        assert time.monotonic() - start < 0.5  # at once, not after a wait
        assert lock.exists()  # the refused attempt did not remove the holder's lock
    assert not lock.exists()
    with image_lock(image):
        assert lock.exists()
    assert not lock.exists()


def test_image_lock_is_per_image(tmp_path: Path) -> None:
    with image_lock(tmp_path / "a.img"), image_lock(tmp_path / "b.img"):
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.img.lock", "b.img.lock"]
    assert list(tmp_path.iterdir()) == []


def test_image_lock_released_when_the_block_raises(tmp_path: Path) -> None:
    image = tmp_path / "card.img"
    with pytest.raises(RuntimeError), image_lock(image):
        raise RuntimeError("boom")
    assert not (tmp_path / "card.img.lock").exists()
    with image_lock(image):
        pass
