"""Every declared structure round-trips, and the signed envelope refuses every forgery.

The strategies are derived from each structure's construct declaration, so a
new structure in :data:`apdu.purse.MESSAGES` is covered without a new test,
and a structure missing from ``MESSAGES`` (or using a field type these tests do
not know) fails here.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import construct as cs
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import apdu.purse
from apdu.purse import MESSAGES, Message
from apdu.signed import (
    KEY_ID_LEN,
    PUBLIC_KEY_LEN,
    SIGNATURE_LEN,
    BadSignature,
    MalformedObject,
    ObjectKind,
    SignedObjectError,
    UnknownKey,
    WrongKind,
    generate_key,
    key_id_of,
    open_envelope,
    parse_envelope,
    public_bytes,
    public_key_from_bytes,
    seal,
)

GREEDY_MAX = 200
_INT_FIELDS: dict[int, int] = {
    id(cs.Int8ub): 1,
    id(cs.Int16ub): 2,
    id(cs.Int32ub): 4,
    id(cs.Int64ub): 8,
}
_PREFIXES: dict[int, int] = {id(cs.Int8ub): 1, id(cs.Int16ub): 2}

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# field kinds, read off the construct declaration ----------------------------------------------
@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    kind: str  # "bytes" (fixed size), "int" (unsigned, big-endian), "prefixed" (length + bytes)
    size: int  # bytes; for "prefixed", the size of the length prefix

    @property
    def limit(self) -> int:
        """One past the largest integer (or the longest prefixed value)."""
        return 1 << (8 * self.size)


def field_of(sub: Any) -> Field:
    assert isinstance(sub, cs.Renamed), f"unnamed subcon {sub!r}"
    inner = sub.subcon
    if isinstance(inner, cs.Bytes) and isinstance(inner.length, int):
        return Field(sub.name, "bytes", inner.length)
    if id(inner) in _INT_FIELDS:
        return Field(sub.name, "int", _INT_FIELDS[id(inner)])
    if (
        isinstance(inner, cs.Prefixed)
        and inner.subcon is cs.GreedyBytes
        and id(inner.lengthfield) in _PREFIXES
    ):
        return Field(sub.name, "prefixed", _PREFIXES[id(inner.lengthfield)])
    raise AssertionError(f"{sub.name}: no strategy for {inner!r}; teach tests/test_messages.py")


def fields_of(cls: type[Message]) -> list[Field]:
    return [field_of(sub) for sub in cls.STRUCT.subcons]


def value_strategy(f: Field) -> st.SearchStrategy[Any]:
    if f.kind == "bytes":
        return st.binary(min_size=f.size, max_size=f.size)
    if f.kind == "int":
        return st.integers(0, f.limit - 1)
    return st.binary(max_size=min(GREEDY_MAX, f.limit - 1))


def raw_strategy(f: Field) -> st.SearchStrategy[bytes]:
    """Bytes that the field parses, built without the structure's own encoder."""
    if f.kind in ("bytes", "int"):
        return st.binary(min_size=f.size, max_size=f.size)
    return st.binary(max_size=min(GREEDY_MAX, f.limit - 1)).map(
        lambda v: len(v).to_bytes(f.size, "big") + v
    )


def instances(cls: type[Message]) -> st.SearchStrategy[Message]:
    return st.builds(
        lambda values: cls(**values),
        st.fixed_dictionaries({f.name: value_strategy(f) for f in fields_of(cls)}),
    )


def encodings(cls: type[Message]) -> st.SearchStrategy[bytes]:
    return st.tuples(*(raw_strategy(f) for f in fields_of(cls))).map(b"".join)


def any_message() -> st.SearchStrategy[Message]:
    return st.sampled_from(MESSAGES).flatmap(instances)


def any_encoding() -> st.SearchStrategy[tuple[type[Message], bytes]]:
    return st.sampled_from(MESSAGES).flatmap(lambda c: st.tuples(st.just(c), encodings(c)))


