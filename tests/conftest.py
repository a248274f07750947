"""Fixtures shared across test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pcsc_kit import PcscStack, pcsc_stack


@pytest.fixture(scope="session")
def pcsc() -> Iterator[PcscStack]:
    """pcscd with the vpcd readers (started here if needed); skip or fail if impossible."""
    yield from pcsc_stack()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the PC/SC stack carries the ``pcsc`` marker."""
    for item in items:
        if "pcsc" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pcsc)
