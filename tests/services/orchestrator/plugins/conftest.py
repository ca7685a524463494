"""Fixtures of the plugin tests: a migrated PluginStore on each backend, a Python plugin
server, a registry over it, and OrchestratorService's plugin RPCs behind a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import pytest
from agentrt.orchestrator.v1 import orchestrator_pb2_grpc

from services.kit.server import Server
from services.kit.storage import StorageConfig, migrate
from services.orchestrator.plugin_handlers import PluginRpcs
from services.orchestrator.plugins import (
    PluginConfig,
    PluginRegistry,
    PluginStore,
    open_plugin_store,
)
from services.orchestrator.plugins.store import SQL_DIRECTORY
from services.orchestrator.tools.builtin import BuiltinTools
from tests.services.orchestrator.plugins.python_plugin import PythonPlugin

Stub: TypeAlias = "orchestrator_pb2_grpc.OrchestratorServiceAsyncStub"

FAST_CHECKS = PluginConfig(check_seconds=0.2, check_timeout_seconds=2.0, refresh_seconds=0.0)
"""Checks every 0.2 s, and workers that always read the latest health."""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def storage_config(request: pytest.FixtureRequest, sqlite_path: Path) -> StorageConfig:
    if request.param == "postgres":
        return StorageConfig("postgres", None, request.getfixturevalue("pg_dsn"), "orchestrator")
    return StorageConfig("sqlite", sqlite_path, None, "orchestrator")


@pytest.fixture
async def store(storage_config: StorageConfig) -> AsyncIterator[PluginStore]:
    await migrate(storage_config, SQL_DIRECTORY)
    opened = await open_plugin_store(storage_config)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def plugin() -> AsyncIterator[PythonPlugin]:
    """A running Python plugin serving echo, refuse and shout."""
    running = PythonPlugin()
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def registry(sqlite_path: Path) -> AsyncIterator[PluginRegistry]:
    """A registry on SQLite with the built-in tools, checking every 0.2 s when told to."""
    config = StorageConfig("sqlite", sqlite_path, None, "orchestrator")
    await migrate(config, SQL_DIRECTORY)
    opened = PluginRegistry(await open_plugin_store(config), FAST_CHECKS, builtin=BuiltinTools())
    try:
        yield opened
    finally:
        await opened.close()


class PluginServicer(PluginRpcs, orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """The plugin RPCs alone, as the orchestrator's servicer mixes them in."""

    def __init__(self, plugins: PluginRegistry) -> None:
        self.plugins = plugins


class OrchestratorPluginsUnit:
    name = "orchestrator"
    service_names = ("agentrt.orchestrator.v1.OrchestratorService",)

    def __init__(self, plugins: PluginRegistry) -> None:
        self._servicer: Any = PluginServicer(plugins)  # type: ignore[abstract]

    def register(self, server: grpc.aio.Server) -> None:
        orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(self._servicer, server)

    async def start(self) -> None:
        """The tests run checks themselves."""

    async def stop(self) -> None:
        """No background work."""

    async def close(self) -> None:
        """The registry fixture closes the registry."""


@pytest.fixture
async def orchestrator(registry: PluginRegistry) -> AsyncIterator[Stub]:
    """A stub of the plugin RPCs behind a real server with the kit's interceptors."""
    server = Server("127.0.0.1:0", "orchestrator")
    await server.start([OrchestratorPluginsUnit(registry)])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
    finally:
        await server.stop(grace=1.0)
