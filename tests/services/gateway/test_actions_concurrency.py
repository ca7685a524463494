"""One resume token resolved 100 times at once through the gateway: exactly one wins.

On the embedded system (actions in SQLite) and on PostgreSQL + Redis with the Redis
action store (AGENTRT_JOBS_ACTION_STORE=redis), so that the jobs service's gRPC path and
RedisActionStore's single-use script are both under test.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import pytest
import redis.asyncio
from agentrt.gateway.v1 import gateway_pb2
from agentrt.jobs.v1 import jobs_pb2

from services.kit.names import parse_action_name
from tests.services.gateway.conftest import TIMEOUT, Metadata, error_info
from tests.services.gateway.test_actions import approved, waiting

if TYPE_CHECKING:
    from agentrt.gateway.v1.gateway_pb2_grpc import RuntimeServiceAsyncStub as RuntimeStub

__all__ = ["waiting"]  # The fixture, imported so that pytest finds it here.


@pytest.fixture(autouse=True)
def redis_actions(servers: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Actions in Redis whenever the system has Redis."""
    if servers[1]:
        monkeypatch.setenv("AGENTRT_JOBS_ACTION_STORE", "redis")


async def kept_in_redis(servers: tuple[str, str, str], action: jobs_pb2.Action) -> bool:
    """Whether the action is in the Redis action store (and so not in the database)."""
    client = redis.asyncio.Redis.from_url(servers[1])
    try:
        action_id = parse_action_name(action.name)[1]
        return bool(await client.exists(f"{servers[2]}:actions:a:{action_id}"))
    finally:
        await client.aclose()


async def test_of_100_concurrent_resolutions_exactly_one_succeeds(
    runtime: RuntimeStub,
    dev: Metadata,
    waiting: tuple[jobs_pb2.Job, jobs_pb2.Action],
    servers: tuple[str, str, str],
) -> None:
    _, action = waiting
    if servers[1]:
        assert await kept_in_redis(servers, action)
    request = gateway_pb2.ResolveActionRequest(resume_token=action.resume_token, outcome=approved())

    results = await asyncio.gather(
        *(runtime.ResolveAction(request, metadata=dev, timeout=TIMEOUT) for _ in range(100)),
        return_exceptions=True,
    )

    won = [result for result in results if isinstance(result, jobs_pb2.Action)]
    lost = [result for result in results if isinstance(result, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == 99
    assert won[0].state == jobs_pb2.Action.State.STATE_RESOLVED
    assert {error.code() for error in lost} == {grpc.StatusCode.FAILED_PRECONDITION}
    assert {error_info(error).reason for error in lost} == {"RESUME_TOKEN_INVALID"}
