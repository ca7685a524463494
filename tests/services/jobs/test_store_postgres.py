"""What only the PostgreSQL job store does: one relay at a time across replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from services.jobs.store import SQL_DIRECTORY
from services.jobs.store_postgres import PostgresJobStore
from services.kit.storage import StorageConfig, migrate
from tests.services.jobs.conftest import create

pytestmark = pytest.mark.integration


@pytest.fixture
async def replicas(pg_dsn: str) -> AsyncIterator[tuple[PostgresJobStore, PostgresJobStore]]:
    """Two stores on one database, as two replicas of the jobs service would have."""
    await migrate(StorageConfig("postgres", None, pg_dsn, "jobs"), SQL_DIRECTORY)
    first = await PostgresJobStore.open(pg_dsn, "jobs")
    second = await PostgresJobStore.open(pg_dsn, "jobs")
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def eventually_locks(store: PostgresJobStore, timeout: float = 20.0) -> bool:
    """Whether `store` takes the relay lock within `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await store.try_lock_relay():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_only_one_replica_relays_at_a_time(
    replicas: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    first, second = replicas
    await create(first)

    assert await first.try_lock_relay()
    assert await first.try_lock_relay()
    assert not await second.try_lock_relay()
    assert await second.fetch_unpublished(10) == []
    assert len(await first.fetch_unpublished(10)) == 1

    await first.close()
    # Closing sends the session's end; the server releases its lock once the backend exits.
    assert await eventually_locks(second)
    assert len(await second.fetch_unpublished(10)) == 1


async def test_the_lock_passes_on_when_the_relays_connection_dies(
    pg_dsn: str, replicas: tuple[PostgresJobStore, PostgresJobStore]
) -> None:
    first, second = replicas
    await create(first)
    assert await first.try_lock_relay()

    admin = await asyncpg.connect(pg_dsn)
    try:
        holder = await admin.fetchval(
            "SELECT pid FROM pg_locks JOIN pg_database ON pg_database.oid = pg_locks.database "
            "WHERE locktype = 'advisory' AND granted AND datname = current_database()"
        )
        # With a timeout, it returns once the backend has exited, releasing its locks.
        assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", holder)
    finally:
        await admin.close()

    assert await eventually_locks(second)
    assert len(await second.fetch_unpublished(10)) == 1
    try:
        rows = await first.fetch_unpublished(10)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        # Its connection died under it; the next call reconnects and finds the lock taken.
        rows = await first.fetch_unpublished(10)
    assert rows == []
    assert not await first.try_lock_relay()
