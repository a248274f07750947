"""The card runtime, through raw ``Card.process`` and through ``Simulator``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apdu.command import CommandApdu
from apdu.errors import TransportError
from apdu.status import SW
from apdu.transport import CardChannel, LocalTransport
from card_os import DEFAULT_ATR, Card, Simulator
from card_os.applets.tally import TALLY_AID, TallyApplet

OK = b"\x90\x00"
READ = "80120000"
FCI = bytes.fromhex("6F0584030102038C")


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def sw_of(answer: bytes) -> int:
    return int.from_bytes(answer[-2:], "big")


def select_apdu(aid: bytes, p1: int = 0x04, p2: int = 0x00, le: bool = True) -> bytes:
    return bytes((0x00, 0xA4, p1, p2, len(aid))) + aid + (b"\x00" if le else b"")


def add_apdu(amount: int) -> bytes:
    return h("80100000 04") + amount.to_bytes(4, "big")


def fresh_card(select: bool = True) -> Card:
    card = Card()
    card.install(TALLY_AID, TallyApplet)
    card.power_on()
    if select:
        assert card.process(select_apdu(TALLY_AID)) == OK
    return card


def read_total(card: Card) -> tuple[int, int]:
    """(total, count) via READ with Le 00."""
    answer = card.process(h(READ + "00"))
    assert answer[-2:] == OK
    assert len(answer) == 26
    return int.from_bytes(answer[0:4], "big"), int.from_bytes(answer[4:8], "big")


class FciTally(TallyApplet):
    """Tally with a non-empty FCI, to see whether SELECT returns it."""

    def select(self, cmd: CommandApdu) -> bytes:
        return FCI


# --- SELECT ------------------------------------------------------------------


def test_select_full_aid() -> None:
    card = fresh_card(select=False)
    assert not card.selected
    assert card.process(select_apdu(TALLY_AID)) == OK
    assert isinstance(card.selected, TallyApplet)
    assert read_total(card) == (0, 0)


@pytest.mark.parametrize("length", [5, 6])
def test_select_truncated_aid(length: int) -> None:
    card = fresh_card(select=False)
    assert card.process(select_apdu(TALLY_AID[:length])) == OK
    assert card.selected is card.applets[TALLY_AID]
    assert read_total(card) == (0, 0)


def test_select_via_simulator() -> None:
    sim = Simulator()
    sim.install(TALLY_AID, TallyApplet)
    resp = sim.select(TALLY_AID)
    assert resp.sw == SW.OK
    assert resp.data == b""
    assert sim.select(TALLY_AID[:5]).sw == SW.OK


def test_select_unknown_keeps_selection() -> None:
    card = fresh_card()
    assert card.process(add_apdu(9)) == OK
    applet = card.selected
    assert card.process(select_apdu(h("A000000099"))) == h("6A82")
    assert card.process(select_apdu(TALLY_AID + b"\x00")) == h("6A82")  # longer than the AID
    assert card.selected is applet
    assert read_total(card) == (9, 1)


def test_select_unknown_first() -> None:
    card = fresh_card(select=False)
    assert card.process(select_apdu(h("A000000099"))) == h("6A82")
    assert card.selected is None
    assert card.process(h(READ + "00")) == h("6D00")


@pytest.mark.parametrize(("p1", "p2"), [(0x00, 0x00), (0x02, 0x00), (0x04, 0x04), (0x04, 0x02)])
def test_select_bad_p1p2(p1: int, p2: int) -> None:
    card = fresh_card(select=False)
    assert card.process(select_apdu(TALLY_AID, p1, p2)) == h("6A86")
    assert card.selected is None


@pytest.mark.parametrize("aid", [TALLY_AID[:4], bytes(17)])
def test_select_bad_aid_length(aid: bytes) -> None:
    card = fresh_card(select=False)
    assert card.process(select_apdu(aid)) == h("6700")


def test_select_p2_0c_returns_no_fci() -> None:
    card = Card()
    card.install(TALLY_AID, FciTally)
    card.power_on()
    assert card.process(select_apdu(TALLY_AID, p2=0x00)) == FCI + OK
    assert card.process(select_apdu(TALLY_AID, p2=0x0C)) == OK
    assert card.process(select_apdu(TALLY_AID, p2=0x0C, le=False)) == OK
    assert isinstance(card.selected, FciTally)
    # the plain Tally applet has no FCI either way
    tally = fresh_card(select=False)
    assert tally.process(select_apdu(TALLY_AID, p2=0x0C)) == OK


# --- dispatch errors ---------------------------------------------------------


def test_no_applet_selected() -> None:
    card = fresh_card(select=False)
    assert card.process(h(READ + "00")) == h("6D00")
    assert card.process(add_apdu(5)) == h("6D00")
    assert card.store.snapshot() == {}


def test_unknown_ins() -> None:
    card = fresh_card()
    assert card.process(h("80500000")) == h("6D00")
    assert card.process(h("80200000 00")) == h("6D00")


@pytest.mark.parametrize("raw", ["00120000 00", "00100000 04 00000005", "84120000 00"])
def test_wrong_cla(raw: str) -> None:
    card = fresh_card()
    before = card.store.snapshot()
    assert card.process(h(raw)) == h("6E00")
    assert card.store.snapshot() == before


def test_add_wrong_length() -> None:
    card = fresh_card()
    assert card.process(add_apdu(1)) == OK
    before = card.store.snapshot()
    assert card.process(h("80100000 03 000005")) == h("6700")
    assert card.process(h("80100000 05 0000000005")) == h("6700")
    assert card.store.snapshot() == before


def test_add_zero() -> None:
    card = fresh_card()
    assert card.process(add_apdu(1)) == OK
    before = card.store.snapshot()
    assert card.process(add_apdu(0)) == h("6A80")
    assert card.store.snapshot() == before
    assert read_total(card) == (1, 1)


def test_add_commits() -> None:
    card = fresh_card()
    before = card.store.snapshot()
    assert card.process(add_apdu(5)) == OK
    assert card.store.snapshot() != before
    assert card.process(add_apdu(7)) == OK
    assert read_total(card) == (12, 2)


@pytest.mark.parametrize(
    "raw",
    [
        "801000",  # 3 bytes
        "80",
        "",
        "80100000 04 000005",  # Lc 4, 3 bytes follow
        "80100000 04 00000005 00 00",  # Lc 4, 6 bytes follow
        "80100000 00 00",  # extended length truncated
        "80100000 00 0004 000005",  # extended Lc 4, 3 bytes
    ],
)
def test_malformed_apdu(raw: str) -> None:
    card = fresh_card()
    assert card.process(add_apdu(3)) == OK
    before = card.store.snapshot()
    assert card.process(h(raw)) == h("6700")
    assert card.store.snapshot() == before
    assert card.selected is not None
    assert read_total(card) == (3, 1)


def test_fail_rolls_back() -> None:
    card = fresh_card()
    assert card.process(add_apdu(5)) == OK
    before = card.store.snapshot()
    assert card.process(h("80160000")) == h("6F00")
    assert card.store.snapshot() == before
    assert not card.store.in_transaction
    assert read_total(card) == (5, 1)


# --- chaining, card side -----------------------------------------------------


def pattern(n: int) -> bytes:
    return bytes(i & 0xFF for i in range(n))


def test_long_response_with_get_response() -> None:
    card = fresh_card()
    first = card.process(h("8014012C 00"))  # PATTERN 300, Le 00 = 256
    assert len(first) == 258
    assert first[:256] == pattern(256)
    assert first[-2:] == h("612C")
    second = card.process(h("00C00000 2C"))
    assert second == pattern(300)[256:] + OK
    assert len(second) == 46
    assert card.process(h("00C00000 2C")) == h("6985")


def test_get_response_in_small_chunks() -> None:
    card = fresh_card()
    assert card.process(h("8014012C 00"))[-2:] == h("612C")
    part = card.process(h("00C00000 10"))
    assert part == pattern(300)[256:272] + h("611C")
    rest = card.process(h("00C00000 00"))
    assert rest == pattern(300)[272:] + OK


def test_case1_command_returning_data() -> None:
    card = fresh_card()
    assert card.process(add_apdu(0x0102)) == OK
    first = card.process(h(READ))
    assert first == h("6118")
    second = card.process(h("00C00000 18"))
    assert len(second) == 26
    assert second[-2:] == OK
    assert second[:8] == h("00000102 00000001")


def test_read_with_short_le_asks_for_exact_length() -> None:
    card = fresh_card()
    assert card.process(h(READ + "05")) == h("6C18")
    assert card.process(h("00C00000 00")) == h("6985")  # nothing left over
    answer = card.process(h(READ + "18"))
    assert len(answer) == 26
    assert answer[-2:] == OK


def test_get_response_nothing_pending() -> None:
    card = fresh_card()
    assert card.process(h("00C00000 00")) == h("6985")
    assert card.process(h("00C00000")) == h("6985")
    nothing_selected = fresh_card(select=False)
    assert nothing_selected.process(h("00C00000 10")) == h("6985")


@pytest.mark.parametrize("other", [READ + "00", "80500000", "801000", "00A40400 05 A000000099 00"])
def test_other_command_discards_leftover(other: str) -> None:
    card = fresh_card()
    assert card.process(h("8014012C 00"))[-2:] == h("612C")
    card.process(h(other))
    assert card.process(h("00C00000 2C")) == h("6985")


@pytest.mark.parametrize("p1p2", ["0100", "0001", "FFFF"])
def test_get_response_bad_p1p2(p1p2: str) -> None:
    card = fresh_card()
    assert card.process(h("8014012C 00"))[-2:] == h("612C")
    assert card.process(h("00C0" + p1p2 + "2C")) == h("6A86")


# --- chaining, terminal side -------------------------------------------------


def test_simulator_hides_chaining() -> None:
    sim = Simulator()
    sim.install(TALLY_AID, TallyApplet)
    assert sim.select(TALLY_AID).sw == SW.OK
    resp = sim.transmit("80 14 03 E8 00")  # PATTERN 1000
    assert resp.sw == SW.OK
    assert resp.data == pattern(1000)
    read = sim.transmit(h(READ + "05"))
    assert read.sw == SW.OK
    assert len(read.data) == 24
    assert sim.transmit(CommandApdu(0x80, 0x10, 0, 0, h("00000005"))).sw == SW.OK
    assert sim.transmit(READ + "05").data[:8] == h("00000005 00000001")


def traced_channel() -> tuple[CardChannel, list[tuple[bytes, bytes]]]:
    card = fresh_card()
    seen: list[tuple[bytes, bytes]] = []

    def trace(command: bytes, answer: bytes) -> None:
        seen.append((command, answer))

    return CardChannel(LocalTransport(card), trace=trace), seen


def test_channel_get_response_rounds() -> None:
    channel, seen = traced_channel()
    resp = channel.send(CommandApdu(0x80, 0x14, 0x03, 0xE8, ne=256))
    assert resp.sw == SW.OK
    assert resp.data == pattern(1000)
    # 256 + 6100, 256 + 6100, 256 + 61E8, 232 + 9000
    assert len(seen) == 4
    assert [sw_of(a) for _, a in seen] == [0x6100, 0x6100, 0x61E8, 0x9000]
    assert all(c[:4] == h("00C00000") for c, _ in seen[1:])
    assert seen[-1][0] == h("00C00000 E8")


def test_channel_wrong_le_resend() -> None:
    channel, seen = traced_channel()
    resp = channel.send(CommandApdu(0x80, 0x12, 0, 0, ne=5))
    assert resp.sw == SW.OK
    assert len(resp.data) == 24
    assert len(seen) == 2
    assert seen[0] == (h(READ + "05"), h("6C18"))
    assert seen[1][0] == h(READ + "18")


def test_channel_case1_with_data() -> None:
    channel, seen = traced_channel()
    data = channel.transceive(CommandApdu(0x80, 0x12, 0, 0))
    assert len(data) == 24
    assert len(seen) == 2
    assert seen[0][1] == h("6118")


# --- extended APDUs ----------------------------------------------------------


def test_extended_echo_one_exchange() -> None:
    payload = bytes((i * 7) & 0xFF for i in range(1000))
    cmd = CommandApdu(0x80, 0x18, 0x00, 0x00, payload, 65536)
    assert cmd.extended
    card = fresh_card()
    assert card.process(cmd.to_bytes()) == payload + OK
    channel, seen = traced_channel()
    resp = channel.send(cmd)
    assert resp.sw == SW.OK
    assert resp.data == payload
    assert len(seen) == 1


def test_extended_le_shorter_than_data() -> None:
    payload = bytes(600)
    channel, seen = traced_channel()
    resp = channel.send(CommandApdu(0x80, 0x18, 0x00, 0x00, payload, 300))
    assert resp.sw == SW.OK
    assert resp.data == payload
    assert len(seen[0][1]) == 302  # the first 300 bytes, then 61XX


# --- power -------------------------------------------------------------------


def is_powered(card: Card) -> bool:
    return card.powered


def test_unpowered_card_raises() -> None:
    card = Card()
    card.install(TALLY_AID, TallyApplet)
    assert not is_powered(card)
    with pytest.raises(TransportError):
        card.process(select_apdu(TALLY_AID))
    assert card.power_on() == DEFAULT_ATR
    assert is_powered(card)
    assert card.process(select_apdu(TALLY_AID)) == OK
    card.power_off()
    with pytest.raises(TransportError):
        card.process(h(READ + "00"))


def test_reset_clears_selection_keeps_data() -> None:
    card = fresh_card()
    assert card.process(add_apdu(42)) == OK
    assert card.reset() == DEFAULT_ATR
    assert card.powered is True
    assert card.selected is None
    assert card.process(h(READ + "00")) == h("6D00")
    assert card.process(select_apdu(TALLY_AID)) == OK
    assert read_total(card) == (42, 1)


def test_reset_drops_leftover() -> None:
    card = fresh_card()
    assert card.process(h("8014012C 00"))[-2:] == h("612C")
    card.reset()
    assert card.process(h("00C00000 2C")) == h("6985")


def test_power_cycle_keeps_data() -> None:
    card = fresh_card()
    assert card.process(add_apdu(8)) == OK
    card.power_off()
    assert card.power_on() == DEFAULT_ATR
    assert card.process(select_apdu(TALLY_AID)) == OK
    assert read_total(card) == (8, 1)


def test_simulator_reset() -> None:
    sim = Simulator()
    sim.install(TALLY_AID, TallyApplet)
    sim.select(TALLY_AID)
    assert sim.transmit(add_apdu(3)).sw == SW.OK
    assert sim.reset() == DEFAULT_ATR
    assert sim.transmit(READ + "00").sw == SW.INS_NOT_SUPPORTED
    sim.select(TALLY_AID)
    assert sim.transmit(READ + "00").data[:4] == h("00000003")


def test_two_cards_share_nothing() -> None:
    a = fresh_card()
    b = fresh_card()
    assert a.process(add_apdu(11)) == OK
    assert read_total(b) == (0, 0)
    assert b.store.snapshot() == {}
    assert read_total(a) == (11, 1)
    assert a.selected is not b.selected


# --- robustness --------------------------------------------------------------

tally_like = st.builds(
    lambda cla, ins, tail: bytes((cla, ins)) + tail,
    st.sampled_from([0x00, 0x80]),
    st.sampled_from([0x10, 0x12, 0x14, 0x16, 0x18, 0xA4, 0xC0]),
    st.binary(max_size=62),
)


@given(commands=st.lists(st.binary(max_size=64) | tally_like, min_size=1, max_size=8))
def test_random_bytes_never_break_the_card(commands: list[bytes]) -> None:
    card = fresh_card()
    for raw in commands:
        before = card.store.snapshot()
        answer = card.process(raw)
        assert len(answer) >= 2
        sw = sw_of(answer)
        if sw != SW.OK and sw >> 8 != 0x61:
            assert card.store.snapshot() == before, (raw.hex(), answer.hex())
            assert len(answer) == 2
        assert not card.store.in_transaction
