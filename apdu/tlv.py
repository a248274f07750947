"""BER-TLV (ISO/IEC 7816-4, ISO/IEC 8825-1) as used on smart cards, declared with ``construct``.

Rules, DER-like, so that ``encode(parse(x)) == x`` for every accepted ``x``:

* **Tag**: 1 to 4 bytes. In the first byte b8-b7 are the class, b6 (0x20) the constructed
  bit, b5-b1 the tag number; b5-b1 == 0x1F means the number continues in following bytes,
  each with b8 = 1 if another byte follows. A tag is represented as the ``int`` of its raw
  bytes, big-endian (``0x84``, ``0x9F36``, ``0x7F21``). As EMV and card practice do,
  two-byte tags with a small number (``9F02``, ``DF01``, ``BF0C``) are accepted and kept
  as they are. Rejected: a second byte 0x80 (leading zero bits), more than 4 bytes, and
  0x00 / 0xFF as first byte.
* **Length**: short form 0x00-0x7F, or 0x81-0x84 followed by 1-4 bytes, always the
  shortest form. Rejected: the indefinite form 0x80, 0x85 and above, and non-minimal long
  forms (``81 05``, ``82 00 80``).
* **Value**: a constructed tag (b6 of its first byte set) holds a sequence of child TLVs,
  parsed recursively up to :data:`MAX_DEPTH` levels; a primitive tag holds raw bytes.
* **Padding**: ISO 7816-4 allows 0x00 / 0xFF bytes before, between and after TLVs. They
  cannot be reproduced on encoding, so they are rejected, as is anything left over.

Every failure on bad input raises :class:`~apdu.errors.TlvError`.

The construct declarations can be embedded elsewhere: :data:`BerTag` (tag as ``int``),
:data:`BerLength` (length as ``int``), :data:`TlvStruct` (one TLV frame, parsing to a
``Container(tag=int, value=bytes)``) and :data:`BerTlv` (one whole TLV tree, parsing to and
building from :class:`Tlv`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Final

import construct

from apdu.errors import TlvError

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MAX_TAG_BYTES",
    "BerLength",
    "BerTag",
    "BerTlv",
    "Tlv",
    "TlvStruct",
    "encode_all",
    "find",
    "format_tree",
    "is_constructed",
    "length_bytes",
    "parse_all",
    "parse_one",
    "tag_bytes",
]

MAX_TAG_BYTES: Final = 4
"""Longest tag accepted, in bytes."""

MAX_LENGTH: Final = 0xFFFF_FFFF
"""Longest value that can be encoded (length form 0x84)."""

MAX_DEPTH: Final = 16
"""Deepest TLV accepted: a top-level TLV is at level 1, its children at level 2, ..."""

_CONSTRUCTED_BIT: Final = 0x20
_MORE_NUMBER: Final = 0x1F  # b5-b1 all set: the tag number continues
_MORE_BYTES: Final = 0x80  # b8 of a subsequent tag byte: another byte follows
_INDEFINITE: Final = 0x80
_PADDING: Final = (0x00, 0xFF)


# --------------------------------------------------------------------------- tags and lengths


def _read(stream: IO[bytes], count: int) -> bytes:
    try:
        return stream.read(count)
    except (OSError, ValueError) as exc:  # closed or unreadable stream
        raise TlvError(f"cannot read the stream: {exc}") from exc


def _read_tag(stream: IO[bytes]) -> int:
    first = _read(stream, 1)
    if not first:
        raise TlvError("missing tag: no bytes left")
    tag = first[0]
    if tag in _PADDING:
        raise TlvError(f"0x{tag:02X} is not a tag (padding between TLVs is not accepted)")
    if tag & _MORE_NUMBER != _MORE_NUMBER:
        return tag
    for index in range(1, MAX_TAG_BYTES):
        more = _read(stream, 1)
        if not more:
            raise TlvError(f"tag {tag:X}... runs past the end of the data")
        byte = more[0]
        if index == 1 and byte == _MORE_BYTES:
            raise TlvError(f"non-minimal tag {tag:X}80...: leading zero bits in the tag number")
        tag = tag << 8 | byte
        if not byte & _MORE_BYTES:
            return tag
    raise TlvError(f"tag {tag:X}... is longer than {MAX_TAG_BYTES} bytes")


_TAG_CACHE: dict[int, bytes] = {}
_TAG_CACHE_SIZE: Final = 4096  # distinct valid tags remembered (cards use a few dozen)


def tag_bytes(tag: int) -> bytes:
    """The bytes of ``tag``; :class:`TlvError` unless it is a tag as this module reads them."""
    if isinstance(tag, bool) or not isinstance(tag, int):
        raise TlvError(f"a tag is an int, not {type(tag).__name__}")
    cached = _TAG_CACHE.get(tag)
    if cached is not None:
        return cached
    raw = _checked_tag_bytes(tag)
    if len(_TAG_CACHE) < _TAG_CACHE_SIZE:
        _TAG_CACHE[int(tag)] = raw
    return raw


def _checked_tag_bytes(tag: int) -> bytes:
    if not 0 < tag < 1 << (8 * MAX_TAG_BYTES):
        raise TlvError(f"tag {tag:#x} is out of range (1 to {MAX_TAG_BYTES} bytes)")
    raw = tag.to_bytes((tag.bit_length() + 7) // 8, "big")
    stream = io.BytesIO(raw)
    try:
        _read_tag(stream)
    except TlvError as exc:
        raise TlvError(f"0x{tag:X} is not a valid tag: {exc}") from None
    if stream.tell() != len(raw):
        raise TlvError(f"0x{tag:X} is not a valid tag: it ends after {stream.tell()} byte(s)")
    return raw


def is_constructed(tag: int) -> bool:
    """Whether ``tag`` (validated) is constructed: b6 of its first byte is set."""
    return bool(tag_bytes(tag)[0] & _CONSTRUCTED_BIT)


def _read_length(stream: IO[bytes]) -> int:
    first = _read(stream, 1)
    if not first:
        raise TlvError("missing length: no bytes left")
    form = first[0]
    if form < _INDEFINITE:
        return form
    if form == _INDEFINITE:
        raise TlvError("indefinite length (0x80) is not accepted")
    count = form & 0x7F
    if count > 4:
        raise TlvError(f"length form 0x{form:02X} is not accepted (0x81 to 0x84 only)")
    raw = _read(stream, count)
    if len(raw) != count:
        raise TlvError(
            f"length 0x{form:02X} announces {count} length byte(s), only {len(raw)} left"
        )
    length = int.from_bytes(raw, "big")
    if raw[0] == 0 or length < _INDEFINITE:
        raise TlvError(
            f"non-minimal length {first.hex().upper()}{raw.hex().upper()}: "
            f"{length} is encoded as {length_bytes(length).hex().upper()}"
        )
    return length


def length_bytes(length: int) -> bytes:
    """The shortest encoding of ``length``; :class:`TlvError` if negative or above 4 bytes."""
    if isinstance(length, bool) or not isinstance(length, int):
        raise TlvError(f"a length is an int, not {type(length).__name__}")
    if length < 0 or length > MAX_LENGTH:
        raise TlvError(f"length {length} is out of range (0 to {MAX_LENGTH})")
    if length < _INDEFINITE:
        return bytes([length])
    count = (length.bit_length() + 7) // 8
    return bytes([_INDEFINITE | count]) + length.to_bytes(count, "big")


# --------------------------------------------------------------------------- construct fields


class _BerTagField(construct.Construct):  # type: ignore[misc]
    """A BER-TLV tag of 1 to 4 bytes, as the ``int`` of its bytes."""

    def _parse(self, stream: IO[bytes], context: Any, path: str) -> int:
        return _read_tag(stream)

    def _build(self, obj: object, stream: IO[bytes], context: Any, path: str) -> int:
        if isinstance(obj, bool) or not isinstance(obj, int):
            raise TlvError(f"a tag is an int, not {type(obj).__name__}")
        stream.write(tag_bytes(obj))
        return obj

    def _sizeof(self, context: Any, path: str) -> int:
        raise construct.SizeofError("a BER-TLV tag has a variable size", path=path)


class _BerLengthField(construct.Construct):  # type: ignore[misc]
    """A BER-TLV length, short or long form (0x81-0x84), minimal."""

    def _parse(self, stream: IO[bytes], context: Any, path: str) -> int:
        return _read_length(stream)

    def _build(self, obj: object, stream: IO[bytes], context: Any, path: str) -> int:
        if isinstance(obj, bool) or not isinstance(obj, int):
            raise TlvError(f"a length is an int, not {type(obj).__name__}")
        stream.write(length_bytes(obj))
        return obj

    def _sizeof(self, context: Any, path: str) -> int:
        raise construct.SizeofError("a BER-TLV length has a variable size", path=path)


BerTag: Final = _BerTagField()
"""Construct field for a tag (``int``)."""

BerLength: Final = _BerLengthField()
"""Construct field for a length (``int``)."""

TlvStruct: Final[Any] = construct.Struct(
    "tag" / BerTag,
    "value" / construct.Prefixed(BerLength, construct.GreedyBytes),
)
"""Construct for one TLV frame: ``Container(tag=int, value=bytes)``; the value is not parsed."""


# --------------------------------------------------------------------------- data model


def _height(value: tuple[Tlv, ...]) -> int:
    """Levels in a constructed TLV with these (already valid, so bounded) children."""
    return 1 + max(
        (_height(c.value) if isinstance(c.value, tuple) else 1 for c in value), default=0
    )


@dataclass(frozen=True, slots=True)
class Tlv:
    """One TLV: ``value`` is the tuple of children for a constructed tag, raw bytes otherwise.

    The tag must be valid, the value of the matching kind and the tree at most
    :data:`MAX_DEPTH` levels deep, else :class:`TlvError`; so every ``Tlv`` encodes to bytes
    that parse back to it (as long as no value exceeds :data:`MAX_LENGTH`).
    """

    tag: int
    value: bytes | tuple[Tlv, ...]

    def __post_init__(self) -> None:
        constructed = is_constructed(self.tag)  # validates the tag
        given: object = self.value
        value = given
        if constructed:
            if isinstance(value, list):
                value = tuple(value)
            if not isinstance(value, tuple):
                kind = type(value).__name__
                raise TlvError(
                    f"{self._name} is constructed: its value is a tuple of Tlv, not {kind}"
                )
            for child in value:
                if not isinstance(child, Tlv):
                    kind = type(child).__name__
                    raise TlvError(f"{self._name}: a child is a {kind}, not a Tlv")
            if _height(value) > MAX_DEPTH:
                raise TlvError(f"{self._name}: TLVs nested deeper than {MAX_DEPTH} levels")
        else:
            if isinstance(value, bytearray | memoryview):
                value = bytes(value)
            if not isinstance(value, bytes):
                raise TlvError(
                    f"{self._name} is primitive: its value is bytes, not {type(value).__name__}"
                )
        if value is not given:
            object.__setattr__(self, "value", value)

    @property
    def _name(self) -> str:
        return f"tag {self.tag:X}"

    @classmethod
    def primitive(cls, tag: int, value: bytes) -> Tlv:
        """A primitive TLV; :class:`TlvError` if ``tag`` is constructed."""
        return cls(tag, value)

    @classmethod
    def of(cls, tag: int, *children: Tlv) -> Tlv:
        """A constructed TLV holding ``children``; :class:`TlvError` if ``tag`` is primitive."""
        return cls(tag, children)

    @property
    def constructed(self) -> bool:
        return isinstance(self.value, tuple)

    @property
    def children(self) -> tuple[Tlv, ...]:
        """The children of a constructed TLV; :class:`TlvError` for a primitive one."""
        if not isinstance(self.value, tuple):
            raise TlvError(f"tag {self.tag:X} is primitive: it has no children")
        return self.value

    @property
    def value_bytes(self) -> bytes:
        """The value field as encoded: raw bytes, or the encoding of the children."""
        if isinstance(self.value, tuple):
            return encode_all(self.value)
        return self.value

    def encode(self) -> bytes:
        """The full encoding: tag, minimal length, value.

        The bytes :data:`BerTlv` builds, assembled directly: the same helpers write
        the tag and the length, without construct's generic machinery per call.
        """
        value = self.value_bytes
        return tag_bytes(self.tag) + length_bytes(len(value)) + value

    def __bytes__(self) -> bytes:
        return self.encode()

    def __repr__(self) -> str:
        return f"Tlv(0x{self.tag:X}, {self.value!r})"


# --------------------------------------------------------------------------- parsing


def _describe_truncation(stream: IO[bytes], start: int) -> str:
    """Why the frame at ``start`` failed, given its header parsed but its value did not."""
    try:
        stream.seek(start)
        tag = _read_tag(stream)
        length = _read_length(stream)
        value_at = stream.tell()
        left = stream.seek(0, io.SEEK_END) - value_at
    except (OSError, ValueError):
        return "value runs past the end of the data"
    return f"value of tag {tag:X} has length {length}, only {left} byte(s) left"


def _parse_tlv(stream: IO[bytes], level: int) -> Tlv:
    start = stream.tell()
    if level > MAX_DEPTH:
        raise TlvError(f"offset {start}: TLVs nested deeper than {MAX_DEPTH} levels")
    # the frame TlvStruct declares, read with its own field readers (construct's
    # generic Struct/Prefixed parse cost more than the whole rest of a TLV)
    try:
        tag = _read_tag(stream)
        length = _read_length(stream)
    except TlvError as exc:
        raise TlvError(f"offset {start}: {exc}") from None
    value = _read(stream, length)
    if len(value) != length:
        raise TlvError(f"offset {start}: {_describe_truncation(stream, start)}")
    if not is_constructed(tag):
        return Tlv(tag, value)
    value_at = stream.tell() - len(value)
    return Tlv(tag, _parse_sequence(value, value_at, level + 1))


class _Offset(io.BytesIO):
    """Bytes read at some offset of a larger input, reporting absolute positions."""

    def __init__(self, data: bytes, offset: int) -> None:
        super().__init__(data)
        self._offset = offset

    def tell(self) -> int:
        return super().tell() + self._offset

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos -= self._offset
        return super().seek(pos, whence) + self._offset


def _parse_sequence(data: bytes, offset: int, level: int) -> tuple[Tlv, ...]:
    stream = _Offset(data, offset)
    end = offset + len(data)
    items: list[Tlv] = []
    while stream.tell() < end:
        items.append(_parse_tlv(stream, level))
    return tuple(items)


class _BerTlvField(construct.Construct):  # type: ignore[misc]
    """One whole TLV tree, as a :class:`Tlv`."""

    def _parse(self, stream: IO[bytes], context: Any, path: str) -> Tlv:
        return _parse_tlv(stream, 1)

    def _build(self, obj: object, stream: IO[bytes], context: Any, path: str) -> Tlv:
        if not isinstance(obj, Tlv):
            raise TlvError(f"expected a Tlv, not {type(obj).__name__}")
        TlvStruct._build({"tag": obj.tag, "value": obj.value_bytes}, stream, context, path)
        return obj

    def _sizeof(self, context: Any, path: str) -> int:
        raise construct.SizeofError("a BER-TLV has a variable size", path=path)


BerTlv: Final = _BerTlvField()
"""Construct for one whole TLV tree, parsing to and building from :class:`Tlv`."""


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TlvError(f"BER-TLV input is bytes, not {type(data).__name__}")


def parse_all(data: bytes) -> tuple[Tlv, ...]:
    """All of ``data`` as a sequence of TLVs (empty for empty input)."""
    return _parse_sequence(_as_bytes(data), 0, 1)


def parse_one(data: bytes) -> Tlv:
    """``data`` as exactly one TLV, with nothing before or after it."""
    raw = _as_bytes(data)
    if not raw:
        raise TlvError("no TLV: the input is empty")
    stream = io.BytesIO(raw)
    item = _parse_tlv(stream, 1)
    if stream.tell() != len(raw):
        left = len(raw) - stream.tell()
        raise TlvError(f"offset {stream.tell()}: {left} byte(s) after the TLV")
    return item


def encode_all(items: Iterable[Tlv]) -> bytes:
    """The concatenated encodings of ``items``."""
    parts: list[bytes] = []
    for item in items:
        if not isinstance(item, Tlv):
            raise TlvError(f"expected a Tlv, not {type(item).__name__}")
        parts.append(item.encode())
    return b"".join(parts)


# --------------------------------------------------------------------------- queries


def _each(items: Tlv | Iterable[Tlv]) -> Iterable[Tlv]:
    return (items,) if isinstance(items, Tlv) else items


def _walk(items: Iterable[Tlv]) -> Iterator[Tlv]:
    for item in items:
        yield item
        if isinstance(item.value, tuple):
            yield from _walk(item.value)


def find(items: Tlv | Iterable[Tlv], tag: int) -> Tlv | None:
    """The first TLV with ``tag``, depth first (a TLV before its children), or ``None``."""
    return next((item for item in _walk(_each(items)) if item.tag == tag), None)


def format_tree(items: Tlv | Iterable[Tlv], indent: str = "") -> str:
    """A readable dump, one TLV per line, children indented by two spaces::

    6F (15 bytes)
      84 (7 bytes): A0 00 00 00 03 10 10
      A5 (4 bytes)
        50 (2 bytes): 41 42  "AB"
    """
    lines: list[str] = []
    for item in _each(items):
        data = item.value_bytes
        size = f"{len(data)} byte{'' if len(data) == 1 else 's'}"
        head = f"{indent}{tag_bytes(item.tag).hex().upper()} ({size})"
        if isinstance(item.value, tuple):
            lines.append(head)
            if item.value:
                lines.append(format_tree(item.value, indent + "  "))
        elif not data:
            lines.append(head)
        else:
            text = data.hex(" ").upper()
            if all(0x20 <= b < 0x7F for b in data):
                text += f'  "{data.decode("ascii")}"'
            lines.append(f"{head}: {text}")
    return "\n".join(lines)
