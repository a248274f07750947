"""Command and response APDU codec: ISO 7816-4 cases, short and extended."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apdu.command import Case, CommandApdu
from apdu.errors import MalformedApdu
from apdu.response import ResponseApdu
from apdu.status import SW, CardError


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# --- known vectors -----------------------------------------------------------

AID = h("A0000000041010")
DATA_256 = bytes(range(256))
DATA_300 = bytes(i & 0xFF for i in range(300))

# raw bytes, case, data, ne, extended
VECTORS: list[tuple[str, bytes, Case, bytes, int | None, bool]] = [
    ("1", h("80120000"), Case.ONE, b"", None, False),
    ("2S Le 10", h("00B0000010"), Case.TWO, b"", 0x10, False),
    ("2S Le 01", h("00B0000001"), Case.TWO, b"", 1, False),
    ("2S Le 00", h("00B0000000"), Case.TWO, b"", 256, False),
    ("3S", h("801000000400000005"), Case.THREE, h("00000005"), None, False),
    ("3S Lc FF", h("80180000FF") + bytes(255), Case.THREE, bytes(255), None, False),
    ("4S Le 00", h("00A4040007") + AID + h("00"), Case.FOUR, AID, 256, False),
    ("4S Le 05", h("00A4040007") + AID + h("05"), Case.FOUR, AID, 5, False),
    ("2E 0000", h("00B0000000" + "0000"), Case.TWO, b"", 65536, True),
    ("2E 0100", h("00B0000000" + "0100"), Case.TWO, b"", 256, True),
    ("2E 1234", h("00B0000000" + "1234"), Case.TWO, b"", 0x1234, True),
    ("2E 0001", h("00B0000000" + "0001"), Case.TWO, b"", 1, True),
    ("3E small", h("8018000000" + "0002" + "AABB"), Case.THREE, h("AABB"), None, True),
    ("3E 256", h("8018000000" + "0100") + DATA_256, Case.THREE, DATA_256, None, True),
    (
        "4E 0000",
        h("8018000000" + "012C") + DATA_300 + h("0000"),
        Case.FOUR,
        DATA_300,
        65536,
        True,
    ),
    ("4E small", h("8018000000" + "0002" + "AABB" + "0100"), Case.FOUR, h("AABB"), 256, True),
    ("4E Le 0005", h("8018000000" + "0001" + "CC" + "0005"), Case.FOUR, h("CC"), 5, True),
]


@pytest.mark.parametrize(
    ("raw", "case", "data", "ne", "extended"),
    [v[1:] for v in VECTORS],
    ids=[v[0] for v in VECTORS],
)
def test_known_vectors(raw: bytes, case: Case, data: bytes, ne: int | None, extended: bool) -> None:
    cmd = CommandApdu.parse(raw)
    assert cmd.header == raw[:4]
    assert (cmd.cla, cmd.ins, cmd.p1, cmd.p2) == tuple(raw[:4])
    assert cmd.case is case
    assert cmd.data == data
    assert cmd.ne == ne
    assert cmd.extended is extended
    assert cmd.to_bytes() == raw
    assert bytes(cmd) == raw


def test_building_short_commands() -> None:
    assert CommandApdu(0x80, 0x12, 0x00, 0x00).to_bytes() == h("80120000")
    assert CommandApdu(0x00, 0xB0, 0x00, 0x00, ne=256).to_bytes() == h("00B0000000")
    assert CommandApdu(0x00, 0xB0, 0x00, 0x00, ne=7).to_bytes() == h("00B0000007")
    assert CommandApdu(0x80, 0x10, 0, 0, h("00000005")).to_bytes() == h("801000000400000005")
    assert CommandApdu(0x00, 0xA4, 4, 0, AID, 256).to_bytes() == h("00A4040007") + AID + b"\0"


def test_building_forces_extended_when_needed() -> None:
    big_ne = CommandApdu(0x00, 0xB0, 0x00, 0x00, ne=257)
    assert big_ne.extended is True
    assert big_ne.to_bytes() == h("00B00000000101")
    max_ne = CommandApdu(0x00, 0xB0, 0x00, 0x00, ne=65536)
    assert max_ne.extended is True
    assert max_ne.to_bytes() == h("00B00000000000")
    big_data = CommandApdu(0x80, 0x18, 0x00, 0x00, DATA_256)
    assert big_data.extended is True
    assert big_data.to_bytes() == h("80180000000100") + DATA_256
    both = CommandApdu(0x80, 0x18, 0x00, 0x00, DATA_300, 300)
    assert both.to_bytes() == h("8018000000012C") + DATA_300 + h("012C")
    # limits that still fit the short form stay short
    assert CommandApdu(0x80, 0x18, 0, 0, bytes(255), 256).extended is False


def test_with_ne_keeps_everything_else() -> None:
    cmd = CommandApdu(0x80, 0x18, 0x01, 0x02, b"\x01\x02", 5, extended=True)
    again = cmd.with_ne(9)
    assert again == CommandApdu(0x80, 0x18, 0x01, 0x02, b"\x01\x02", 9, extended=True)
    assert cmd.with_ne(None).case is Case.THREE


# --- constructor errors ------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"cla": 256},
        {"cla": -1},
        {"ins": 256},
        {"p1": 0x100},
        {"p2": -5},
        {"ne": 0},
        {"ne": 65537},
        {"ne": -1},
        {"data": bytes(65536)},
    ],
    ids=["cla256", "cla-1", "ins256", "p1-256", "p2-neg", "ne0", "ne65537", "ne-1", "data65536"],
)
def test_constructor_rejects(fields: dict[str, object]) -> None:
    base: dict[str, object] = {"cla": 0x80, "ins": 0x10, "p1": 0, "p2": 0}
    base.update(fields)
    with pytest.raises(MalformedApdu):
        CommandApdu(**base)  # type: ignore[arg-type]


def test_constructor_accepts_limits() -> None:
    assert CommandApdu(0xFF, 0xFF, 0xFF, 0xFF, bytes(65535), 65536).extended is True
    assert CommandApdu(0, 0, 0, 0, ne=1).ne == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        h("80"),
        h("801000"),
        h("80100000" + "04" + "000000"),  # Lc 4, 3 bytes follow
        h("80100000" + "04" + "0000000005" + "00"),  # Lc 4, 6 bytes follow
        h("80100000" + "00" + "00"),  # truncated extended length
        h("80100000" + "00" + "0000" + "AA"),  # extended Lc of zero
        h("80100000" + "00" + "0003" + "AABB"),  # extended Lc 3, 2 bytes follow
        h("80100000" + "00" + "0001" + "AA" + "00"),  # extended Le truncated
    ],
)
def test_parse_rejects_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedApdu):
        CommandApdu.parse(raw)


# --- properties --------------------------------------------------------------

byte = st.integers(min_value=0, max_value=0xFF)


@given(
    header=st.tuples(byte, byte, byte, byte),
    data=st.binary(max_size=300),
    ne=st.none() | st.integers(min_value=1, max_value=65536),
    extended=st.booleans(),
)
def test_roundtrip_from_fields(
    header: tuple[int, int, int, int], data: bytes, ne: int | None, extended: bool
) -> None:
    cla, ins, p1, p2 = header
    cmd = CommandApdu(cla, ins, p1, p2, data, ne, extended)
    raw = cmd.to_bytes()
    back = CommandApdu.parse(raw)
    assert (back.cla, back.ins, back.p1, back.p2) == header
    assert back.data == data
    assert back.ne == ne
    assert back.case is cmd.case
    needs_extended = len(data) > 255 or (ne is not None and ne > 256)
    if needs_extended:
        assert cmd.extended is True
    if cmd.case is Case.ONE:
        # case 1 has no length field: the two encodings are the same 4 bytes
        assert raw == bytes((cla, ins, p1, p2))
        assert back.extended is False
    else:
        assert back.extended is (extended or needs_extended)
        assert back == cmd
    assert back.to_bytes() == raw


@st.composite
def plausible_apdus(draw: st.DrawFn) -> bytes:
    """A header, then length fields that often (not always) agree with the data."""
    header = draw(st.binary(min_size=4, max_size=4))
    shape = draw(st.sampled_from(["none", "le", "short", "extended", "ext_le"]))
    if shape == "none":
        return header
    if shape == "le":
        return header + draw(st.binary(min_size=1, max_size=1))
    if shape == "ext_le":
        return header + b"\x00" + draw(st.binary(min_size=0, max_size=3))
    data = draw(st.binary(max_size=300 if shape == "extended" else 255))
    delta = draw(st.sampled_from([0, 0, 0, 1, -1, 2, -2]))
    lc = max(0, len(data) + delta)
    if shape == "short":
        field = bytes([lc & 0xFF])
        trailer = draw(st.sampled_from([b"", b"", b"\x00", b"\x05", b"\x00\x00"]))
    else:
        field = b"\x00" + (lc & 0xFFFF).to_bytes(2, "big")
        trailer = draw(st.sampled_from([b"", b"", b"\x00\x00", b"\x01\x00", b"\x05"]))
    return header + field + data + trailer


@given(raw=st.binary(max_size=300) | plausible_apdus())
def test_parse_is_exact_or_malformed(raw: bytes) -> None:
    try:
        cmd = CommandApdu.parse(raw)
    except MalformedApdu:
        return
    assert cmd.to_bytes() == raw
    assert CommandApdu.parse(cmd.to_bytes()) == cmd


# --- response APDUs ----------------------------------------------------------


@given(data=st.binary(max_size=300), sw=st.integers(min_value=0, max_value=0xFFFF))
def test_response_roundtrip(data: bytes, sw: int) -> None:
    resp = ResponseApdu(data, sw)
    raw = resp.to_bytes()
    assert len(raw) == len(data) + 2
    assert raw[-2:] == bytes((sw >> 8, sw & 0xFF))
    back = ResponseApdu.parse(raw)
    assert back == resp
    assert (back.sw1, back.sw2) == (sw >> 8, sw & 0xFF)
    assert bytes(back) == raw


@given(raw=st.binary(min_size=2, max_size=300))
def test_response_parse_then_encode(raw: bytes) -> None:
    assert ResponseApdu.parse(raw).to_bytes() == raw


@pytest.mark.parametrize("raw", [b"", b"\x90"])
def test_response_too_short(raw: bytes) -> None:
    with pytest.raises(MalformedApdu):
        ResponseApdu.parse(raw)


def test_response_fields() -> None:
    resp = ResponseApdu.parse(h("0102039000"))
    assert resp.data == h("010203")
    assert resp.sw == SW.OK
    assert resp.ok is True
    assert resp.check() == h("010203")
    assert resp.meaning == "success"


@pytest.mark.parametrize("sw", [0x6A82, 0x6112, 0x6C05, 0x63C2, 0x9001, 0x1234])
def test_response_check_raises_card_error(sw: int) -> None:
    resp = ResponseApdu(b"\x01", sw)
    assert resp.ok is False
    with pytest.raises(CardError) as info:
        resp.check()
    assert info.value.sw == sw
    assert str(info.value).startswith(f"{sw:04X}")
