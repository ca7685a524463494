"""The OrchestratorService servicer: thin RPC methods over the worker pool."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import grpc
from agentrt.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services.kit.errors import FieldInvalid
from services.orchestrator.plugin_handlers import PluginRpcs
from services.orchestrator.plugins import PluginRegistry
from services.orchestrator.worker import PoolStatus, WorkerPool

MAX_PAGE_SIZE = 500

Context = grpc.aio.ServicerContext[Any, Any]


class OrchestratorHandler(PluginRpcs, orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """ListWorkers answers from this process's pool; the plugin and tool RPCs (PluginRpcs)
    from the plugin registry."""

    def __init__(self, pool: WorkerPool, plugins: PluginRegistry) -> None:
        self._pool = pool
        self.plugins = plugins

    async def ListWorkers(
        self, request: orchestrator_pb2.ListWorkersRequest, context: Context
    ) -> orchestrator_pb2.ListWorkersResponse:
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise FieldInvalid("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
        # Every worker fits on the first page, so no page token is ever handed out.
        if request.page_token:
            raise FieldInvalid("page_token", "not a token this service returned")
        return orchestrator_pb2.ListWorkersResponse(workers=[worker_message(self._pool.status())])


def worker_message(status: PoolStatus) -> orchestrator_pb2.Worker:
    """The Worker resource of a pool's status."""
    start_time = Timestamp()
    start_time.FromDatetime(status.start_time)
    heartbeat_time = None
    if status.heartbeat_time is not None:
        heartbeat_time = Timestamp()
        heartbeat_time.FromDatetime(status.heartbeat_time)
    state = (
        orchestrator_pb2.Worker.STATE_DRAINING
        if status.draining
        else orchestrator_pb2.Worker.STATE_ACTIVE
    )
    return orchestrator_pb2.Worker(
        name=f"workers/{status.worker_id}",
        host=status.host,
        version=metadata.version("agentrt"),
        state=state,
        in_flight_jobs=status.in_flight_jobs,
        capacity=status.capacity,
        start_time=start_time,
        heartbeat_time=heartbeat_time,
    )
