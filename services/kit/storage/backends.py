"""Which storage backend a service uses, and migrating it whichever it is."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from services.kit.storage.migrations import (
    Migration,
    migrate_postgres,
    migrate_sqlite,
    pending_postgres_migrations,
    pending_sqlite_migrations,
)
from services.kit.storage.postgres import validate_schema_name

Backend = Literal["sqlite", "postgres"]


class UnmigratedDatabaseError(RuntimeError):
    """The database lacks migrations the service needs; `agentrt migrate` applies them."""


@dataclass(frozen=True)
class StorageConfig:
    """Where one service keeps its data."""

    backend: Backend
    """`sqlite` for the embedded default, `postgres` for production."""
    sqlite_path: Path | None
    """The service's SQLite file; required when backend is `sqlite`."""
    postgres_dsn: str | None
    """The PostgreSQL DSN; required when backend is `postgres`."""
    schema: str
    """The service's PostgreSQL schema, named after the service (e.g. `jobs`)."""

    def __post_init__(self) -> None:
        if self.backend not in get_args(Backend):
            raise ValueError(
                f"unknown storage backend {self.backend!r}; expected one of {get_args(Backend)}"
            )
        if self.backend == "sqlite" and self.sqlite_path is None:
            raise ValueError("the sqlite storage backend needs sqlite_path")
        if self.backend == "postgres" and not self.postgres_dsn:
            raise ValueError("the postgres storage backend needs postgres_dsn")
        validate_schema_name(self.schema)


def migrations_directory(sql_directory: Path, backend: Backend) -> Path:
    """Where a service keeps one backend's migrations: `<sql>/<backend>/migrations`."""
    return sql_directory / backend / "migrations"


async def migrate(config: StorageConfig, sql_directory: Path) -> list[int]:
    """Apply a service's pending migrations; returns the versions applied.

    `sql_directory` is the service's `sql/` folder, holding `postgres/migrations/` and
    `sqlite/migrations/`.
    """
    directory = migrations_directory(sql_directory, config.backend)
    if config.backend == "postgres":
        assert config.postgres_dsn is not None
        return await migrate_postgres(config.postgres_dsn, config.schema, directory)
    assert config.sqlite_path is not None
    return await migrate_sqlite(config.sqlite_path, directory)


async def pending_migrations(config: StorageConfig, sql_directory: Path) -> list[Migration]:
    """The migrations `migrate` would apply now; changes nothing."""
    directory = migrations_directory(sql_directory, config.backend)
    if config.backend == "postgres":
        assert config.postgres_dsn is not None
        return await pending_postgres_migrations(config.postgres_dsn, config.schema, directory)
    assert config.sqlite_path is not None
    return await pending_sqlite_migrations(config.sqlite_path, directory)


async def require_migrated(config: StorageConfig, sql_directory: Path) -> None:
    """Raise UnmigratedDatabaseError, naming what is missing, unless the database is current.

    A service calls this at startup so that it refuses to run on an unmigrated database.
    """
    pending = await pending_migrations(config, sql_directory)
    if pending:
        where = config.sqlite_path if config.backend == "sqlite" else f"schema {config.schema!r}"
        names = ", ".join(migration.path.name for migration in pending)
        raise UnmigratedDatabaseError(
            f"the {config.backend} database ({where}) lacks {len(pending)} migration(s): "
            f"{names}; run `agentrt migrate` first"
        )


async def open_store(
    config: StorageConfig, sql_directory: Path, postgres_class: str, sqlite_class: str
) -> Any:
    """Opens a service's store on the configured backend, once its migrations have run
    (UnmigratedDatabaseError otherwise: `agentrt migrate` applies them).

    The backends are named "module:Class" and imported only here, when needed: each backend
    module imports its service's store module (for the contract and the shared helpers),
    which calls this, so neither can import the other at the top. The classes open with
    `open(dsn, schema)` and `open(path)`; the caller states the store type it returns."""
    await require_migrated(config, sql_directory)
    if config.backend == "postgres":
        assert config.postgres_dsn is not None
        return await _backend_class(postgres_class).open(config.postgres_dsn, config.schema)
    assert config.sqlite_path is not None
    return await _backend_class(sqlite_class).open(config.sqlite_path)


def _backend_class(qualified: str) -> Any:
    module, _, name = qualified.partition(":")
    return getattr(importlib.import_module(module), name)