# the registry ----------------------------------------------------------------------------------
def test_messages_lists_every_structure_once() -> None:
    declared = {
        obj
        for _, obj in inspect.getmembers(apdu.purse, inspect.isclass)
        if issubclass(obj, Message) and obj is not Message
    }

    def all_subclasses(cls: type[Message]) -> set[type[Message]]:
        subs = set(cls.__subclasses__())
        for sub in list(subs):
            subs |= all_subclasses(sub)
        return subs

    # ``dataclass(slots=True)`` replaces each class, so the subclass registry also holds
    # the originals: compare by name.
    defined_in_purse = {
        c.__qualname__ for c in all_subclasses(Message) if c.__module__ == "apdu.purse"
    }
    assert {c.__qualname__ for c in declared} == defined_in_purse
    assert set(MESSAGES) == declared
    assert len(MESSAGES) == len(set(MESSAGES))


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
def test_declaration_matches_dataclass(cls: type[Message]) -> None:
    is_dataclass = dataclasses.is_dataclass(cls)
    assert is_dataclass
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    assert [f.name for f in fields_of(cls)] == names  # declared once: same fields, same order


# round trips -----------------------------------------------------------------------------------
@SETTINGS
@given(any_message())
def test_decode_encode_is_identity(msg: Message) -> None:
    raw = msg.encode()
    assert isinstance(raw, bytes)
    assert type(msg).decode(raw) == msg


@SETTINGS
@given(any_encoding())
def test_encode_decode_is_identity(case: tuple[type[Message], bytes]) -> None:
    cls, raw = case
    msg = cls.decode(raw)
    assert type(msg) is cls
    assert msg.encode() == raw


@SETTINGS
@given(any_encoding(), st.integers(0, 255))
def test_one_byte_too_many_is_malformed(case: tuple[type[Message], bytes], extra: int) -> None:
    cls, raw = case
    with pytest.raises(MalformedObject):
        cls.decode(raw + bytes([extra]))


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
@SETTINGS
@given(data=st.data())
def test_one_byte_too_few_is_malformed(cls: type[Message], data: st.DataObject) -> None:
    raw = data.draw(encodings(cls), label="encoding")
    with pytest.raises(MalformedObject):
        cls.decode(raw[:-1])


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
@SETTINGS
@given(data=st.data())
def test_any_truncation_is_malformed(cls: type[Message], data: st.DataObject) -> None:
    raw = data.draw(encodings(cls), label="encoding")
    for cut in range(len(raw)):
        with pytest.raises(MalformedObject):
            cls.decode(raw[:cut])


@SETTINGS
@given(any_message(), st.data())
def test_out_of_range_ints_do_not_encode(msg: Message, data: st.DataObject) -> None:
    ints = [f for f in fields_of(type(msg)) if f.kind == "int"]
    if not ints:
        return
    f = data.draw(st.sampled_from(ints), label="field")
    bad = data.draw(
        st.one_of(
            st.integers(max_value=-1),
            st.integers(min_value=f.limit),
            st.sampled_from([-1, f.limit, 1 << 32, 1 << 64]),
        ),
        label="value",
    )
    with pytest.raises(MalformedObject):
        dataclasses.replace(msg, **{f.name: bad}).encode()  # type: ignore[type-var]


@SETTINGS
@given(any_message(), st.data())
def test_too_long_prefixed_values_do_not_encode(msg: Message, data: st.DataObject) -> None:
    prefixed = [f for f in fields_of(type(msg)) if f.kind == "prefixed"]
    if not prefixed:
        return
    f = data.draw(st.sampled_from(prefixed), label="field")
    if f.limit > 4096:  # a uint16 prefix: drawing 64 KiB is pointless, build it
        bad = bytes(f.limit + data.draw(st.integers(0, 10), label="over"))
    else:
        bad = data.draw(st.binary(min_size=f.limit, max_size=f.limit + 10), label="value")
    with pytest.raises(MalformedObject):
        dataclasses.replace(msg, **{f.name: bad}).encode()  # type: ignore[type-var]


def _name(cls: type[Message]) -> str:
    return cls.__name__


