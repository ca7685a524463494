"""Versioned SQL migrations (`NNNN_<name>.sql`) for PostgreSQL schemas and SQLite files.

Each service keeps its migrations in `sql/postgres/migrations/` and `sql/sqlite/migrations/`,
numbered from 0001 without gaps. Each migration runs in its own transaction together with
its row in `schema_migrations`, so it is applied entirely or not at all; a migration must
therefore not contain BEGIN/COMMIT (nor PostgreSQL statements that refuse to run inside a
transaction, such as CREATE INDEX CONCURRENTLY). An applied migration must never be edited:
its recorded checksum is compared with the file on every run.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from services.kit.storage.postgres import (
    ensure_schema,
    quote_schema,
    schema_exists,
    validate_schema_name,
)
from services.kit.storage.sqlite import SqliteDatabase

_FILE_NAME = re.compile(r"(?P<version>[0-9]{4})_(?P<name>[a-z0-9_]+)\.sql")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at {timestamp} NOT NULL DEFAULT CURRENT_TIMESTAMP
)"""


class MigrationError(RuntimeError):
    """Migrations are malformed or disagree with what the database has recorded."""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    """Its number, from 1, with no gaps."""
    name: str
    """What it does, from the file name (`0003_add_leases.sql` → `add_leases`)."""
    path: Path
    sql: str
    checksum: str
    """SHA-256 of the SQL text (line endings normalised), recorded when applied."""


def discover_migrations(directory: Path) -> list[Migration]:
    """Read the migrations in `directory`, checking their names and numbering.

    Files not ending in `.sql` are ignored; a `.sql` file not named `NNNN_<name>.sql`, a
    duplicate number or a gap in the numbering is a MigrationError.
    """
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    migrations = sorted(
        (_read_migration(path) for path in directory.iterdir() if path.suffix == ".sql"),
        key=lambda migration: migration.version,
    )
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"{migration.path}: expected migration {expected:04d} here "
                "(numbers start at 0001 and increase by one, without gaps or duplicates)"
            )
    return migrations


def _read_migration(path: Path) -> Migration:
    match = _FILE_NAME.fullmatch(path.name)
    if not match:
        raise MigrationError(f"{path}: a migration file must be named NNNN_<name>.sql")
    sql = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    checksum = hashlib.sha256(sql.encode()).hexdigest()
    return Migration(int(match["version"]), match["name"], path, sql, checksum)


def _plan_migrations(
    migrations: Iterable[Migration], applied: Mapping[int, str]
) -> list[Migration]:
    """The migrations still to apply, given the checksums recorded by version.

    Versions recorded beyond the newest file (a database migrated by a newer release) are
    accepted. An edited applied migration, or a pending one older than an applied one, is a
    MigrationError.
    """
    pending = []
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is None:
            pending.append(migration)
        elif recorded != migration.checksum:
            raise MigrationError(
                f"{migration.path} was edited after it was applied (recorded checksum "
                f"{recorded}, file {migration.checksum}); add a new migration instead"
            )
    if pending and applied and pending[0].version < max(applied):
        raise MigrationError(
            f"{pending[0].path} is not applied but a later migration ({max(applied):04d}) is"
        )
    return pending


async def migrate_postgres(dsn: str, service: str, directory: Path) -> list[int]:
    """Apply the pending migrations of `service` to its schema (named after the service).

    Creates the schema and `schema_migrations` when missing. Every step holds a
    transaction-level advisory lock for the schema, so concurrent migrators apply each
    migration exactly once. Returns the versions this call applied.
    """
    validate_schema_name(service)
    migrations = discover_migrations(directory)
    # The migrations' own SQL names its tables unqualified, as the service's queries do.
    connection = await asyncpg.connect(dsn, server_settings={"search_path": service})
    try:
        async with connection.transaction():
            await _lock_schema(connection, service)
            await ensure_schema(connection, service)
            table = f"{quote_schema(service)}.schema_migrations"
            await connection.execute(_CREATE_TABLE.format(table=table, timestamp="TIMESTAMPTZ"))
        applied: list[int] = []
        while (version := await _apply_next_postgres(connection, service, migrations)) is not None:
            applied.append(version)
        return applied
    finally:
        await connection.close()


