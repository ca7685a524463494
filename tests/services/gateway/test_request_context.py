"""The request context set at the gateway reaches jobs, orchestrator and engine on real calls."""

from __future__ import annotations

from agentrt.common.v1.common_pb2 import RequestContext
from agentrt.gateway.v1 import gateway_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.kit.request_context import HEADER
from tests.services.gateway.conftest import TIMEOUT, Metadata, eventually_served, prompt, served


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

    [created] = served(spans, "/agentrt.jobs.v1.JobService/CreateJob")
    attributes = dict(created.attributes or {})
    assert attributes["agentrt.tenant"] == "dev"
    assert attributes["agentrt.principal"] == "dev"
    assert attributes["agentrt.session"] == "chat-7"
    assert str(attributes["agentrt.request_id"]).startswith("req_")

    # The orchestrator runs the job with the job's context: the engine sees the job.
    [model_call] = served(spans, "/agentrt.engine.v1.EngineService/StreamComplete")
    attributes = dict(model_call.attributes or {})
    assert attributes["agentrt.tenant"] == "dev"
    assert attributes["agentrt.principal"] == "dev"
    assert attributes["agentrt.job"] == job
    assert attributes["agentrt.session"] == "chat-7"
    assert attributes["agentrt.trace_id"] == events[0].trace_id
    # The jobs service sees the same context on the orchestrator's calls about the job.
    finished = await eventually_served(spans, "/agentrt.jobs.v1.JobService/FinishJob")
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
        [span] = served(spans, method)
        assert dict(span.attributes or {})["agentrt.request_id"] == "order-42"
