"""ISO 7816-4 status words and the one exception that carries them.

Fixed status words are members of :class:`SW`. Three families carry a count
in their low bits: ``61XX`` (XX more bytes available), ``6CXX`` (wrong Le,
XX is the exact length) and ``63CX`` (verification failed, X tries left).
Their members hold the family base (``0x6100``, ``0x6C00``, ``0x63C0``);
:func:`SW.family` maps any concrete word onto its member, and the helper
constructors build concrete words.
"""

from __future__ import annotations

from enum import IntEnum


class SW(IntEnum):
    """Status words (SW1 SW2) with their ISO 7816-4 meanings."""

    OK = 0x9000
    BYTES_REMAINING = 0x6100
    WRONG_LE = 0x6C00
    VERIFY_FAILED = 0x63C0
    MEMORY_FAILURE = 0x6581
    WRONG_LENGTH = 0x6700
    SECURITY_STATUS_NOT_SATISFIED = 0x6982
    AUTH_METHOD_BLOCKED = 0x6983
    REFERENCE_DATA_NOT_USABLE = 0x6984
    CONDITIONS_NOT_SATISFIED = 0x6985
    COMMAND_NOT_ALLOWED = 0x6986
    WRONG_DATA = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    RECORD_NOT_FOUND = 0x6A83
    NOT_ENOUGH_MEMORY = 0x6A84
    INCORRECT_P1P2 = 0x6A86
    REFERENCED_DATA_NOT_FOUND = 0x6A88
    WRONG_P1P2 = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    UNKNOWN_ERROR = 0x6F00
    # the purse application's own refusals (proprietary range 9Cxx)
    NO_CREDENTIAL = 0x9C01
    CREDENTIAL_EXPIRED = 0x9C02
    CLOCK_ROLLBACK = 0x9C03
    INSUFFICIENT_FUNDS = 0x9C04
    OVER_PAYMENT_LIMIT = 0x9C05
    OFFLINE_CAP_EXCEEDED = 0x9C06
    CARD_LOCKED = 0x9C07
    CARD_NOT_ACTIVE = 0x9C08
    BAD_SIGNATURE = 0x9C10
    UNKNOWN_KEY = 0x9C11
    WRONG_CARD = 0x9C12
    STALE_SESSION = 0x9C13
    WRONG_OBJECT_KIND = 0x9C14
    OVER_MAX_BALANCE = 0x9C15
    STALE_OBJECT = 0x9C16
    WRONG_SEQUENCE = 0x9C17
    NO_TRANSFER_PENDING = 0x9C18
    EXCEPTION_LOG_FULL = 0x9C09
    CURRENCY_MISMATCH = 0x9C0A

    @classmethod
    def family(cls, code: int) -> SW | None:
        """The member naming ``code``, or its family for 61XX, 6CXX, 63CX."""
        if code in _BY_VALUE:
            return _BY_VALUE[code]
        if code & 0xFF00 in (0x6100, 0x6C00):
            return cls(code & 0xFF00)
        if code & 0xFFF0 == 0x63C0:
            return cls.VERIFY_FAILED
        return None

    @staticmethod
    def bytes_remaining(n: int) -> int:
        """``61XX``: ``n`` more bytes (256 or more is sent as ``00``)."""
        return 0x6100 | (n if n < 256 else 0)

    @staticmethod
    def wrong_le(exact: int) -> int:
        """``6CXX``: resend with Le = ``exact`` (256 is sent as ``00``)."""
        return 0x6C00 | (exact & 0xFF)

    @staticmethod
    def tries_left(n: int) -> int:
        """``63CX``: verification failed, ``n`` tries left (0..15)."""
        return 0x63C0 | min(n, 15)


