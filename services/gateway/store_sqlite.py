"""The API key store on SQLite, the embedded default of `agentrt dev`."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

from services.gateway.store import SCOPE_ADMIN, SCOPE_TENANT, SQL_DIRECTORY, ApiKeyRecord
from services.kit.storage import SqliteDatabase, load_queries

_QUERIES = load_queries(SQL_DIRECTORY / "sqlite" / "queries.sql")


def _time(value: datetime) -> str:
    # Fixed width (microseconds always present), so that text order is time order.
    return value.isoformat(timespec="microseconds")


def _record(row: sqlite3.Row) -> ApiKeyRecord:
    revoke_time = row["revoke_time"]
    return ApiKeyRecord(
        key_id=row["key_id"],
        tenant=row["tenant"],
        principal=row["principal"],
        secret_sha256=bytes(row["secret_sha256"]),
        create_time=datetime.fromisoformat(row["create_time"]),
        revoke_time=None if revoke_time is None else datetime.fromisoformat(revoke_time),
        admin=row["scope"] == SCOPE_ADMIN,
    )


class SqliteApiKeyStore:
    """API keys in the gateway's SQLite file."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database

    @classmethod
    async def open(cls, path: Path) -> SqliteApiKeyStore:
        """Opens the migrated database file."""
        return cls(await SqliteDatabase.open(path))

    async def insert(self, record: ApiKeyRecord) -> None:
        await self._database.execute(
            _QUERIES["insert_key"],
            {
                "key_id": record.key_id,
                "tenant": record.tenant,
                "principal": record.principal,
                "secret_sha256": record.secret_sha256,
                "create_time": _time(record.create_time),
                "scope": SCOPE_ADMIN if record.admin else SCOPE_TENANT,
            },
        )

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        row = await self._database.fetchone(_QUERIES["get_key"], {"key_id": key_id})
        return None if row is None else _record(row)

    async def revoke(self, key_id: str, now: datetime) -> ApiKeyRecord | None:
        def revoke(connection: sqlite3.Connection) -> sqlite3.Row | None:
            cursor = connection.execute(
                _QUERIES["revoke_key"], {"key_id": key_id, "revoke_time": _time(now)}
            )
            row: sqlite3.Row | None = cursor.fetchone()
            return row

        row = await self._database.transaction(revoke)
        return None if row is None else _record(row)

    async def list_keys(self, tenant: str) -> list[ApiKeyRecord]:
        rows = await self._database.fetchall(_QUERIES["list_keys"], {"tenant": tenant})
        return [_record(row) for row in rows]

    async def close(self) -> None:
        await self._database.close()
