"""The orchestrator's service unit: its servicer and the worker pool that runs jobs."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from agentrt.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc

from services.kit.infra import Infrastructure
from services.kit.server import ServiceUnit
from services.orchestrator.config import OrchestratorConfig
from services.orchestrator.handlers import OrchestratorHandler
from services.orchestrator.worker import WorkerPool

SERVICE_NAME = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name


class OrchestratorUnit:
    """Serves OrchestratorService and runs the worker pool while the server runs."""

    name = "orchestrator"

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    @property
    def service_names(self) -> Sequence[str]:
        return [SERVICE_NAME]

    def register(self, server: grpc.aio.Server) -> None:
        # The stubs declare every RPC abstract; at run time the base class answers the
        # ones not implemented yet with UNIMPLEMENTED, which is what they must do for now.
        handler = OrchestratorHandler(self.pool)  # type: ignore[abstract]
        orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(handler, server)

    async def start(self) -> None:
        await self.pool.start()

    async def stop(self) -> None:
        await self.pool.stop()

    async def close(self) -> None:
        """Nothing of its own to close: its channels belong to the infrastructure."""


async def create_unit(
    infra: Infrastructure, config: OrchestratorConfig | None = None
) -> ServiceUnit:
    """The orchestrator unit; its pool is configured from the environment unless given."""
    return OrchestratorUnit(WorkerPool(infra, config or OrchestratorConfig.from_env()))
