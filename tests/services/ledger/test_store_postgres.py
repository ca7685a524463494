"""PostgreSQL-only ledger tests: several replicas (pools) on one database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from services.kit.storage import StorageConfig, migrate
from services.ledger.records import Quantities
from services.ledger.store import SQL_DIRECTORY
from services.ledger.store_postgres import PostgresLedgerStore
from tests.services.ledger.conftest import T0, LedgerDatabases, budget
from tests.services.ledger.test_store_conformance import race

pytestmark = pytest.mark.integration


@pytest.fixture
async def replicas(
    pg_dsn: str, ledger_databases: LedgerDatabases
) -> AsyncIterator[tuple[PostgresLedgerStore, PostgresLedgerStore]]:
    """Two stores with a pool each on one migrated database, as two replicas would have."""
    config = ledger_databases.track(StorageConfig("postgres", None, pg_dsn, "ledger"))
    await migrate(config, SQL_DIRECTORY)
    first = await PostgresLedgerStore.open(pg_dsn, "ledger")
    second = await PostgresLedgerStore.open(pg_dsn, "ledger")
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def test_two_replicas_never_admit_more_than_fits(
    replicas: tuple[PostgresLedgerStore, PostgresLedgerStore],
) -> None:
    first, second = replicas
    for round_number in range(200):
        tenant = f"t{round_number}"
        await first.create_budget(f"b{round_number}", budget(tenant=tenant, tokens=100), T0)
        admitted = await race(first, second, tenant)
        assert admitted == 1, f"round {round_number}: {admitted} reservations admitted"


async def test_a_budget_created_while_usage_is_being_recorded_counts_that_usage(
    replicas: tuple[PostgresLedgerStore, PostgresLedgerStore], pg_dsn: str
) -> None:
    store = replicas[0]
    recorder = await asyncpg.connect(pg_dsn, server_settings={"search_path": "ledger"})
    try:
        # A recording transaction that has inserted its record and found no budget yet.
        await recorder.execute("BEGIN")
        await recorder.execute(
            "INSERT INTO usage_records VALUES ('inflight', '\\x00', 'acme', 'alice', 1, 'm1',"
            " '', '', '', '', '', 100, 50, 0, NULL, $1, $1)",
            T0,
        )
        creating = asyncio.create_task(store.create_budget("daily", budget(tokens=1000), T0))
        await _until_blocked_or_done(recorder, creating)
        # Makes the counter now: it must not miss the record in flight.
        await store.check_budget("acme", "alice", Quantities(), T0)
        await recorder.execute("COMMIT")
    finally:
        await recorder.close()
    await creating

    response = await store.check_budget("acme", "alice", Quantities(), T0)
    assert [s.spent.tokens for s in response.budgets] == [150]


async def _until_blocked_or_done(
    connection: asyncpg.Connection, task: asyncio.Task[object]
) -> None:
    """Wait until `task` ended or waits for a lock on usage_records."""
    async with asyncio.timeout(5):
        while not task.done():
            waiting = await connection.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted"
                " AND relation = 'ledger.usage_records'::regclass"
            )
            if waiting:
                return
            await asyncio.sleep(0.01)
