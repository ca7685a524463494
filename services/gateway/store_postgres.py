"""The API key store on PostgreSQL, in the gateway's own schema."""

from __future__ import annotations

from datetime import datetime

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from services.gateway.store import SCOPE_ADMIN, SCOPE_TENANT, SQL_DIRECTORY, ApiKeyRecord
from services.kit.storage import create_pool, load_queries

_QUERIES = load_queries(SQL_DIRECTORY / "postgres" / "queries.sql")


def _record(row: asyncpg.Record) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row["key_id"],
        tenant=row["tenant"],
        principal=row["principal"],
        secret_sha256=bytes(row["secret_sha256"]),
        create_time=row["create_time"],
        revoke_time=row["revoke_time"],
        admin=row["scope"] == SCOPE_ADMIN,
    )


class PostgresApiKeyStore:
    """API keys in the `gateway` schema (or the one configured)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, schema: str, max_connections: int = 4) -> PostgresApiKeyStore:
        """Opens a pool on the migrated schema. Few connections suffice: key lookups are
        cached, so the database sees about one read per key every few seconds."""
        return cls(await create_pool(dsn, schema, min_size=1, max_size=max_connections))

    async def insert(self, record: ApiKeyRecord) -> None:
        await self._pool.execute(
            _QUERIES["insert_key"],
            record.key_id,
            record.tenant,
            record.principal,
            record.secret_sha256,
            record.create_time,
            SCOPE_ADMIN if record.admin else SCOPE_TENANT,
        )

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        row = await self._pool.fetchrow(_QUERIES["get_key"], key_id)
        return None if row is None else _record(row)

    async def revoke(self, key_id: str, now: datetime) -> ApiKeyRecord | None:
        row = await self._pool.fetchrow(_QUERIES["revoke_key"], key_id, now)
        return None if row is None else _record(row)

    async def list_keys(self, tenant: str) -> list[ApiKeyRecord]:
        rows = await self._pool.fetch(_QUERIES["list_keys"], tenant)
        return [_record(row) for row in rows]

    async def close(self) -> None:
        await self._pool.close()
