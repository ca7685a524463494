"""The client retries what is safe to retry (docs/contracts.md, "Retrying calls"): against
the whole system in-process, behind a real gRPC proxy that fails calls on the way."""

from __future__ import annotations

import time

import grpc
import pytest
from agentrt import (
    AgentrtError,
    Client,
    DeadlineExceededError,
    NotFoundError,
    RetryPolicy,
    UnavailableError,
)
from agentrt.common.v1 import common_pb2
from agentrt.gateway.v1 import gateway_pb2, models_pb2
from agentrt.policy.v1 import policy_pb2

from services.dev import LocalSystem
from tests.faulty_proxy import Fault, proxying

FAST = RetryPolicy(attempts=4, initial_backoff=0.01, max_backoff=0.05)
RUNTIME = "/agentrt.gateway.v1.RuntimeService"
EXECUTE = f"{RUNTIME}/Execute"
GET_JOB = f"{RUNTIME}/GetJob"
CANCEL_JOB = f"{RUNTIME}/CancelJob"
COMPLETE = "/agentrt.gateway.v1.ModelService/Complete"
POLICY = "/agentrt.policy.v1.PolicyService"
LOST = Fault(grpc.StatusCode.UNAVAILABLE)
"""The call reached the gateway and was applied; its answer never came back."""


def policy_set() -> policy_pb2.PolicySet:
    tool = policy_pb2.ToolRule(patterns=["calculator"], verdict=policy_pb2.VERDICT_ALLOW)
    return policy_pb2.PolicySet(rules=[policy_pb2.Rule(id="calculations", tool=tool)])


async def jobs_of(system: LocalSystem) -> list[str]:
    async with Client(system.endpoint, system.api_key) as direct:
        jobs, _ = await direct.list(page_size=500)
    return [job.name for job in jobs]


async def test_an_execute_without_a_request_id_whose_answer_is_lost_creates_one_job(
    system: LocalSystem,
) -> None:
    async with (
        proxying(system.endpoint, {EXECUTE: [LOST]}) as (endpoint, proxy),
        Client(endpoint, system.api_key, retry=FAST) as client,
    ):
        job = await client.execute("hello", model="local")
    sent = [gateway_pb2.ExecuteRequest.FromString(raw) for raw in proxy.calls[EXECUTE]]
    assert len(sent) == 2
    assert sent[0].request_id and sent[0].request_id == sent[1].request_id
    assert await jobs_of(system) == [job.name]


async def test_run_retries_under_one_request_id_too(system: LocalSystem) -> None:
    faults = {EXECUTE: [LOST, Fault(grpc.StatusCode.CANCELLED, reaches_gateway=False)]}
    async with (
        proxying(system.endpoint, faults) as (endpoint, proxy),
        Client(endpoint, system.api_key, retry=FAST) as client,
    ):
        job = await client.run("hello", model="local")
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED
    ids = {gateway_pb2.ExecuteRequest.FromString(raw).request_id for raw in proxy.calls[EXECUTE]}
    assert len(proxy.calls[EXECUTE]) == 3 and len(ids) == 1
    assert await jobs_of(system) == [job.name]


async def test_a_read_is_retried_after_a_cancelled_it_did_not_ask_for(system: LocalSystem) -> None:
    async with Client(system.endpoint, system.api_key) as direct:
        job = (await direct.execute("hello", model="local")).name
    cancelled = Fault(grpc.StatusCode.CANCELLED, reaches_gateway=False)
    async with (
        proxying(system.endpoint, {GET_JOB: [cancelled, cancelled]}) as (endpoint, proxy),
        Client(endpoint, system.api_key, retry=FAST) as client,
    ):
        assert (await client.get(job)).name == job
    assert len(proxy.calls[GET_JOB]) == 3


async def test_one_attempt_turns_retries_off(system: LocalSystem) -> None:
    refused = Fault(grpc.StatusCode.UNAVAILABLE, reaches_gateway=False)
    async with (
        proxying(system.endpoint, {EXECUTE: [refused], GET_JOB: [refused]}) as (endpoint, proxy),
        Client(endpoint, system.api_key, retry=RetryPolicy(attempts=1)) as client,
    ):
        with pytest.raises(UnavailableError):
            await client.execute("hello", model="local")
        with pytest.raises(UnavailableError):
            await client.get("jobs/" + "a" * 26)
    assert len(proxy.calls[EXECUTE]) == len(proxy.calls[GET_JOB]) == 1
    assert await jobs_of(system) == []


async def test_a_deadline_exceeded_is_retried_only_while_the_timeout_leaves_time(
    system: LocalSystem,
) -> None:
    async with Client(system.endpoint, system.api_key) as direct:
        job = (await direct.execute("hello", model="local")).name
    late = Fault(grpc.StatusCode.DEADLINE_EXCEEDED, reaches_gateway=False)
    slow = RetryPolicy(attempts=4, initial_backoff=1.0, max_backoff=1.0)
    async with (
        proxying(system.endpoint, {GET_JOB: [late, late]}) as (endpoint, proxy),
        Client(endpoint, system.api_key, retry=FAST, call_timeout=30) as client,
    ):
        assert (await client.get(job)).name == job
    assert len(proxy.calls[GET_JOB]) == 3
    # The pause before a retry (0.5 s at least) would outlast the call's 0.3 s.
    async with (
        proxying(system.endpoint, {GET_JOB: [late]}) as (endpoint, proxy),
        Client(endpoint, system.api_key, retry=slow, call_timeout=0.3) as client,
    ):
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            await client.get(job)
        assert time.monotonic() - started < 0.3
    assert len(proxy.calls[GET_JOB]) == 1


