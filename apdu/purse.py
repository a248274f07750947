"""The purse protocol's structures, declared once and shared by card, issuer and terminals.

Every structure is a frozen dataclass with a construct declaration
(``STRUCT``); ``encode()`` builds the exact bytes and ``decode()`` parses
them strictly (whole input, fixed field sizes, the one canonical encoding), raising
:class:`apdu.signed.MalformedObject` on anything else. All integers are
big-endian; times are Unix seconds (uint32); amounts are minor units of the
card's currency (uint32). The byte layouts are listed in ``docs/protocol.md``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any, ClassVar, Self

import construct as cs

from apdu.signed import KEY_ID_LEN, PUBLIC_KEY_LEN, MalformedObject

PURSE_AID = bytes.fromhex("F045505552534501")
CARD_ID_LEN = 8
NONCE_LEN = 16
TERMINAL_ID_LEN = 8
PIN_MIN, PIN_MAX = 4, 12
PIN_TRIES = 3
HISTORY_SLOTS = 10
EXCEPTION_LOG_SLOTS = 8  # aborted transfers a card keeps until an online session
APP_VERSION = 1


class LifeCycle(IntEnum):
    BLANK = 0
    PERSONALISED = 1
    ACTIVE = 2
    LOCKED = 3
    TERMINATED = 4


class HistoryKind(IntEnum):
    PAY = 1
    LOAD = 2
    RENEW = 3
    LOCK = 4
    UNLOCK = 5
    TERMINATE = 6
    UNBLOCK_PIN = 7
    TRANSFER_OUT = 8
    TRANSFER_IN = 9
    RESTORE = 10


class TransferRole(IntEnum):
    """A card's side of a card-to-card transfer."""

    PAYER = 1  # debited and sent value; waits for the payee's acknowledgement
    PAYEE = 2  # asked for value; waits for it


class UpdateAction(IntFlag):
    """What an ISSUER UPDATE does (any subset)."""

    RENEW = 0x01
    LOAD = 0x02
    UNLOCK = 0x04
    UNBLOCK_PIN = 0x08
    TERMINATE = 0x10
    RESTORE = 0x20


class Tag(IntEnum):
    """GET DATA tags (P1 P2 of ``00 CA``); each answer is one BER-TLV of that tag."""

    CARD_ID = 0xDF01
    STATE = 0xDF02
    BALANCE = 0xDF03
    CURRENCY = 0xDF04
    ATC = 0xDF05
    CREDENTIAL = 0xDF06
    CERTIFICATE = 0xDF07
    TIME_MARK = 0xDF08
    OFFLINE_SPENT = 0xDF09
    PIN_TRIES = 0xDF0A
    MAX_BALANCE = 0xDF0B
    ISSUER_KEYS = 0xDF0C
    VERSION = 0xDF0D
    STATUS = 0xBF10  # constructed: card ID, state, balance, currency, ATC, time mark, spent


_U8, _U16, _U32 = cs.Int8ub, cs.Int16ub, cs.Int32ub
_CARD_ID = cs.Bytes(CARD_ID_LEN)
_NONCE = cs.Bytes(NONCE_LEN)


