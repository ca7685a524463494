"""The jobs and engine services in-process (SQLite, in-memory events), and worker pools on them."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.dev import local_config
from services.kit.events import is_terminal
from services.kit.infra import Infrastructure, open_infrastructure
from services.kit.server import Server
from services.orchestrator.agent import RetryPolicy
from services.orchestrator.config import OrchestratorConfig
from services.orchestrator.guards import PolicyGuard, SpendGuard
from services.orchestrator.ports import ToolsPort
from services.orchestrator.tools.builtin import BuiltinTools
from services.orchestrator.tools.runner import ToolRunner, static_sources
from services.orchestrator.worker import WorkerPool
from services.serve import migrate_all
from services.units import create_unit

TENANT = "acme"
WAIT = 15.0
"""Seconds a test waits for something the system must do, before it fails."""


@dataclasses.dataclass
class System:
    """The running services, a jobs client, and pools that are stopped after the test."""

    infra: Infrastructure
    """What the services and the pools share: in-process events, channels to the server."""
    jobs: jobs_pb2_grpc.JobServiceAsyncStub
    pools: list[WorkerPool] = dataclasses.field(default_factory=list)

    def pool(
        self,
        worker_id: str,
        concurrency: int = 4,
        lease_seconds: float = 1.0,
        heartbeat_seconds: float = 0.25,
        *,
        tools: ToolsPort | None = None,
        policy: PolicyGuard | None = None,
        spend: SpendGuard | None = None,
    ) -> WorkerPool:
        """A pool (not started) with short leases and fast retries; its tools are the
        built-in ones unless given."""
        config = OrchestratorConfig(
            concurrency=concurrency,
            lease_seconds=lease_seconds,
            heartbeat_seconds=heartbeat_seconds,
            lease_wait_seconds=0.5,
            worker_id=worker_id,
        )
        pool = WorkerPool(
            self.infra,
            config,
            RetryPolicy(attempts=2, backoff=0.05),
            tools=tools or ToolRunner(static_sources(BuiltinTools())),
            policy=policy,
            spend=spend,
        )
        self.pools.append(pool)
        return pool

    async def create_job(self, **spec: object) -> jobs_pb2.Job:
        return await self.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(
                tenant=TENANT,
                principal="tester",
                spec=jobs_pb2.JobSpec(**spec),  # type: ignore[arg-type]
                trace_id="0af7651916cd43dd8448eb211c80319c",
            ),
            wait_for_ready=True,  # the channel may be backing off after a refused connection
        )

    async def get_job(self, name: str) -> jobs_pb2.Job:
        return await self.jobs.GetJob(jobs_pb2.GetJobRequest(tenant=TENANT, name=name))

    async def history(self, name: str) -> list[common_pb2.RuntimeEvent]:
        response = await self.jobs.ListJobEvents(
            jobs_pb2.ListJobEventsRequest(tenant=TENANT, name=name, page_size=1000)
        )
        return list(response.events)

    async def first_event(
        self, name: str, wanted: Callable[[common_pb2.RuntimeEvent], bool]
    ) -> common_pb2.RuntimeEvent:
        """The first event on the job's live stream that is `wanted`."""
        async with asyncio.timeout(WAIT):
            async for _, event in self.infra.events.follow_job(name, "0"):
                if wanted(event):
                    return event
        raise AssertionError(f"the event stream of {name} ended")

    async def end(self, name: str) -> common_pb2.RuntimeEvent:
        """The job's terminal event, once it is published."""
        return await self.first_event(name, lambda event: is_terminal(event.type))

    async def stream(self, name: str) -> list[common_pb2.RuntimeEvent]:
        """Everything published on the job's stream so far (read up to a marker)."""
        job_id = name.removeprefix("jobs/")
        marker = common_pb2.RuntimeEvent(id=f"{job_id}.999999", job=name)
        await self.infra.events.publish([marker])
        events: list[common_pb2.RuntimeEvent] = []
        async with asyncio.timeout(WAIT):
            async for _, event in self.infra.events.follow_job(name, "0"):
                if event.id == marker.id:
                    return events
                events.append(event)
        raise AssertionError(f"the event stream of {name} ended")


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The spans ended during the test (the servers' tracer provider is the global one)."""
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), "a Server installs the SDK provider"
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


async def seconds_until_span(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    """The one span named `name`, once it has ended (failing after WAIT seconds)."""
    async with asyncio.timeout(WAIT):
        while True:
            found = [s for s in spans.get_finished_spans() if s.name == name]
            if found:
                break
            await asyncio.sleep(0.02)
    (span,) = found
    return span


async def seconds_until(done: Awaitable[None], within: float = WAIT) -> float:
    """Awaits `done` (failing after `within` seconds); returns the seconds it took."""
    started = time.monotonic()
    async with asyncio.timeout(within):
        await done
    return time.monotonic() - started


@pytest.fixture
async def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[System]:
    """The jobs, engine, policy and ledger services on one in-process server, as `agentrt
    dev` runs them (without its orchestrator unit: each test starts the pools it needs)."""
    monkeypatch.setenv("AGENTRT_LOCAL_SLOW_CHUNK_DELAY", "0.05")
    server = Server("127.0.0.1:0", "orchestrator-tests")
    infra = await open_infrastructure(local_config(tmp_path, server.port))
    system = System(infra, jobs_pb2_grpc.JobServiceStub(infra.channel("jobs")))
    try:
        await migrate_all(infra, ["jobs", "orchestrator", "policy", "ledger"])
        await server.start(
            [await create_unit(name, infra) for name in ("jobs", "engine", "policy", "ledger")]
        )
        try:
            yield system
        finally:
            for pool in system.pools:
                await pool.stop()
            await server.stop(grace=1.0)
    finally:
        await infra.close()


def words(count: int) -> str:
    """A prompt whose answer from `local-slow` streams one chunk a word, and 16 more."""
    return " ".join(f"word{index}" for index in range(count))
