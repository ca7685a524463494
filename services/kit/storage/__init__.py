"""Storage shared by every service: SQLite and PostgreSQL access, named queries, migrations."""

from __future__ import annotations

from services.kit.storage.backends import (
    Backend,
    StorageConfig,
    UnmigratedDatabaseError,
    migrate,
    migrations_directory,
    open_store,
    pending_migrations,
    require_migrated,
)
from services.kit.storage.migrations import (
    Migration,
    MigrationError,
    discover_migrations,
    migrate_postgres,
    migrate_sqlite,
    pending_postgres_migrations,
    pending_sqlite_migrations,
)
from services.kit.storage.postgres import (
    SchemaNotFoundError,
    create_pool,
    ensure_schema,
    validate_schema_name,
)
from services.kit.storage.queries import Queries, QueryFileError, load_queries
from services.kit.storage.sqlite import SqliteDatabase

__all__ = [
    "Backend",
    "Migration",
    "MigrationError",
    "Queries",
    "QueryFileError",
    "SchemaNotFoundError",
    "SqliteDatabase",
    "StorageConfig",
    "UnmigratedDatabaseError",
    "create_pool",
    "discover_migrations",
    "ensure_schema",
    "load_queries",
    "migrate",
    "migrate_postgres",
    "migrate_sqlite",
    "migrations_directory",
    "open_store",
    "pending_migrations",
    "pending_postgres_migrations",
    "pending_sqlite_migrations",
    "require_migrated",
    "validate_schema_name",
]
