"""The whole system in-process behind a real gRPC channel, and helpers to call it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from agentrt.common.v1.common_pb2 import RuntimeEvent
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.dev import LocalSystem, local_system
from services.gateway.admin import create_api_key

Metadata = tuple[tuple[str, str], ...]
TIMEOUT = 10.0
"""Seconds any one call of these tests may take."""


@pytest.fixture(params=["embedded", pytest.param("postgres+redis", marks=pytest.mark.integration)])
def servers(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """The database URL, Redis URL and Redis prefix the system uses: none (SQLite and
    in-process events), or PostgreSQL and Redis Streams."""
    if request.param == "embedded":
        return "", "", ""
    return (
        request.getfixturevalue("pg_dsn"),
        request.getfixturevalue("redis_url"),
        request.getfixturevalue("redis_prefix").rstrip(":"),
    )


@pytest.fixture
async def system(servers: tuple[str, str, str], tmp_path: Path) -> AsyncIterator[LocalSystem]:
    """Every service in this process, behind one endpoint."""
    database_url, redis_url, redis_prefix = servers
    async with local_system(
        tmp_path / "data",
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
    ) as running:
        yield running


@pytest.fixture
async def runtime(system: LocalSystem) -> AsyncIterator[gateway_pb2_grpc.RuntimeServiceAsyncStub]:
    async with grpc.aio.insecure_channel(system.endpoint) as channel:
        yield gateway_pb2_grpc.RuntimeServiceStub(channel)


def bearer(key: str) -> Metadata:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture
def dev(system: LocalSystem) -> Metadata:
    """The dev tenant's key."""
    return bearer(system.api_key)


@pytest.fixture
async def other(system: LocalSystem) -> Metadata:
    """A key of another tenant."""
    return bearer(await create_api_key(system.infra.storage("gateway"), "globex", "app"))


def prompt(text: str = "hello", **spec: Any) -> gateway_pb2.ExecuteRequest:
    return gateway_pb2.ExecuteRequest(spec=jobs_pb2.JobSpec(prompt=text, **spec))


async def job_names(runtime: gateway_pb2_grpc.RuntimeServiceAsyncStub, key: Metadata) -> list[str]:
    listed = await runtime.ListJobs(
        gateway_pb2.ListJobsRequest(page_size=500), metadata=key, timeout=TIMEOUT
    )
    return [job.name for job in listed.jobs]


async def refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, error_details_pb2.ErrorInfo]:
    """The status code and ErrorInfo of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), error_info(raised.value)


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    # An AioRpcError offers what from_call reads (code, details, trailing metadata).
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no google.rpc.Status in {error!r}"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "agentrt.dev"
    return info


async def assert_refused_and_nothing_created(
    runtime: gateway_pb2_grpc.RuntimeServiceAsyncStub,
    key: Metadata,
    call: Callable[[], Awaitable[Any]],
    code: grpc.StatusCode,
    reason: str,
) -> error_details_pb2.ErrorInfo:
    before = await job_names(runtime, key)
    got_code, info = await refused(call())
    assert (got_code, info.reason) == (code, reason)
    assert await job_names(runtime, key) == before
    return info


async def first_event(stream: Any) -> RuntimeEvent:
    async for event in stream:
        assert isinstance(event, RuntimeEvent)
        return event
    raise AssertionError("the stream ended without an event")


_exporter = InMemorySpanExporter()
_installed = False


@pytest.fixture
def spans(system: LocalSystem) -> Iterator[InMemorySpanExporter]:
    """Every span the process ends from now on (the system installed the provider)."""
    global _installed
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    if not _installed:
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        _installed = True
    _exporter.clear()
    yield _exporter
    _exporter.clear()


def served(spans: InMemorySpanExporter, method: str) -> list[ReadableSpan]:
    return [
        span
        for span in spans.get_finished_spans()
        if span.name == method and span.kind == trace.SpanKind.SERVER
    ]


async def eventually_served(spans: InMemorySpanExporter, method: str) -> ReadableSpan:
    """The one span of `method`, which may end just after the client saw its effect."""
    for _ in range(100):
        found = served(spans, method)
        if found:
            [span] = found
            return span
        await asyncio.sleep(0.02)
    raise AssertionError(f"no span of {method}")
