"""The SQLite registry: its file, its migrations, its audit log, and one transaction per decision.

The file is marked as the issuer's (``application_id``), carries its schema
version and is refused, unchanged, when it is not ours or newer than the
code. The audit log cannot be rewritten. Every decision of the centre is
atomic: :class:`FaultyRegistry` wraps a real registry and makes the N-th
registry call of a decision fail; for every N the database dump must be
byte-identical to the one before the decision. A refused decision writes its
one audit row and nothing else.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, cast

import pytest

from issuer import sqlite_registry
from issuer.centre import REGISTRY_FILE, IssuerCentre, card_id_for
from issuer.errors import Refused, RegistryError
from issuer.registry import CardState, Registry, RegistryTx, Renewal
from issuer.settlement import SettlementItem
from issuer.sqlite_registry import APPLICATION_ID, SCHEMA_VERSION, SQLiteRegistry
from tests.issuer_kit import POS_ID, T0, CardHandle, IssuerRig, blank_card, make_issuer

Rows = list[tuple[Any, ...]]
# tables an audit write touches: the log itself and its AUTOINCREMENT counter
AUDIT_TABLES = frozenset({"audit", "sqlite_sequence"})
COUNTERS = frozenset({"counters"})


# database helpers -------------------------------------------------------------------------
def registry_path(rig: IssuerRig) -> Path:
    return rig.folder / REGISTRY_FILE


def connect(path: Path) -> closing[sqlite3.Connection]:
    """A second connection to the file, beside the registry's own."""
    return closing(sqlite3.connect(path, isolation_level=None))


def dump(path: Path) -> bytes:
    """The whole database as SQL text, as ``sqlite3 .dump`` writes it."""
    with connect(path) as db:
        return "\n".join(db.iterdump()).encode()


def db_tables(path: Path) -> dict[str, Rows]:
    """Every table's rows, in a fixed order (by all columns)."""
    with connect(path) as db:
        names = [
            row[0]
            for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")
        ]
        out: dict[str, Rows] = {}
        for name in names:
            width = len(db.execute(f'PRAGMA table_info("{name}")').fetchall())
            order = ", ".join(str(i) for i in range(1, width + 1))
            out[name] = db.execute(f'SELECT * FROM "{name}" ORDER BY {order}').fetchall()
        return out


def without(tables: dict[str, Rows], names: frozenset[str]) -> dict[str, Rows]:
    return {name: rows for name, rows in tables.items() if name not in names}


def card_counter(tables: dict[str, Rows]) -> int:
    """The last card number handed out (0 before the first)."""
    values = {str(name): int(value) for name, value in tables["counters"]}
    return values.get("card", 0)


def audit_rows(path: Path) -> Rows:
    return db_tables(path)["audit"]


def pragma(db: sqlite3.Connection, name: str) -> Any:
    return db.execute(f"PRAGMA {name}").fetchone()[0]


def assert_refused_unchanged(path: Path, message: str, *, create: bool = False) -> None:
    """Opening ``path`` is refused with ``message`` and leaves the file's bytes as they were."""
    before = path.read_bytes() if path.exists() else None
    with pytest.raises(RegistryError, match=message):
        SQLiteRegistry(path, create=create)
    after = path.read_bytes() if path.exists() else None
    assert after == before


def make_sqlite_file(path: Path, *statements: str) -> None:
    with connect(path) as db:
        for statement in statements:
            db.execute(statement)


# the file ----------------------------------------------------------------------------------
def test_new_registry_is_marked_versioned_wal_with_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    registry = SQLiteRegistry(path, create=True)
    try:
        assert registry.schema_version == SCHEMA_VERSION
        # foreign_keys is a setting of a connection: ask the registry's own
        assert pragma(registry._db, "foreign_keys") == 1
        with connect(path) as db:
            assert pragma(db, "application_id") == APPLICATION_ID == 0x50555253
            assert pragma(db, "user_version") == SCHEMA_VERSION
            assert pragma(db, "journal_mode") == "wal"
    finally:
        registry.close()


