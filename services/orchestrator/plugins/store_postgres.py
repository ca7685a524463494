"""The plugin store on PostgreSQL, in the orchestrator's own schema."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg  # type: ignore[import-untyped, unused-ignore]
from agentrt.orchestrator.v1.orchestrator_pb2 import Plugin

from services.kit.errors import RequestIdReused
from services.kit.storage import create_pool, load_queries
from services.orchestrator.plugins.store import (
    SQL_DIRECTORY,
    HealthCheck,
    NewPlugin,
    already_exists,
    not_found,
    plugin_id_of,
    plugin_message,
    serialize_manifest,
    serialize_tools,
    timestamp,
)

_QUERIES = load_queries(SQL_DIRECTORY / "postgres" / "queries.sql")


class PostgresPluginStore:
    """Plugins in the `orchestrator` schema (or the one configured)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, schema: str, max_connections: int = 4) -> PostgresPluginStore:
        """Opens a pool on the migrated schema."""
        return cls(await create_pool(dsn, schema, min_size=1, max_size=max_connections))

    async def create(self, new: NewPlugin, now: datetime) -> tuple[Plugin, bool]:
        row = await self._pool.fetchrow(
            _QUERIES["insert_plugin"],
            new.plugin_id,
            serialize_manifest(new.manifest),
            serialize_tools(new.tools),
            Plugin.STATE_HEALTHY,
            new.request_id,
            new.request_hash,
            now,
        )
        if row is not None:
            return _plugin(row), True
        # The insert lost to an existing row: one with this request_id (a retry, or a
        # reuse) or, failing that, one with this id.
        if new.request_id:
            row = await self._pool.fetchrow(_QUERIES["plugin_by_request_id"], new.request_id)
            if row is not None:
                if bytes(row["request_hash"]) != new.request_hash:
                    raise RequestIdReused(new.request_id)
                return _plugin(row), False
        raise already_exists(new.plugin_id)

    async def get(self, plugin_id: str) -> Plugin:
        row = await self._pool.fetchrow(_QUERIES["get_plugin"], plugin_id)
        if row is None:
            raise not_found(plugin_id)
        return _plugin(row)

    async def list_all(self) -> list[Plugin]:
        return [_plugin(row) for row in await self._pool.fetch(_QUERIES["list_plugins"])]

    async def delete(self, plugin_id: str) -> None:
        if await self._pool.execute(_QUERIES["delete_plugin"], plugin_id) == "DELETE 0":
            raise not_found(plugin_id)

    async def record_check(self, plugin: Plugin, check: HealthCheck) -> bool:
        status = await self._pool.execute(
            _QUERIES["record_check"],
            plugin_id_of(plugin),
            plugin.create_time.ToDatetime(tzinfo=UTC),
            check.state,
            check.time,
            check.error,
            check.tools is not None,
            serialize_tools(check.tools or ()),
        )
        return bool(status == "UPDATE 1")

    async def close(self) -> None:
        await self._pool.close()


def _plugin(row: asyncpg.Record) -> Plugin:
    return plugin_message(
        row["id"],
        bytes(row["manifest"]),
        bytes(row["tools"]),
        row["state"],
        timestamp(row["last_check_time"]),
        row["last_check_error"],
        timestamp(row["create_time"]),
    )
