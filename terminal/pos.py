"""The POS stub, after the source patent's fig. 5 and 7.

A payment: the card is inserted and its purse selected; the terminal reads
the card ID and the card certificate and verifies it offline; checks its own
copy of the blocklist (a listed card receives its lock order and is
ejected); checks the balance; renews the credential online first when the
POS is connected and the credential is missing or near expiry; asks for the
PIN when given; sends PAY with its time, ID and a fresh nonce; verifies the
card-signed receipt against the certificate; records the sale. Sales wait in
the batch until ``upload`` settles them at the issuer.
"""

from __future__ import annotations

import contextlib
import secrets

from apdu.clock import Clock, system_clock
from apdu.purse import BlocklistHeader, Credential, LifeCycle, PayData, Tag, printable_id
from apdu.purse_client import PurseClient
from apdu.signed import SignedObjectError, parse_envelope, public_keys
from apdu.status import SW, CardError
from issuer.client import IssuerService, SettlementItem, SettlementReport
from issuer.errors import IssuerError
from terminal.errors import Declined, TerminalError
from terminal.pos_state import MAX_DELTAS, PosState, Sale
from terminal.session import card_step, online_session
from terminal.trust import check_certificate, check_receipt

DAY = 86_400


class Pos:
    def __init__(
        self,
        state: PosState,
        clock: Clock = system_clock,
        issuer: IssuerService | None = None,
        renew_within: int = DAY,
    ) -> None:
        self.state = state
        self.clock = clock
        self.issuer = issuer  # None: offline
        self.renew_within = renew_within

    @property
    def terminal_id(self) -> bytes:
        return self.state.terminal_id

    def _issuer(self) -> IssuerService:
        if self.issuer is None:
            raise TerminalError("the POS is offline (no issuer to reach)")
        return self.issuer

    # blocklist ---------------------------------------------------------------------
    def sync(self) -> BlocklistHeader:
        """Fetch the issuer's keys and the newest blocklist (a delta when possible)."""
        issuer = self._issuer()
        state = self.state
        try:
            keys = issuer.trusted_keys()
            held = state.blocklist.version
            deltas = len(state.blocklist_files) - 1
            since = held if state.blocklist_files and deltas < MAX_DELTAS else 0
            raw = issuer.blocklist(since)
        except IssuerError as err:
            raise TerminalError(f"the issuer could not answer: {err}") from None
        trusted = {**state.trusted_keys, **keys}
        try:
            header = state.blocklist.apply(raw, public_keys(trusted))
        except SignedObjectError as err:
            raise Declined(
                "blocklist_refused", f"the issuer's blocklist is refused: {err}"
            ) from None
        state.trusted_keys = trusted
        if header.base_version == 0:
            state.blocklist_files = [raw]
        elif header.version > held:
            state.blocklist_files.append(raw)
        return header

    # payment --------------------------------------------------------------------------
    def pay(self, client: PurseClient, amount: int, pin: bytes | None = None) -> Sale:
        if amount <= 0:
            raise Declined("bad_amount", "an amount must be positive")
        state = self.state
        if not state.trusted_keys:
            raise TerminalError("the POS has no issuer keys yet: sync it first")
        now = self.clock()
        try:
            client.select()
            card_id = client.get_data(Tag.CARD_ID)
            cert_raw = client.get_data(Tag.CERTIFICATE)
        except CardError as err:
            raise card_step("to identify itself", err) from None
        cert = check_certificate(cert_raw, card_id, public_keys(state.trusted_keys), now)

        order = state.blocklist.lock_order(card_id)
        if order is not None:
            with contextlib.suppress(CardError):  # listed all the same: eject
                client.lock(order)
            raise Declined(
                "blocklisted",
                f"card {printable_id(card_id)} is on the blocklist: locked and ejected",
            )
        status = client.status()
        if status.state is LifeCycle.LOCKED:
            raise Declined("card_locked", "the card is locked", SW.CARD_LOCKED)
        if status.balance < amount:
            raise Declined(
                "insufficient_funds",
                f"the card holds {status.balance}, the payment is {amount}",
                SW.INSUFFICIENT_FUNDS,
            )
        if self.issuer is not None and self._needs_renewal(client, now):
            outcome = online_session(client, self.issuer)
            if outcome.locked:
                raise Declined("blocklisted", "the issuer sent a lock order: locked and ejected")

        request = PayData(amount, now, self.terminal_id, secrets.token_bytes(16))
        try:
            if pin is not None:
                client.verify_pin(pin)
            raw = client.pay(request)
        except CardError as err:
            raise card_step("the payment", err) from None
        receipt = check_receipt(raw, cert, request)
        sale = Sale(card_id, receipt.atc, amount, receipt.balance, now, raw, cert_raw)
        state.sales.append(sale)
        state.batch.append(sale)
        return sale

    def _needs_renewal(self, client: PurseClient, now: int) -> bool:
        try:
            raw = client.get_data(Tag.CREDENTIAL)
        except CardError:
            return True  # no credential yet
        try:
            cred = Credential.decode(parse_envelope(raw).body)
        except SignedObjectError:
            return True
        return cred.expires_at - now < self.renew_within

    # settlement ------------------------------------------------------------------------
    def upload(self) -> SettlementReport:
        """Settle the batch; every sale the issuer answered for leaves the batch."""
        items = [SettlementItem(s.receipt, s.certificate) for s in self.state.batch]
        try:
            report = self._issuer().settle(self.terminal_id, items)
        except IssuerError as err:
            raise TerminalError(f"the issuer did not settle: {err}") from None
        self.state.batch = []
        return report
