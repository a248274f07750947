"""Card to card: TRANSFER IN (ask, value), TRANSFER OUT and TRANSFER ACK.

The protocol of Mondex (patent fig. 2), between two cards in one wallet:

1. payee, TRANSFER IN ask (``80 58 00 00``): given the payer's certificate,
   its next ATC and the amount, the payee takes its own next ATC, remembers
   the transfer as *pending (payee)* and signs a request naming both cards,
   the amount, the currency and both sequence numbers;
2. payer, TRANSFER OUT (``80 56 00 00``): given the payee's certificate and
   that request, the payer checks both and its own spending rules (as for
   PAY: a card whose credential has expired cannot send value), debits,
   remembers the transfer as *pending (payer)* and signs the value;
3. payee, TRANSFER IN value (``80 58 01 00``): the value must be exactly its
   pending transfer, signed by the payer's certified key; the payee credits,
   clears its pending transfer and signs an acknowledgement;
4. payer, TRANSFER ACK (``80 5A 00 00``): the acknowledgement must be
   exactly its pending transfer, signed by the payee; the payer clears it.

A card keeps one pending transfer. A pending transfer that any other command
with value displaces (BEGIN ONLINE, PAY, a new TRANSFER OUT or TRANSFER IN
ask) is *aborted*: it goes to the exception log, which BEGIN ONLINE reports
to the issuer. The payer's entry says "value sent, no acknowledgement"; the
payee's says "value asked, none came". Both entries for one transfer prove
the value lost: the payee can no longer accept it. A card receives value
whatever its credential says (receiving risks nothing for the issuer), but
only while active.
"""

from __future__ import annotations

import hmac

from apdu.command import CommandApdu
from apdu.purse import (
    EXCEPTION_LOG_SLOTS,
    CardCertificate,
    HistoryKind,
    LifeCycle,
    PendingTransfer,
    Transfer,
    TransferAskData,
    TransferOutData,
    TransferRole,
)
from apdu.signed import (
    BadSignature,
    MalformedObject,
    ObjectKind,
    parse_envelope,
    public_key_from_bytes,
    seal,
    verify_envelope,
)
from apdu.status import SW, CardError
from card_os.applet import command
from card_os.purse.core import PurseCore

P1_ASK, P1_VALUE = 0x00, 0x01


