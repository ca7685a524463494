"""An asyncio wrapper around one stdlib sqlite3 connection owned by a dedicated thread."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

Params = Sequence[Any] | Mapping[str, Any]
"""Statement parameters: positional (`?`) or named (`:name`)."""

DEFAULT_BUSY_TIMEOUT = 5.0
"""Seconds a statement waits for another process's write lock before failing with BUSY."""


class SqliteDatabase:
    """One SQLite file, reached only through its own worker thread.

    Every call is a job on a single-thread executor, so calls from any number of asyncio
    tasks run one after another, in the order they were made. A job never leaves a
    transaction open behind it: a transaction is begun and ended inside one job (see
    `transaction`), which is also the fast path for a store's multi-statement writes.

    Cancelling the awaiting task does not interrupt a job that has already started: the
    job runs to its end (committing or rolling back as a whole); only its result is lost.
    """

    def __init__(self, path: Path, executor: ThreadPoolExecutor, connection: sqlite3.Connection):
        """Wrap an opened connection; use `SqliteDatabase.open` instead."""
        self._path = path
        self._executor = executor
        self._connection = connection
        self._closed = False

    @classmethod
    async def open(
        cls, path: str | Path, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    ) -> SqliteDatabase:
        """Open (creating if needed) the database file and its parent directories."""
        path = Path(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{path.name}")
        loop = asyncio.get_running_loop()
        try:
            connection = await loop.run_in_executor(
                executor, functools.partial(_connect, path, busy_timeout)
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(path, executor, connection)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the database thread and return its result.

        `fn` must leave no transaction open: one that does is rolled back and reported as
        an error, so that the next job never runs inside someone else's transaction.
        """
        if self._closed:
            raise RuntimeError(f"SQLite database {self._path} is closed")
        loop = asyncio.get_running_loop()
        job = functools.partial(_run_job, fn, self._connection)
        return await loop.run_in_executor(self._executor, job)

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` inside `BEGIN IMMEDIATE` … `COMMIT`, in one hop.

        Any exception from `fn` (or from `COMMIT`) rolls the whole transaction back and is
        re-raised; the connection is then ready for the next call. IMMEDIATE takes the
        write lock at the start, so a transaction never fails half-way on a lock upgrade.
        """
        return await self.run(functools.partial(_in_immediate_transaction, fn))

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement on its own (autocommit) and return the number of rows changed."""
        return await self.run(lambda connection: connection.execute(sql, params).rowcount)

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        """Run one query and return its first row, or None when it returns no row."""
        row: sqlite3.Row | None = await self.run(
            lambda connection: connection.execute(sql, params).fetchone()
        )
        return row

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Run one query and return all its rows."""
        rows: list[sqlite3.Row] = await self.run(
            lambda connection: connection.execute(sql, params).fetchall()
        )
        return rows

    async def close(self) -> None:
        """Close the connection after every call already made has finished; idempotent."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._connection.close)
        finally:
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> SqliteDatabase:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _in_immediate_transaction(
    fn: Callable[[sqlite3.Connection], T], connection: sqlite3.Connection
) -> T:
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = fn(connection)
        connection.execute("COMMIT")
    except BaseException:
        # Some errors (e.g. SQLITE_FULL) already rolled back; ROLLBACK would then fail
        # and hide the original exception.
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return result


def _enable_wal(connection: sqlite3.Connection, busy_timeout: float) -> None:
    """Switches the file to WAL. The switch needs the file to itself, and SQLite does not
    apply the busy timeout to it when other connections are opening the same new file at
    once, so it is retried here until the timeout."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created on the database thread, with check_same_thread left on, so that sqlite3
    # itself refuses any use of the connection from another thread.
    connection = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        connection.row_factory = sqlite3.Row
        _enable_wal(connection, busy_timeout)
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        connection.close()
        raise
    return connection


def _run_job(fn: Callable[[sqlite3.Connection], T], connection: sqlite3.Connection) -> T:
    try:
        result = fn(connection)
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    if connection.in_transaction:
        connection.execute("ROLLBACK")
        raise RuntimeError(
            f"{fn!r} left a transaction open; it was rolled back. "
            "Use SqliteDatabase.transaction() to run several statements atomically."
        )
    if asyncio.iscoroutine(result):
        result.close()
        raise TypeError(f"{fn!r} is a coroutine function; pass a plain function to run()")
    return result