def test_reopening_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    registry = SQLiteRegistry(path, create=True)
    with registry.transaction() as tx:
        tx.add_holder("Alice")
        tx.adjust_holder("Alice", 500)
    registry.close()
    again = SQLiteRegistry(path)
    try:
        with again.transaction() as tx:
            assert tx.holder_balance("Alice") == 500
    finally:
        again.close()


@pytest.mark.parametrize(
    "statements",
    [
        pytest.param((), id="zero-byte file"),
        pytest.param(("PRAGMA page_size = 4096", "VACUUM"), id="sqlite header, no tables"),
    ],
)
def test_a_version_0_file_is_migrated(tmp_path: Path, statements: tuple[str, ...]) -> None:
    path = tmp_path / "registry.sqlite"
    path.write_bytes(b"")
    make_sqlite_file(path, *statements)
    registry = SQLiteRegistry(path, create=True)
    try:
        assert registry.schema_version == SCHEMA_VERSION
        with registry.transaction() as tx:
            assert tx.blocklist_version() == 0
            assert tx.audit_log() == []
    finally:
        registry.close()
    with connect(path) as db:
        assert pragma(db, "application_id") == APPLICATION_ID


def test_a_new_migration_upgrades_an_older_file_and_keeps_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "registry.sqlite"
    old = SQLiteRegistry(path, create=True)
    with old.transaction() as tx:
        tx.add_holder("Alice")
    old.close()
    step = "CREATE TABLE notes (text TEXT NOT NULL);\nINSERT INTO notes VALUES ('v2');\n"
    monkeypatch.setattr(sqlite_registry, "MIGRATIONS", (*sqlite_registry.MIGRATIONS, step))
    monkeypatch.setattr(sqlite_registry, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    upgraded = SQLiteRegistry(path)
    try:
        assert upgraded.schema_version == SCHEMA_VERSION + 1
        with upgraded.transaction() as tx:
            assert tx.holder_balance("Alice") == 0
    finally:
        upgraded.close()
    assert db_tables(path)["notes"] == [("v2",)]


def test_a_failing_migration_leaves_the_file_at_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "registry.sqlite"
    SQLiteRegistry(path, create=True).close()
    before = dump(path)
    broken = "CREATE TABLE notes (text TEXT);\nINSERT INTO no_such_table VALUES (1);\n"
    monkeypatch.setattr(sqlite_registry, "MIGRATIONS", (*sqlite_registry.MIGRATIONS, broken))
    monkeypatch.setattr(sqlite_registry, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RegistryError):
        SQLiteRegistry(path)
    assert dump(path) == before
    with connect(path) as db:
        assert pragma(db, "user_version") == SCHEMA_VERSION


def test_a_file_from_a_newer_version_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    SQLiteRegistry(path, create=True).close()
    make_sqlite_file(path, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    assert_refused_unchanged(path, "newer than this code")
    assert_refused_unchanged(path, "newer than this code", create=True)


def test_a_bare_future_file_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    make_sqlite_file(
        path,
        f"PRAGMA application_id = {APPLICATION_ID}",
        f"PRAGMA user_version = {SCHEMA_VERSION + 1}",
    )
    assert_refused_unchanged(path, "newer than this code", create=True)


@pytest.mark.parametrize(
    "statements",
    [
        pytest.param(("CREATE TABLE notes (text TEXT)",), id="tables, application_id 0"),
        pytest.param(
            ("CREATE TABLE notes (text TEXT)", "INSERT INTO notes VALUES ('mine')"),
            id="tables with rows",
        ),
        pytest.param(("PRAGMA application_id = 1234",), id="another application_id"),
    ],
)
def test_another_applications_file_is_refused_unchanged(
    tmp_path: Path, statements: tuple[str, ...]
) -> None:
    path = tmp_path / "other.sqlite"
    make_sqlite_file(path, *statements)
    assert_refused_unchanged(path, "not an issuer registry", create=True)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"\x00\x01", id="2 bytes"),
        pytest.param(b"hello, world\n", id="text"),
        pytest.param(bytes(range(256)) * 3, id="768 bytes"),
        pytest.param(b"SQLite format 3\x00" + b"\xff" * 200, id="sqlite magic, garbage header"),
        pytest.param(bytes((i * 37 + 11) % 256 for i in range(8192)), id="8 KiB"),
    ],
)
def test_a_file_of_random_bytes_is_refused_unchanged(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "registry.sqlite"
    path.write_bytes(content)
    assert_refused_unchanged(path, "not an issuer registry")


def test_a_one_byte_file_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    path.write_bytes(b"x")
    assert_refused_unchanged(path, "not an issuer registry")


def test_a_missing_file_is_refused_without_create(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.sqlite"
    with pytest.raises(RegistryError, match="no issuer registry"):
        SQLiteRegistry(path)
    assert not path.exists()


# the audit log and the schema's constraints -----------------------------------------------
@pytest.fixture
def audited(tmp_path: Path) -> Path:
    """A closed registry file with three audit rows."""
    path = tmp_path / "registry.sqlite"
    registry = SQLiteRegistry(path, create=True)
    with registry.transaction() as tx:
        for n in range(3):
            tx.audit(T0 + n, "deposit", None, f"entry {n}")
    registry.close()
    return path


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit SET detail = 'rewritten' WHERE seq = 2",
        "UPDATE audit SET at = at + 1",
        "DELETE FROM audit WHERE seq = 1",
        "DELETE FROM audit",
        "INSERT INTO audit VALUES (1, 0, 'forged', NULL, '') ON CONFLICT(seq) DO UPDATE SET at = 0",
    ],
)
def test_the_audit_log_is_append_only(audited: Path, statement: str) -> None:
    before = audit_rows(audited)
    with connect(audited) as db, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute(statement)
    assert audit_rows(audited) == before


