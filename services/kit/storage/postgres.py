"""asyncpg pools scoped to one service's PostgreSQL schema."""

from __future__ import annotations

import re

import asyncpg  # type: ignore[import-untyped, unused-ignore]

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class SchemaNotFoundError(RuntimeError):
    """The service's schema does not exist: the database has not been migrated yet."""


def validate_schema_name(schema: str) -> str:
    """Return `schema` if it is a safe schema name, else raise ValueError.

    Only lowercase identifiers (at most 63 characters, PostgreSQL's limit) are accepted,
    so a schema name can be put into SQL text without any risk of injection.
    """
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(
            f"invalid schema name {schema!r}: expected a lowercase identifier "
            "(a-z, 0-9, _; not starting with a digit; at most 63 characters)"
        )
    if schema.startswith("pg_"):
        raise ValueError(f"invalid schema name {schema!r}: the pg_ prefix is reserved")
    return schema


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Nothing to reset (see create_pool); asyncpg still rolls back an open transaction."""


def quote_schema(schema: str) -> str:
    """The schema name as a quoted SQL identifier, after validating it."""
    return f'"{validate_schema_name(schema)}"'


async def create_pool(dsn: str, schema: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """Open an asyncpg pool whose connections resolve unqualified names in `schema` only.

    Raises SchemaNotFoundError when the schema does not exist, so a service started on an
    unmigrated database fails at once with a message that says what to do.

    Pooled connections must carry no session state (no LISTEN, no session-level advisory
    lock, no SET): a connection that needs one is opened outside the pool. That lets the
    pool skip asyncpg's RESET query, a round trip on every release.
    """
    validate_schema_name(schema)
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"search_path": schema},
        reset=_keep_session,
    )
    try:
        async with pool.acquire() as connection:
            exists = await schema_exists(connection, schema)
    except BaseException:
        await pool.close()
        raise
    if not exists:
        await pool.close()
        raise SchemaNotFoundError(
            f"PostgreSQL schema {schema!r} does not exist; run `agentrt migrate` first"
        )
    return pool


async def schema_exists(
    connection: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, schema: str
) -> bool:
    """Whether `schema` exists in the connection's database."""
    exists: bool = await connection.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
        validate_schema_name(schema),
    )
    return exists


async def ensure_schema(connection: asyncpg.Connection, schema: str) -> None:
    """Create `schema` unless it exists; used by migrations, never by a running service."""
    # Checked first because CREATE SCHEMA IF NOT EXISTS still demands the CREATE privilege
    # on the database, which a migrator owning a pre-created schema may lack.
    if not await schema_exists(connection, schema):
        await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_schema(schema)}")
