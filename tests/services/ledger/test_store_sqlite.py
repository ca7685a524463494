"""SQLite-only ledger tests: what the store asks SQLite to do."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.kit.storage import SqliteDatabase, StorageConfig, migrate
from services.ledger.store import SQL_DIRECTORY
from services.ledger.store_sqlite import SqliteLedgerStore
from tests.services.ledger.conftest import T0, LedgerDatabases, budget, model_call, reservation

MAKE_COUNTER = "INSERT INTO budget_counters"


@pytest.fixture
async def traced(
    sqlite_path: Path, ledger_databases: LedgerDatabases
) -> AsyncIterator[tuple[SqliteLedgerStore, list[str]]]:
    """A store on a fresh file, and the statements it runs from now on."""
    await migrate(
        ledger_databases.track(StorageConfig("sqlite", sqlite_path, None, "ledger")), SQL_DIRECTORY
    )
    database = await SqliteDatabase.open(sqlite_path)
    statements: list[str] = []
    await database.run(lambda connection: connection.set_trace_callback(statements.append))
    store = SqliteLedgerStore(database)
    try:
        yield store, statements
    finally:
        await database.close()


async def test_a_window_s_counter_is_made_once_not_on_every_spend(
    traced: tuple[SqliteLedgerStore, list[str]],
) -> None:
    # Making a counter sums the window's usage records; doing so on every reserve made
    # each reserve's cost grow with the day's usage.
    store, statements = traced
    await store.create_budget("daily", budget(tokens=10**9), T0)
    first = await store.reserve(reservation(tokens=10), T0)
    made = [s for s in statements if s.lstrip().startswith(MAKE_COUNTER)]
    assert len(made) == 1
    statements.clear()
    for i in range(3):
        held = await store.reserve(reservation(tokens=10), T0)
        await store.settle(held.name.split("/")[-1], [model_call(f"u{i}")], T0)
    await store.settle(first.name.split("/")[-1], [], T0)
    await store.check_budget("acme", "alice", reservation().amounts, T0)
    assert not [s for s in statements if s.lstrip().startswith(MAKE_COUNTER)]
