"""The API key store contract, and opening the store a deployment configures."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from services.kit.storage import StorageConfig, open_store

SQL_DIRECTORY = Path(__file__).resolve().parent / "sql"
"""The gateway's `sql/` folder: migrations and named queries per backend."""

SCOPE_ADMIN = "admin"
SCOPE_TENANT = "tenant"
"""The `scope` column's two values: an admin key, or a key that acts for its tenant only."""


@dataclass(frozen=True)
class ApiKeyRecord:
    """What is kept of an API key; never the secret itself."""

    key_id: str
    """The public part of the key, unique; shown in listings and used to revoke."""
    tenant: str
    """The tenant every call made with the key acts for."""
    principal: str
    """Who owns the key, recorded on the jobs it creates."""
    secret_sha256: bytes
    """SHA-256 of the secret part of the key."""
    create_time: datetime
    """When the key was created, UTC."""
    revoke_time: datetime | None = None
    """When the key was revoked, UTC; None while it is valid."""
    admin: bool = False
    """An operator's key: besides acting for its tenant, it may call the admin APIs the
    gateway forwards (policies, budgets, prices, plugins) for every tenant."""

    @property
    def revoked(self) -> bool:
        return self.revoke_time is not None


class ApiKeyStore(Protocol):
    """API key records on one backend (SQLite or PostgreSQL)."""

    async def insert(self, record: ApiKeyRecord) -> None:
        """Stores a new key; its key_id must be unused."""
        ...

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """The key with this id, revoked or not; None when there is none."""
        ...

    async def revoke(self, key_id: str, now: datetime) -> ApiKeyRecord | None:
        """Marks the key revoked (keeping the first revocation time); None when unknown."""
        ...

    async def list_keys(self, tenant: str) -> list[ApiKeyRecord]:
        """The tenant's keys, revoked ones included, oldest first."""
        ...

    async def close(self) -> None:
        """Releases the database connections."""
        ...


async def open_key_store(config: StorageConfig) -> ApiKeyStore:
    """The configured backend's store; UnmigratedDatabaseError unless `agentrt migrate` ran."""
    store: ApiKeyStore = await open_store(
        config,
        SQL_DIRECTORY,
        "services.gateway.store_postgres:PostgresApiKeyStore",
        "services.gateway.store_sqlite:SqliteApiKeyStore",
    )
    return store
