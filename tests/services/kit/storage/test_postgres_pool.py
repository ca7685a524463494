"""Tests of the schema-scoped asyncpg pool, against the real PostgreSQL."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from services.kit.storage import (
    SchemaNotFoundError,
    create_pool,
    ensure_schema,
    validate_schema_name,
)


@pytest.mark.integration
async def test_pg_dsn_is_a_fresh_empty_database_of_its_own(pg_dsn: str) -> None:
    connection = await asyncpg.connect(pg_dsn)
    try:
        name = await connection.fetchval("SELECT current_database()")
        tables = await connection.fetchval(
            "SELECT count(*) FROM pg_catalog.pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )
    finally:
        await connection.close()
    assert name.startswith("agentrt_test_")
    assert tables == 0


@pytest.mark.integration
async def test_pool_connections_resolve_names_in_the_service_schema(pg_dsn: str) -> None:
    admin = await asyncpg.connect(pg_dsn)
    try:
        await ensure_schema(admin, "jobs")
        await ensure_schema(admin, "jobs")
        await admin.execute("CREATE TABLE public.items (label TEXT)")
        await admin.execute("INSERT INTO public.items VALUES ('public')")
        await admin.execute("CREATE TABLE jobs.items (label TEXT)")
        await admin.execute("INSERT INTO jobs.items VALUES ('jobs')")
    finally:
        await admin.close()

    pool = await create_pool(pg_dsn, "jobs", min_size=1, max_size=2)
    try:
        async with pool.acquire() as first, pool.acquire() as second:
            assert await first.fetchval("SHOW search_path") == "jobs"
            assert await second.fetchval("SELECT label FROM items") == "jobs"
            await first.execute("CREATE TABLE leases (job TEXT)")
            assert await first.fetchval("SELECT to_regclass('jobs.leases') IS NOT NULL")
            assert await first.fetchval("SELECT to_regclass('public.leases') IS NULL")
    finally:
        await pool.close()


@pytest.mark.integration
async def test_a_missing_schema_fails_with_a_message_naming_it(pg_dsn: str) -> None:
    with pytest.raises(SchemaNotFoundError, match=r"'ledger' does not exist.*agentrt migrate"):
        await create_pool(pg_dsn, "ledger")


@pytest.mark.parametrize(
    "schema",
    ["", "Jobs", "jobs;drop schema public", 'jobs"', "1jobs", "pg_jobs", "j" * 64],
)
async def test_unsafe_schema_names_are_rejected_before_connecting(schema: str) -> None:
    with pytest.raises(ValueError, match="invalid schema name"):
        validate_schema_name(schema)
    with pytest.raises(ValueError, match="invalid schema name"):
        await create_pool("postgresql://nobody@127.0.0.1:1/none", schema)