class Message:
    """Base of the declared structures: ``encode``/``decode`` through ``STRUCT``."""

    STRUCT: ClassVar[Any]
    _compiled: ClassVar[Any]
    _fixed: ClassVar[tuple[tuple[str, int], ...]]
    _names: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls._names = tuple(sub.name for sub in cls.STRUCT.subcons)
        cls._compiled = cs.Struct(*cls.STRUCT.subcons, cs.Terminated).compile()
        # construct's compiled Bytes(n) neither pads nor checks: check sizes ourselves
        cls._fixed = tuple(
            (sub.name, sub.subcon.length)
            for sub in cls.STRUCT.subcons
            if isinstance(sub.subcon, cs.Bytes) and isinstance(sub.subcon.length, int)
        )

    def _check_sizes(self) -> None:
        for name, size in self._fixed:
            if len(getattr(self, name)) != size:
                raise MalformedObject(f"{type(self).__name__}.{name} must have {size} bytes")

    def encode(self) -> bytes:
        self._check_sizes()
        values = {name: getattr(self, name) for name in self._names}
        try:
            built: bytes = self._compiled.build(values)
        except (cs.ConstructError, struct.error, ValueError, TypeError, OverflowError) as err:
            raise MalformedObject(f"cannot encode {type(self).__name__}: {err}") from None
        return built

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        try:
            parsed = cls._compiled.parse(raw)
        except (cs.ConstructError, struct.error, ValueError, UnicodeDecodeError) as err:
            raise MalformedObject(f"not a {cls.__name__} ({type(err).__name__})") from None
        message = cls(**{name: parsed[name] for name in cls._names})
        # construct's compiled parsers read short fields without complaint (Bytes(n),
        # Prefixed): accept only the one canonical encoding of what was parsed
        if message.encode() != raw:
            raise MalformedObject(f"not a {cls.__name__} (truncated or not canonical)")
        return message


# signed object bodies ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CardCertificate(Message):
    """Issuer-signed: this card ID owns this public key."""

    card_id: bytes
    public_key: bytes
    issued_at: int
    expires_at: int

    STRUCT: ClassVar[Any] = cs.Struct(
        "card_id" / _CARD_ID,
        "public_key" / cs.Bytes(PUBLIC_KEY_LEN),
        "issued_at" / _U32,
        "expires_at" / _U32,
    )


@dataclass(frozen=True, slots=True)
class Credential(Message):
    """Issuer-signed, time-limited permission to pay offline (the patent's 信用情報)."""

    card_id: bytes
    serial: int
    issued_at: int
    expires_at: int
    offline_cap: int
    per_payment_limit: int
    no_pin_limit: int
    tolerance: int
    card_nonce: bytes

    STRUCT: ClassVar[Any] = cs.Struct(
        "card_id" / _CARD_ID,
        "serial" / _U32,
        "issued_at" / _U32,
        "expires_at" / _U32,
        "offline_cap" / _U32,
        "per_payment_limit" / _U32,
        "no_pin_limit" / _U32,
        "tolerance" / _U32,
        "card_nonce" / _NONCE,
    )


@dataclass(frozen=True, slots=True)
class IssuerUpdate(Message):
    """Issuer-signed changes for one online session, bound to its card nonce."""

    card_id: bytes
    card_nonce: bytes
    issuer_time: int
    actions: int
    load_amount: int
    credential: bytes  # a signed Credential envelope when actions has RENEW, else empty
    restore_amount: int = 0  # with RESTORE: transferred value the issuer found lost
    log_cleared: int = 0  # how many of the oldest exception-log entries the issuer recorded

    STRUCT: ClassVar[Any] = cs.Struct(
        "card_id" / _CARD_ID,
        "card_nonce" / _NONCE,
        "issuer_time" / _U32,
        "actions" / _U8,
        "load_amount" / _U32,
        "credential" / cs.Prefixed(_U16, cs.GreedyBytes),
        "restore_amount" / _U32,
        "log_cleared" / _U8,
    )


@dataclass(frozen=True, slots=True)
class Receipt(Message):
    """Card-signed proof of one offline payment."""

    card_id: bytes
    atc: int
    amount: int
    balance: int
    currency: int
    terminal_id: bytes
    terminal_time: int
    terminal_nonce: bytes

    STRUCT: ClassVar[Any] = cs.Struct(
        "card_id" / _CARD_ID,
        "atc" / _U32,
        "amount" / _U32,
        "balance" / _U32,
        "currency" / _U16,
        "terminal_id" / cs.Bytes(TERMINAL_ID_LEN),
        "terminal_time" / _U32,
        "terminal_nonce" / _NONCE,
    )


@dataclass(frozen=True, slots=True)
class LockOrder(Message):
    """Issuer-signed order for one card to lock itself (a blocklist entry)."""

    card_id: bytes
    issued_at: int
    reason: int
    list_version: int

    STRUCT: ClassVar[Any] = cs.Struct(
        "card_id" / _CARD_ID,
        "issued_at" / _U32,
        "reason" / _U8,
        "list_version" / _U32,
    )