class TransferCommands(PurseCore):
    # shared checks ---------------------------------------------------------------
    def _other_card(self, raw_certificate: bytes) -> CardCertificate:
        """The other card's certificate, issuer-signed, for a card that is not this one."""
        decoded = self._open_body(raw_certificate, ObjectKind.CARD_CERTIFICATE, CardCertificate)
        if decoded.card_id == self.state.card_id:
            raise CardError(SW.WRONG_DATA, "a card does not transfer to itself")
        return decoded

    def _room_to_start(self) -> None:
        """A new transfer may later need a log entry, and so may the one it displaces."""
        used = len(self.state.exception_log()) + (self.state.pending_transfer is not None)
        if used + 1 > EXCEPTION_LOG_SLOTS:
            raise CardError(SW.EXCEPTION_LOG_FULL)

    def _signed_by_other(
        self, raw: bytes, kind: ObjectKind, signer: bytes, public_key: bytes
    ) -> bytes:
        """The body of a card-signed transfer message from ``signer``; 9C14/9C12/9C10."""
        try:
            env = parse_envelope(raw)
        except MalformedObject:
            raise CardError(SW.WRONG_DATA, "not a signed object") from None
        if env.kind != kind:
            raise CardError(SW.WRONG_OBJECT_KIND)
        if env.key_id != signer:
            raise CardError(SW.WRONG_CARD, "signed by another card")
        try:
            verify_envelope(env, public_key_from_bytes(public_key))
        except (BadSignature, MalformedObject):
            raise CardError(SW.BAD_SIGNATURE) from None
        return env.body

    def _pending(self, role: TransferRole) -> PendingTransfer:
        pending = self.state.pending_transfer
        if pending is None or pending.role != role:
            raise CardError(SW.NO_TRANSFER_PENDING)
        return pending

    @staticmethod
    def _same_transfer(body: bytes, pending: PendingTransfer) -> None:
        if not hmac.compare_digest(body, pending.transfer):
            raise CardError(SW.WRONG_SEQUENCE, "a message of another transfer")

    # payee: ask ------------------------------------------------------------------------
    @command(0x58)
    def transfer_in(self, cmd: CommandApdu) -> bytes:
        if cmd.p2 != 0x00 or cmd.p1 not in (P1_ASK, P1_VALUE):
            raise CardError(SW.INCORRECT_P1P2, "P1 00 asks for value, 01 brings it")
        if cmd.p1 == P1_ASK:
            return self._ask(cmd.data)
        return self._receive(cmd.data)

    def _ask(self, data: bytes) -> bytes:
        try:
            ask = TransferAskData.decode(data)
        except MalformedObject:
            raise CardError(SW.WRONG_DATA, "TRANSFER IN ask data") from None
        self._require(LifeCycle.ACTIVE)
        s = self.state
        payer = self._other_card(ask.payer_certificate)
        if ask.amount == 0:
            raise CardError(SW.WRONG_DATA, "amount must not be zero")
        if s.balance + ask.amount > s.max_balance:
            raise CardError(SW.OVER_MAX_BALANCE)
        self._room_to_start()

        self._abort_transfer()
        transfer = Transfer(
            from_id=payer.card_id,
            to_id=s.card_id,
            amount=ask.amount,
            currency=s.currency,
            from_seq=ask.from_seq,
            to_seq=s.next_atc(),
        )
        body = transfer.encode()
        s.pending_transfer = PendingTransfer(TransferRole.PAYEE, body, payer.public_key)
        return seal(ObjectKind.TRANSFER_REQUEST, s.card_id, body, self._card_key())

    # payer: value ---------------------------------------------------------------------
    @command(0x56)
    def transfer_out(self, cmd: CommandApdu) -> bytes:
        self._no_p1p2(cmd)
        try:
            out = TransferOutData.decode(cmd.data)
        except MalformedObject:
            raise CardError(SW.WRONG_DATA, "TRANSFER OUT data") from None
        self._require(LifeCycle.ACTIVE)
        s = self.state
        payee = self._other_card(out.payee_certificate)
        body = self._signed_by_other(
            out.request, ObjectKind.TRANSFER_REQUEST, payee.card_id, payee.public_key
        )
        try:
            transfer = Transfer.decode(body)
        except MalformedObject:
            raise CardError(SW.WRONG_DATA, "not a transfer request") from None
        if transfer.from_id != s.card_id or transfer.to_id != payee.card_id:
            raise CardError(SW.WRONG_CARD, "a request between other cards")
        if transfer.currency != s.currency:
            raise CardError(SW.CURRENCY_MISMATCH)
        if transfer.from_seq != s.atc + 1:
            raise CardError(SW.WRONG_SEQUENCE, "the request is not for this card's next ATC")
        needs_pin = self._check_spend(transfer.amount, out.terminal_time)
        self._room_to_start()

        self._abort_transfer()
        atc = s.next_atc()  # == transfer.from_seq
        self._spend(transfer.amount, out.terminal_time, needs_pin)
        s.transfers_out = s.transfers_out + transfer.amount
        s.pending_transfer = PendingTransfer(TransferRole.PAYER, body, payee.public_key)
        self._record(
            atc, HistoryKind.TRANSFER_OUT, transfer.amount, out.terminal_time, payee.card_id
        )
        return seal(ObjectKind.TRANSFER_VALUE, s.card_id, body, self._card_key())

    # payee: credit ---------------------------------------------------------------------
    def _receive(self, data: bytes) -> bytes:
        pending = self._pending(TransferRole.PAYEE)
        self._require(LifeCycle.ACTIVE)
        s = self.state
        transfer = Transfer.decode(pending.transfer)
        body = self._signed_by_other(
            data, ObjectKind.TRANSFER_VALUE, transfer.from_id, pending.counterparty_key
        )
        self._same_transfer(body, pending)
        if s.balance + transfer.amount > s.max_balance:  # checked at the ask; kept since
            raise CardError(SW.OVER_MAX_BALANCE)

        atc = s.next_atc()
        s.balance = s.balance + transfer.amount
        s.transfers_in = s.transfers_in + transfer.amount
        s.pending_transfer = None
        self._record(atc, HistoryKind.TRANSFER_IN, transfer.amount, s.time_mark, transfer.from_id)
        return seal(ObjectKind.TRANSFER_ACK, s.card_id, body, self._card_key())

    # payer: done -------------------------------------------------------------------------
    @command(0x5A)
    def transfer_ack(self, cmd: CommandApdu) -> bytes:
        self._no_p1p2(cmd)
        pending = self._pending(TransferRole.PAYER)
        transfer = Transfer.decode(pending.transfer)
        body = self._signed_by_other(
            cmd.data, ObjectKind.TRANSFER_ACK, transfer.to_id, pending.counterparty_key
        )
        self._same_transfer(body, pending)
        self.state.pending_transfer = None
        return b""
