"""The client against a real gRPC server: resuming broken event streams, results, metadata."""

from __future__ import annotations

import grpc
import pytest
from agentrt import (
    AgentrtError,
    Client,
    InvalidArgumentError,
    RetryPolicy,
    UnavailableError,
    event_position,
    job_name,
    job_spec,
)
from agentrt.common.v1 import common_pb2

from .scripted_gateway import JOB, JOB_ID, ScriptedGateway, history, serving

FAST = RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.005)
ALL_IDS = [event.id for event in history()]


async def watch(gateway: ScriptedGateway, after_event_id: str = "") -> list[str]:
    async with serving(gateway) as endpoint, Client(endpoint, "agk_test", retry=FAST) as client:
        return [event.id async for event in client.events(JOB_ID, after_event_id)]


async def test_an_unbroken_stream_yields_every_event_once_and_ends_at_the_terminal_one() -> None:
    gateway = ScriptedGateway()
    assert await watch(gateway) == ALL_IDS
    assert gateway.watches == [""]
    assert gateway.authorizations == ["Bearer agk_test"]


async def test_a_broken_stream_resumes_after_the_last_event_without_duplicates() -> None:
    # Broken after a history event, then after a transient delta, then not at all.
    gateway = ScriptedGateway(breaks=[2, 2, None])
    assert await watch(gateway) == ALL_IDS
    assert gateway.watches == ["", ALL_IDS[1], ALL_IDS[2]]
    assert gateway.authorizations == ["Bearer agk_test"] * 3


async def test_resuming_starts_after_the_given_event_id() -> None:
    gateway = ScriptedGateway()
    assert await watch(gateway, ALL_IDS[3]) == ALL_IDS[4:]
    assert gateway.watches == [ALL_IDS[3]]


async def test_a_stream_that_ends_before_the_terminal_event_is_resumed() -> None:
    gateway = ScriptedGateway(breaks=[3, None], end_cleanly=True)
    assert await watch(gateway) == ALL_IDS
    assert gateway.watches == ["", ALL_IDS[2]]


async def test_reconnections_are_bounded_when_no_event_comes_through() -> None:
    gateway = ScriptedGateway(breaks=[1] + [0] * 10)
    with pytest.raises(UnavailableError) as raised:
        await watch(gateway)
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    # The first stream, then reconnections until FAST.attempts tries in a row brought nothing.
    assert gateway.watches == ["", *[ALL_IDS[0]] * (FAST.attempts - 1)]


async def test_an_error_other_than_unavailable_is_raised_without_resuming() -> None:
    gateway = ScriptedGateway(breaks=[2], break_code=grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(InvalidArgumentError):
        await watch(gateway)
    assert gateway.watches == [""]


async def test_execute_stream_re_executes_with_the_same_request_id_until_the_job_is_known() -> None:
    gateway = ScriptedGateway(breaks=[0, 3, None])
    async with serving(gateway) as endpoint, Client(endpoint, "agk_test", retry=FAST) as client:
        ids = [event.id async for event in client.execute_stream("hi", model="m")]
    assert ids == ALL_IDS
    assert len(gateway.executions) == 2
    assert gateway.executions[0] == gateway.executions[1] != ""
    assert gateway.watches == [ALL_IDS[2]]


async def test_result_follows_the_events_then_returns_the_finished_job() -> None:
    gateway = ScriptedGateway(breaks=[4, None])
    async with serving(gateway) as endpoint, Client(endpoint, "agk_test", retry=FAST) as client:
        job = await client.result(JOB_ID)
    assert job.name == JOB
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED
    assert gateway.watches == ["", ALL_IDS[3]]


async def test_result_of_a_finished_job_needs_no_stream() -> None:
    gateway = ScriptedGateway(state=common_pb2.JOB_STATE_FAILED)
    async with serving(gateway) as endpoint, Client(endpoint, "agk_test") as client:
        job = await client.result(JOB)
    assert job.state == common_pb2.JOB_STATE_FAILED
    assert gateway.watches == []


async def test_a_call_that_fails_raises_an_agentrt_error_not_a_grpc_one() -> None:
    async with serving(ScriptedGateway()) as endpoint, Client(endpoint, "agk_test") as client:
        with pytest.raises(AgentrtError) as raised:
            await client.cancel(JOB)
    assert type(raised.value) is AgentrtError
    assert raised.value.code == grpc.StatusCode.UNIMPLEMENTED


def test_event_positions_order_history_events_before_their_deltas() -> None:
    assert event_position(f"{JOB_ID}.2") == (2, -1)
    assert event_position(f"{JOB_ID}.2.1") == (2, 1)
    positions = [event_position(event_id) or (0, 0) for event_id in ALL_IDS]
    assert positions == sorted(positions)
    assert event_position("not-an-event-id") is None
    assert event_position(f"{JOB_ID}.x") is None


def test_job_names_accept_a_name_a_bare_id_or_a_job() -> None:
    assert job_name(JOB) == JOB
    assert job_name(f" {JOB_ID} ") == JOB
    with pytest.raises(ValueError, match="required"):
        job_name("  ")


def test_job_spec_converts_the_timeout_to_a_duration() -> None:
    budget = common_pb2.BudgetSpec(max_tokens=1000)
    spec = job_spec("hi", model="m", timeout=1.5, labels={"team": "a"}, budget=budget)
    assert (spec.timeout.seconds, spec.timeout.nanos) == (1, 500_000_000)
    assert dict(spec.labels) == {"team": "a"}
    assert spec.budget.max_tokens == 1000
    assert not job_spec("hi").HasField("timeout")
    with pytest.raises(ValueError, match="negative"):
        job_spec("hi", timeout=-1)


def test_a_client_needs_an_endpoint_and_a_key() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        Client(" ", "agk_test")
    with pytest.raises(ValueError, match="API key"):
        Client("127.0.0.1:1", "")


def test_backoff_grows_up_to_its_bound() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=4.0)
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (9, 4.0)]:
        assert ceiling / 2 <= policy.backoff(failures) <= ceiling


def test_a_retry_policy_counts_tries_in_all_and_needs_one() -> None:
    assert [RetryPolicy(attempts=3).may_retry(failures) for failures in (1, 2, 3)] == [
        True,
        True,
        False,
    ]
    assert not RetryPolicy(attempts=1).may_retry(1)
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(initial_backoff=-1.0)
