"""The request context set at the gateway reaches jobs, orchestrator and engine on real calls."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from agentrt.common.v1.common_pb2 import RequestContext
from agentrt.gateway.v1 import gateway_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.dev import LocalSystem
from services.kit.request_context import HEADER
from tests.services.gateway.conftest import TIMEOUT, Metadata, prompt

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


def _served(spans: InMemorySpanExporter, method: str) -> list[ReadableSpan]:
    return [
        span
        for span in spans.get_finished_spans()
        if span.name == method and span.kind == trace.SpanKind.SERVER
    ]


async def _eventually_served(spans: InMemorySpanExporter, method: str) -> ReadableSpan:
    """The one span of `method`, which may end just after the client saw its effect."""
    for _ in range(100):
        found = _served(spans, method)
        if found:
            [span] = found
            return span
        await asyncio.sleep(0.02)
    raise AssertionError(f"no span of {method}")


async def test_the_gateways_context_reaches_jobs_and_engine(
    runtime: gateway_pb2_grpc.RuntimeServiceAsyncStub,
    dev: Metadata,
    spans: InMemorySpanExporter,
) -> None:
    # A caller's own context header is not trusted: the tenant comes from the key.
    forged = RequestContext(tenant="globex", principal="mallory").SerializeToString()
    stream = runtime.ExecuteStream(
        prompt("hello", session="chat-7"),
        metadata=(*dev, (HEADER, forged)),
        timeout=TIMEOUT,
    )
    events = [event async for event in stream]
    job = events[0].job

    [created] = _served(spans, "/agentrt.jobs.v1.JobService/CreateJob")
    attributes = dict(created.attributes or {})
    assert attributes["agentrt.tenant"] == "dev"
    assert attributes["agentrt.principal"] == "dev"
    assert attributes["agentrt.session"] == "chat-7"
    assert str(attributes["agentrt.request_id"]).startswith("req_")

    # The orchestrator runs the job with the job's context: the engine sees the job.
    [model_call] = _served(spans, "/agentrt.engine.v1.EngineService/StreamComplete")
    attributes = dict(model_call.attributes or {})
    assert attributes["agentrt.tenant"] == "dev"
    assert attributes["agentrt.principal"] == "dev"
    assert attributes["agentrt.job"] == job
    assert attributes["agentrt.session"] == "chat-7"
    assert attributes["agentrt.trace_id"] == events[0].trace_id
    # The jobs service sees the same context on the orchestrator's calls about the job.
    finished = await _eventually_served(spans, "/agentrt.jobs.v1.JobService/FinishJob")
    attributes = dict(finished.attributes or {})
    assert (attributes["agentrt.job"], attributes["agentrt.tenant"]) == (job, "dev")


async def test_a_callers_request_id_is_the_contexts_down_to_the_engine(
    runtime: gateway_pb2_grpc.RuntimeServiceAsyncStub,
    dev: Metadata,
    spans: InMemorySpanExporter,
) -> None:
    request = prompt("hello")
    request.request_id = "order-42"
    async for _ in runtime.ExecuteStream(request, metadata=dev, timeout=TIMEOUT):
        pass

    # The job keeps it, so the orchestrator's calls for the job carry it too.
    for method in (
        "/agentrt.jobs.v1.JobService/CreateJob",
        "/agentrt.engine.v1.EngineService/StreamComplete",
    ):
        [span] = _served(spans, method)
        assert dict(span.attributes or {})["agentrt.request_id"] == "order-42"
