"""Fixtures shared by every test: a fresh PostgreSQL database, a Redis key prefix, a SQLite file.

Each test gets its own PostgreSQL database, created from template0 (measured at 10-100 ms
on the development machines, so no session-wide template database is needed) and dropped
with FORCE afterwards, and its own Redis key prefix, whose keys are unlinked afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
import redis.asyncio

from services.dev import LocalSystem, local_system

PG_ADMIN_DSN = os.environ.get("AGENTRT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
"""A database to connect to while creating and dropping the per-test databases."""

REDIS_URL = os.environ.get("AGENTRT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    """The DSN of a fresh, empty PostgreSQL database, dropped after the test."""
    database = f"agentrt_test_{secrets.token_hex(6)}"
    await _admin(f"CREATE DATABASE {database} TEMPLATE template0")
    try:
        yield _with_database(PG_ADMIN_DSN, database)
    finally:
        await _admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


async def _admin(statement: str) -> None:
    # A short-lived connection, so that no admin connection sits idle during the test.
    connection = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis server the tests use."""
    return REDIS_URL


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix unique to the test; every key under it is deleted after the test."""
    prefix = f"agentrt-test:{secrets.token_hex(6)}:"
    yield prefix
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
        for start in range(0, len(keys), 500):
            await client.unlink(*keys[start : start + 500])
    finally:
        await client.aclose()


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """A SQLite file path in the test's temporary directory (not created yet)."""
    return tmp_path / "store.sqlite3"


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[LocalSystem]:
    """Every service in this process on SQLite and in-process events (as `agentrt dev`)."""
    async with local_system(tmp_path / "data") as running:
        yield running


@pytest.fixture
async def pg_system(
    tmp_path: Path, pg_dsn: str, redis_url: str, redis_prefix: str
) -> AsyncIterator[LocalSystem]:
    """Every service in this process on PostgreSQL and Redis."""
    async with local_system(
        tmp_path / "data", database_url=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix
    ) as running:
        yield running