def _has_fixed_bytes(cls: type[Message]) -> bool:
    return any(f.kind == "bytes" for f in fields_of(cls))


@pytest.mark.parametrize("cls", [c for c in MESSAGES if _has_fixed_bytes(c)], ids=_name)
@SETTINGS
@given(data=st.data())
def test_wrong_length_bytes_do_not_encode(cls: type[Message], data: st.DataObject) -> None:
    msg = data.draw(instances(cls), label="message")
    f = data.draw(st.sampled_from([f for f in fields_of(cls) if f.kind == "bytes"]), label="field")
    bad = data.draw(st.binary(max_size=f.size + 5).filter(lambda b: len(b) != f.size), label="bad")
    with pytest.raises(MalformedObject):
        dataclasses.replace(msg, **{f.name: bad}).encode()  # type: ignore[type-var]


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
def test_decode_refuses_empty_input(cls: type[Message]) -> None:
    with pytest.raises(MalformedObject):
        cls.decode(b"")


# the envelope ----------------------------------------------------------------------------------
_KEYS = [generate_key() for _ in range(2)]
_PUBLIC = [public_bytes(k.public_key()) for k in _KEYS]
_KEY_IDS = [key_id_of(p) for p in _PUBLIC]


def _keyring(index: int = 0) -> dict[bytes, ec.EllipticCurvePublicKey]:
    return {_KEY_IDS[index]: _KEYS[index].public_key()}


_SEALED: dict[ObjectKind, bytes] = {
    kind: seal(kind, _KEY_IDS[0], b"body of kind %d" % kind, _KEYS[0]) for kind in ObjectKind
}
# offsets in the envelope
_KIND_AT = 3
_KEY_ID_AT = 4
_BODY_AT = _KEY_ID_AT + KEY_ID_LEN + 2


@SETTINGS
@given(st.sampled_from(ObjectKind), st.binary(max_size=GREEDY_MAX), st.sampled_from([0, 1]))
def test_seal_open_round_trip(kind: ObjectKind, body: bytes, which: int) -> None:
    raw = seal(kind, _KEY_IDS[which], body, _KEYS[which])
    assert len(raw) == _BODY_AT + len(body) + SIGNATURE_LEN
    env = open_envelope(raw, kind, {**_keyring(0), **_keyring(1)})
    assert (env.kind, env.key_id, env.body) == (kind, _KEY_IDS[which], body)
    assert env.to_bytes() == raw
    assert parse_envelope(raw) == env


@pytest.mark.parametrize("kind", list(ObjectKind), ids=lambda k: k.name)
def test_open_with_the_wrong_kind(kind: ObjectKind) -> None:
    raw = _SEALED[kind]
    for other in ObjectKind:
        if other is not kind:
            with pytest.raises(WrongKind):
                open_envelope(raw, other, _keyring())


@pytest.mark.parametrize("kind", list(ObjectKind), ids=lambda k: k.name)
def test_open_with_an_unknown_key(kind: ObjectKind) -> None:
    raw = _SEALED[kind]
    with pytest.raises(UnknownKey):
        open_envelope(raw, kind, _keyring(1))
    with pytest.raises(UnknownKey):
        open_envelope(raw, kind, {})


