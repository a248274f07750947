"""The registry's interface: what the issuer stores, whatever the database.

The centre only ever talks to a :class:`Registry`: it opens one transaction
per decision (``with registry.transaction() as tx``) and calls the methods of
:class:`RegistryTx`; a transaction commits when the block ends and rolls back
entirely when it raises. :mod:`issuer.sqlite_registry` is the embedded
implementation; another database (PostgreSQL) implements these two classes
and nothing else changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum


class CardState(StrEnum):
    """A card's status at the issuer (not the card's own life cycle)."""

    ACTIVE = "active"
    LOST = "lost"
    STOLEN = "stolen"
    TERMINATED = "terminated"


class Outcome(StrEnum):
    """What became of an issuer update: the card's next signed request tells."""

    PENDING = "pending"
    APPLIED = "applied"
    VOID = "void"


@dataclass(slots=True)
class CardRecord:
    card_id: bytes
    holder: str
    issuer_key_id: bytes
    public_key: bytes
    certificate: bytes
    cert_expires_at: int
    currency: int
    max_balance: int
    issued_at: int
    status: CardState = CardState.ACTIVE
    last_atc: int = 0
    last_balance: int = 0
    shadow_balance: int = 0  # confirmed loads - settled payments
    credential_serial: int = 0  # the last serial issued
    unlock_requested: bool = False
    unblock_requested: bool = False
    unlocked_at: int = 0  # issuer time of the last update that carried UNLOCK
    transfers_out: int = 0  # the card's own total of value sent by transfer, last reported
    transfers_in: int = 0  # and of value received
    reported_atc: int = 0  # ATC of the last online request, whose exception log is recorded


@dataclass(frozen=True, slots=True)
class Renewal:
    """One issuer update sent to a card (its serial is the credential's)."""

    card_id: bytes
    serial: int
    issued_at: int
    expires_at: int
    actions: int
    load: int
    holder: str
    outcome: Outcome = Outcome.PENDING
    restore: int = 0  # lost transferred value given back with this update


@dataclass(frozen=True, slots=True)
class TransferException:
    """One transfer that at least one of its two cards logged as aborted.

    ``payer_logged``/``payee_logged``: the issuer time each side's log reached
    the issuer (None: not yet). ``restore_serial``: the update that gives its
    value back to the payer (pending or applied); ``restored``: it was applied.
    """

    from_id: bytes
    from_seq: int
    to_id: bytes
    to_seq: int
    amount: int
    currency: int
    payer_logged: int | None = None
    payee_logged: int | None = None
    restore_serial: int | None = None
    restored: bool = False

    @property
    def key(self) -> tuple[bytes, int, bytes, int]:
        return (self.from_id, self.from_seq, self.to_id, self.to_seq)


@dataclass(frozen=True, slots=True)
class ReceiptRecord:
    card_id: bytes
    atc: int
    amount: int
    balance: int
    terminal_id: bytes
    terminal_time: int
    batch_id: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class TerminalRecord:
    terminal_id: bytes
    merchant: str
    credited: int


@dataclass(frozen=True, slots=True)
class ListEntry:
    card_id: bytes
    added_version: int
    lock_order: bytes


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: int
    event: str
    card_id: bytes | None
    detail: str