@dataclass(frozen=True, slots=True)
class OnlineRequest(Message):
    """Card-signed state report that opens an online session (BEGIN ONLINE)."""

    card_id: bytes
    card_nonce: bytes
    atc: int
    state: int
    balance: int
    currency: int
    time_mark: int
    offline_spent: int
    credential_serial: int
    exception_log: bytes  # aborted transfers (ExceptionEntry back to back), oldest first
    transfers_out: int  # value sent to other cards, in total over the card's life
    transfers_in: int  # value received from other cards, in total

    STRUCT: ClassVar[Any] = cs.Struct(
        "card_id" / _CARD_ID,
        "card_nonce" / _NONCE,
        "atc" / _U32,
        "state" / _U8,
        "balance" / _U32,
        "currency" / _U16,
        "time_mark" / _U32,
        "offline_spent" / _U32,
        "credential_serial" / _U32,
        "exception_log" / cs.Prefixed(_U16, cs.GreedyBytes),
        "transfers_out" / cs.Int64ub,
        "transfers_in" / cs.Int64ub,
    )


@dataclass(frozen=True, slots=True)
class BlocklistHeader(Message):
    """Issuer-signed header of a blocklist file, full (``base_version`` 0) or delta.

    The entries travel after the header (see :mod:`apdu.blocklist`); ``digest``
    is their SHA-256, so the one signature covers a list of any length.
    """

    version: int
    base_version: int
    issued_at: int
    added: int
    removed: int
    digest: bytes

    STRUCT: ClassVar[Any] = cs.Struct(
        "version" / _U32,
        "base_version" / _U32,
        "issued_at" / _U32,
        "added" / _U32,
        "removed" / _U32,
        "digest" / cs.Bytes(32),
    )


@dataclass(frozen=True, slots=True)
class Transfer(Message):
    """Card-signed body of each transfer message (request, value, acknowledgement).

    The three messages carry the same body under three object kinds, so each is
    bound to both cards, the amount and both sequence numbers (each card's ATC at
    its first step of this transfer): no message fits another transfer.
    """

    from_id: bytes
    to_id: bytes
    amount: int
    currency: int
    from_seq: int
    to_seq: int

    STRUCT: ClassVar[Any] = cs.Struct(
        "from_id" / _CARD_ID,
        "to_id" / _CARD_ID,
        "amount" / _U32,
        "currency" / _U16,
        "from_seq" / _U32,
        "to_seq" / _U32,
    )


TRANSFER_LEN = 30


@dataclass(frozen=True, slots=True)
class PendingTransfer(Message):
    """The card's transfer in progress: its role, the transfer, the other card's key."""

    role: int
    transfer: bytes  # an encoded Transfer
    counterparty_key: bytes

    STRUCT: ClassVar[Any] = cs.Struct(
        "role" / _U8,
        "transfer" / cs.Bytes(TRANSFER_LEN),
        "counterparty_key" / cs.Bytes(PUBLIC_KEY_LEN),
    )


@dataclass(frozen=True, slots=True)
class ExceptionEntry(Message):
    """One aborted transfer in the card's exception log (reported in BEGIN ONLINE)."""

    role: int
    transfer: bytes  # an encoded Transfer

    STRUCT: ClassVar[Any] = cs.Struct("role" / _U8, "transfer" / cs.Bytes(TRANSFER_LEN))


EXCEPTION_ENTRY_LEN = 1 + TRANSFER_LEN


def split_exception_log(raw: bytes) -> list[ExceptionEntry]:
    """The entries of an encoded exception log (entries back to back, oldest first)."""
    if len(raw) % EXCEPTION_ENTRY_LEN:
        raise MalformedObject("an exception log is a whole number of 31-byte entries")
    size = EXCEPTION_ENTRY_LEN
    return [ExceptionEntry.decode(raw[i : i + size]) for i in range(0, len(raw), size)]


