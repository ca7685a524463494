"""The running systems the fuzz tests call: one on SQLite, one on PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import pytest
import redis.asyncio

from tests.conftest import PG_ADMIN_DSN, REDIS_URL, _admin, _with_database
from tests.rpc_fuzz.system import RunningSystem, running_system


@pytest.fixture(scope="module")
def sqlite_fuzz_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    with running_system(tmp_path_factory.mktemp("fuzz-sqlite")) as system:
        yield system


@pytest.fixture(scope="module")
def pg_fuzz_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    database = f"agentrt_test_{secrets.token_hex(6)}"
    asyncio.run(_admin(f"CREATE DATABASE {database} TEMPLATE template0"))
    prefix = f"agentrt-test:{secrets.token_hex(6)}:"
    try:
        with running_system(
            tmp_path_factory.mktemp("fuzz-pg"),
            database_url=_with_database(PG_ADMIN_DSN, database),
            redis_url=REDIS_URL,
            redis_prefix=prefix,
        ) as system:
            yield system
    finally:
        asyncio.run(_admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        asyncio.run(_unlink_prefix(prefix))


async def _unlink_prefix(prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await client.unlink(*keys)
    finally:
        await client.aclose()