class RegistryTx(ABC):
    """The operations of one transaction."""

    # settings and counters ---------------------------------------------------------
    @abstractmethod
    def setting(self, name: str) -> str | None: ...

    @abstractmethod
    def set_setting(self, name: str, value: str) -> None: ...

    @abstractmethod
    def next_number(self, counter: str) -> int:
        """1, 2, 3, ... per counter name; never reused, even after a rollback elsewhere."""

    # holders ------------------------------------------------------------------------
    @abstractmethod
    def holder_balance(self, name: str) -> int | None: ...

    @abstractmethod
    def add_holder(self, name: str) -> None: ...

    @abstractmethod
    def adjust_holder(self, name: str, delta: int) -> int:
        """Add ``delta`` to the account; returns the new balance (never below zero)."""

    # cards --------------------------------------------------------------------------
    @abstractmethod
    def card(self, card_id: bytes) -> CardRecord | None: ...

    @abstractmethod
    def cards(self) -> list[CardRecord]: ...

    @abstractmethod
    def add_card(self, card: CardRecord) -> None: ...

    @abstractmethod
    def save_card(self, card: CardRecord) -> None:
        """Write back the mutable fields of a card read in this transaction."""

    @abstractmethod
    def note_request(self, card_id: bytes, nonce: bytes, at: int) -> bool:
        """Remember an online request's nonce; False if it was seen before (a replay)."""

    # renewals and loads ----------------------------------------------------------------
    @abstractmethod
    def add_renewal(self, renewal: Renewal, at: int) -> None: ...

    @abstractmethod
    def pending_renewals(self, card_id: bytes) -> list[Renewal]: ...

    @abstractmethod
    def close_renewal(self, card_id: bytes, serial: int, outcome: Outcome) -> None: ...

    @abstractmethod
    def renewals(self, card_id: bytes) -> list[Renewal]: ...

    # card-to-card transfer exceptions ----------------------------------------------------
    @abstractmethod
    def log_exception(self, entry: TransferException, payer_side: bool, at: int) -> None:
        """Record one side's log entry (again is harmless: the first time is kept)."""

    @abstractmethod
    def exceptions(self, card_id: bytes | None = None) -> list[TransferException]:
        """Every logged transfer, or those where ``card_id`` is payer or payee."""

    @abstractmethod
    def set_restore(
        self, key: tuple[bytes, int, bytes, int], serial: int | None, restored: bool = False
    ) -> None:
        """Tie a lost transfer to the update that restores it (None: untie it)."""

    # terminals, batches, receipts --------------------------------------------------------
    @abstractmethod
    def terminal(self, terminal_id: bytes) -> TerminalRecord | None: ...

    @abstractmethod
    def terminals(self) -> list[TerminalRecord]: ...

    @abstractmethod
    def add_terminal(self, terminal_id: bytes, merchant: str) -> None: ...

    @abstractmethod
    def credit_terminal(self, terminal_id: bytes, amount: int) -> None: ...

    @abstractmethod
    def add_batch(self, terminal_id: bytes, at: int) -> int: ...

    @abstractmethod
    def finish_batch(self, batch_id: int, accepted: int, refused: int, amount: int) -> None: ...

    @abstractmethod
    def receipt_seen(self, card_id: bytes, atc: int) -> bool: ...

    @abstractmethod
    def add_receipt(self, receipt: ReceiptRecord) -> None: ...

    @abstractmethod
    def receipts(self, card_id: bytes | None = None) -> list[ReceiptRecord]: ...

    # blocklist ---------------------------------------------------------------------------
    @abstractmethod
    def blocklist_version(self) -> int: ...

    @abstractmethod
    def new_blocklist_version(self, at: int) -> int: ...

    @abstractmethod
    def list_card(self, entry: ListEntry) -> None: ...

    @abstractmethod
    def unlist_card(self, card_id: bytes, version: int) -> None: ...

    @abstractmethod
    def listing(self, card_id: bytes) -> ListEntry | None:
        """The card's entry on the current list, if it is listed."""

    @abstractmethod
    def listed(self, version: int) -> list[ListEntry]:
        """The entries of the full list at ``version``."""

    @abstractmethod
    def list_changes(self, since: int, version: int) -> tuple[list[ListEntry], list[bytes]]:
        """Entries added and card IDs removed after ``since``, up to ``version``."""

    # audit ---------------------------------------------------------------------------------
    @abstractmethod
    def audit(self, at: int, event: str, card_id: bytes | None, detail: str) -> None: ...

    @abstractmethod
    def audit_log(self, card_id: bytes | None = None) -> list[AuditEntry]: ...


class Registry(ABC):
    """A database of one issuer."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[RegistryTx]: ...

    @abstractmethod
    def close(self) -> None: ...
