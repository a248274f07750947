"""The issuer centre: one object for every decision the issuer makes.

Each decision runs in one registry transaction and writes its audit record
in it; a refusal (:class:`issuer.errors.Refused`) rolls the decision back and
then records the refusal alone, so a refused request changes nothing but the
audit log. Terminals do not use this class directly: they go through
:mod:`issuer.client`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from apdu.clock import Clock, system_clock
from apdu.purse import printable_id
from apdu.purse_client import PurseClient
from issuer import blocklist, session, settlement, transfers
from issuer.errors import IssuerError, Refused
from issuer.keys import KeyRing
from issuer.personalise import check_blank, new_pin, personalise
from issuer.policy import Policy
from issuer.registry import AuditEntry, CardRecord, CardState, Registry, RegistryTx
from issuer.sqlite_registry import SQLiteRegistry

T = TypeVar("T")

REGISTRY_FILE = "registry.sqlite"
KEYS_FOLDER = "keys"
_HOLDER = re.compile(r"^[\w .'@-]{1,64}$")


def card_id_for(number: int) -> bytes:
    """Card IDs are 8 ASCII characters: ``P`` and a 7-digit number."""
    if not 0 < number < 10_000_000:
        raise IssuerError("the registry has no card numbers left")
    return f"P{number:07d}".encode()


class IssuerCentre:
    def __init__(self, registry: Registry, keys: KeyRing, clock: Clock = system_clock) -> None:
        self.registry = registry
        self.keys = keys
        self.clock = clock
        self._policy: Policy | None = None

    # opening -------------------------------------------------------------------------
    @classmethod
    def create(
        cls, folder: Path, policy: Policy | None = None, clock: Clock = system_clock
    ) -> IssuerCentre:
        """A new issuer in ``folder``: a key ring and an empty registry."""
        if (folder / REGISTRY_FILE).exists():
            raise IssuerError(f"{folder}: an issuer is already set up here")
        keys = KeyRing.create(folder / KEYS_FOLDER)
        centre = cls(SQLiteRegistry(folder / REGISTRY_FILE, create=True), keys, clock)
        centre.set_policy(policy or Policy())
        return centre

    @classmethod
    def open(cls, folder: Path, clock: Clock = system_clock, durable: bool = True) -> IssuerCentre:
        keys = KeyRing.open(folder / KEYS_FOLDER)
        return cls(SQLiteRegistry(folder / REGISTRY_FILE, durable=durable), keys, clock)

    def close(self) -> None:
        self.registry.close()

    # the one way a decision is taken --------------------------------------------------------
    def decide(self, action: Callable[[RegistryTx, int], T]) -> T:
        now = self.clock()
        try:
            with self.registry.transaction() as tx:
                return action(tx, now)
        except Refused as refusal:
            self._audit_refusal(refusal, now)
            raise

    def _audit_refusal(self, refusal: Refused, now: int) -> None:
        with self.registry.transaction() as tx:
            tx.audit(now, f"refused_{refusal.reason}", refusal.card_id, str(refusal))

    def read(self, query: Callable[[RegistryTx], T]) -> T:
        with self.registry.transaction() as tx:
            return query(tx)

    # policy ---------------------------------------------------------------------------------
    @property
    def policy(self) -> Policy:
        if self._policy is None:
            text = self.read(lambda tx: tx.setting("policy"))
            self._policy = Policy.from_json(text) if text else Policy()
        return self._policy

    def set_policy(self, policy: Policy) -> None:
        def store(tx: RegistryTx, now: int) -> None:
            tx.set_setting("policy", policy.to_json())
            tx.audit(now, "policy_set", None, policy.to_json())

        self.decide(store)
        self._policy = policy

    # holders and terminals ---------------------------------------------------------------------
    def deposit(self, holder: str, amount: int) -> int:
        """Pay money into a holder's account (created on first use); returns the balance."""
        if amount <= 0:
            raise IssuerError("a deposit must be a positive amount")

        def pay_in(tx: RegistryTx, now: int) -> int:
            if tx.holder_balance(holder) is None:
                self._new_holder(tx, holder)
            tx.audit(now, "deposit", None, f"{amount} to {holder!r}")
            return tx.adjust_holder(holder, amount)

        return self.decide(pay_in)

    @staticmethod
    def _check_holder(holder: str) -> None:
        if not _HOLDER.match(holder):
            raise IssuerError(f"holder name {holder!r}: 1 to 64 letters, digits, spaces, .'@-")

    def _new_holder(self, tx: RegistryTx, holder: str) -> None:
        self._check_holder(holder)
        tx.add_holder(holder)

    def holder_balance(self, holder: str) -> int | None:
        return self.read(lambda tx: tx.holder_balance(holder))

    def register_terminal(self, terminal_id: bytes, merchant: str) -> None:
        if len(terminal_id) != 8:
            raise IssuerError("a terminal ID has 8 bytes")

        def add(tx: RegistryTx, now: int) -> None:
            known = tx.terminal(terminal_id)
            if known is not None:
                if known.merchant == merchant:
                    return  # registered already, as asked
                raise Refused(
                    "terminal_registered",
                    f"terminal {printable_id(terminal_id)} is registered for {known.merchant!r}",
                )
            tx.add_terminal(terminal_id, merchant)
            who = f"{printable_id(terminal_id)} for {merchant!r}"
            tx.audit(now, "terminal_registered", None, who)

        self.decide(add)

    # cards --------------------------------------------------------------------------------------
    def issue(
        self, client: PurseClient, holder: str, pin: bytes | None = None
    ) -> tuple[bytes, bytes]:
        """Personalise the blank card behind ``client``; returns (card ID, PIN)."""
        pin = pin if pin is not None else new_pin()
        self._check_holder(holder)  # before the card is touched
        key = self.keys.current
        started = self.clock()
        try:
            check_blank(client)
            card_id = self.decide(lambda tx, now: card_id_for(tx.next_number("card")))
            done = personalise(client, key, self.policy, card_id, pin, started)
        except Refused as refusal:
            self._audit_refusal(refusal, started)
            raise

        def register(tx: RegistryTx, now: int) -> None:
            if tx.holder_balance(holder) is None:
                self._new_holder(tx, holder)
            tx.add_card(
                CardRecord(
                    card_id=card_id,
                    holder=holder,
                    issuer_key_id=key.key_id,
                    public_key=done.public_key,
                    certificate=done.certificate,
                    cert_expires_at=done.expires_at,
                    currency=self.policy.currency,
                    max_balance=self.policy.max_balance,
                    issued_at=done.issued_at,
                )
            )
            tx.audit(now, "card_issued", card_id, f"to {holder!r}, key {key.key_id.hex().upper()}")

        self.decide(register)
        return card_id, pin

    def card(self, card_id: bytes) -> CardRecord:
        found = self.read(lambda tx: tx.card(card_id))
        if found is None:
            raise IssuerError(f"card {printable_id(card_id)} is not registered")
        return found

    def cards(self) -> list[CardRecord]:
        return self.read(lambda tx: tx.cards())

    def _operator(self, card_id: bytes, event: str, change: Callable[[CardRecord], None]) -> None:
        def apply(tx: RegistryTx, now: int) -> None:
            card = tx.card(card_id)
            if card is None:
                raise Refused(
                    "unknown_card", f"card {printable_id(card_id)} is not registered", card_id
                )
            change(card)
            tx.save_card(card)
            tx.audit(now, event, card_id, "requested by the operator")

        self.decide(apply)

    def request_unlock(self, card_id: bytes) -> None:
        """The card's next online session unlocks it (and voids older lock orders)."""

        def change(card: CardRecord) -> None:
            if card.status is not CardState.ACTIVE:
                raise Refused("not_active", f"the card is {card.status.value}", card_id)
            card.unlock_requested = True

        self._operator(card_id, "unlock_requested", change)

    def request_pin_unblock(self, card_id: bytes) -> None:
        """The card's next online session resets its PIN try counter."""

        def change(card: CardRecord) -> None:
            card.unblock_requested = True

        self._operator(card_id, "pin_unblock_requested", change)

    # the online session --------------------------------------------------------------------------
    def online_session(self, request: bytes, load: int = 0) -> session.SessionReply:
        policy = self.policy
        return self.decide(
            lambda tx, now: session.online_session(tx, self.keys, policy, now, request, load)
        )

    def transfers(self, card_id: bytes | None = None) -> list[transfers.Reconciled]:
        """Every card-to-card transfer a card logged as aborted, reconciled."""
        return self.read(lambda tx: transfers.reconcile(tx, card_id))

    # blocklist ------------------------------------------------------------------------------------
    def report(self, card_id: bytes, reason: CardState) -> int:
        return self.decide(lambda tx, now: blocklist.report(tx, self.keys, now, card_id, reason))

    def found(self, card_id: bytes) -> int:
        return self.decide(lambda tx, now: blocklist.found(tx, now, card_id))

    def blocklist(self, since: int = 0) -> bytes:
        return self.decide(lambda tx, now: blocklist.blocklist_file(tx, self.keys, now, since))

    # settlement ----------------------------------------------------------------------------------
    def settle(
        self, terminal_id: bytes, items: Sequence[settlement.SettlementItem]
    ) -> settlement.SettlementReport:
        return self.decide(
            lambda tx, now: settlement.settle(tx, self.keys, now, terminal_id, items)
        )

    # keys and audit ------------------------------------------------------------------------------
    def rotate_key(self) -> bytes:
        """A new current key for new cards and blocklists; returns its key ID."""
        key = self.keys.rotate()
        self.decide(lambda tx, now: tx.audit(now, "key_rotated", None, key.key_id.hex().upper()))
        return key.key_id

    def audit_log(self, card_id: bytes | None = None) -> list[AuditEntry]:
        return self.read(lambda tx: tx.audit_log(card_id))