def test_a_key_id_naming_another_key_does_not_verify() -> None:
    raw = seal(ObjectKind.CREDENTIAL, _KEY_IDS[1], b"x", _KEYS[0])  # signed by 0, claims 1
    with pytest.raises(BadSignature):
        open_envelope(raw, ObjectKind.CREDENTIAL, {**_keyring(0), **_keyring(1)})


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(ObjectKind), st.data())
def test_any_flipped_byte_is_refused(kind: ObjectKind, data: st.DataObject) -> None:
    raw = _SEALED[kind]
    at = data.draw(st.integers(0, len(raw) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="xor")
    forged = raw[:at] + bytes([raw[at] ^ mask]) + raw[at + 1 :]
    with pytest.raises(SignedObjectError):
        open_envelope(forged, kind, _keyring())


@pytest.mark.parametrize("kind", list(ObjectKind), ids=lambda k: k.name)
def test_a_relabelled_kind_fails_the_signature(kind: ObjectKind) -> None:
    raw = _SEALED[kind]
    for other in ObjectKind:
        if other is kind:
            continue
        relabelled = raw[:_KIND_AT] + bytes([other]) + raw[_KIND_AT + 1 :]
        assert parse_envelope(relabelled).kind == other
        with pytest.raises(BadSignature):
            open_envelope(relabelled, other, _keyring())
        with pytest.raises(WrongKind):
            open_envelope(relabelled, kind, _keyring())


@SETTINGS
@given(st.sampled_from(ObjectKind), st.data())
def test_truncated_envelopes_are_malformed(kind: ObjectKind, data: st.DataObject) -> None:
    raw = _SEALED[kind]
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    with pytest.raises(MalformedObject):
        parse_envelope(raw[:cut])
    with pytest.raises(MalformedObject):
        open_envelope(raw[:cut], kind, _keyring())


@SETTINGS
@given(st.sampled_from(ObjectKind), st.binary(min_size=1, max_size=70))
def test_extended_envelopes_are_malformed(kind: ObjectKind, extra: bytes) -> None:
    raw = _SEALED[kind]
    with pytest.raises(MalformedObject):
        open_envelope(raw + extra, kind, _keyring())


def test_wrong_magic_or_version_is_malformed() -> None:
    raw = _SEALED[ObjectKind.RECEIPT]
    for forged in (b"XS" + raw[2:], raw[:2] + b"\x02" + raw[3:]):
        with pytest.raises(MalformedObject):
            parse_envelope(forged)


def test_seal_refuses_a_key_id_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="8 bytes"):
        seal(ObjectKind.RECEIPT, b"short", b"", _KEYS[0])


# keys -----------------------------------------------------------------------------------------
def test_public_key_round_trip() -> None:
    for key, pub in zip(_KEYS, _PUBLIC, strict=True):
        assert len(pub) == PUBLIC_KEY_LEN
        assert public_bytes(public_key_from_bytes(pub)) == pub
        assert public_key_from_bytes(pub) == key.public_key()


@SETTINGS
@given(st.integers(0, 1), st.integers(33, PUBLIC_KEY_LEN - 1), st.integers(1, 255))
def test_off_curve_points_are_refused(which: int, at: int, mask: int) -> None:
    pub = _PUBLIC[which]
    forged = pub[:at] + bytes([pub[at] ^ mask]) + pub[at + 1 :]  # Y changed, X kept
    with pytest.raises(MalformedObject):
        public_key_from_bytes(forged)


@SETTINGS
@given(st.binary(min_size=PUBLIC_KEY_LEN - 1, max_size=PUBLIC_KEY_LEN - 1))
def test_random_points_are_refused(coords: bytes) -> None:
    # a random (X, Y) is on the curve with negligible probability
    with pytest.raises(MalformedObject):
        public_key_from_bytes(b"\x04" + coords)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x04",
        _PUBLIC[0][:-1],
        _PUBLIC[0] + b"\x00",
        b"\x04" + bytes(PUBLIC_KEY_LEN - 1),  # the point at infinity's coordinates
        b"\x05" + _PUBLIC[0][1:],
        bytes([0x02 | (_PUBLIC[0][-1] & 1)]) + _PUBLIC[0][1:33],  # compressed form
    ],
    ids=["empty", "tag-only", "short", "long", "zeros", "bad-tag", "compressed"],
)
def test_public_key_from_bytes_refuses_bad_encodings(raw: bytes) -> None:
    with pytest.raises(MalformedObject):
        public_key_from_bytes(raw)


def test_key_id_is_eight_bytes_and_differs_between_keys() -> None:
    more = [public_bytes(generate_key().public_key()) for _ in range(6)]
    ids = [key_id_of(p) for p in [*_PUBLIC, *more]]
    assert all(len(i) == KEY_ID_LEN for i in ids)
    assert len(set(ids)) == len(ids)
    assert key_id_of(_PUBLIC[0]) == key_id_of(bytes(_PUBLIC[0]))  # deterministic
