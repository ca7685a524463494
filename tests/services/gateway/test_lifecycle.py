"""Jobs through their lifecycle from the public API: cancel, deadlines, listing, limits,
and the whole system's health and reflection."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING

import grpc
from agentrt.common.v1.common_pb2 import ErrorReason, EventType, JobState
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.dev import LocalSystem
from tests.services.gateway.conftest import (
    TIMEOUT,
    Metadata,
    assert_refused_and_nothing_created,
    job_names,
    prompt,
)

if TYPE_CHECKING:
    from agentrt.gateway.v1.gateway_pb2_grpc import RuntimeServiceAsyncStub as RuntimeStub

SERVICES = {
    "agentrt.gateway.v1.RuntimeService",
    "agentrt.jobs.v1.JobService",
    "agentrt.engine.v1.EngineService",
    "agentrt.orchestrator.v1.OrchestratorService",
    "agentrt.policy.v1.PolicyService",
    "agentrt.ledger.v1.LedgerService",
}


async def test_reflection_lists_every_service_and_health_answers_for_each(
    system: LocalSystem,
) -> None:
    async with grpc.aio.insecure_channel(system.endpoint) as channel:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([request])
        )
        async for reply in replies:
            listed = {service.name for service in reply.list_services_response.service}
            break
        assert SERVICES | {"grpc.health.v1.Health"} <= listed
        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", *SERVICES]:
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_an_oversized_prompt_is_refused_and_creates_nothing(
    runtime: RuntimeStub, dev: Metadata
) -> None:
    too_long = "x" * (256 * 1024 + 1)
    info = await assert_refused_and_nothing_created(
        runtime,
        dev,
        lambda: runtime.Execute(prompt(too_long), metadata=dev, timeout=TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MESSAGE_TOO_LARGE",
    )
    assert info.metadata["field"] == "spec.prompt"


async def test_a_request_over_the_transport_limit_is_refused_and_creates_nothing(
    system: LocalSystem, dev: Metadata
) -> None:
    options = [("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(system.endpoint, options=options) as channel:
        runtime: RuntimeStub = gateway_pb2_grpc.RuntimeServiceStub(channel)
        before = await job_names(runtime, dev)
        try:
            await runtime.Execute(prompt("x" * (5 * 1024 * 1024)), metadata=dev, timeout=TIMEOUT)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        else:
            raise AssertionError("a 5 MiB request was accepted")
        assert await job_names(runtime, dev) == before


async def finished(runtime: RuntimeStub, dev: Metadata, name: str) -> list[EventType.ValueType]:
    """The types of the job's events, once it has ended."""
    watch = runtime.WatchJob(gateway_pb2.WatchJobRequest(name=name), metadata=dev, timeout=TIMEOUT)
    return [event.type async for event in watch]


async def test_cancelling_a_finished_job_is_an_illegal_transition(
    runtime: RuntimeStub, dev: Metadata
) -> None:
    job = await runtime.Execute(prompt("hello"), metadata=dev, timeout=TIMEOUT)
    assert (await finished(runtime, dev, job.name))[-1] == EventType.EVENT_TYPE_JOB_SUCCEEDED
    with_state = await assert_refused_and_nothing_created(
        runtime,
        dev,
        lambda: runtime.CancelJob(
            gateway_pb2.CancelJobRequest(name=job.name), metadata=dev, timeout=TIMEOUT
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ILLEGAL_TRANSITION",
    )
    assert with_state.metadata["state"] == "JOB_STATE_SUCCEEDED"
    again = await runtime.GetJob(gateway_pb2.GetJobRequest(name=job.name), metadata=dev)
    assert again.state == JobState.JOB_STATE_SUCCEEDED


async def test_cancel_mid_stream_ends_the_job_cancelled_and_cuts_the_output(
    runtime: RuntimeStub, dev: Metadata
) -> None:
    stream = runtime.ExecuteStream(
        prompt("a long story please", model="local-slow"), metadata=dev, timeout=TIMEOUT
    )
    types: list[EventType.ValueType] = []
    name = ""
    async for event in stream:
        types.append(event.type)
        name = event.job
        if event.type == EventType.EVENT_TYPE_OUTPUT_DELTA and not any(
            t == EventType.EVENT_TYPE_JOB_CANCELLED for t in types
        ):
            cancelled = await runtime.CancelJob(
                gateway_pb2.CancelJobRequest(name=name, reason="enough"), metadata=dev
            )
            assert cancelled.state == JobState.JOB_STATE_CANCELLED
    assert types[-1] == EventType.EVENT_TYPE_JOB_CANCELLED
    assert EventType.EVENT_TYPE_JOB_SUCCEEDED not in types
    assert EventType.EVENT_TYPE_TURN_COMPLETED not in types
    await asyncio.sleep(0.5)  # the model's answer would have gone on streaming by now
    job = await runtime.GetJob(gateway_pb2.GetJobRequest(name=name), metadata=dev)
    assert job.state == JobState.JOB_STATE_CANCELLED
    assert job.failure.message


async def test_a_job_past_its_deadline_times_out(runtime: RuntimeStub, dev: Metadata) -> None:
    job = await runtime.Execute(
        prompt("a long story please", model="local-slow", timeout=Duration(nanos=500_000_000)),
        metadata=dev,
        timeout=TIMEOUT,
    )
    assert (await finished(runtime, dev, job.name))[-1] == EventType.EVENT_TYPE_JOB_TIMED_OUT
    done = await runtime.GetJob(gateway_pb2.GetJobRequest(name=job.name), metadata=dev)
    assert done.state == JobState.JOB_STATE_TIMED_OUT
    assert done.failure.reason == ErrorReason.ERROR_REASON_DEADLINE_EXCEEDED
    assert done.end_time.ToDatetime() - done.deadline.ToDatetime() < timedelta(seconds=2)


async def test_list_jobs_pages_and_filters_by_state(runtime: RuntimeStub, dev: Metadata) -> None:
    created = [
        await runtime.Execute(prompt(f"job {i}", session="paging"), metadata=dev) for i in range(5)
    ]
    for job in created:
        await finished(runtime, dev, job.name)
    seen: list[str] = []
    token = ""
    while True:
        page = await runtime.ListJobs(
            gateway_pb2.ListJobsRequest(
                page_size=2,
                page_token=token,
                session="paging",
                states=[JobState.JOB_STATE_SUCCEEDED],
            ),
            metadata=dev,
        )
        assert len(page.jobs) <= 2
        seen += [job.name for job in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen == [job.name for job in reversed(created)]
    none = await runtime.ListJobs(
        gateway_pb2.ListJobsRequest(session="paging", states=[JobState.JOB_STATE_RUNNING]),
        metadata=dev,
    )
    assert list(none.jobs) == []


async def test_a_caller_cannot_name_a_parent_job(runtime: RuntimeStub, dev: Metadata) -> None:
    parent = await runtime.Execute(prompt("parent"), metadata=dev, timeout=TIMEOUT)
    info = await assert_refused_and_nothing_created(
        runtime,
        dev,
        lambda: runtime.Execute(prompt("child", parent=parent.name), metadata=dev),
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_INVALID",
    )
    assert info.metadata["field"] == "spec.parent"
