"""What every purse command shares: state, transient session, keys and checks.

:class:`PurseCore` holds the purse's state and transient session (PIN
verified, online-session nonce), opens issuer-signed objects with a status
word for each failure, and makes the spending checks that PAY and TRANSFER
OUT share. The commands themselves are in :mod:`card_os.purse.applet` and
:mod:`card_os.purse.transfer`.
"""

from __future__ import annotations

from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric import ec

from apdu.command import CommandApdu
from apdu.purse import (
    TERMINAL_ID_LEN,
    CardCertificate,
    Credential,
    ExceptionEntry,
    HistoryKind,
    HistoryRecord,
    IssuerUpdate,
    LifeCycle,
    LockOrder,
)
from apdu.signed import (
    BadSignature,
    Envelope,
    MalformedObject,
    ObjectKind,
    UnknownKey,
    WrongKind,
    open_envelope,
    private_key_from_scalar,
    public_key_from_bytes,
)
from apdu.status import SW, CardError
from card_os.applet import Applet, AppletContext
from card_os.purse.state import PurseState

NO_COUNTERPARTY = bytes(TERMINAL_ID_LEN)
# the issuer-signed objects a card accepts, each naming the card it is for
Addressed = TypeVar("Addressed", CardCertificate, Credential, IssuerUpdate, LockOrder)


class PurseCore(Applet):
    def __init__(self, ctx: AppletContext) -> None:
        super().__init__(ctx)
        self.state = PurseState(ctx.store)
        self._pin_verified = False
        self._session_nonce: bytes | None = None
        self._key_cache: tuple[bytes, ec.EllipticCurvePrivateKey] | None = None
        self._issuer_cache: tuple[bytes, dict[bytes, ec.EllipticCurvePublicKey]] | None = None

    # transient state -------------------------------------------------------------
    def reset(self) -> None:
        self._pin_verified = False
        self._session_nonce = None

    def deselect(self) -> None:
        self.reset()

    # helpers -------------------------------------------------------------------
    def _card_key(self) -> ec.EllipticCurvePrivateKey:
        raw = self.state.card_key
        cached = self._key_cache
        if cached is None or cached[0] != raw:
            cached = (raw, private_key_from_scalar(raw))
            self._key_cache = cached
        return cached[1]

    def _issuer_keys(self) -> dict[bytes, ec.EllipticCurvePublicKey]:
        raw = self.state.issuer_keys_raw
        cached = self._issuer_cache
        if cached is None or cached[0] != raw:
            keys = {
                kid: public_key_from_bytes(pub) for kid, pub in self.state.issuer_keys().items()
            }
            cached = (raw, keys)
            self._issuer_cache = cached
        return cached[1]

    def _open(self, raw: bytes, kind: ObjectKind) -> Envelope:
        """Open an issuer-signed object; each failure has its own status word."""
        try:
            return open_envelope(raw, kind, self._issuer_keys())
        except WrongKind:
            raise CardError(SW.WRONG_OBJECT_KIND) from None
        except UnknownKey:
            raise CardError(SW.UNKNOWN_KEY) from None
        except BadSignature:
            raise CardError(SW.BAD_SIGNATURE) from None
        except MalformedObject:
            raise CardError(SW.WRONG_DATA, "not a signed object") from None

    def _open_body(self, raw: bytes, kind: ObjectKind, body: type[Addressed]) -> Addressed:
        """Open an issuer-signed object and decode its body (``6A80`` if it is not one)."""
        env = self._open(raw, kind)
        try:
            return body.decode(env.body)
        except MalformedObject:
            raise CardError(SW.WRONG_DATA) from None

    def _open_for_me(self, raw: bytes, kind: ObjectKind, body: type[Addressed]) -> Addressed:
        """Open an issuer-signed object, decode its body, and check it names this card."""
        decoded = self._open_body(raw, kind, body)
        if decoded.card_id != self.state.card_id:
            raise CardError(SW.WRONG_CARD)
        return decoded

    def _require(self, *states: LifeCycle) -> LifeCycle:
        current = self.state.life_cycle
        if current not in states:
            if current is LifeCycle.LOCKED:
                raise CardError(SW.CARD_LOCKED)
            raise CardError(SW.CARD_NOT_ACTIVE)
        return current

    def _record(self, atc: int, kind: HistoryKind, amount: int, time: int, other: bytes) -> None:
        self.state.record(HistoryRecord(atc, kind, amount, self.state.balance, time, other))

    @staticmethod
    def _no_p1p2(cmd: CommandApdu) -> None:
        if cmd.p1 or cmd.p2:
            raise CardError(SW.INCORRECT_P1P2)

    # shared checks -------------------------------------------------------------------
    def _check_spend(self, amount: int, terminal_time: int) -> bool:
        """Everything that must hold for value to leave the card offline (PAY, TRANSFER
        OUT), in the order of their status words; True when the amount needs the PIN."""
        s = self.state
        cred = s.credential()
        if cred is None:
            raise CardError(SW.NO_CREDENTIAL)
        if terminal_time + cred.tolerance < s.time_mark:
            raise CardError(SW.CLOCK_ROLLBACK)
        if terminal_time >= cred.expires_at:
            raise CardError(SW.CREDENTIAL_EXPIRED)
        if amount == 0:
            raise CardError(SW.WRONG_DATA, "amount must not be zero")
        if amount > cred.per_payment_limit:
            raise CardError(SW.OVER_PAYMENT_LIMIT)
        needs_pin = amount > cred.no_pin_limit
        if needs_pin and not self._pin_verified:
            raise CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "this amount needs the PIN")
        if amount > s.balance:
            raise CardError(SW.INSUFFICIENT_FUNDS)
        if s.offline_spent + amount > cred.offline_cap:
            raise CardError(SW.OFFLINE_CAP_EXCEEDED)
        return needs_pin

    def _spend(self, amount: int, terminal_time: int, needs_pin: bool) -> None:
        """Debit an amount that passed :meth:`_check_spend`."""
        s = self.state
        s.balance = s.balance - amount
        s.offline_spent = s.offline_spent + amount
        s.raise_time_mark(terminal_time)
        if needs_pin:
            self._pin_verified = False  # one VERIFY, one payment above the no-PIN limit

    def _abort_transfer(self) -> None:
        """A transfer left waiting goes to the exception log, for the issuer to settle.

        Called by every command that starts something new with value (BEGIN
        ONLINE, PAY, TRANSFER OUT, TRANSFER IN ask), inside its transaction: if
        that command is refused, the transfer stays pending.
        """
        pending = self.state.pending_transfer
        if pending is not None:
            self.state.log_exception(ExceptionEntry(pending.role, pending.transfer))
            self.state.pending_transfer = None
