"""The registry on SQLite (standard library): the issuer's embedded default.

WAL journal, foreign keys on, one ``BEGIN IMMEDIATE`` transaction per
decision. The file is marked as ours (``PRAGMA application_id``) and carries
its schema version (``PRAGMA user_version``); :data:`MIGRATIONS` bring an
older file up to date, and a file that is not ours or is newer than this code
is refused before anything is written. The audit log is append-only: triggers
refuse any UPDATE or DELETE on it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from apdu.purse import printable_id
from issuer.errors import RegistryError
from issuer.registry import (
    AuditEntry,
    CardRecord,
    CardState,
    ListEntry,
    Outcome,
    ReceiptRecord,
    Registry,
    RegistryTx,
    Renewal,
    TerminalRecord,
    TransferException,
)

APPLICATION_ID = 0x50555253  # "PURS"

_V1 = """
CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE holders (
    name TEXT PRIMARY KEY,
    balance INTEGER NOT NULL CHECK (balance >= 0)
);
CREATE TABLE cards (
    card_id BLOB PRIMARY KEY CHECK (length(card_id) = 8),
    holder TEXT NOT NULL REFERENCES holders(name),
    issuer_key_id BLOB NOT NULL CHECK (length(issuer_key_id) = 8),
    public_key BLOB NOT NULL,
    certificate BLOB NOT NULL,
    cert_expires_at INTEGER NOT NULL,
    currency INTEGER NOT NULL,
    max_balance INTEGER NOT NULL,
    issued_at INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'lost', 'stolen', 'terminated')),
    last_atc INTEGER NOT NULL,
    last_balance INTEGER NOT NULL,
    shadow_balance INTEGER NOT NULL,
    credential_serial INTEGER NOT NULL,
    unlock_requested INTEGER NOT NULL,
    unblock_requested INTEGER NOT NULL,
    unlocked_at INTEGER NOT NULL
);
CREATE TABLE requests (
    card_id BLOB NOT NULL REFERENCES cards(card_id),
    nonce BLOB NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (card_id, nonce)
) WITHOUT ROWID;
CREATE TABLE renewals (
    card_id BLOB NOT NULL REFERENCES cards(card_id),
    serial INTEGER NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    actions INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('pending', 'applied', 'void')),
    at INTEGER NOT NULL,
    PRIMARY KEY (card_id, serial)
) WITHOUT ROWID;
CREATE TABLE loads (
    card_id BLOB NOT NULL,
    serial INTEGER NOT NULL,
    holder TEXT NOT NULL REFERENCES holders(name),
    amount INTEGER NOT NULL CHECK (amount > 0),
    PRIMARY KEY (card_id, serial),
    FOREIGN KEY (card_id, serial) REFERENCES renewals(card_id, serial)
) WITHOUT ROWID;
CREATE TABLE terminals (
    terminal_id BLOB PRIMARY KEY CHECK (length(terminal_id) = 8),
    merchant TEXT NOT NULL,
    credited INTEGER NOT NULL
);
CREATE TABLE batches (
    batch_id INTEGER PRIMARY KEY,
    terminal_id BLOB NOT NULL REFERENCES terminals(terminal_id),
    at INTEGER NOT NULL,
    accepted INTEGER NOT NULL DEFAULT 0,
    refused INTEGER NOT NULL DEFAULT 0,
    amount INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE receipts (
    card_id BLOB NOT NULL REFERENCES cards(card_id),
    atc INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    balance INTEGER NOT NULL,
    terminal_id BLOB NOT NULL REFERENCES terminals(terminal_id),
    terminal_time INTEGER NOT NULL,
    batch_id INTEGER NOT NULL REFERENCES batches(batch_id),
    raw BLOB NOT NULL,
    PRIMARY KEY (card_id, atc)
) WITHOUT ROWID;
CREATE TABLE blocklist_versions (version INTEGER PRIMARY KEY, at INTEGER NOT NULL);
INSERT INTO blocklist_versions VALUES (0, 0);
CREATE TABLE blocklist (
    card_id BLOB NOT NULL REFERENCES cards(card_id),
    added_version INTEGER NOT NULL REFERENCES blocklist_versions(version),
    removed_version INTEGER REFERENCES blocklist_versions(version),
    lock_order BLOB NOT NULL,
    PRIMARY KEY (card_id, added_version)
);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    event TEXT NOT NULL,
    card_id BLOB,
    detail TEXT NOT NULL
);
CREATE INDEX audit_by_card ON audit(card_id);
CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_append_only_replace BEFORE INSERT ON audit
WHEN NEW.seq IS NOT NULL AND EXISTS (SELECT 1 FROM audit WHERE seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

# card-to-card transfers: each card's reported totals, restores, the exception logs
_V2 = """
ALTER TABLE cards ADD COLUMN transfers_out INTEGER NOT NULL DEFAULT 0;
ALTER TABLE cards ADD COLUMN transfers_in INTEGER NOT NULL DEFAULT 0;
ALTER TABLE cards ADD COLUMN reported_atc INTEGER NOT NULL DEFAULT 0;
ALTER TABLE renewals ADD COLUMN restore INTEGER NOT NULL DEFAULT 0 CHECK (restore >= 0);
CREATE TABLE transfer_exceptions (
    from_id BLOB NOT NULL REFERENCES cards(card_id),
    from_seq INTEGER NOT NULL,
    to_id BLOB NOT NULL REFERENCES cards(card_id),
    to_seq INTEGER NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    currency INTEGER NOT NULL,
    payer_logged INTEGER,
    payee_logged INTEGER,
    restore_serial INTEGER,
    restored INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (from_id, from_seq, to_id, to_seq)
) WITHOUT ROWID;
CREATE INDEX transfer_exceptions_to ON transfer_exceptions(to_id);
"""

# MIGRATIONS[n] brings a file at schema version n to version n + 1.
MIGRATIONS: tuple[str, ...] = (_V1, _V2)
SCHEMA_VERSION = len(MIGRATIONS)

_CARD_COLUMNS = (
    "card_id, holder, issuer_key_id, public_key, certificate, cert_expires_at, currency, "
    "max_balance, issued_at, status, last_atc, last_balance, shadow_balance, "
    "credential_serial, unlock_requested, unblock_requested, unlocked_at, "
    "transfers_out, transfers_in, reported_atc"
)


# the columns a card's life changes, in table order (after the identity columns)
_MUTABLE_COLUMNS = (
    "status",
    "last_atc",
    "last_balance",
    "shadow_balance",
    "credential_serial",
    "unlock_requested",
    "unblock_requested",
    "unlocked_at",
    "transfers_out",
    "transfers_in",
    "reported_atc",
)


def _mutable(card: CardRecord) -> tuple[Any, ...]:
    return (
        card.status.value,
        card.last_atc,
        card.last_balance,
        card.shadow_balance,
        card.credential_serial,
        int(card.unlock_requested),
        int(card.unblock_requested),
        card.unlocked_at,
        card.transfers_out,
        card.transfers_in,
        card.reported_atc,
    )


def _card(row: Any) -> CardRecord:
    return CardRecord(
        card_id=row[0],
        holder=row[1],
        issuer_key_id=row[2],
        public_key=row[3],
        certificate=row[4],
        cert_expires_at=row[5],
        currency=row[6],
        max_balance=row[7],
        issued_at=row[8],
        status=CardState(row[9]),
        last_atc=row[10],
        last_balance=row[11],
        shadow_balance=row[12],
        credential_serial=row[13],
        unlock_requested=bool(row[14]),
        unblock_requested=bool(row[15]),
        unlocked_at=row[16],
        transfers_out=row[17],
        transfers_in=row[18],
        reported_atc=row[19],
    )


class SQLiteTx(RegistryTx):
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def _one(self, sql: str, *args: Any) -> Any:
        return self._db.execute(sql, args).fetchone()

    def _run(self, sql: str, *args: Any) -> int:
        return self._db.execute(sql, args).rowcount

    # settings and counters --------------------------------
    def setting(self, name: str) -> str | None:
        row = self._one("SELECT value FROM settings WHERE name = ?", name)
        return None if row is None else str(row[0])

    def set_setting(self, name: str, value: str) -> None:
        self._run("INSERT OR REPLACE INTO settings VALUES (?, ?)", name, value)

    def next_number(self, counter: str) -> int:
        row = self._one(
            "INSERT INTO counters VALUES (?, 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value",
            counter,
        )
        return int(row[0])

    # holders ----------------------------------------------
    def holder_balance(self, name: str) -> int | None:
        row = self._one("SELECT balance FROM holders WHERE name = ?", name)
        return None if row is None else int(row[0])

    def add_holder(self, name: str) -> None:
        self._run("INSERT INTO holders VALUES (?, 0)", name)

    def adjust_holder(self, name: str, delta: int) -> int:
        row = self._one(
            "UPDATE holders SET balance = balance + ? WHERE name = ? RETURNING balance",
            delta,
            name,
        )
        if row is None:
            raise RegistryError(f"no holder account {name!r}")
        return int(row[0])

    # cards ------------------------------------------------
    def card(self, card_id: bytes) -> CardRecord | None:
        row = self._one(f"SELECT {_CARD_COLUMNS} FROM cards WHERE card_id = ?", card_id)
        return None if row is None else _card(row)

    def cards(self) -> list[CardRecord]:
        rows = self._db.execute(f"SELECT {_CARD_COLUMNS} FROM cards ORDER BY card_id")
        return [_card(row) for row in rows]

    def add_card(self, card: CardRecord) -> None:
        self._run(
            f"INSERT INTO cards ({_CARD_COLUMNS}) VALUES ({', '.join('?' * 20)})",
            card.card_id,
            card.holder,
            card.issuer_key_id,
            card.public_key,
            card.certificate,
            card.cert_expires_at,
            card.currency,
            card.max_balance,
            card.issued_at,
            *_mutable(card),
        )

    def save_card(self, card: CardRecord) -> None:
        changed = self._run(
            f"UPDATE cards SET {', '.join(c + ' = ?' for c in _MUTABLE_COLUMNS)} WHERE card_id = ?",
            *_mutable(card),
            card.card_id,
        )
        if changed != 1:
            raise RegistryError(f"no card {printable_id(card.card_id)} to save")

    def note_request(self, card_id: bytes, nonce: bytes, at: int) -> bool:
        try:
            self._run("INSERT INTO requests VALUES (?, ?, ?)", card_id, nonce, at)
        except sqlite3.IntegrityError:
            return False
        return True

    # renewals and loads -----------------------------------
    def add_renewal(self, renewal: Renewal, at: int) -> None:
        self._run(
            "INSERT INTO renewals (card_id, serial, issued_at, expires_at, actions, outcome, "
            "at, restore) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            renewal.card_id,
            renewal.serial,
            renewal.issued_at,
            renewal.expires_at,
            renewal.actions,
            renewal.outcome.value,
            at,
            renewal.restore,
        )
        if renewal.load:
            self._run(
                "INSERT INTO loads VALUES (?, ?, ?, ?)",
                renewal.card_id,
                renewal.serial,
                renewal.holder,
                renewal.load,
            )

    def _renewals(self, where: str, *args: Any) -> list[Renewal]:
        rows = self._db.execute(
            "SELECT r.card_id, r.serial, r.issued_at, r.expires_at, r.actions, "
            "coalesce(l.amount, 0), coalesce(l.holder, ''), r.outcome, r.restore FROM renewals r "
            "LEFT JOIN loads l ON l.card_id = r.card_id AND l.serial = r.serial "
            f"WHERE {where} ORDER BY r.serial",
            args,
        )
        return [
            Renewal(row[0], row[1], row[2], row[3], row[4], row[5], row[6], Outcome(row[7]), row[8])
            for row in rows
        ]

    def pending_renewals(self, card_id: bytes) -> list[Renewal]:
        return self._renewals("r.card_id = ? AND r.outcome = 'pending'", card_id)

    def renewals(self, card_id: bytes) -> list[Renewal]:
        return self._renewals("r.card_id = ?", card_id)

    def close_renewal(self, card_id: bytes, serial: int, outcome: Outcome) -> None:
        changed = self._run(
            "UPDATE renewals SET outcome = ? WHERE card_id = ? AND serial = ? "
            "AND outcome = 'pending'",
            outcome.value,
            card_id,
            serial,
        )
        if changed != 1:
            raise RegistryError("no pending renewal to close")

    # card-to-card transfer exceptions --------------------
    def log_exception(self, entry: TransferException, payer_side: bool, at: int) -> None:
        column = "payer_logged" if payer_side else "payee_logged"
        self._run(
            "INSERT INTO transfer_exceptions (from_id, from_seq, to_id, to_seq, amount, "
            f"currency, {column}) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (from_id, from_seq, to_id, to_seq) DO UPDATE SET "
            f"{column} = coalesce({column}, excluded.{column})",
            *entry.key,
            entry.amount,
            entry.currency,
            at,
        )

    def exceptions(self, card_id: bytes | None = None) -> list[TransferException]:
        where, args = (
            ("WHERE from_id = ? OR to_id = ?", (card_id, card_id)) if card_id else ("", ())
        )
        rows = self._db.execute(
            "SELECT from_id, from_seq, to_id, to_seq, amount, currency, payer_logged, "
            f"payee_logged, restore_serial, restored FROM transfer_exceptions {where} "
            "ORDER BY from_id, from_seq",
            args,
        )
        return [
            TransferException(
                from_id=row[0],
                from_seq=row[1],
                to_id=row[2],
                to_seq=row[3],
                amount=row[4],
                currency=row[5],
                payer_logged=row[6],
                payee_logged=row[7],
                restore_serial=row[8],
                restored=bool(row[9]),
            )
            for row in rows
        ]

    def set_restore(
        self, key: tuple[bytes, int, bytes, int], serial: int | None, restored: bool = False
    ) -> None:
        changed = self._run(
            "UPDATE transfer_exceptions SET restore_serial = ?, restored = ? "
            "WHERE from_id = ? AND from_seq = ? AND to_id = ? AND to_seq = ?",
            serial,
            int(restored),
            *key,
        )
        if changed != 1:
            raise RegistryError("no such logged transfer")

    # terminals, batches, receipts -------------------------
    def terminal(self, terminal_id: bytes) -> TerminalRecord | None:
        row = self._one("SELECT * FROM terminals WHERE terminal_id = ?", terminal_id)
        return None if row is None else TerminalRecord(*row)

    def terminals(self) -> list[TerminalRecord]:
        rows = self._db.execute("SELECT * FROM terminals ORDER BY terminal_id")
        return [TerminalRecord(*row) for row in rows]

    def add_terminal(self, terminal_id: bytes, merchant: str) -> None:
        self._run("INSERT INTO terminals VALUES (?, ?, 0)", terminal_id, merchant)

    def credit_terminal(self, terminal_id: bytes, amount: int) -> None:
        self._run(
            "UPDATE terminals SET credited = credited + ? WHERE terminal_id = ?",
            amount,
            terminal_id,
        )

    def add_batch(self, terminal_id: bytes, at: int) -> int:
        row = self._one(
            "INSERT INTO batches (terminal_id, at) VALUES (?, ?) RETURNING batch_id",
            terminal_id,
            at,
        )
        return int(row[0])

    def finish_batch(self, batch_id: int, accepted: int, refused: int, amount: int) -> None:
        self._run(
            "UPDATE batches SET accepted = ?, refused = ?, amount = ? WHERE batch_id = ?",
            accepted,
            refused,
            amount,
            batch_id,
        )

    def receipt_seen(self, card_id: bytes, atc: int) -> bool:
        row = self._one("SELECT 1 FROM receipts WHERE card_id = ? AND atc = ?", card_id, atc)
        return row is not None

    def add_receipt(self, receipt: ReceiptRecord) -> None:
        self._run(
            "INSERT INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            receipt.card_id,
            receipt.atc,
            receipt.amount,
            receipt.balance,
            receipt.terminal_id,
            receipt.terminal_time,
            receipt.batch_id,
            receipt.raw,
        )

    def receipts(self, card_id: bytes | None = None) -> list[ReceiptRecord]:
        sql = "SELECT * FROM receipts"
        args: tuple[Any, ...] = ()
        if card_id is not None:
            sql, args = sql + " WHERE card_id = ?", (card_id,)
        return [
            ReceiptRecord(*row) for row in self._db.execute(sql + " ORDER BY card_id, atc", args)
        ]

    # blocklist --------------------------------------------
    def blocklist_version(self) -> int:
        return int(self._one("SELECT max(version) FROM blocklist_versions")[0])

    def new_blocklist_version(self, at: int) -> int:
        version = self.blocklist_version() + 1
        self._run("INSERT INTO blocklist_versions VALUES (?, ?)", version, at)
        return version

    def list_card(self, entry: ListEntry) -> None:
        self._run(
            "INSERT INTO blocklist VALUES (?, ?, NULL, ?)",
            entry.card_id,
            entry.added_version,
            entry.lock_order,
        )

    def unlist_card(self, card_id: bytes, version: int) -> None:
        changed = self._run(
            "UPDATE blocklist SET removed_version = ? "
            "WHERE card_id = ? AND removed_version IS NULL",
            version,
            card_id,
        )
        if changed != 1:
            raise RegistryError(f"card {printable_id(card_id)} is not listed")

    def listing(self, card_id: bytes) -> ListEntry | None:
        row = self._one(
            "SELECT card_id, added_version, lock_order FROM blocklist "
            "WHERE card_id = ? AND removed_version IS NULL",
            card_id,
        )
        return None if row is None else ListEntry(*row)

    def listed(self, version: int) -> list[ListEntry]:
        rows = self._db.execute(
            "SELECT card_id, added_version, lock_order FROM blocklist WHERE added_version <= ? "
            "AND (removed_version IS NULL OR removed_version > ?) ORDER BY card_id",
            (version, version),
        )
        return [ListEntry(*row) for row in rows]

    def list_changes(self, since: int, version: int) -> tuple[list[ListEntry], list[bytes]]:
        added = self._db.execute(
            "SELECT card_id, added_version, lock_order FROM blocklist "
            "WHERE added_version > ? AND added_version <= ? "
            "AND (removed_version IS NULL OR removed_version > ?) ORDER BY card_id",
            (since, version, version),
        )
        removed = self._db.execute(
            "SELECT card_id FROM blocklist WHERE added_version <= ? "
            "AND removed_version > ? AND removed_version <= ? ORDER BY card_id",
            (since, since, version),
        )
        return [ListEntry(*row) for row in added], [row[0] for row in removed]

    # audit ------------------------------------------------
    def audit(self, at: int, event: str, card_id: bytes | None, detail: str) -> None:
        self._run(
            "INSERT INTO audit (at, event, card_id, detail) VALUES (?, ?, ?, ?)",
            at,
            event,
            card_id,
            detail,
        )

    def audit_log(self, card_id: bytes | None = None) -> list[AuditEntry]:
        sql = "SELECT seq, at, event, card_id, detail FROM audit"
        args: tuple[Any, ...] = ()
        if card_id is not None:
            sql, args = sql + " WHERE card_id = ?", (card_id,)
        return [AuditEntry(*row) for row in self._db.execute(sql + " ORDER BY seq", args)]


class SQLiteRegistry(Registry):
    """The registry in one SQLite file (or ``:memory:``)."""

    def __init__(self, path: Path | str, *, create: bool = False, durable: bool = True) -> None:
        """Open the registry at ``path``; ``create`` allows a new file.

        ``durable`` (the default) syncs every commit to disk; without it, a
        commit survives a crash of the process but not of the machine.
        """
        self.path = str(path)
        if self.path != ":memory:":
            _check_file(Path(path), create)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._prepare(durable)
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise RegistryError(f"{path}: not an issuer registry ({err})") from None
        except RegistryError:
            self._db.close()
            raise
        self._tx = SQLiteTx(self._db)

    def _prepare(self, durable: bool) -> None:
        db = self._db
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id != APPLICATION_ID and (app_id != 0 or tables):
            raise RegistryError(f"{self.path}: not an issuer registry (another application's)")
        if version > SCHEMA_VERSION:
            raise RegistryError(
                f"{self.path}: registry schema {version} is newer than this code "
                f"({SCHEMA_VERSION}); upgrade purse-card"
            )
        db.execute("PRAGMA foreign_keys = ON")
        if self.path != ":memory:":
            db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        for step in range(version, SCHEMA_VERSION):
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(MIGRATIONS[step]):
                    db.execute(statement)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {step + 1}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    @contextmanager
    def transaction(self) -> Iterator[RegistryTx]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield self._tx
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _check_file(path: Path, create: bool) -> None:
    """Only an SQLite file (or an empty one, or none when creating) may be opened."""
    if not path.exists():
        if not create:
            raise RegistryError(f"{path}: no issuer registry here (run `purse issuer init`)")
        return
    try:
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as err:
        raise RegistryError(f"{path}: cannot read ({err.strerror})") from None
    if head and head != _SQLITE_MAGIC:
        raise RegistryError(f"{path}: not an issuer registry (not an SQLite file)")


def _statements(script: str) -> Iterator[str]:
    """Split a migration into statements (triggers keep their inner semicolons)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer.strip()
            buffer = ""
    if buffer.strip():
        raise RegistryError("migration ends inside a statement")
