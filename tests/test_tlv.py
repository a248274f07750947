"""Tests for the BER-TLV codec in :mod:`apdu.tlv`."""

from __future__ import annotations

from typing import Any, cast

import construct
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from apdu.errors import TlvError
from apdu.tlv import (
    MAX_DEPTH,
    BerLength,
    BerTag,
    BerTlv,
    Tlv,
    TlvStruct,
    encode_all,
    find,
    format_tree,
    is_constructed,
    length_bytes,
    parse_all,
    parse_one,
    tag_bytes,
)

H = bytes.fromhex

# 6F { 84 A0000000031010, A5 { 50 "AB" } }
FCI_HEX = "6F0F8407A0000000031010A50450024142"
FCI = Tlv.of(
    0x6F,
    Tlv.primitive(0x84, H("A0000000031010")),
    Tlv.of(0xA5, Tlv.primitive(0x50, b"AB")),
)


def nested(levels: int) -> bytes:
    """``levels`` constructed 0xE1 TLVs, each the only child of the previous one."""
    data = b""
    for _ in range(levels):
        data = b"\xe1" + length_bytes(len(data)) + data
    return data


# --------------------------------------------------------------------------- known vectors


@pytest.mark.parametrize(
    ("tlv", "encoded"),
    [
        (Tlv.primitive(0x84, H("A0000000031010")), "8407A0000000031010"),
        (Tlv.primitive(0x9F36, H("001A")), "9F3602001A"),
        (Tlv.primitive(0x5F2D, b"en"), "5F2D02656E"),
        (Tlv.primitive(0x9F8101, b"\x01"), "9F81010101"),
        (Tlv.primitive(0xDF8101, b""), "DF810100"),
        (Tlv.primitive(0x9F818101, b"\x07"), "9F8181010107"),
        (Tlv.primitive(0x9F1F, b""), "9F1F00"),
        (Tlv.of(0x7F21), "7F2100"),
        (Tlv.of(0x7F21, Tlv.primitive(0x9F4D, H("0B0A"))), "7F21059F4D020B0A"),
        (FCI, FCI_HEX),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_known_vectors(tlv: Tlv, encoded: str) -> None:
    assert tlv.encode() == H(encoded)
    assert bytes(tlv) == H(encoded)
    assert parse_one(H(encoded)) == tlv
    assert parse_all(H(encoded)) == (tlv,)


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7F"),
        (128, "8180"),
        (255, "81FF"),
        (256, "820100"),
        (65535, "82FFFF"),
        (65536, "83010000"),
    ],
)
def test_length_forms(length: int, header: str) -> None:
    value = bytes(i % 251 for i in range(length))
    encoded = b"\x84" + H(header) + value
    assert length_bytes(length) == H(header)
    assert BerLength.build(length) == H(header)
    assert BerLength.parse(H(header)) == length
    assert Tlv.primitive(0x84, value).encode() == encoded
    assert parse_one(encoded) == Tlv(0x84, value)


def test_longest_length_forms() -> None:
    assert length_bytes(0x0100_0000) == H("8401000000")
    assert length_bytes(0xFFFF_FFFF) == H("84FFFFFFFF")
    assert BerLength.parse(H("8401000000")) == 0x0100_0000
    with pytest.raises(TlvError, match="out of range"):
        length_bytes(0x1_0000_0000)
    with pytest.raises(TlvError, match="out of range"):
        length_bytes(-1)


def test_parse_nested_structure() -> None:
    fci = parse_one(H(FCI_HEX))
    assert fci.tag == 0x6F
    assert fci.constructed
    df_name, proprietary = fci.children
    assert df_name == Tlv(0x84, H("A0000000031010"))
    assert not df_name.constructed
    assert proprietary.tag == 0xA5
    assert proprietary.children == (Tlv(0x50, b"AB"),)
    assert fci.value_bytes == H(FCI_HEX)[2:]
    assert proprietary.value_bytes == H("50024142")


def test_sequence_of_several() -> None:
    data = H("9F3602001A" + "5F2D02656E" + FCI_HEX + "8400")
    items = parse_all(data)
    assert [t.tag for t in items] == [0x9F36, 0x5F2D, 0x6F, 0x84]
    assert items[3].value == b""
    assert encode_all(items) == data
    assert parse_all(b"") == ()
    assert encode_all([]) == b""


def test_is_constructed() -> None:
    assert is_constructed(0x6F)
    assert is_constructed(0xA5)
    assert is_constructed(0x7F21)
    assert is_constructed(0xBF20)
    assert is_constructed(0x7F4E)
    assert not is_constructed(0x84)
    assert not is_constructed(0x9F36)
    assert not is_constructed(0x5F2D)
    assert not is_constructed(0xDF8101)
    with pytest.raises(TlvError):
        is_constructed(0x1F80)


