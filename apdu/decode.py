"""Readable decoding of a card's answers: status word, TLV tree, and our objects.

Used by the APDU tool (``purse apdu``) and by traces: bytes in, lines of text
out. Nothing here raises on odd input; what does not parse is shown as hex.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import fields
from enum import IntEnum
from typing import Any

from apdu.clock import format_instant
from apdu.command import CommandApdu
from apdu.errors import WireError
from apdu.purse import (
    BlocklistHeader,
    CardCertificate,
    Credential,
    HistoryKind,
    HistoryRecord,
    IssuerUpdate,
    LockOrder,
    Message,
    OnlineRequest,
    Receipt,
    Transfer,
)
from apdu.response import ResponseApdu
from apdu.signed import ObjectKind, SignedObjectError, parse_envelope
from apdu.status import describe
from apdu.tlv import Tlv, format_tree, parse_all

BODIES: dict[int, type[Message]] = {
    ObjectKind.CARD_CERTIFICATE: CardCertificate,
    ObjectKind.CREDENTIAL: Credential,
    ObjectKind.ISSUER_UPDATE: IssuerUpdate,
    ObjectKind.RECEIPT: Receipt,
    ObjectKind.LOCK_ORDER: LockOrder,
    ObjectKind.ONLINE_REQUEST: OnlineRequest,
    ObjectKind.BLOCKLIST: BlocklistHeader,
    ObjectKind.TRANSFER_REQUEST: Transfer,
    ObjectKind.TRANSFER_VALUE: Transfer,
    ObjectKind.TRANSFER_ACK: Transfer,
}
_INS_READ_RECORD = 0xB2


def _enum_name(enum: type[IntEnum], value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return f"unknown ({value})"


def _value(value: Any) -> str:
    if isinstance(value, bytes):
        if value and value.isascii() and value.decode("ascii").isprintable():
            return f'{value.hex().upper()} "{value.decode("ascii")}"'
        return value.hex().upper() if value else "(empty)"
    return str(value)


def message_lines(message: Message, indent: str = "  ") -> list[str]:
    lines = []
    for f in fields(message):  # type: ignore[arg-type]
        value = getattr(message, f.name)
        if f.name == "kind" and isinstance(message, HistoryRecord):
            lines.append(f"{indent}kind: {_enum_name(HistoryKind, value)}")
            continue
        if isinstance(value, bytes) and len(value) > 40:
            try:
                nested = signed_lines(value, indent + "  ")
            except SignedObjectError:
                nested = []
            if nested:
                lines.append(f"{indent}{f.name}:")
                lines.extend(nested)
                continue
        if isinstance(value, int) and (f.name.endswith(("_at", "_time")) or f.name == "time"):
            lines.append(f"{indent}{f.name}: {value} ({format_instant(value)})")
            continue
        lines.append(f"{indent}{f.name}: {_value(value)}")
    return lines


def signed_lines(raw: bytes, indent: str = "") -> list[str]:
    """A signed envelope and its decoded body (SignedObjectError if not one)."""
    env = parse_envelope(raw)
    kind = _enum_name(ObjectKind, env.kind)
    lines = [f"{indent}signed {kind} (kind {env.kind:02X}), key/card ID {_value(env.key_id)}"]
    body = BODIES.get(env.kind)
    if body is not None:
        try:
            lines.extend(message_lines(body.decode(env.body), indent + "  "))
        except SignedObjectError:
            lines.append(f"{indent}  body (does not parse): {env.body.hex().upper()}")
    return lines


def response_lines(cmd: CommandApdu | None, resp: ResponseApdu) -> list[str]:
    """Status word meaning, then the data decoded as best it can be."""
    lines = [f"SW {resp.sw:04X}: {describe(resp.sw)}"]
    data = resp.data
    if not data:
        return lines
    lines.append(f"data ({len(data)} bytes): {data.hex(' ').upper()}")
    try:
        lines.extend(signed_lines(data, "  "))
        return lines
    except SignedObjectError:
        pass
    if cmd is not None and cmd.ins == _INS_READ_RECORD:
        try:
            lines.append("  history record")
            lines.extend(message_lines(HistoryRecord.decode(data), "    "))
            return lines
        except SignedObjectError:
            lines.pop()
    try:
        tree = parse_all(data)
    except WireError:
        return lines
    lines.extend("  " + line for line in format_tree(tree).splitlines())
    for item in _primitives(tree):  # a credential or certificate inside GET DATA
        try:
            nested = signed_lines(item.value_bytes, "    ")
        except SignedObjectError:
            continue
        lines.append(f"  {item.tag:X} holds:")
        lines.extend(nested)
    return lines


def _primitives(items: Iterable[Tlv]) -> Iterator[Tlv]:
    for item in items:
        if isinstance(item.value, tuple):
            yield from _primitives(item.value)
        else:
            yield item
