"""Transactions of the persistent store (Java Card semantics)."""

from __future__ import annotations

import pytest

from card_os.store import MemoryBackend, Store, TransactionError


def test_commit_makes_writes_durable() -> None:
    backend = MemoryBackend()
    store = Store(backend)
    store.begin()
    store.write("a", b"1")
    store.write("b", b"2")
    assert store.get("a") == b"1"  # visible inside the transaction
    assert backend.load() == {}  # but not yet in the backend
    store.commit()
    assert backend.load() == {"a": b"1", "b": b"2"}


def test_abort_discards_staged_writes() -> None:
    store = Store(MemoryBackend({"a": b"0"}))
    store.begin()
    store.write("a", b"1")
    store.delete("a")
    store.write("c", b"3")
    store.abort()
    assert store.snapshot() == {"a": b"0"}
    assert store.get("c") is None


def test_power_loss_discards_uncommitted_writes() -> None:
    backend = MemoryBackend({"a": b"0"})
    store = Store(backend)
    store.begin()
    store.write("a", b"1")
    store.reload()  # what power-up does
    assert store.get("a") == b"0"
    assert not store.in_transaction


def test_write_outside_transaction_is_atomic_and_immediate() -> None:
    backend = MemoryBackend()
    store = Store(backend)
    store.write("a", b"1")
    assert backend.load() == {"a": b"1"}


def test_non_atomic_write_survives_abort() -> None:
    backend = MemoryBackend({"tries": b"\x03"})
    store = Store(backend)
    store.begin()
    store.write_non_atomic("tries", b"\x02")
    store.write("other", b"x")
    store.abort()
    assert backend.load() == {"tries": b"\x02"}


def test_non_atomic_write_over_staged_cell_is_refused() -> None:
    store = Store(MemoryBackend())
    store.begin()
    store.write("a", b"1")
    with pytest.raises(TransactionError):
        store.write_non_atomic("a", b"2")


def test_transaction_misuse_is_refused() -> None:
    store = Store(MemoryBackend())
    with pytest.raises(TransactionError):
        store.commit()
    store.begin()
    with pytest.raises(TransactionError):
        store.begin()


def test_commit_without_writes_does_not_touch_the_backend() -> None:
    saves: list[str] = []
    store = Store(MemoryBackend(), tear=saves.append)
    store.begin()
    assert store.get("a") is None
    store.commit()
    assert saves == []