def test_tag_bytes() -> None:
    assert tag_bytes(0x84) == b"\x84"
    assert tag_bytes(0x9F36) == H("9F36")
    assert tag_bytes(0x9F8101) == H("9F8101")
    assert tag_bytes(0x0A) == b"\x0a"


def test_find() -> None:
    items = (Tlv(0x9F36, b"\x01"), FCI, Tlv(0x50, b"later"))
    assert find(items, 0x9F36) == Tlv(0x9F36, b"\x01")
    assert find(items, 0xA5) == FCI.children[1]
    # depth first: the 50 inside FCI comes before the top-level 50 after it
    assert find(items, 0x50) == Tlv(0x50, b"AB")
    assert find(items, 0x84) == Tlv(0x84, H("A0000000031010"))
    assert find(items, 0x9F37) is None
    assert find(FCI, 0x6F) is FCI
    assert find(FCI, 0x50) == Tlv(0x50, b"AB")
    assert find((), 0x50) is None


def test_format_tree() -> None:
    assert format_tree(FCI) == (
        "6F (15 bytes)\n"
        "  84 (7 bytes): A0 00 00 00 03 10 10\n"
        "  A5 (4 bytes)\n"
        '    50 (2 bytes): 41 42  "AB"'
    )
    assert format_tree([Tlv(0x9F36, b"\x01"), Tlv.of(0x7F21), Tlv(0x84, b"")], "> ") == (
        "> 9F36 (1 byte): 01\n> 7F21 (0 bytes)\n> 84 (0 bytes)"
    )
    assert format_tree(()) == ""


def test_helpers_and_normalisation() -> None:
    assert Tlv.primitive(0x84, b"x") == Tlv(0x84, b"x")
    assert Tlv.of(0x6F, Tlv(0x84, b"x")) == Tlv(0x6F, (Tlv(0x84, b"x"),))
    from_bytearray = Tlv(0x84, cast(Any, bytearray(b"ab")))
    assert type(from_bytearray.value) is bytes
    assert from_bytearray == Tlv(0x84, b"ab")
    assert hash(from_bytearray) == hash(Tlv(0x84, b"ab"))
    from_list = Tlv(0x6F, cast(Any, [Tlv(0x84, b"")]))
    assert from_list.value == (Tlv(0x84, b""),)
    assert repr(Tlv(0x9F36, b"\x01")) == "Tlv(0x9F36, b'\\x01')"
    with pytest.raises(TlvError, match="primitive"):
        _ = Tlv(0x84, b"").children


# --------------------------------------------------------------------------- construct embedding


def test_construct_fields_embed() -> None:
    record = construct.Struct("kind" / construct.Int8ub, "tag" / BerTag, "len" / BerLength)
    built = record.build({"kind": 1, "tag": 0x9F36, "len": 300})
    assert built == H("01" + "9F36" + "82012C")
    parsed = record.parse(built)
    assert (parsed.kind, parsed.tag, parsed.len) == (1, 0x9F36, 300)

    frame = TlvStruct.parse(H("9F3602001A"))
    assert (frame.tag, frame.value) == (0x9F36, H("001A"))
    assert TlvStruct.build({"tag": 0x84, "value": b"\x01\x02"}) == H("84020102")

    message = construct.Struct("cla" / construct.Int8ub, "body" / BerTlv, "sw" / construct.Int16ub)
    raw = H("80" + FCI_HEX + "9000")
    parsed = message.parse(raw)
    assert parsed.body == FCI
    assert parsed.sw == 0x9000
    assert message.build({"cla": 0x80, "body": FCI, "sw": 0x9000}) == raw

    listing = construct.Prefixed(BerLength, construct.GreedyRange(BerTlv))
    assert listing.parse(H("07" + "8400" + "9F3602001A")) == [
        Tlv(0x84, b""),
        Tlv(0x9F36, H("001A")),
    ]


def test_construct_fields_raise_tlv_error() -> None:
    with pytest.raises(TlvError, match="indefinite"):
        BerLength.parse(b"\x80")
    with pytest.raises(TlvError, match="non-minimal tag"):
        BerTag.parse(H("1F8005"))
    with pytest.raises(TlvError, match="not a valid tag"):
        BerTag.build(0x1F8005)
    with pytest.raises(TlvError, match="value of tag 84 has length 3"):
        BerTlv.parse(H("840301"))
    with pytest.raises(TlvError, match="expected a Tlv"):
        BerTlv.build(b"\x84\x00")
    for field in (BerTag, BerLength, BerTlv):
        with pytest.raises(construct.SizeofError):
            field.sizeof()


# --------------------------------------------------------------------------- negative vectors


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("", "empty"),
        ("84", "missing length"),
        ("9F36", "missing length"),
        ("8481", "announces 1 length byte"),
        ("848201", "announces 2 length byte"),
        ("840301", "value of tag 84 has length 3, only 1"),
        ("84820100" + "00" * 255, "length 256, only 255"),
        ("6F80840000", "indefinite"),
        ("8485000000000100", "0x85"),
        ("84FF", "0xFF"),
        ("848105" + "00" * 5, "non-minimal length 8105"),
        ("847F", "length 127, only 0"),
        ("84820080" + "00" * 128, "non-minimal length 820080"),
        ("8483000100" + "00" * 256, "non-minimal length"),
        ("9F800100", "leading zero"),
        ("9F", "runs past the end"),
        ("9F81", "runs past the end"),
        ("9F8181", "runs past the end"),
        ("9F8181810100", "longer than 4 bytes"),
        ("008400", "0x00 is not a tag"),
        ("FF00", "0xFF is not a tag"),
        ("6F038405010203", "offset 2: value of tag 84 has length 5, only 1"),
        ("6F058400", "offset 0: value of tag 6F has length 5, only 2"),
        ("6F02840100", "offset 2: value of tag 84 has length 1, only 0"),
        ("6F0484010000", "offset 5: 0x00 is not a tag"),
        ("E2036F0184", "offset 4: missing length"),
        ("E2046F028481", "offset 4: length 0x81 announces 1"),
    ],
)
def test_bad_input(data: str, reason: str) -> None:
    with pytest.raises(TlvError, match=reason):
        parse_one(H(data))
    if data:
        with pytest.raises(TlvError, match=reason):
            parse_all(H(data))


@pytest.mark.parametrize("data", ["840000", "8400FF", "8400FFFF", "6F028400" + "00"])
def test_trailing_padding(data: str) -> None:
    with pytest.raises(TlvError, match="is not a tag"):
        parse_all(H(data))
    with pytest.raises(TlvError, match="after the TLV"):
        parse_one(H(data))


def test_trailing_bytes_after_parse_one() -> None:
    with pytest.raises(TlvError, match="1 byte"):
        parse_one(H("8401AA90"))
    with pytest.raises(TlvError, match="5 byte"):
        parse_one(H("8400" + "9F3602001A"))
    with pytest.raises(TlvError, match="offset 3: missing length"):
        parse_all(H("8401AA90"))
    assert parse_all(H("8400" + "9F3602001A")) == (Tlv(0x84, b""), Tlv(0x9F36, H("001A")))


def test_too_deep() -> None:
    assert parse_one(nested(MAX_DEPTH)) == parse_all(nested(MAX_DEPTH))[0]
    with pytest.raises(TlvError, match=f"deeper than {MAX_DEPTH}"):
        parse_one(nested(MAX_DEPTH + 1))
    with pytest.raises(TlvError, match=f"deeper than {MAX_DEPTH}"):
        parse_all(nested(MAX_DEPTH + 1))
    # far beyond the limit: still a TlvError, never a RecursionError
    with pytest.raises(TlvError, match="deeper"):
        parse_all(nested(5000))
    # a primitive at the deepest level counts as a level too
    leaf = Tlv(0x84, b"").encode()
    for _ in range(MAX_DEPTH - 1):
        leaf = b"\xe1" + length_bytes(len(leaf)) + leaf
    assert parse_one(leaf).encode() == leaf
    with pytest.raises(TlvError, match="deeper"):
        parse_one(b"\xe1" + length_bytes(len(leaf)) + leaf)


def test_construction_depth_limit() -> None:
    tree = Tlv(0x84, b"")
    for _ in range(MAX_DEPTH - 1):
        tree = Tlv.of(0xE1, tree)
    assert parse_one(tree.encode()) == tree
    with pytest.raises(TlvError, match="deeper"):
        Tlv.of(0xE1, tree)


@pytest.mark.parametrize(
    ("tag", "value", "reason"),
    [
        (0x6F, b"abc", "constructed"),
        (0x7F21, b"", "constructed"),
        (0x84, (Tlv(0x50, b""),), "primitive"),
        (0x84, "text", "primitive"),
        (0x84, None, "primitive"),
        (0x6F, (b"\x84\x00",), "not a Tlv"),
        (0x6F, "text", "constructed"),
        (0x9F80, b"", "leading zero"),
        (0x9F, b"", "runs past the end"),
        (0x9F3600, b"", "ends after 2"),
        (0x9F81818101, b"", "out of range"),
        (0, b"", "out of range"),
        (-0x84, b"", "out of range"),
        (0xFF, b"", "0xFF is not a tag"),
        (True, b"", "int"),
        ("84", b"", "int"),
    ],
)
def test_bad_construction(tag: object, value: object, reason: str) -> None:
    with pytest.raises(TlvError, match=reason):
        Tlv(cast(Any, tag), cast(Any, value))


