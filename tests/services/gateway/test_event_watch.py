"""WatchEvents through a real gRPC channel: a tenant's jobs' events, filtered and resumable."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from agentrt.common.v1.common_pb2 import EventType
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.kit.events import is_terminal
from tests.services.gateway.conftest import TIMEOUT, Metadata, error_info, prompt

if TYPE_CHECKING:
    Runtime = gateway_pb2_grpc.RuntimeServiceAsyncStub
Responses = list[gateway_pb2.WatchEventsResponse]


async def run_to_end(runtime: Runtime, key: Metadata, request: gateway_pb2.ExecuteRequest) -> str:
    """Runs a job to its end; its name."""
    name = ""
    async for event in runtime.ExecuteStream(request, metadata=key, timeout=TIMEOUT):
        name = event.job
        if is_terminal(event.type):
            return name
    raise AssertionError("the job's stream ended before the job")


async def collect(
    runtime: Runtime, key: Metadata, until: Callable[[Responses], bool], **request: Any
) -> Responses:
    """WatchEvents responses until `until` says enough (the stream itself never ends)."""
    call = runtime.WatchEvents(gateway_pb2.WatchEventsRequest(**request), metadata=key)
    got: Responses = []
    try:
        async with asyncio.timeout(TIMEOUT):
            async for response in call:
                got.append(response)
                if until(got):
                    return got
    finally:
        call.cancel()
    raise AssertionError(f"the stream ended after {len(got)} events")


def ended(job: str) -> Callable[[Responses], bool]:
    return lambda got: any(r.event.job == job and is_terminal(r.event.type) for r in got)


async def test_a_tenant_follows_its_own_jobs_only_filtered_by_type(
    runtime: Runtime, dev: Metadata, other: Metadata
) -> None:
    others = await run_to_end(runtime, other, prompt("theirs"))
    mine = await run_to_end(runtime, dev, prompt("mine"))
    wanted = [EventType.EVENT_TYPE_JOB_CREATED, EventType.EVENT_TYPE_JOB_SUCCEEDED]

    got = await collect(runtime, dev, ended(mine), after_cursor="0", types=wanted)
    assert [(r.event.job, r.event.type) for r in got] == [
        (mine, EventType.EVENT_TYPE_JOB_CREATED),
        (mine, EventType.EVENT_TYPE_JOB_SUCCEEDED),
    ]
    theirs = await collect(runtime, other, ended(others), after_cursor="0")
    assert {r.event.job for r in theirs} == {others}
    assert {r.event.tenant for r in theirs} == {"globex"}
    assert len(theirs) > 2


async def test_labels_and_session_select_jobs(runtime: Runtime, dev: Metadata) -> None:
    first = await run_to_end(runtime, dev, prompt("a", labels={"team": "a"}, session="s1"))
    second = await run_to_end(runtime, dev, prompt("b", labels={"team": "b"}, session="s2"))
    third = await run_to_end(runtime, dev, prompt("c", labels={"team": "a", "env": "x"}))

    by_label = await collect(runtime, dev, ended(third), after_cursor="0", labels={"team": "a"})
    assert {r.event.job for r in by_label} == {first, third}
    by_session = await collect(runtime, dev, ended(first), after_cursor="0", session="s1")
    assert {r.event.job for r in by_session} == {first}
    both = await collect(
        runtime, dev, ended(third), after_cursor="0", labels={"team": "a", "env": "x"}
    )
    assert {r.event.job for r in both} == {third}
    assert second not in {r.event.job for r in by_label + by_session + both}


async def test_resuming_after_a_cursor_continues_with_the_next_event(
    runtime: Runtime, dev: Metadata
) -> None:
    job = await run_to_end(runtime, dev, prompt())
    everything = await collect(runtime, dev, ended(job), after_cursor="0")
    assert len(everything) >= 3
    resumed = await collect(runtime, dev, ended(job), after_cursor=everything[1].cursor)
    assert [r.event.id for r in resumed] == [r.event.id for r in everything[2:]]
    assert [r.cursor for r in resumed] == [r.cursor for r in everything[2:]]


async def test_an_admin_follows_every_tenant_and_others_may_not(
    runtime: Runtime, dev: Metadata, other: Metadata
) -> None:
    theirs = await run_to_end(runtime, other, prompt())
    mine = await run_to_end(runtime, dev, prompt())
    got = await collect(
        runtime,
        dev,
        lambda r: ended(theirs)(r) and ended(mine)(r),
        after_cursor="0",
        all_tenants=True,
    )
    assert {r.event.tenant for r in got} == {"dev", "globex"}

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(runtime, other, ended(theirs), after_cursor="0", all_tenants=True)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(raised.value).reason == "PERMISSION_DENIED"


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"after_cursor": "yesterday"}, "after_cursor"),
        ({"types": [EventType.EVENT_TYPE_UNSPECIFIED]}, "types[0]"),
        ({"types": [EventType.EVENT_TYPE_JOB_CREATED, 999]}, "types[1]"),
    ],
)
async def test_a_malformed_request_is_invalid_argument(
    runtime: Runtime, dev: Metadata, request_fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(runtime, dev, lambda _: True, **request_fields)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(raised.value)
    assert (info.reason, info.metadata["field"]) == ("FIELD_INVALID", field)
