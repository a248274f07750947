"""The card's persistent store, with Java Card transaction semantics.

The store is a map of named cells (``str`` -> ``bytes``). Its committed
content lives in a :class:`Backend` (memory, or an image file), which is
the card's EEPROM: what is there survives power loss, nothing else does.

* :meth:`Store.begin` opens a transaction. Writes inside it are staged and
  become visible to reads at once, but reach the backend only on
  :meth:`Store.commit`, in one atomic backend save.
* :meth:`Store.abort`, an error, or power loss discards the staged writes.
* A write outside a transaction is atomic on its own (it is committed at
  once), as a single field update is on Java Card.
* :meth:`Store.write_non_atomic` reaches the backend at once even inside a
  transaction and is *not* rolled back (``Util.arrayCopyNonAtomic``): for
  counters that a tear must not reset, such as the PIN try counter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from card_os.tear import TearHook, no_tear


class Backend(Protocol):
    """Where committed cells live."""

    def load(self) -> dict[str, bytes]: ...

    def save(self, cells: Mapping[str, bytes], tear: TearHook) -> None: ...


class MemoryBackend:
    """Committed cells held in memory: the fastest card, gone with the process."""

    def __init__(self, cells: Mapping[str, bytes] | None = None) -> None:
        self._cells: dict[str, bytes] = dict(cells or {})

    def load(self) -> dict[str, bytes]:
        return dict(self._cells)

    def save(self, cells: Mapping[str, bytes], tear: TearHook) -> None:
        tear("memory:save")
        self._cells = dict(cells)


class TransactionError(RuntimeError):
    """Misuse of transactions by card code (nested begin, commit without begin)."""


class Store:
    """Named persistent cells with begin / commit / abort."""

    def __init__(self, backend: Backend, tear: TearHook | None = None) -> None:
        self.backend = backend
        self.tear: TearHook = tear or no_tear
        self._committed: dict[str, bytes] = backend.load()
        self._pending: dict[str, bytes | None] | None = None

    # power -----------------------------------------------------------------
    def reload(self) -> None:
        """Power-up: forget everything not committed, read the backend again."""
        self._pending = None
        self._committed = self.backend.load()

    # reads -----------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        pending = self._pending
        if pending is not None and key in pending:
            return pending[key]
        return self._committed.get(key)

    def snapshot(self) -> dict[str, bytes]:
        """The committed cells (what survives a power loss now)."""
        return dict(self._committed)

    # transactions ----------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        return self._pending is not None

    @property
    def dirty(self) -> bool:
        return bool(self._pending)

    def begin(self) -> None:
        if self._pending is not None:
            raise TransactionError("a transaction is already open")
        self._pending = {}

    def abort(self) -> None:
        self._pending = None

    def commit(self) -> None:
        pending = self._pending
        if pending is None:
            raise TransactionError("commit without a transaction")
        if pending:
            self.tear("commit:begin")
            self._save(pending)
            self.tear("commit:done")
        self._pending = None

    # writes ----------------------------------------------------------------
    def write(self, key: str, value: bytes | None) -> None:
        """Write (``None`` deletes) a cell; staged when a transaction is open."""
        self.tear(f"write:{key}")
        if self._pending is not None:
            self._pending[key] = value
        else:
            self._save({key: value})

    def delete(self, key: str) -> None:
        self.write(key, None)

    def write_non_atomic(self, key: str, value: bytes) -> None:
        """Write through to the backend now; an abort does not undo it."""
        pending = self._pending
        if pending is not None and key in pending:
            raise TransactionError(f"cell {key!r} already has a transactional write")
        self.tear(f"write-through:{key}")
        self._save({key: value})

    def _save(self, changes: Mapping[str, bytes | None]) -> None:
        cells = dict(self._committed)
        for key, value in changes.items():
            if value is None:
                cells.pop(key, None)
            else:
                cells[key] = value
        self.backend.save(cells, self.tear)
        self._committed = cells
