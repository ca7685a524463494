"""The plugin store on SQLite, the embedded default of `agentrt dev`."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from agentrt.orchestrator.v1.orchestrator_pb2 import Plugin

from services.kit.errors import RequestIdReused
from services.kit.storage import SqliteDatabase, load_queries
from services.orchestrator.plugins.store import (
    SQL_DIRECTORY,
    HealthCheck,
    NewPlugin,
    already_exists,
    from_micros,
    micros,
    not_found,
    plugin_id_of,
    plugin_message,
    serialize_manifest,
    serialize_tools,
)

_QUERIES = load_queries(SQL_DIRECTORY / "sqlite" / "queries.sql")


class SqlitePluginStore:
    """Plugins in the orchestrator's SQLite file."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database

    @classmethod
    async def open(cls, path: Path) -> SqlitePluginStore:
        """Opens the migrated database file."""
        return cls(await SqliteDatabase.open(path))

    async def create(self, new: NewPlugin, now: datetime) -> tuple[Plugin, bool]:
        def create(connection: sqlite3.Connection) -> tuple[Plugin, bool]:
            if new.request_id:
                by_request = {"request_id": new.request_id}
                row = connection.execute(_QUERIES["plugin_by_request_id"], by_request).fetchone()
                if row is not None:
                    if bytes(row["request_hash"]) != new.request_hash:
                        raise RequestIdReused(new.request_id)
                    return _plugin(row), False
            params: dict[str, Any] = {
                "id": new.plugin_id,
                "manifest": serialize_manifest(new.manifest),
                "tools": serialize_tools(new.tools),
                "state": Plugin.STATE_HEALTHY,
                "request_id": new.request_id,
                "request_hash": new.request_hash,
                "now": micros(now),
            }
            row = connection.execute(_QUERIES["insert_plugin"], params).fetchone()
            if row is None:
                raise already_exists(new.plugin_id)
            return _plugin(row), True

        return await self._db.transaction(create)

    async def get(self, plugin_id: str) -> Plugin:
        row = await self._db.fetchone(_QUERIES["get_plugin"], {"id": plugin_id})
        if row is None:
            raise not_found(plugin_id)
        return _plugin(row)

    async def list_all(self) -> list[Plugin]:
        return [_plugin(row) for row in await self._db.fetchall(_QUERIES["list_plugins"])]

    async def delete(self, plugin_id: str) -> None:
        if await self._db.execute(_QUERIES["delete_plugin"], {"id": plugin_id}) == 0:
            raise not_found(plugin_id)

    async def record_check(self, plugin: Plugin, check: HealthCheck) -> bool:
        params: dict[str, Any] = {
            "id": plugin_id_of(plugin),
            "create_time": plugin.create_time.ToMicroseconds(),
            "state": check.state,
            "check_time": micros(check.time),
            "error": check.error,
            "set_tools": check.tools is not None,
            "tools": serialize_tools(check.tools or ()),
        }
        return await self._db.execute(_QUERIES["record_check"], params) == 1

    async def close(self) -> None:
        await self._db.close()


def _plugin(row: sqlite3.Row) -> Plugin:
    return plugin_message(
        row["id"],
        bytes(row["manifest"]),
        bytes(row["tools"]),
        row["state"],
        from_micros(row["last_check_time"]),
        row["last_check_error"],
        from_micros(row["create_time"]),
    )
