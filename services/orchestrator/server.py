"""The orchestrator's service unit: its servicer, the worker pool that runs jobs, and the
plugin registry's health checks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from agentrt.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc

from services.kit.infra import Infrastructure
from services.kit.periodic import cancel_all
from services.kit.server import ServiceUnit
from services.orchestrator.config import OrchestratorConfig
from services.orchestrator.handlers import OrchestratorHandler
from services.orchestrator.plugins import PluginConfig, PluginRegistry, open_plugin_store
from services.orchestrator.policy import CachedPolicy, open_policy_guard
from services.orchestrator.spend import open_spend_guard
from services.orchestrator.tools.base import ToolSource
from services.orchestrator.tools.builtin import BuiltinTools
from services.orchestrator.tools.runner import SourceProvider, ToolRunner
from services.orchestrator.worker import WorkerPool

SERVICE_NAME = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name


class OrchestratorUnit:
    """Serves OrchestratorService and runs the worker pool and the plugin health checks
    while the server runs."""

    name = "orchestrator"

    def __init__(
        self, pool: WorkerPool, plugins: PluginRegistry, policy: CachedPolicy | None = None
    ) -> None:
        self.pool = pool
        self.plugins = plugins
        self.policy = policy
        """The pool's PolicyGuard, whose change notices are followed while the unit runs."""
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def service_names(self) -> Sequence[str]:
        return [SERVICE_NAME]

    def register(self, server: grpc.aio.Server) -> None:
        handler = OrchestratorHandler(self.pool, self.plugins)
        orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(handler, server)

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self.plugins.run_checks()))
        if self.policy is not None:
            await self.policy.start()
        await self.pool.start()

    async def stop(self) -> None:
        await self.pool.stop()
        if self.policy is not None:
            await self.policy.stop()
        await cancel_all(self._tasks)
        self._tasks.clear()

    async def close(self) -> None:
        """Closes the plugin registry (its store and its channels to plugins); the other
        channels belong to the infrastructure."""
        await self.plugins.close()


async def create_unit(
    infra: Infrastructure, config: OrchestratorConfig | None = None
) -> ServiceUnit:
    """The orchestrator unit; its pool is configured from the environment unless given."""
    store = await open_plugin_store(infra.storage("orchestrator"))
    builtin = BuiltinTools()
    plugins = PluginRegistry(store, PluginConfig.from_env(), builtin=builtin)
    policy = open_policy_guard(infra)
    pool = WorkerPool(
        infra,
        config or OrchestratorConfig.from_env(),
        tools=ToolRunner(tool_sources(builtin, plugins.tools.sources)),
        policy=policy,
        spend=open_spend_guard(infra),
    )
    return OrchestratorUnit(pool, plugins, policy)


def tool_sources(builtin: ToolSource, plugins: SourceProvider | None = None) -> SourceProvider:
    """Where the jobs' tools come from: the built-in tools, then the sources `plugins`
    provides (the registered, healthy plugins), asked again for every offer and run."""

    async def provide() -> Sequence[ToolSource]:
        extra = await plugins() if plugins is not None else ()
        return [builtin, *extra]

    return provide