def test_insert_or_replace_cannot_rewrite_the_audit_log(audited: Path) -> None:
    before = audit_rows(audited)
    with connect(audited) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT OR REPLACE INTO audit VALUES (1, 0, 'forged', NULL, 'rewritten')")
    assert audit_rows(audited) == before


def test_appending_to_the_audit_log_works(audited: Path) -> None:
    with connect(audited) as db:
        db.execute("INSERT INTO audit (at, event, card_id, detail) VALUES (1, 'x', NULL, '')")
    assert [row[0] for row in audit_rows(audited)] == [1, 2, 3, 4]


def test_foreign_keys_are_enforced(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    registry = SQLiteRegistry(path, create=True)
    before = dump(path)
    renewal = Renewal(b"P9999999", 1, T0, T0 + 1, 1, 0, "Nobody")
    try:
        with (
            pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"),
            registry.transaction() as tx,
        ):
            tx.add_renewal(renewal, T0)
        with (
            pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"),
            registry.transaction() as tx,
        ):
            tx.add_batch(b"NOSUCHTM", T0)
    finally:
        registry.close()
    assert dump(path) == before


# one transaction per decision --------------------------------------------------------------
class InjectedFault(RuntimeError):
    """The failure FaultyRegistry injects: a crash in the middle of a decision."""


class _CountingTx:
    """Stands for a RegistryTx: forwards every method call, counting it on its registry."""

    def __init__(self, tx: RegistryTx, owner: FaultyRegistry) -> None:
        self._tx = tx
        self._owner = owner

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._tx, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            number = self._owner.count()
            if not self._owner.after:
                self._owner.maybe_fail(number, name)
            result = method(*args, **kwargs)
            if self._owner.after:
                self._owner.maybe_fail(number, name)
            return result

        return call


class FaultyRegistry(Registry):
    """A real registry whose ``fail_at``-th transaction call (from 0) raises InjectedFault.

    ``after`` chooses whether the failing call is made first (a crash just
    after a write) or not at all (a crash just before it).
    """

    def __init__(self, inner: Registry) -> None:
        self.inner = inner
        self.fail_at: int | None = None
        self.after = False
        self.calls = 0

    def arm(self, fail_at: int | None, *, after: bool = False) -> None:
        self.fail_at, self.after, self.calls = fail_at, after, 0

    def count(self) -> int:
        """The number of the call being made (from 0)."""
        self.calls += 1
        return self.calls - 1

    def maybe_fail(self, number: int, name: str) -> None:
        if number == self.fail_at:
            raise InjectedFault(f"call {number} ({name})")

    @contextmanager
    def transaction(self) -> Iterator[RegistryTx]:
        with self.inner.transaction() as tx:
            yield cast(RegistryTx, _CountingTx(tx, self))

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[tuple[IssuerRig, FaultyRegistry]]:
    """A rig whose centre (same keys, same clock, same file) runs on a FaultyRegistry."""
    base = make_issuer(tmp_path)
    base.centre.close()
    registry = FaultyRegistry(SQLiteRegistry(registry_path(base)))
    centre = IssuerCentre(registry, base.centre.keys, base.clock)
    rig = IssuerRig(centre, base.clock, base.folder)
    _ = centre.policy  # read (and cached) before any fault is armed
    yield rig, registry
    centre.close()


def funded_card(rig: IssuerRig, holder: str = "Alice", load: int = 2_000) -> CardHandle:
    handle = rig.new_card(holder)
    rig.centre.deposit(holder, 10_000)
    rig.session(handle, load=load)
    return handle


Decision = Callable[[], object]


def online_with_load(rig: IssuerRig) -> Decision:
    """A second session: resolves the first update, records the request, loads, renews."""
    handle = funded_card(rig)
    handle.pay(150, T0 + 60)
    request = rig.request(handle)
    return lambda: rig.centre.online_session(request, 500)


def settlement_batch(rig: IssuerRig) -> Decision:
    alice, bob = funded_card(rig, "Alice"), funded_card(rig, "Bob")
    first = alice.item(alice.pay(100, T0 + 60))
    second = alice.item(alice.pay(200, T0 + 120))
    third = bob.item(bob.pay(300, T0 + 180))
    forged = SettlementItem(third.receipt[:-1] + bytes([third.receipt[-1] ^ 1]), third.certificate)
    items = [first, second, forged, third, first]
    return lambda: rig.centre.settle(POS_ID, items)


def report_stolen(rig: IssuerRig) -> Decision:
    handle = funded_card(rig)
    return lambda: rig.centre.report(handle.card_id, CardState.STOLEN)


def found_again(rig: IssuerRig) -> Decision:
    handle = funded_card(rig)
    rig.centre.report(handle.card_id, CardState.LOST)
    return lambda: rig.centre.found(handle.card_id)


def deposit(rig: IssuerRig) -> Decision:
    return lambda: rig.centre.deposit("New Holder", 700)


DECISIONS: dict[str, Callable[[IssuerRig], Decision]] = {
    "online session with a load": online_with_load,
    "settlement of a batch": settlement_batch,
    "report stolen": report_stolen,
    "found": found_again,
    "deposit to a new holder": deposit,
}


def calls_until_success(
    registry: FaultyRegistry, path: Path, decision: Decision, after: bool
) -> int:
    """Fail the decision at call 0, 1, 2, ... until it succeeds; each failure changes nothing."""
    before = dump(path)
    for n in itertools.count():
        registry.arm(n, after=after)
        try:
            decision()
        except InjectedFault:
            assert dump(path) == before, f"a fault at call {n} left a change behind"
            continue
        finally:
            registry.arm(None)
        assert dump(path) != before
        return n
    raise AssertionError("unreachable")


@pytest.mark.parametrize("after", [False, True], ids=["crash before a call", "crash after a call"])
@pytest.mark.parametrize("name", list(DECISIONS))
def test_a_decision_failing_at_any_call_changes_nothing(
    faulty: tuple[IssuerRig, FaultyRegistry], name: str, after: bool
) -> None:
    rig, registry = faulty
    decision = DECISIONS[name](rig)
    calls = calls_until_success(registry, registry_path(rig), decision, after)
    assert calls >= 3  # the decision really was interrupted at several points


def test_a_session_interrupted_then_answered_delivers_its_update(
    faulty: tuple[IssuerRig, FaultyRegistry],
) -> None:
    """The rolled-back attempts did not keep the request's nonce: the same request succeeds."""
    rig, registry = faulty
    handle = funded_card(rig)
    request = rig.request(handle)
    for n in range(4):
        registry.arm(n)
        with pytest.raises(InjectedFault):
            rig.centre.online_session(request, 300)
    registry.arm(None)
    reply = rig.centre.online_session(request, 300)
    handle.client.issuer_update(reply.envelope)
    assert handle.client.status().balance == 2_300


def test_an_interrupted_issue_changes_nothing_but_its_reserved_card_number(
    faulty: tuple[IssuerRig, FaultyRegistry],
) -> None:
    """Issuing is two decisions around the card's personalisation.

    The card number is reserved first (a counter that is never reused, as
    ``RegistryTx.next_number`` promises), then the card is registered: a fault
    in the second part leaves the number used up and nothing else.
    """
    rig, registry = faulty
    path = registry_path(rig)
    before = db_tables(path)
    reserved = card_counter(before)
    for n in itertools.count():
        _, client = blank_card()
        registry.arm(n)
        try:
            card_id, _ = rig.centre.issue(client, "Bob", b"5678")
        except InjectedFault:
            after = db_tables(path)
            assert without(after, COUNTERS) == without(before, COUNTERS)
            if n > 0:  # call 0 is the reservation itself
                reserved += 1
            assert card_counter(after) == reserved
            continue
        finally:
            registry.arm(None)
        assert card_id == card_id_for(reserved + 1)
        assert n >= 3
        break
    assert [card.card_id for card in rig.centre.cards()] == [card_id]


# a refusal writes its audit row and nothing else ----------------------------------------------
def refused_unknown_card(rig: IssuerRig, handle: CardHandle) -> Decision:
    return lambda: rig.centre.report(b"P9999999", CardState.LOST)


def refused_bad_reason(rig: IssuerRig, handle: CardHandle) -> Decision:
    return lambda: rig.centre.report(handle.card_id, CardState.TERMINATED)


def refused_not_reported(rig: IssuerRig, handle: CardHandle) -> Decision:
    return lambda: rig.centre.found(handle.card_id)


def refused_insufficient_funds(rig: IssuerRig, handle: CardHandle) -> Decision:
    request = rig.request(handle)
    return lambda: rig.centre.online_session(request, 9_000)


def refused_replay(rig: IssuerRig, handle: CardHandle) -> Decision:
    request = rig.request(handle)
    rig.centre.online_session(request)
    return lambda: rig.centre.online_session(request)


def refused_clone(rig: IssuerRig, handle: CardHandle) -> Decision:
    stale = rig.request(handle)  # the card's counter before a payment and a session
    handle.pay(100, T0 + 60)
    rig.session(handle)
    return lambda: rig.centre.online_session(stale)


def refused_unknown_terminal(rig: IssuerRig, handle: CardHandle) -> Decision:
    item = handle.item(handle.pay(100, T0 + 60))
    return lambda: rig.centre.settle(b"POS99999", [item])


def refused_unknown_version(rig: IssuerRig, handle: CardHandle) -> Decision:
    return lambda: rig.centre.blocklist(since=7)


REFUSALS: dict[str, Callable[[IssuerRig, CardHandle], Decision]] = {
    "unknown_card": refused_unknown_card,
    "bad_reason": refused_bad_reason,
    "not_reported": refused_not_reported,
    "insufficient_account_funds": refused_insufficient_funds,
    "replayed_request": refused_replay,
    "clone_suspected": refused_clone,
    "unknown_terminal": refused_unknown_terminal,
    "unknown_version": refused_unknown_version,
}


def assert_only_audited(rig: IssuerRig, reason: str, decision: Decision) -> None:
    """``decision`` is refused for ``reason``, and only one audit row is written."""
    path = registry_path(rig)
    before = db_tables(path)
    with pytest.raises(Refused) as refusal:
        decision()
    assert refusal.value.reason == reason
    after = db_tables(path)
    assert without(after, AUDIT_TABLES) == without(before, AUDIT_TABLES)
    assert after["audit"][: len(before["audit"])] == before["audit"]
    added = after["audit"][len(before["audit"]) :]
    assert len(added) == 1
    _seq, at, event, _card_id, _detail = added[0]
    assert (at, event) == (rig.clock(), f"refused_{reason}")


@pytest.mark.parametrize("reason", list(REFUSALS))
def test_a_refused_decision_writes_one_audit_row_and_nothing_else(
    tmp_path: Path, reason: str
) -> None:
    rig = make_issuer(tmp_path)
    handle = funded_card(rig)
    assert_only_audited(rig, reason, REFUSALS[reason](rig, handle))
