"""The plugin registry's store contract, the values it deals in, and opening the configured one.

The registry lives in the orchestrator's database (`agentrt migrate` creates it), so every
replica reads the same plugins and any replica's health checks update them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from agentrt.common.v1.common_pb2 import ToolSpec
from agentrt.orchestrator.v1.orchestrator_pb2 import Plugin, PluginManifest
from google.protobuf.timestamp_pb2 import Timestamp

from services.kit.errors import AlreadyExists, NotFound
from services.kit.storage import StorageConfig, open_store
from services.orchestrator.plugins.names import plugin_name

SQL_DIRECTORY = Path(__file__).resolve().parent.parent / "sql"
"""The orchestrator's `sql/` folder: migrations and named queries per backend."""


@dataclass(frozen=True)
class NewPlugin:
    """A validated plugin whose tools were listed and checked against its manifest."""

    plugin_id: str
    manifest: PluginManifest
    tools: Sequence[ToolSpec]
    """As the plugin listed them, with kind TOOL_KIND_PLUGIN."""
    request_id: str
    """Idempotency key; empty for none."""
    request_hash: bytes
    """Hash of the id and the manifest; a reused request_id must come with the same hash."""


@dataclass(frozen=True)
class HealthCheck:
    """The outcome of one health check of one plugin."""

    state: Plugin.State.ValueType
    time: datetime
    error: str = ""
    """Why the check failed; empty when HEALTHY."""
    tools: Sequence[ToolSpec] | None = None
    """The tools as listed now, to refresh their schemas; None keeps the stored ones."""


class PluginStore(Protocol):
    """Registered plugins on one backend. Errors: NotFound for an unknown plugin."""

    async def create(self, new: NewPlugin, now: datetime) -> tuple[Plugin, bool]:
        """Store the plugin as HEALTHY, checked `now`, or return the plugin created earlier
        with the same request_id and hash with created=False (RequestIdReused when the hash
        differs); AlreadyExists when the id is taken."""
        ...

    async def get(self, plugin_id: str) -> Plugin:
        """The plugin."""
        ...

    async def list_all(self) -> list[Plugin]:
        """Every plugin, sorted by id (operators register tens, not thousands)."""
        ...

    async def delete(self, plugin_id: str) -> None:
        """Remove the plugin."""
        ...

    async def record_check(self, plugin: Plugin, check: HealthCheck) -> bool:
        """Store a check of `plugin` (as read before the check); False, changing nothing,
        when that plugin was deleted since, even if one of the same id was registered."""
        ...

    async def close(self) -> None:
        """Release the database."""
        ...


def plugin_message(
    plugin_id: str,
    manifest: bytes,
    tools: bytes,
    state: int,
    last_check_time: Timestamp,
    last_check_error: str,
    create_time: Timestamp,
) -> Plugin:
    """The Plugin of a stored row; `tools` is a serialized Plugin holding only its tools."""
    plugin = Plugin.FromString(tools)
    plugin.name = plugin_name(plugin_id)
    plugin.manifest.ParseFromString(manifest)
    plugin.state = Plugin.State.ValueType(state)
    plugin.last_check_time.CopyFrom(last_check_time)
    plugin.last_check_error = last_check_error
    plugin.create_time.CopyFrom(create_time)
    return plugin


def serialize_manifest(manifest: PluginManifest) -> bytes:
    return manifest.SerializeToString(deterministic=True)


def serialize_tools(tools: Sequence[ToolSpec]) -> bytes:
    """The stored form of a plugin's tools (see `plugin_message`)."""
    return Plugin(tools=tools).SerializeToString(deterministic=True)


def timestamp(time: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(time)
    return stamp


def micros(time: datetime) -> int:
    """Microseconds since the epoch, as SQLite stores times."""
    return timestamp(time).ToMicroseconds()


def from_micros(value: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMicroseconds(value)
    return stamp


def plugin_id_of(plugin: Plugin) -> str:
    return plugin.name.removeprefix("plugins/")


def not_found(plugin_id: str) -> NotFound:
    name = plugin_name(plugin_id)
    return NotFound(f"plugin {name} not found", metadata={"name": name})


def already_exists(plugin_id: str) -> AlreadyExists:
    name = plugin_name(plugin_id)
    return AlreadyExists(f"plugin {name} already exists", metadata={"name": name})


async def open_plugin_store(config: StorageConfig) -> PluginStore:
    """The configured backend's store; UnmigratedDatabaseError unless `agentrt migrate` ran."""
    store: PluginStore = await open_store(
        config,
        SQL_DIRECTORY,
        "services.orchestrator.plugins.store_postgres:PostgresPluginStore",
        "services.orchestrator.plugins.store_sqlite:SqlitePluginStore",
    )
    return store