async def test_a_cancel_whose_answer_is_lost_returns_the_cancelled_job(
    system: LocalSystem,
) -> None:
    async with Client(system.endpoint, system.api_key) as direct:
        job = await direct.execute("a long story", model="local-slow")
    async with (
        proxying(system.endpoint, {CANCEL_JOB: [LOST]}) as (endpoint, proxy),
        Client(endpoint, system.api_key, retry=FAST) as client,
    ):
        cancelled = await client.cancel(job, reason="enough")
        assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
        assert len(proxy.calls[CANCEL_JOB]) == 2
        # A cancel of a job that had ended before is still refused.
        with pytest.raises(AgentrtError) as refused:
            await client.cancel(job)
    assert refused.value.reason == "ILLEGAL_TRANSITION"


async def test_creates_and_deletes_whose_answers_are_lost_are_applied_once(
    system: LocalSystem,
) -> None:
    faults = {f"{POLICY}/CreatePolicySet": [LOST], f"{POLICY}/DeletePolicySet": [LOST]}
    async with (
        proxying(system.endpoint, faults) as (endpoint, proxy),
        Client(endpoint, system.api_key, retry=FAST) as client,
    ):
        created = await client.create_policy_set("retried", policy_set())
        assert [found.name for found in await client.list_policy_sets()].count(created.name) == 1
        await client.delete_policy_set("retried")
        with pytest.raises(NotFoundError):
            await client.get_policy_set("retried")
    assert len(proxy.calls[f"{POLICY}/CreatePolicySet"]) == 2
    assert len(proxy.calls[f"{POLICY}/DeletePolicySet"]) == 2


async def test_a_price_whose_creation_answer_is_lost_is_created_once(system: LocalSystem) -> None:
    ledger = "/agentrt.ledger.v1.LedgerService"
    async with (
        proxying(system.endpoint, {f"{ledger}/CreatePrice": [LOST]}) as (endpoint, proxy),
        Client(endpoint, system.api_key, retry=FAST) as client,
    ):
        price = await client.set_price("retried-model", input_price="1.5", output_price="6")
        assert price.name == "prices/retried-model"
    # The second try returned the price the first created, under the same request_id.
    assert len(proxy.calls[f"{ledger}/CreatePrice"]) == 2
    assert f"{ledger}/UpdatePrice" not in proxy.calls


async def test_an_update_checked_against_an_etag_is_not_retried(system: LocalSystem) -> None:
    update = f"{POLICY}/UpdatePolicySet"
    async with (
        proxying(system.endpoint, {update: [LOST, LOST]}) as (endpoint, proxy),
        Client(endpoint, system.api_key, retry=FAST) as client,
    ):
        created = await client.create_policy_set("guarded", policy_set())
        created.description = "checked"
        with pytest.raises(UnavailableError):
            await client.update_policy_set(created, ["description"])
        assert len(proxy.calls[update]) == 1
        created.etag = ""
        await client.update_policy_set(created, ["description"])
        assert len(proxy.calls[update]) == 3


async def test_a_model_call_is_retried_only_with_a_request_id(system: LocalSystem) -> None:
    async with (
        proxying(system.endpoint, {COMPLETE: [LOST, LOST]}) as (endpoint, proxy),
        Client(endpoint, system.api_key, retry=FAST) as client,
    ):
        with pytest.raises(UnavailableError):
            await client.complete("hello", model="local")
        assert len(proxy.calls[COMPLETE]) == 1
        answer = await client.complete("hello", model="local", request_id="complete-1")
        assert "hello" in answer.message.content
    sent = [models_pb2.CompleteRequest.FromString(raw) for raw in proxy.calls[COMPLETE]]
    assert [request.request_id for request in sent] == ["", "complete-1", "complete-1"]


async def test_a_model_stream_is_retried_only_with_a_request_id_and_before_its_first_chunk(
    system: LocalSystem,
) -> None:
    stream = "/agentrt.gateway.v1.ModelService/StreamComplete"
    refused = Fault(grpc.StatusCode.UNAVAILABLE, reaches_gateway=False)
    broken = Fault(grpc.StatusCode.UNAVAILABLE, after_messages=1)
    async with (
        proxying(system.endpoint, {stream: [refused, refused, None, broken]}) as (endpoint, proxy),
        Client(endpoint, system.api_key, retry=FAST) as client,
    ):
        with pytest.raises(UnavailableError):
            [chunk async for chunk in client.stream_complete("hello", model="local")]
        assert len(proxy.calls[stream]) == 1
        chunks = [
            chunk async for chunk in client.stream_complete("hi", model="local", request_id="s-1")
        ]
        assert "hi" in "".join(chunk.text_delta for chunk in chunks)
        assert len(proxy.calls[stream]) == 3
        seen = []
        with pytest.raises(UnavailableError):
            async for chunk in client.stream_complete("hey", model="local", request_id="s-2"):
                seen.append(chunk)
        assert len(seen) == 1 and len(proxy.calls[stream]) == 4
    sent = [models_pb2.CompleteRequest.FromString(raw).request_id for raw in proxy.calls[stream]]
    assert sent == ["", "s-1", "s-1", "s-2"]
