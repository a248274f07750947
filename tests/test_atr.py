"""Answer-to-Reset: the card's default ATR, build/parse, and broken ATRs."""

from __future__ import annotations

from functools import reduce

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apdu.atr import AtrError, build_atr, parse_atr
from apdu.errors import WireError
from card_os.card import DEFAULT_ATR, HISTORICAL_BYTES, Card


def xor_all(data: bytes) -> int:
    return reduce(lambda a, b: a ^ b, data, 0)


def test_default_atr_parses() -> None:
    atr = parse_atr(DEFAULT_ATR)
    assert atr.raw == DEFAULT_ATR
    assert atr.protocols == (0, 1)
    assert atr.historical == HISTORICAL_BYTES
    assert atr.has_tck is True
    assert DEFAULT_ATR[0] == 0x3B
    assert DEFAULT_ATR[1] & 0x0F == len(HISTORICAL_BYTES)


def test_default_atr_tck() -> None:
    # the XOR of T0 .. TCK is zero
    assert xor_all(DEFAULT_ATR[1:]) == 0
    assert DEFAULT_ATR[-1] == xor_all(DEFAULT_ATR[1:-1])


def test_card_answers_default_atr() -> None:
    card = Card()
    assert card.atr == DEFAULT_ATR
    assert card.power_on() == DEFAULT_ATR


@pytest.mark.parametrize(
    "historical", [b"", b"\x80", HISTORICAL_BYTES, b"\x00" * 15, bytes(range(1, 16))]
)
@pytest.mark.parametrize("protocols", [(0,), (1,), (0, 1)])
def test_build_parse_known(historical: bytes, protocols: tuple[int, ...]) -> None:
    raw = build_atr(historical, protocols)
    atr = parse_atr(raw)
    assert atr.historical == historical
    assert atr.protocols == protocols
    assert atr.raw == raw
    if protocols == (0,):
        assert atr.has_tck is False
        assert len(raw) == 3 + len(historical)  # TS T0 TD1 historical
    else:
        assert atr.has_tck is True
        assert xor_all(raw[1:]) == 0


@given(
    historical=st.binary(max_size=15),
    protocols=st.lists(st.integers(min_value=0, max_value=15), min_size=1, max_size=4).map(tuple),
)
def test_build_parse_roundtrip(historical: bytes, protocols: tuple[int, ...]) -> None:
    raw = build_atr(historical, protocols)
    atr = parse_atr(raw)
    assert atr.historical == historical
    assert atr.protocols == protocols
    assert atr.raw == raw
    if atr.has_tck:
        assert xor_all(raw[1:]) == 0


def test_build_rejects() -> None:
    with pytest.raises(AtrError):
        build_atr(bytes(16))
    with pytest.raises(AtrError):
        build_atr(b"", ())
    with pytest.raises(AtrError):
        build_atr(b"", (16,))


@pytest.mark.parametrize("bit", [0x01, 0x80, 0xFF])
def test_flipped_tck(bit: int) -> None:
    bad = DEFAULT_ATR[:-1] + bytes([DEFAULT_ATR[-1] ^ bit])
    with pytest.raises(AtrError):
        parse_atr(bad)


def test_flipped_historical_byte() -> None:
    bad = bytearray(DEFAULT_ATR)
    bad[5] ^= 0x10
    with pytest.raises(AtrError):
        parse_atr(bytes(bad))


@pytest.mark.parametrize("cut", range(len(DEFAULT_ATR)))
def test_truncated(cut: int) -> None:
    with pytest.raises(AtrError):
        parse_atr(DEFAULT_ATR[:cut])


def test_trailing_byte() -> None:
    with pytest.raises(AtrError):
        parse_atr(DEFAULT_ATR + b"\x00")
    t0_only = build_atr(b"AB", (0,))
    with pytest.raises(AtrError):
        parse_atr(t0_only + b"\x00")


@pytest.mark.parametrize("ts", [0x00, 0x3A, 0x3C, 0xFF])
def test_wrong_ts(ts: int) -> None:
    with pytest.raises(AtrError) as info:
        parse_atr(bytes([ts]) + DEFAULT_ATR[1:])
    assert isinstance(info.value, WireError)
