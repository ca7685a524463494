"""RuntimeService through a real gRPC channel to the whole system running in-process.

Every refused call is checked for its status and ErrorInfo reason, and for having
created nothing: the tenant's job list is the same before and after.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from agentrt.common.v1.common_pb2 import EventType, JobState
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2

from services.dev import LocalSystem
from services.gateway.admin import create_api_key, revoke_api_key
from services.kit.events import is_terminal
from tests.services.gateway.conftest import (
    TIMEOUT,
    Metadata,
    assert_refused_and_nothing_created,
    bearer,
    error_info,
    first_event,
    job_names,
    prompt,
    refused,
)


async def test_execute_creates_a_queued_job_of_the_keys_tenant(
    runtime: gateway_pb2_grpc.RuntimeServiceAsyncStub, dev: Metadata, other: Metadata
) -> None:
    job = await runtime.Execute(prompt(), metadata=dev, timeout=TIMEOUT)

    assert job.tenant == "dev"
    assert job.principal == "dev"
    assert job.spec.model == "local"
    assert job.state in (JobState.JOB_STATE_QUEUED, JobState.JOB_STATE_RUNNING)
    assert await job_names(runtime, dev) == [job.name]
    assert await job_names(runtime, other) == []


async def test_execute_stream_sends_every_event_from_created_to_the_end(
    runtime: gateway_pb2_grpc.RuntimeServiceAsyncStub, dev: Metadata
) -> None:
    events = [
        event async for event in runtime.ExecuteStream(prompt(), metadata=dev, timeout=TIMEOUT)
    ]

    assert events[0].type == EventType.EVENT_TYPE_JOB_CREATED
    assert is_terminal(events[-1].type)
    history = [event.sequence for event in events if event.id.count(".") == 1]
    assert history == list(range(1, len(history) + 1))


async def test_watch_job_resumes_after_the_event_given(
    runtime: gateway_pb2_grpc.RuntimeServiceAsyncStub, dev: Metadata
) -> None:
    events = [
        event async for event in runtime.ExecuteStream(prompt(), metadata=dev, timeout=TIMEOUT)
    ]
    kept = [event for event in events if event.id.count(".") == 1]

    watched = [
        event
        async for event in runtime.WatchJob(
            gateway_pb2.WatchJobRequest(name=kept[0].job, after_event_id=kept[0].id),
            metadata=dev,
            timeout=TIMEOUT,
        )
    ]

    assert [event.id for event in watched] == [event.id for event in kept[1:]]


async def test_a_call_without_a_key_is_unauthenticated(
    runtime: gateway_pb2_grpc.RuntimeServiceAsyncStub, dev: Metadata
) -> None:
    await assert_refused_and_nothing_created(
        runtime,
        dev,
        lambda: runtime.Execute(prompt(), timeout=TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_MISSING",
    )
    code, info = await refused(
        first_event(runtime.WatchJob(gateway_pb2.WatchJobRequest(name="jobs/x"), timeout=TIMEOUT))
    )
    assert (code, info.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")


@pytest.mark.parametrize(
    "key",
    [
        "agk_aaaaaaaaaaaaaaaa_" + "a" * 52,
        "not-a-key",
    ],
)
async def test_a_wrong_key_is_unauthenticated(
    runtime: gateway_pb2_grpc.RuntimeServiceAsyncStub, dev: Metadata, key: str
) -> None:
    await assert_refused_and_nothing_created(
        runtime,
        dev,
        lambda: runtime.Execute(prompt(), metadata=(("x-api-key", key),), timeout=TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_INVALID",
    )


async def test_a_revoked_key_is_unauthenticated(
    system: LocalSystem, runtime: gateway_pb2_grpc.RuntimeServiceAsyncStub, dev: Metadata
) -> None:
    key = await create_api_key(system.infra.storage("gateway"), "dev", "temp")
    await revoke_api_key(system.infra.storage("gateway"), key.split("_")[1])

    await assert_refused_and_nothing_created(
        runtime,
        dev,
        lambda: runtime.Execute(prompt(), metadata=bearer(key), timeout=TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_INVALID",
    )


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (gateway_pb2.ExecuteRequest(), "spec"),
        (prompt(""), "spec.prompt"),
        (prompt("", model="local"), "spec.prompt"),
    ],
)
async def test_an_empty_prompt_is_a_required_field(
    runtime: gateway_pb2_grpc.RuntimeServiceAsyncStub,
    dev: Metadata,
    request_: gateway_pb2.ExecuteRequest,
    field: str,
) -> None:
    info = await assert_refused_and_nothing_created(
        runtime,
        dev,
        lambda: runtime.Execute(request_, metadata=dev, timeout=TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_REQUIRED",
    )
    assert info.metadata["field"] == field


async def test_an_unknown_model_is_not_found(
    runtime: gateway_pb2_grpc.RuntimeServiceAsyncStub, dev: Metadata
) -> None:
    info = await assert_refused_and_nothing_created(
        runtime,
        dev,
        lambda: runtime.Execute(prompt(model="no-such-model"), metadata=dev, timeout=TIMEOUT),
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
    )
    assert info.metadata["model"] == "no-such-model"


@pytest.mark.parametrize("name", ["", "jobs/", "jobs/NOT-AN-ID", "job/01arz3ndektsv4rrffq69g5fav"])
async def test_a_malformed_job_name_is_invalid(
    runtime: gateway_pb2_grpc.RuntimeServiceAsyncStub, dev: Metadata, name: str
) -> None:
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: runtime.GetJob(gateway_pb2.GetJobRequest(name=name), metadata=dev, timeout=TIMEOUT),
        lambda: runtime.CancelJob(
            gateway_pb2.CancelJobRequest(name=name), metadata=dev, timeout=TIMEOUT
        ),
        lambda: first_event(
            runtime.WatchJob(gateway_pb2.WatchJobRequest(name=name), metadata=dev, timeout=TIMEOUT)
        ),
    ]
    for call in calls:
        await assert_refused_and_nothing_created(
            runtime, dev, call, grpc.StatusCode.INVALID_ARGUMENT, "NAME_INVALID"
        )


async def test_a_malformed_event_id_is_invalid(
    runtime: gateway_pb2_grpc.RuntimeServiceAsyncStub, dev: Metadata
) -> None:
    job = await runtime.Execute(prompt(), metadata=dev, timeout=TIMEOUT)
    info = await assert_refused_and_nothing_created(
        runtime,
        dev,
        lambda: first_event(
            runtime.WatchJob(
                gateway_pb2.WatchJobRequest(name=job.name, after_event_id="12.x"),
                metadata=dev,
                timeout=TIMEOUT,
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_INVALID",
    )
    assert info.metadata["field"] == "after_event_id"


async def test_another_tenants_job_looks_missing_and_is_left_alone(
    runtime: gateway_pb2_grpc.RuntimeServiceAsyncStub, dev: Metadata, other: Metadata
) -> None:
    secret = "the launch code is 1234"
    job = await runtime.Execute(
        prompt(secret, labels={"team": "secret"}), metadata=other, timeout=TIMEOUT
    )
    missing = f"jobs/{'0' * 26}"
    calls: list[Callable[[str], Awaitable[Any]]] = [
        lambda name: runtime.GetJob(
            gateway_pb2.GetJobRequest(name=name), metadata=dev, timeout=TIMEOUT
        ),
        lambda name: runtime.CancelJob(
            gateway_pb2.CancelJobRequest(name=name), metadata=dev, timeout=TIMEOUT
        ),
        lambda name: first_event(
            runtime.WatchJob(gateway_pb2.WatchJobRequest(name=name), metadata=dev, timeout=TIMEOUT)
        ),
    ]
    for call in calls:
        answers = []
        for name in (job.name, missing):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(name)
            assert secret not in repr(raised.value)
            info = error_info(raised.value)
            answers.append((raised.value.code(), info.reason, set(info.metadata)))
        assert answers[0] == answers[1] == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND", {"name"})

    owned = await runtime.GetJob(gateway_pb2.GetJobRequest(name=job.name), metadata=other)
    assert owned.state != JobState.JOB_STATE_CANCELLED
    assert await job_names(runtime, dev) == []


async def test_a_reused_request_id_returns_the_same_job_or_is_refused_with_another_body(
    runtime: gateway_pb2_grpc.RuntimeServiceAsyncStub, dev: Metadata
) -> None:
    first = await runtime.Execute(
        gateway_pb2.ExecuteRequest(spec=jobs_pb2.JobSpec(prompt="one"), request_id="r-1"),
        metadata=dev,
        timeout=TIMEOUT,
    )
    again = await runtime.Execute(
        gateway_pb2.ExecuteRequest(spec=jobs_pb2.JobSpec(prompt="one"), request_id="r-1"),
        metadata=dev,
        timeout=TIMEOUT,
    )
    assert again.name == first.name

    await assert_refused_and_nothing_created(
        runtime,
        dev,
        lambda: runtime.Execute(
            gateway_pb2.ExecuteRequest(spec=jobs_pb2.JobSpec(prompt="two"), request_id="r-1"),
            metadata=dev,
            timeout=TIMEOUT,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )
