"""Tests of SqliteDatabase, the single-thread asyncio wrapper around sqlite3."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest

from services.kit.storage import SqliteDatabase


@pytest.fixture
async def database(sqlite_path: Path) -> AsyncIterator[SqliteDatabase]:
    async with await SqliteDatabase.open(sqlite_path) as database:
        await database.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT NOT NULL)")
        yield database


async def labels(database: SqliteDatabase) -> list[str]:
    return [row["label"] for row in await database.fetchall("SELECT label FROM items ORDER BY id")]


async def test_open_creates_parent_directories_and_configures_the_connection(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data" / "jobs" / "jobs.sqlite3"
    async with await SqliteDatabase.open(path) as database:
        settings = await database.run(
            lambda c: (
                c.execute("PRAGMA journal_mode").fetchone()[0],
                c.execute("PRAGMA synchronous").fetchone()[0],
                c.execute("PRAGMA foreign_keys").fetchone()[0],
                c.execute("PRAGMA busy_timeout").fetchone()[0],
                c.isolation_level,
            )
        )
    assert path.exists()
    assert settings == ("wal", 1, 1, 5000, None)


async def test_every_call_runs_on_one_thread_that_is_not_the_event_loop(
    database: SqliteDatabase,
) -> None:
    threads = await asyncio.gather(
        *(database.run(lambda _: threading.get_ident()) for _ in range(20))
    )
    assert len(set(threads)) == 1
    assert threads[0] != threading.get_ident()


async def test_the_connection_refuses_use_from_another_thread(database: SqliteDatabase) -> None:
    connection = await database.run(lambda c: c)
    with pytest.raises(sqlite3.ProgrammingError):
        connection.execute("SELECT 1")


async def test_concurrent_transactions_from_many_tasks_lose_no_update(
    database: SqliteDatabase,
) -> None:
    await database.execute("CREATE TABLE counter (value INTEGER NOT NULL)")
    await database.execute("INSERT INTO counter VALUES (0)")

    def increment(connection: sqlite3.Connection) -> None:
        (value,) = connection.execute("SELECT value FROM counter").fetchone()
        connection.execute("UPDATE counter SET value = ?", (value + 1,))

    await asyncio.gather(*(database.transaction(increment) for _ in range(100)))
    row = await database.fetchone("SELECT value FROM counter")
    assert row is not None and row["value"] == 100


async def test_a_failed_transaction_writes_nothing_and_leaves_the_connection_usable(
    database: SqliteDatabase,
) -> None:
    def insert_then_fail(connection: sqlite3.Connection) -> None:
        connection.execute("INSERT INTO items (label) VALUES ('partial')")
        raise LookupError("the job vanished")

    with pytest.raises(LookupError, match="the job vanished"):
        await database.transaction(insert_then_fail)

    assert not await database.run(lambda c: c.in_transaction)
    await database.transaction(lambda c: c.execute("INSERT INTO items (label) VALUES ('after')"))
    assert await labels(database) == ["after"]


async def test_a_failed_transaction_does_not_touch_concurrent_ones(
    database: SqliteDatabase,
) -> None:
    def insert(label: str, fail: bool) -> Awaitable[None]:
        def write(connection: sqlite3.Connection) -> None:
            connection.execute("INSERT INTO items (label) VALUES (?)", (label,))
            if fail:
                raise ValueError(label)

        return database.transaction(write)

    results = await asyncio.gather(
        *(insert(f"item-{n}", fail=n % 2 == 1) for n in range(10)), return_exceptions=True
    )
    assert [type(result) for result in results] == [type(None), ValueError] * 5
    assert await labels(database) == [f"item-{n}" for n in range(0, 10, 2)]


async def test_a_commit_that_fails_rolls_back(database: SqliteDatabase) -> None:
    await database.execute(
        "CREATE TABLE children (parent INTEGER REFERENCES items (id) DEFERRABLE INITIALLY DEFERRED)"
    )

    def insert_orphan(connection: sqlite3.Connection) -> None:
        connection.execute("INSERT INTO items (label) VALUES ('parent')")
        connection.execute("INSERT INTO children (parent) VALUES (42)")

    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        await database.transaction(insert_orphan)
    assert not await database.run(lambda c: c.in_transaction)
    assert await labels(database) == []


async def test_run_rolls_back_a_transaction_left_open(database: SqliteDatabase) -> None:
    def begin_and_forget(connection: sqlite3.Connection) -> None:
        connection.execute("BEGIN")
        connection.execute("INSERT INTO items (label) VALUES ('dangling')")

    with pytest.raises(RuntimeError, match="left a transaction open"):
        await database.run(begin_and_forget)
    assert not await database.run(lambda c: c.in_transaction)
    assert await labels(database) == []


async def test_run_rejects_a_coroutine_function(database: SqliteDatabase) -> None:
    async def not_synchronous(connection: sqlite3.Connection) -> None:
        connection.execute("INSERT INTO items (label) VALUES ('never')")

    with pytest.raises(TypeError, match="coroutine"):
        _ = await database.run(not_synchronous)
    assert await labels(database) == []


async def test_execute_and_fetch_return_row_counts_and_rows(database: SqliteDatabase) -> None:
    assert await database.execute("INSERT INTO items (label) VALUES (?), (?)", ("a", "b")) == 2
    assert await database.execute("UPDATE items SET label = upper(label)") == 2
    row = await database.fetchone(
        "SELECT id, label FROM items WHERE label = :label", {"label": "B"}
    )
    assert isinstance(row, sqlite3.Row)
    assert (row["id"], row["label"]) == (2, "B")
    assert await database.fetchone("SELECT id FROM items WHERE label = 'z'") is None
    assert [tuple(row) for row in await database.fetchall("SELECT * FROM items")] == [
        (1, "A"),
        (2, "B"),
    ]


async def test_data_survives_closing_and_reopening(sqlite_path: Path) -> None:
    async with await SqliteDatabase.open(sqlite_path) as database:
        await database.execute("CREATE TABLE items (label TEXT)")
        await database.transaction(lambda c: c.execute("INSERT INTO items VALUES ('kept')"))
    async with await SqliteDatabase.open(sqlite_path) as database:
        assert [tuple(row) for row in await database.fetchall("SELECT * FROM items")] == [("kept",)]


async def test_close_waits_for_calls_already_made_then_refuses_new_ones(
    sqlite_path: Path,
) -> None:
    database = await SqliteDatabase.open(sqlite_path)
    row, _ = await asyncio.gather(database.fetchone("SELECT 7"), database.close())
    assert row is not None and row[0] == 7
    await database.close()
    with pytest.raises(RuntimeError, match="closed"):
        await database.execute("SELECT 1")
