"""The Python client against the whole system running in-process (as `agentrt dev`)."""

from __future__ import annotations

import pytest
from agentrt import Client, FailedPreconditionError, NotFoundError, UnauthenticatedError
from agentrt.common.v1.common_pb2 import EventType, JobState

from services.dev import LocalSystem


async def test_run_returns_the_finished_job_with_its_output(system: LocalSystem) -> None:
    async with Client(system.endpoint, system.api_key) as client:
        job = await client.run("hello")
    assert job.state == JobState.JOB_STATE_SUCCEEDED
    assert "hello" in job.result.output
    assert job.usage.total_tokens > 0


async def test_events_stream_live_from_creation_to_the_end(system: LocalSystem) -> None:
    async with Client(system.endpoint, system.api_key) as client:
        job = await client.execute("tell me something", model="local-slow")
        events = [event async for event in client.events(job)]
        done = await client.result(job)
    types = [event.type for event in events]
    assert types[0] == EventType.EVENT_TYPE_JOB_CREATED
    assert types[-1] == EventType.EVENT_TYPE_JOB_SUCCEEDED
    text = "".join(e.output_delta.text for e in events if e.HasField("output_delta"))
    assert text == done.result.output


async def test_cancel_ends_a_running_job_and_a_second_cancel_is_refused(
    system: LocalSystem,
) -> None:
    async with Client(system.endpoint, system.api_key) as client:
        job = await client.execute("a long story", model="local-slow")
        async for event in client.events(job):
            if event.type == EventType.EVENT_TYPE_OUTPUT_DELTA:
                break
        cancelled = await client.cancel(job, reason="enough")
        assert cancelled.state == JobState.JOB_STATE_CANCELLED
        assert (await client.result(job)).state == JobState.JOB_STATE_CANCELLED
        with pytest.raises(FailedPreconditionError) as again:
            await client.cancel(job)
    assert again.value.reason == "ILLEGAL_TRANSITION"


async def test_errors_arrive_as_typed_exceptions_with_their_reason(system: LocalSystem) -> None:
    async with Client(system.endpoint, system.api_key) as client:
        with pytest.raises(NotFoundError) as unknown_model:
            await client.execute("hello", model="no-such-model")
    assert unknown_model.value.reason == "MODEL_NOT_FOUND"
    async with Client(system.endpoint, "agk_wrong_key") as stranger:
        with pytest.raises(UnauthenticatedError) as refused:
            await stranger.list()
    assert refused.value.reason == "API_KEY_INVALID"