def test_bad_encode_and_parse_arguments() -> None:
    with pytest.raises(TlvError, match="expected a Tlv"):
        encode_all([Tlv(0x84, b""), cast(Any, b"\x84\x00")])
    with pytest.raises(TlvError, match="not str"):
        parse_all(cast(Any, "8400"))
    assert parse_all(cast(Any, bytearray(H("8400")))) == (Tlv(0x84, b""),)
    assert parse_one(cast(Any, memoryview(H("8400")))) == Tlv(0x84, b"")


# --------------------------------------------------------------------------- properties

_CLASSES = (0x00, 0x40, 0x80, 0xC0)


@st.composite
def tags(draw: st.DrawFn, constructed: bool) -> int:
    """A valid tag of 1 to 3 bytes, constructed or primitive as asked."""
    kind = 0x20 if constructed else 0x00
    size = draw(st.integers(1, 3))
    if size == 1:
        first = draw(st.sampled_from(_CLASSES)) | kind
        return draw(st.integers(0, 0x1E).map(lambda n: first | n).filter(lambda t: t != 0x00))
    # 0xFF is padding, never a first tag byte: no private-class constructed multi-byte tags
    classes: tuple[int, ...] = _CLASSES[:3] if constructed else _CLASSES
    lead: int = draw(st.sampled_from(classes)) | kind | 0x1F
    if size == 2:
        return lead << 8 | draw(st.integers(0x1F, 0x7F))
    return (lead << 8 | draw(st.integers(0x81, 0xFF))) << 8 | draw(st.integers(0x00, 0x7F))


@st.composite
def tlv_trees(draw: st.DrawFn, level: int = 1) -> Tlv:
    if level >= 4 or draw(st.integers(0, 2)) == 0:
        value = draw(st.binary(max_size=300) | st.binary(min_size=120, max_size=300))
        return Tlv.primitive(draw(tags(constructed=False)), value)
    children = draw(st.lists(tlv_trees(level + 1), max_size=3))
    return Tlv.of(draw(tags(constructed=True)), *children)


@given(tags(constructed=False) | tags(constructed=True))
def test_tag_strategy_is_valid(tag: int) -> None:
    raw = tag_bytes(tag)
    assert BerTag.parse(raw) == tag
    assert BerTag.build(tag) == raw


@given(tlv_trees())
def test_tree_round_trip(tree: Tlv) -> None:
    encoded = tree.encode()
    assert parse_one(encoded) == tree
    assert parse_one(encoded).encode() == encoded
    assert parse_all(encoded) == (tree,)
    assert find(tree, tree.tag) is tree


@given(st.lists(tlv_trees(), max_size=4))
def test_sequence_round_trip(items: list[Tlv]) -> None:
    encoded = encode_all(items)
    assert parse_all(encoded) == tuple(items)
    assert encode_all(parse_all(encoded)) == encoded


@given(st.integers(0, 0xFFFF_FFFF))
def test_length_round_trip(length: int) -> None:
    raw = length_bytes(length)
    assert BerLength.parse(raw) == length
    if length < 0x80:
        assert raw == bytes([length])
    else:
        assert raw[0] == 0x80 | (len(raw) - 1)
        assert raw[1] != 0  # minimal: no leading zero byte
        assert int.from_bytes(raw[1:], "big") == length


def check_parse_all(data: bytes) -> None:
    """Either a TlvError, or items that encode back to exactly ``data``.

    Any other exception type propagates and fails the calling test.
    """
    try:
        items = parse_all(data)
    except TlvError:
        return
    assert encode_all(items) == data


@given(st.binary(max_size=600))
@example(H(FCI_HEX))
@example(nested(MAX_DEPTH + 1))
@example(H("848200"))
@example(b"\x9f")
def test_arbitrary_bytes(data: bytes) -> None:
    check_parse_all(data)


@given(
    st.lists(tlv_trees(), min_size=1, max_size=3),
    st.integers(0, 10_000),
    st.sampled_from(["truncate", "replace", "insert", "delete"]),
    st.integers(0, 255),
)
def test_mutated_encodings(items: list[Tlv], where: int, how: str, byte: int) -> None:
    data = bytearray(encode_all(items))
    at = where % len(data)
    if how == "truncate":
        del data[at:]
    elif how == "replace":
        data[at] = byte
    elif how == "insert":
        data.insert(at, byte)
    else:
        del data[at]
    check_parse_all(bytes(data))
