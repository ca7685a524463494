"""Tests of versioned migrations on SQLite and (integration) PostgreSQL, and their dispatch."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from services.kit.storage import (
    MigrationError,
    StorageConfig,
    UnmigratedDatabaseError,
    discover_migrations,
    migrate,
    migrate_postgres,
    migrate_sqlite,
    pending_migrations,
    pending_postgres_migrations,
    pending_sqlite_migrations,
    require_migrated,
)

CREATE_ITEMS = "CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT NOT NULL);\n"
SEED_ITEMS = "INSERT INTO items VALUES (1, 'a;b');\nINSERT INTO items VALUES (2, 'c');\n"
CREATE_NOTES = "-- notes on items\nCREATE TABLE notes (item INTEGER REFERENCES items (id));\n"


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql, encoding="utf-8")
    return directory


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    return write_migrations(
        tmp_path / "migrations",
        {"0001_create_items.sql": CREATE_ITEMS, "0002_seed_items.sql": SEED_ITEMS},
    )


def created(path: Path) -> bool:
    return path.exists()


def sqlite_rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def test_discover_reads_versions_names_and_checksums(migrations: Path) -> None:
    (migrations / "README.md").write_text("ignored", encoding="utf-8")
    found = discover_migrations(migrations)
    assert [(m.version, m.name, m.path.name) for m in found] == [
        (1, "create_items", "0001_create_items.sql"),
        (2, "seed_items", "0002_seed_items.sql"),
    ]
    assert all(len(m.checksum) == 64 for m in found)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"0001_a.sql": "", "0003_c.sql": ""}, "0003_c.sql: expected migration 0002"),
        ({"0002_b.sql": ""}, "0002_b.sql: expected migration 0001"),
        ({"0001_a.sql": "", "0001_b.sql": ""}, "0001_b.sql: expected migration 0002"),
        ({"1_a.sql": ""}, "1_a.sql: a migration file must be named NNNN_<name>.sql"),
        ({"0001-Add Items.sql": ""}, "must be named NNNN_<name>.sql"),
    ],
)
async def test_bad_numbering_or_names_are_rejected_and_change_nothing(
    tmp_path: Path, sqlite_path: Path, files: dict[str, str], message: str
) -> None:
    directory = write_migrations(tmp_path / "bad", files)
    with pytest.raises(MigrationError, match=message):
        await migrate_sqlite(sqlite_path, directory)
    assert not created(sqlite_path)


async def test_sqlite_fresh_apply_then_rerun_applies_nothing(
    migrations: Path, sqlite_path: Path
) -> None:
    assert [m.version for m in await pending_sqlite_migrations(sqlite_path, migrations)] == [1, 2]
    assert not created(sqlite_path)
    assert await migrate_sqlite(sqlite_path, migrations) == [1, 2]
    assert await migrate_sqlite(sqlite_path, migrations) == []
    assert await pending_sqlite_migrations(sqlite_path, migrations) == []
    assert sqlite_rows(sqlite_path, "SELECT label FROM items ORDER BY id") == [("a;b",), ("c",)]
    recorded = sqlite_rows(sqlite_path, "SELECT version, name FROM schema_migrations")
    assert recorded == [(1, "create_items"), (2, "seed_items")]


async def test_sqlite_applies_only_new_migrations(migrations: Path, sqlite_path: Path) -> None:
    await migrate_sqlite(sqlite_path, migrations)
    write_migrations(migrations, {"0003_create_notes.sql": CREATE_NOTES})
    assert [m.name for m in await pending_sqlite_migrations(sqlite_path, migrations)] == [
        "create_notes"
    ]
    assert await migrate_sqlite(sqlite_path, migrations) == [3]


async def test_sqlite_accepts_a_database_migrated_by_a_newer_release(
    migrations: Path, sqlite_path: Path
) -> None:
    newer = write_migrations(
        migrations.parent / "newer",
        {
            "0001_create_items.sql": CREATE_ITEMS,
            "0002_seed_items.sql": SEED_ITEMS,
            "0003_create_notes.sql": CREATE_NOTES,
        },
    )
    assert await migrate_sqlite(sqlite_path, newer) == [1, 2, 3]
    assert await migrate_sqlite(sqlite_path, migrations) == []
    assert await pending_sqlite_migrations(sqlite_path, migrations) == []


async def test_sqlite_a_hole_in_the_applied_history_is_an_error(
    migrations: Path, sqlite_path: Path
) -> None:
    write_migrations(migrations, {"0003_create_notes.sql": CREATE_NOTES})
    await migrate_sqlite(sqlite_path, migrations)
    connection = sqlite3.connect(sqlite_path, isolation_level=None)
    connection.execute("DELETE FROM schema_migrations WHERE version = 2")
    connection.close()
    with pytest.raises(MigrationError, match=r"0002_seed_items\.sql is not applied but .*0003"):
        await migrate_sqlite(sqlite_path, migrations)
    assert sqlite_rows(sqlite_path, "SELECT count(*) FROM items") == [(2,)]


async def test_sqlite_statements_are_split_as_sqlite_parses_them(
    tmp_path: Path, sqlite_path: Path
) -> None:
    trigger = (
        "CREATE TABLE log (entry TEXT); CREATE TABLE items (label TEXT);\n"
        "CREATE TRIGGER log_items AFTER INSERT ON items BEGIN\n"
        "  INSERT INTO log VALUES ('added; ' || NEW.label);\n"
        "END;\n"
        "/* a; comment */ INSERT INTO items VALUES ('x')\n"
    )
    directory = write_migrations(tmp_path / "m", {"0001_trigger.sql": trigger})
    assert await migrate_sqlite(sqlite_path, directory) == [1]
    assert sqlite_rows(sqlite_path, "SELECT entry FROM log") == [("added; x",)]


async def test_sqlite_failed_migration_is_rolled_back_whole(
    migrations: Path, sqlite_path: Path
) -> None:
    write_migrations(
        migrations, {"0003_broken.sql": "CREATE TABLE tags (name TEXT);\nINSERT INTO nowhere;\n"}
    )
    with pytest.raises(sqlite3.OperationalError):
        await migrate_sqlite(sqlite_path, migrations)
    assert sqlite_rows(sqlite_path, "SELECT version FROM schema_migrations") == [(1,), (2,)]
    tables = sqlite_rows(sqlite_path, "SELECT name FROM sqlite_schema WHERE name = 'tags'")
    assert tables == []


async def test_sqlite_edited_applied_migration_is_detected(
    migrations: Path, sqlite_path: Path
) -> None:
    await migrate_sqlite(sqlite_path, migrations)
    (migrations / "0002_seed_items.sql").write_text(SEED_ITEMS + "DELETE FROM items;\n")
    write_migrations(migrations, {"0003_create_notes.sql": CREATE_NOTES})
    with pytest.raises(
        MigrationError, match=r"0002_seed_items\.sql was edited after it was applied"
    ):
        await migrate_sqlite(sqlite_path, migrations)
    with pytest.raises(MigrationError, match=r"0002_seed_items\.sql was edited"):
        await pending_sqlite_migrations(sqlite_path, migrations)
    assert sqlite_rows(sqlite_path, "SELECT count(*) FROM items") == [(2,)]
    assert sqlite_rows(sqlite_path, "SELECT max(version) FROM schema_migrations") == [(2,)]


async def test_concurrent_sqlite_migrators_apply_each_migration_once(
    migrations: Path, sqlite_path: Path
) -> None:
    results = await asyncio.gather(*(migrate_sqlite(sqlite_path, migrations) for _ in range(4)))
    assert sorted(v for applied in results for v in applied) == [1, 2]
    assert sqlite_rows(sqlite_path, "SELECT count(*) FROM items") == [(2,)]


async def pg_fetch(dsn: str, sql: str) -> list[tuple[object, ...]]:
    connection = await asyncpg.connect(dsn)
    try:
        return [tuple(row) for row in await connection.fetch(sql)]
    finally:
        await connection.close()


@pytest.mark.integration
async def test_postgres_fresh_apply_creates_the_schema_then_rerun_applies_nothing(
    pg_dsn: str, migrations: Path
) -> None:
    pending = await pending_postgres_migrations(pg_dsn, "jobs", migrations)
    assert [m.version for m in pending] == [1, 2]
    assert await migrate_postgres(pg_dsn, "jobs", migrations) == [1, 2]
    assert await migrate_postgres(pg_dsn, "jobs", migrations) == []
    assert await pending_postgres_migrations(pg_dsn, "jobs", migrations) == []
    assert await pg_fetch(pg_dsn, "SELECT label FROM jobs.items ORDER BY id") == [("a;b",), ("c",)]
    assert await pg_fetch(pg_dsn, "SELECT version, name FROM jobs.schema_migrations") == [
        (1, "create_items"),
        (2, "seed_items"),
    ]
    assert await pg_fetch(pg_dsn, "SELECT to_regclass('public.items')") == [(None,)]


@pytest.mark.integration
async def test_postgres_edited_applied_migration_is_detected(pg_dsn: str, migrations: Path) -> None:
    await migrate_postgres(pg_dsn, "jobs", migrations)
    (migrations / "0001_create_items.sql").write_text(CREATE_ITEMS.replace("TEXT", "VARCHAR"))
    with pytest.raises(MigrationError, match=r"0001_create_items\.sql was edited"):
        await migrate_postgres(pg_dsn, "jobs", migrations)
    with pytest.raises(MigrationError, match=r"0001_create_items\.sql was edited"):
        await pending_postgres_migrations(pg_dsn, "jobs", migrations)


@pytest.mark.integration
async def test_postgres_gap_is_rejected_before_touching_the_database(
    pg_dsn: str, tmp_path: Path
) -> None:
    directory = write_migrations(tmp_path / "m", {"0001_a.sql": CREATE_ITEMS, "0003_c.sql": ""})
    with pytest.raises(MigrationError, match="expected migration 0002"):
        await migrate_postgres(pg_dsn, "jobs", directory)
    assert await pg_fetch(pg_dsn, "SELECT 1 FROM pg_namespace WHERE nspname = 'jobs'") == []


@pytest.mark.integration
async def test_postgres_failed_migration_is_rolled_back_whole(
    pg_dsn: str, migrations: Path
) -> None:
    write_migrations(migrations, {"0003_broken.sql": "CREATE TABLE tags (name TEXT);\nSELECT x;\n"})
    with pytest.raises(asyncpg.UndefinedColumnError):
        await migrate_postgres(pg_dsn, "jobs", migrations)
    assert await pg_fetch(pg_dsn, "SELECT version FROM jobs.schema_migrations") == [(1,), (2,)]
    assert await pg_fetch(pg_dsn, "SELECT to_regclass('jobs.tags')") == [(None,)]


@pytest.mark.integration
async def test_concurrent_postgres_migrators_apply_each_migration_once(
    pg_dsn: str, migrations: Path
) -> None:
    write_migrations(migrations, {"0003_create_notes.sql": CREATE_NOTES})
    results = await asyncio.gather(
        *(migrate_postgres(pg_dsn, "jobs", migrations) for _ in range(4))
    )
    assert sorted(v for applied in results for v in applied) == [1, 2, 3]
    assert await pg_fetch(pg_dsn, "SELECT count(*) FROM jobs.items") == [(2,)]


def test_storage_config_rejects_incomplete_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs sqlite_path"):
        StorageConfig("sqlite", None, None, "jobs")
    with pytest.raises(ValueError, match="needs postgres_dsn"):
        StorageConfig("postgres", tmp_path / "x", None, "jobs")
    with pytest.raises(ValueError, match="unknown storage backend 'mysql'"):
        StorageConfig("mysql", None, "postgresql://", "jobs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid schema name"):
        StorageConfig("sqlite", tmp_path / "x", None, "Jobs")


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_migrate_dispatches_and_require_migrated_guards_startup(
    backend: str, pg_dsn: str, sqlite_path: Path, tmp_path: Path
) -> None:
    sql = tmp_path / "sql"
    write_migrations(sql / backend / "migrations", {"0001_create_items.sql": CREATE_ITEMS})
    config = StorageConfig(backend, sqlite_path, pg_dsn, "ledger")  # type: ignore[arg-type]
    with pytest.raises(
        UnmigratedDatabaseError, match=r"0001_create_items\.sql; run `agentrt migrate`"
    ):
        await require_migrated(config, sql)
    assert await migrate(config, sql) == [1]
    assert await pending_migrations(config, sql) == []
    await require_migrated(config, sql)