_MEANINGS: dict[SW, str] = {
    SW.OK: "success",
    SW.BYTES_REMAINING: "more response bytes available (GET RESPONSE)",
    SW.WRONG_LE: "wrong Le; resend with the exact length",
    SW.VERIFY_FAILED: "verification failed",
    SW.MEMORY_FAILURE: "memory failure",
    SW.WRONG_LENGTH: "wrong length",
    SW.SECURITY_STATUS_NOT_SATISFIED: "security status not satisfied",
    SW.AUTH_METHOD_BLOCKED: "authentication method blocked",
    SW.REFERENCE_DATA_NOT_USABLE: "reference data not usable",
    SW.CONDITIONS_NOT_SATISFIED: "conditions of use not satisfied",
    SW.COMMAND_NOT_ALLOWED: "command not allowed (no current EF)",
    SW.WRONG_DATA: "incorrect parameters in the data field",
    SW.FUNCTION_NOT_SUPPORTED: "function not supported",
    SW.FILE_NOT_FOUND: "file or application not found",
    SW.RECORD_NOT_FOUND: "record not found",
    SW.NOT_ENOUGH_MEMORY: "not enough memory space",
    SW.INCORRECT_P1P2: "incorrect parameters P1-P2",
    SW.REFERENCED_DATA_NOT_FOUND: "referenced data not found",
    SW.WRONG_P1P2: "wrong parameters P1-P2",
    SW.INS_NOT_SUPPORTED: "instruction code not supported",
    SW.CLA_NOT_SUPPORTED: "class not supported",
    SW.UNKNOWN_ERROR: "no precise diagnosis",
    SW.NO_CREDENTIAL: "purse: no credential (renew online)",
    SW.CREDENTIAL_EXPIRED: "purse: credential expired (renew online)",
    SW.CLOCK_ROLLBACK: "purse: terminal time is before the card's time mark",
    SW.INSUFFICIENT_FUNDS: "purse: amount exceeds the balance",
    SW.OVER_PAYMENT_LIMIT: "purse: amount exceeds the per-payment limit",
    SW.OFFLINE_CAP_EXCEEDED: "purse: offline cap left is exceeded (renew online)",
    SW.CARD_LOCKED: "purse: card is locked",
    SW.CARD_NOT_ACTIVE: "purse: card is not active (blank, personalising or terminated)",
    SW.BAD_SIGNATURE: "purse: signature does not verify",
    SW.UNKNOWN_KEY: "purse: signed with a key the card does not hold",
    SW.WRONG_CARD: "purse: object is for another card",
    SW.STALE_SESSION: "purse: no matching online session (nonce)",
    SW.WRONG_OBJECT_KIND: "purse: signed object of the wrong kind",
    SW.OVER_MAX_BALANCE: "purse: load would exceed the maximum balance",
    SW.STALE_OBJECT: "purse: object is older than one already applied",
    SW.WRONG_SEQUENCE: "purse: transfer message for another transfer (sequence numbers)",
    SW.NO_TRANSFER_PENDING: "purse: no transfer in progress for this message",
    SW.EXCEPTION_LOG_FULL: "purse: exception log full (go online before transferring)",
    SW.CURRENCY_MISMATCH: "purse: the other card holds another currency",
}

_BY_VALUE: dict[int, SW] = {int(m): m for m in SW}


def describe(code: int) -> str:
    """A readable meaning for any status word, e.g. ``'63C2'`` -> 2 tries left."""
    fam = SW.family(code)
    if fam is None:
        return "unknown status word"
    low = code & 0xFF
    if fam is SW.BYTES_REMAINING:
        return f"{low or 256} more response bytes available (GET RESPONSE)"
    if fam is SW.WRONG_LE:
        return f"wrong Le; exact length is {low or 256}"
    if fam is SW.VERIFY_FAILED:
        return f"verification failed, {code & 0x0F} tries left"
    return _MEANINGS[fam]


class CardError(Exception):
    """An error answered with a status word.

    The card raises it in a handler; the card runtime turns it into the
    response. Terminals raise it when a card answers with an error.
    """

    def __init__(self, sw: int, message: str | None = None) -> None:
        self.sw = sw
        self.family = SW.family(sw)
        self.detail = message
        text = f"{sw:04X}: {message or describe(sw)}"
        super().__init__(text)
