"""The purse applet (AID F0 45 50 55 52 53 45 01).

Commands, bytes and status words are specified in ``docs/protocol.md``. Each
handler checks everything first and writes only once nothing can refuse any
more, inside the transaction the runtime opened; a refusal raises
:class:`CardError`, and the runtime rolls back whatever was staged. The one
write that survives a refusal is the PIN try counter, spent before the PIN is
compared.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from apdu.command import CommandApdu
from apdu.purse import (
    APP_VERSION,
    CARD_ID_LEN,
    HISTORY_SLOTS,
    NONCE_LEN,
    CardCertificate,
    ChangePinData,
    Credential,
    HistoryKind,
    IssuerUpdate,
    LifeCycle,
    LockOrder,
    OnlineRequest,
    PayData,
    PersonaliseData,
    Receipt,
    Tag,
    UpdateAction,
    valid_pin,
)
from apdu.signed import (
    MalformedObject,
    ObjectKind,
    key_id_of,
    private_key_from_scalar,
    public_bytes,
    public_key_from_bytes,
    seal,
)
from apdu.status import SW, CardError
from apdu.tlv import Tlv
from card_os.applet import CLA_ISO, command
from card_os.purse.core import NO_COUNTERPARTY
from card_os.purse.state import PurseState
from card_os.purse.transfer import TransferCommands

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_ALL_ACTIONS = (
    UpdateAction.RENEW
    | UpdateAction.LOAD
    | UpdateAction.UNLOCK
    | UpdateAction.UNBLOCK_PIN
    | UpdateAction.TERMINATE
    | UpdateAction.RESTORE
)


def _u(value: int, size: int) -> bytes:
    return value.to_bytes(size, "big")


# GET DATA of a personalised card: tag -> value (None: absent, answered 6A88)
_DATA_OBJECTS: dict[int, Callable[[PurseState], bytes | None]] = {
    Tag.CARD_ID: lambda s: s.card_id,
    Tag.BALANCE: lambda s: _u(s.balance, 4),
    Tag.CURRENCY: lambda s: _u(s.currency, 2),
    Tag.ATC: lambda s: _u(s.atc, 4),
    Tag.TIME_MARK: lambda s: _u(s.time_mark, 4),
    Tag.OFFLINE_SPENT: lambda s: _u(s.offline_spent, 4),
    Tag.PIN_TRIES: lambda s: _u(s.pin_tries, 1),
    Tag.MAX_BALANCE: lambda s: _u(s.max_balance, 4),
    Tag.ISSUER_KEYS: lambda s: s.issuer_keys_raw,
    Tag.CREDENTIAL: lambda s: s.credential_raw or None,
    Tag.CERTIFICATE: lambda s: s.certificate or None,
}


class PurseApplet(TransferCommands):
    """The purse: every command of docs/protocol.md."""

    # SELECT and GET DATA -------------------------------------------------------------
    def select(self, cmd: CommandApdu) -> bytes:
        info = [
            Tlv.primitive(Tag.VERSION, _u(APP_VERSION, 1)),
            Tlv.primitive(Tag.STATE, _u(self.state.life_cycle, 1)),
        ]
        if self.state.card_id:
            info.insert(0, Tlv.primitive(Tag.CARD_ID, self.state.card_id))
        return Tlv.of(0x6F, Tlv.primitive(0x84, self.ctx.aid), Tlv.of(0xA5, *info)).encode()

    def _data_object(self, tag: int) -> bytes | None:
        s = self.state
        if tag == Tag.STATE:
            return _u(s.life_cycle, 1)
        if tag == Tag.VERSION:
            return _u(APP_VERSION, 1)
        if s.life_cycle is LifeCycle.BLANK:
            return None
        getter = _DATA_OBJECTS.get(tag)
        return getter(s) if getter is not None else None

    @command(0xCA, CLA_ISO)
    def get_data(self, cmd: CommandApdu) -> bytes:
        tag = cmd.p1 << 8 | cmd.p2
        if cmd.data:
            raise CardError(SW.WRONG_LENGTH, "GET DATA takes no data")
        if tag == Tag.STATUS:
            parts = (
                Tag.CARD_ID,
                Tag.STATE,
                Tag.BALANCE,
                Tag.CURRENCY,
                Tag.ATC,
                Tag.TIME_MARK,
                Tag.OFFLINE_SPENT,
            )
            children = []
            for part in parts:
                value = self._data_object(part)
                if value is not None:
                    children.append(Tlv.primitive(part, value))
            return Tlv.of(Tag.STATUS, *children).encode()
        value = self._data_object(tag)
        if value is None:
            raise CardError(SW.REFERENCED_DATA_NOT_FOUND)
        return Tlv.primitive(tag, value).encode()

    # PIN -------------------------------------------------------------------------
    def _check_pin(self, candidate: bytes) -> None:
        """Spend a try first (outside the transaction), then compare."""
        if self.state.pin_tries == 0:
            raise CardError(SW.AUTH_METHOD_BLOCKED)
        left = self.state.spend_pin_try()
        if not hmac.compare_digest(candidate, self.state.pin):
            self._pin_verified = False
            raise CardError(SW.tries_left(left))
        self.state.reset_pin_tries()
        self._pin_verified = True

    def _pin_command(self, cmd: CommandApdu) -> None:
        if cmd.p1 != 0x00 or cmd.p2 != 0x80:
            raise CardError(SW.INCORRECT_P1P2, "PIN reference is P1=00 P2=80")
        if self.state.life_cycle in (LifeCycle.BLANK, LifeCycle.TERMINATED):
            raise CardError(SW.CARD_NOT_ACTIVE)

    @command(0x20, CLA_ISO)
    def verify(self, cmd: CommandApdu) -> bytes:
        self._pin_command(cmd)
        if not cmd.data:  # ISO: an empty VERIFY asks for the status
            if self._pin_verified:
                return b""
            left = self.state.pin_tries
            raise CardError(SW.tries_left(left) if left else SW.AUTH_METHOD_BLOCKED)
        if not valid_pin(cmd.data):
            raise CardError(SW.WRONG_DATA, "a PIN is 4 to 12 ASCII digits")
        self._check_pin(cmd.data)
        return b""

    @command(0x24, CLA_ISO)
    def change_pin(self, cmd: CommandApdu) -> bytes:
        self._pin_command(cmd)
        try:
            change = ChangePinData.decode(cmd.data)
        except MalformedObject:
            raise CardError(SW.WRONG_DATA, "CHANGE PIN data is old and new PIN") from None
        if not valid_pin(change.old) or not valid_pin(change.new):
            raise CardError(SW.WRONG_DATA, "a PIN is 4 to 12 ASCII digits")
        self._check_pin(change.old)
        self.state.pin = change.new
        return b""

    # history ---------------------------------------------------------------------
    @command(0xB2, CLA_ISO)
    def read_record(self, cmd: CommandApdu) -> bytes:
        if cmd.p2 != 0x04:
            raise CardError(SW.INCORRECT_P1P2, "P2 must be 04 (record number in P1)")
        if cmd.data:
            raise CardError(SW.WRONG_LENGTH)
        if self.state.life_cycle is LifeCycle.BLANK:
            raise CardError(SW.CARD_NOT_ACTIVE)
        if not self._pin_verified:
            raise CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "verify the PIN first")
        entry = self.state.history(cmd.p1)
        if entry is None:
            raise CardError(SW.RECORD_NOT_FOUND)
        return entry.encode()

    # personalisation ----------------------------------------------------------------
    @command(0xE2)
    def personalise(self, cmd: CommandApdu) -> bytes:
        if cmd.p2 != 0x00 or cmd.p1 not in (0x00, 0x80):
            raise CardError(SW.INCORRECT_P1P2)
        if cmd.p1 == 0x00:
            return self._personalise_identity(cmd.data)
        return self._personalise_certificate(cmd.data)

    def _personalise_identity(self, data: bytes) -> bytes:
        if self.state.life_cycle is not LifeCycle.BLANK:
            raise CardError(SW.CONDITIONS_NOT_SATISFIED, "personalisation is closed")
        try:
            p = PersonaliseData.decode(data)
            public_key_from_bytes(p.issuer_public_key)  # a point on the curve
        except MalformedObject:
            raise CardError(SW.WRONG_DATA) from None
        if not valid_pin(p.pin) or not 0 < p.currency <= 999 or p.max_balance == 0:
            raise CardError(SW.WRONG_DATA)
        if p.card_id == bytes(CARD_ID_LEN):
            raise CardError(SW.WRONG_DATA, "card ID must not be zero")
        if p.issuer_key_id != key_id_of(p.issuer_public_key):
            raise CardError(SW.WRONG_DATA, "issuer key ID does not belong to the key")
        scalar = int.from_bytes(self.ctx.random(40), "big") % (P256_ORDER - 1) + 1
        key = private_key_from_scalar(scalar.to_bytes(32, "big"))
        self.state.personalise(p.card_id, p.currency, p.max_balance, p.pin, _u(scalar, 32))
        self.state.add_issuer_key(p.issuer_key_id, p.issuer_public_key)
        return public_bytes(key.public_key())

    def _personalise_certificate(self, data: bytes) -> bytes:
        if self.state.life_cycle is not LifeCycle.PERSONALISED:
            raise CardError(SW.CONDITIONS_NOT_SATISFIED, "send the identity first, once")
        cert = self._open_for_me(data, ObjectKind.CARD_CERTIFICATE, CardCertificate)
        if cert.public_key != public_bytes(self._card_key().public_key()):
            raise CardError(SW.WRONG_DATA, "certificate is for another key")
        self.state.certificate = data
        self.state.life_cycle = LifeCycle.ACTIVE
        return b""

    # online session -------------------------------------------------------------------
    @command(0x50)
    def begin_online(self, cmd: CommandApdu) -> bytes:
        self._no_p1p2(cmd)
        if cmd.data:
            raise CardError(SW.WRONG_LENGTH, "BEGIN ONLINE takes no data")
        current = self._require(LifeCycle.ACTIVE, LifeCycle.LOCKED)
        s = self.state
        self._abort_transfer()  # a transfer left waiting is reported now
        nonce = self.ctx.random(NONCE_LEN)
        cred = s.credential()
        # Every request gets its own ATC, so the issuer can order them: a request
        # held back and sent after a later one shows a counter going backwards.
        atc = s.next_atc()
        request = OnlineRequest(
            card_id=s.card_id,
            card_nonce=nonce,
            atc=atc,
            state=current,
            balance=s.balance,
            currency=s.currency,
            time_mark=s.time_mark,
            offline_spent=s.offline_spent,
            credential_serial=cred.serial if cred else 0,
            exception_log=s.exception_log_raw,
            transfers_out=s.transfers_out,
            transfers_in=s.transfers_in,
        )
        signed = seal(ObjectKind.ONLINE_REQUEST, s.card_id, request.encode(), self._card_key())
        self._session_nonce = nonce
        return signed

    @command(0x52)
    def issuer_update(self, cmd: CommandApdu) -> bytes:
        self._no_p1p2(cmd)
        current = self._require(LifeCycle.ACTIVE, LifeCycle.LOCKED)
        s = self.state
        update = self._open_for_me(cmd.data, ObjectKind.ISSUER_UPDATE, IssuerUpdate)
        nonce = self._session_nonce
        if nonce is None or not hmac.compare_digest(update.card_nonce, nonce):
            raise CardError(SW.STALE_SESSION)
        actions = UpdateAction(update.actions & _ALL_ACTIONS)
        if update.actions != actions or not actions:
            raise CardError(SW.WRONG_DATA, "unknown or empty action bits")
        if current is LifeCycle.LOCKED and not actions & (
            UpdateAction.UNLOCK | UpdateAction.TERMINATE
        ):
            raise CardError(SW.CARD_LOCKED)
        credential = None
        if actions & UpdateAction.RENEW:
            credential = self._check_credential(update.credential, nonce)
        elif update.credential:
            raise CardError(SW.WRONG_DATA, "credential without the RENEW action")
        if actions & UpdateAction.LOAD:
            if update.load_amount == 0:
                raise CardError(SW.WRONG_DATA, "LOAD of zero")
            if s.balance + update.load_amount > s.max_balance:
                raise CardError(SW.OVER_MAX_BALANCE)
        elif update.load_amount:
            raise CardError(SW.WRONG_DATA, "amount without the LOAD action")
        if actions & UpdateAction.RESTORE:
            if update.restore_amount == 0:
                raise CardError(SW.WRONG_DATA, "RESTORE of zero")
            if s.balance + update.load_amount + update.restore_amount > s.max_balance:
                raise CardError(SW.OVER_MAX_BALANCE)
        elif update.restore_amount:
            raise CardError(SW.WRONG_DATA, "amount without the RESTORE action")
        if update.log_cleared > len(s.exception_log()):
            raise CardError(SW.WRONG_DATA, "clears more exception-log entries than the card has")

        # nothing can refuse from here on: apply, all in this command's transaction
        atc = s.next_atc()
        # The issuer's time is authenticated and authoritative: it *sets* the mark,
        # undoing any push-forward by a terminal that lied about the time.
        s.time_mark = update.issuer_time
        when = update.issuer_time
        if credential is not None:
            s.credential_raw = update.credential
            s.offline_spent = 0
            self._record(atc, HistoryKind.RENEW, 0, when, NO_COUNTERPARTY)
        if actions & UpdateAction.LOAD:
            s.balance = s.balance + update.load_amount
            self._record(atc, HistoryKind.LOAD, update.load_amount, when, NO_COUNTERPARTY)
        if actions & UpdateAction.RESTORE:
            s.balance = s.balance + update.restore_amount
            self._record(atc, HistoryKind.RESTORE, update.restore_amount, when, NO_COUNTERPARTY)
        if update.log_cleared:
            s.clear_exceptions(update.log_cleared)
        if actions & UpdateAction.UNBLOCK_PIN:
            s.reset_pin_tries()
            self._record(atc, HistoryKind.UNBLOCK_PIN, 0, when, NO_COUNTERPARTY)
        if actions & UpdateAction.UNLOCK:
            # Also on an active card (found before it ever met its lock order):
            # every lock order issued before this update is void from now on.
            s.unlock_mark = max(s.unlock_mark, update.issuer_time)
            s.life_cycle = LifeCycle.ACTIVE
            self._record(atc, HistoryKind.UNLOCK, 0, when, NO_COUNTERPARTY)
        if actions & UpdateAction.TERMINATE:
            s.life_cycle = LifeCycle.TERMINATED
            self._record(atc, HistoryKind.TERMINATE, 0, when, NO_COUNTERPARTY)
        self._session_nonce = None  # one update per session
        return _u(atc, 4)

    def _check_credential(self, raw: bytes, nonce: bytes) -> Credential:
        cred = self._open_for_me(raw, ObjectKind.CREDENTIAL, Credential)
        if not hmac.compare_digest(cred.card_nonce, nonce):
            raise CardError(SW.STALE_SESSION)
        current = self.state.credential()
        if current is not None and cred.serial <= current.serial:
            raise CardError(SW.STALE_OBJECT)
        if cred.expires_at <= cred.issued_at:
            raise CardError(SW.WRONG_DATA, "credential expires before it is issued")
        return cred

    # payment -------------------------------------------------------------------------
    @command(0x54)
    def pay(self, cmd: CommandApdu) -> bytes:
        self._no_p1p2(cmd)
        try:
            req = PayData.decode(cmd.data)
        except MalformedObject:
            raise CardError(SW.WRONG_LENGTH, "PAY data is 32 bytes") from None
        self._require(LifeCycle.ACTIVE)
        needs_pin = self._check_spend(req.amount, req.terminal_time)
        s = self.state
        balance = s.balance - req.amount
        receipt = Receipt(
            card_id=s.card_id,
            atc=s.atc + 1,
            amount=req.amount,
            balance=balance,
            currency=s.currency,
            terminal_id=req.terminal_id,
            terminal_time=req.terminal_time,
            terminal_nonce=req.terminal_nonce,
        )
        signed = seal(ObjectKind.RECEIPT, s.card_id, receipt.encode(), self._card_key())
        self._abort_transfer()
        atc = s.next_atc()
        self._spend(req.amount, req.terminal_time, needs_pin)
        self._record(atc, HistoryKind.PAY, req.amount, req.terminal_time, req.terminal_id)
        return signed

    # lock ---------------------------------------------------------------------------
    @command(0x1E)
    def lock(self, cmd: CommandApdu) -> bytes:
        self._no_p1p2(cmd)
        current = self._require(LifeCycle.ACTIVE, LifeCycle.LOCKED)
        order = self._open_for_me(cmd.data, ObjectKind.LOCK_ORDER, LockOrder)
        if order.issued_at <= self.state.unlock_mark:
            raise CardError(SW.STALE_OBJECT, "lock order older than the last unlock")
        if current is LifeCycle.LOCKED:
            return b""
        atc = self.state.next_atc()
        self.state.life_cycle = LifeCycle.LOCKED
        self.state.raise_time_mark(order.issued_at)
        self._record(atc, HistoryKind.LOCK, 0, order.issued_at, NO_COUNTERPARTY)
        return b""


__all__ = ["HISTORY_SLOTS", "PurseApplet"]