async def _apply_next_postgres(
    connection: asyncpg.Connection, service: str, migrations: list[Migration]
) -> int | None:
    async with connection.transaction():
        await _lock_schema(connection, service)
        pending = _plan_migrations(migrations, await _postgres_applied(connection, service))
        if not pending:
            return None
        migration = pending[0]
        await connection.execute(migration.sql)
        await connection.execute(
            f"INSERT INTO {quote_schema(service)}.schema_migrations (version, name, checksum)"
            " VALUES ($1, $2, $3)",
            migration.version,
            migration.name,
            migration.checksum,
        )
        return migration.version


async def pending_postgres_migrations(dsn: str, service: str, directory: Path) -> list[Migration]:
    """The migrations `migrate_postgres` would apply now; changes nothing."""
    validate_schema_name(service)
    migrations = discover_migrations(directory)
    connection = await asyncpg.connect(dsn)
    try:
        applied: dict[int, str] = {}
        if await schema_exists(connection, service) and await connection.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", f"{quote_schema(service)}.schema_migrations"
        ):
            applied = await _postgres_applied(connection, service)
        return _plan_migrations(migrations, applied)
    finally:
        await connection.close()


async def _lock_schema(connection: asyncpg.Connection, schema: str) -> None:
    await connection.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('agentrt.migrate:' || $1, 0))", schema
    )


async def _postgres_applied(connection: asyncpg.Connection, schema: str) -> dict[int, str]:
    rows = await connection.fetch(
        f"SELECT version, checksum FROM {quote_schema(schema)}.schema_migrations"
    )
    return {row["version"]: row["checksum"] for row in rows}


async def migrate_sqlite(path: Path, directory: Path) -> list[int]:
    """Apply the pending migrations to the SQLite file at `path`, creating it if needed.

    Every step runs under `BEGIN IMMEDIATE`, SQLite's database-wide write lock, so
    concurrent migrators (even in other processes) apply each migration exactly once.
    Returns the versions this call applied.
    """
    migrations = discover_migrations(directory)
    async with await SqliteDatabase.open(path) as database:
        await database.execute(_CREATE_TABLE.format(table="schema_migrations", timestamp="TEXT"))
        applied: list[int] = []
        apply_next = functools.partial(_apply_next_sqlite, migrations)
        while (version := await database.transaction(apply_next)) is not None:
            applied.append(version)
        return applied


async def pending_sqlite_migrations(path: Path, directory: Path) -> list[Migration]:
    """The migrations `migrate_sqlite` would apply now; changes nothing (not even creates)."""
    migrations = discover_migrations(directory)
    return await asyncio.to_thread(_pending_in_file, path, migrations)


def _pending_in_file(path: Path, migrations: list[Migration]) -> list[Migration]:
    if not path.exists():
        return migrations
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        connection.row_factory = sqlite3.Row
        return _plan_migrations(migrations, _sqlite_applied(connection))
    finally:
        connection.close()


def _apply_next_sqlite(migrations: list[Migration], connection: sqlite3.Connection) -> int | None:
    pending = _plan_migrations(migrations, _sqlite_applied(connection))
    if not pending:
        return None
    migration = pending[0]
    for statement in _split_statements(migration.sql):
        connection.execute(statement)
    connection.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (?, ?, ?)",
        (migration.version, migration.name, migration.checksum),
    )
    return migration.version


def _sqlite_applied(connection: sqlite3.Connection) -> dict[int, str]:
    exists = connection.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if exists is None:
        return {}
    rows = connection.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    return {row["version"]: row["checksum"] for row in rows}


def _split_statements(script: str) -> list[str]:
    # sqlite3's executescript() would COMMIT the migration's transaction first, so the
    # script is cut into statements at the semicolons SQLite itself sees as ending one
    # (not those inside strings, comments or trigger bodies).
    statements = []
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            statements.append(current)
            current = ""
    # An unterminated last statement is kept so that SQLite reports what is wrong with it.
    statements.append(current.removesuffix(";"))
    return [statement for statement in statements if statement.strip(" \t\r\n;")]