# command data fields -----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PersonaliseData(Message):
    """PERSONALISE (``80 E2 00 00``) data: the card's identity and the issuer's key."""

    card_id: bytes
    currency: int
    max_balance: int
    pin: bytes
    issuer_key_id: bytes
    issuer_public_key: bytes

    STRUCT: ClassVar[Any] = cs.Struct(
        "card_id" / _CARD_ID,
        "currency" / _U16,
        "max_balance" / _U32,
        "pin" / cs.Prefixed(_U8, cs.GreedyBytes),
        "issuer_key_id" / cs.Bytes(KEY_ID_LEN),
        "issuer_public_key" / cs.Bytes(PUBLIC_KEY_LEN),
    )


@dataclass(frozen=True, slots=True)
class PayData(Message):
    """PAY (``80 54 00 00``) data: what the terminal asks and what it claims the time is."""

    amount: int
    terminal_time: int
    terminal_id: bytes
    terminal_nonce: bytes

    STRUCT: ClassVar[Any] = cs.Struct(
        "amount" / _U32,
        "terminal_time" / _U32,
        "terminal_id" / cs.Bytes(TERMINAL_ID_LEN),
        "terminal_nonce" / _NONCE,
    )


@dataclass(frozen=True, slots=True)
class ChangePinData(Message):
    """CHANGE PIN (``00 24 00 80``) data: old and new PIN, each length-prefixed."""

    old: bytes
    new: bytes

    STRUCT: ClassVar[Any] = cs.Struct(
        "old" / cs.Prefixed(_U8, cs.GreedyBytes),
        "new" / cs.Prefixed(_U8, cs.GreedyBytes),
    )


@dataclass(frozen=True, slots=True)
class HistoryRecord(Message):
    """One history entry (READ RECORD), 25 bytes."""

    atc: int
    kind: int
    amount: int
    balance: int
    time: int
    counterparty: bytes  # terminal ID for payments, empty (zeros) otherwise

    STRUCT: ClassVar[Any] = cs.Struct(
        "atc" / _U32,
        "kind" / _U8,
        "amount" / _U32,
        "balance" / _U32,
        "time" / _U32,
        "counterparty" / cs.Bytes(TERMINAL_ID_LEN),
    )


@dataclass(frozen=True, slots=True)
class TransferAskData(Message):
    """TRANSFER IN, ask (``80 58 00 00``) data: to the payee, the payer and the amount."""

    amount: int
    from_seq: int  # the payer's ATC + 1, read from the payer
    payer_certificate: bytes  # the payer's issuer-signed certificate

    STRUCT: ClassVar[Any] = cs.Struct(
        "amount" / _U32,
        "from_seq" / _U32,
        "payer_certificate" / cs.Prefixed(_U16, cs.GreedyBytes),
    )


@dataclass(frozen=True, slots=True)
class TransferOutData(Message):
    """TRANSFER OUT (``80 56 00 00``) data: to the payer, the time and the payee's request."""

    terminal_time: int
    payee_certificate: bytes  # the payee's issuer-signed certificate
    request: bytes  # the payee's signed TRANSFER_REQUEST

    STRUCT: ClassVar[Any] = cs.Struct(
        "terminal_time" / _U32,
        "payee_certificate" / cs.Prefixed(_U16, cs.GreedyBytes),
        "request" / cs.Prefixed(_U16, cs.GreedyBytes),
    )


MESSAGES: tuple[type[Message], ...] = (
    CardCertificate,
    Credential,
    IssuerUpdate,
    Receipt,
    LockOrder,
    OnlineRequest,
    BlocklistHeader,
    PersonaliseData,
    PayData,
    ChangePinData,
    HistoryRecord,
    Transfer,
    PendingTransfer,
    ExceptionEntry,
    TransferAskData,
    TransferOutData,
)


def valid_pin(pin: bytes) -> bool:
    return PIN_MIN <= len(pin) <= PIN_MAX and pin.isdigit()


def printable_id(raw: bytes) -> str:
    """A card or terminal ID for people: its text when printable ASCII, else hex."""
    if raw and raw.isascii() and raw.decode("ascii").isprintable():
        return raw.decode("ascii")
    return raw.hex().upper()
