"""The event channels under test: in-memory, and (integration) Redis Streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio

from services.kit.events import EventChannel, InMemoryEventChannel, RedisEventChannel

MEMORY_RETENTION_SECONDS = 0.05
REDIS_RETENTION_SECONDS = 600.0


@dataclass(frozen=True)
class ChannelCase:
    """A channel under test and how to observe its backend-specific bounds."""

    channel: EventChannel
    expect_job_stream_expiring: Callable[[str], Awaitable[None]]
    """Asserts that the job's stream (job name) was bounded after its terminal event."""


@pytest.fixture
async def memory_case() -> AsyncIterator[ChannelCase]:
    channel = InMemoryEventChannel(job_retention_seconds=MEMORY_RETENTION_SECONDS)

    async def expect_dropped(job: str) -> None:
        # The drop is timed, so there is no event to await: look until the deadline.
        async with asyncio.timeout(5):
            while await channel.job_position(job) != "0":  # noqa: ASYNC110
                await asyncio.sleep(MEMORY_RETENTION_SECONDS / 5)

    yield ChannelCase(channel, expect_dropped)
    await channel.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client whose pool has 4 connections: followers must not hold one each."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(redis_url, max_connections=4, timeout=5)
    client = redis.asyncio.Redis(connection_pool=pool)
    yield client
    await client.aclose()
    await pool.disconnect()


@pytest.fixture
async def redis_case(
    redis_client: redis.asyncio.Redis, redis_prefix: str
) -> AsyncIterator[ChannelCase]:
    prefix = redis_prefix.rstrip(":")
    channel = RedisEventChannel(
        redis_client, prefix=prefix, job_retention_seconds=REDIS_RETENTION_SECONDS
    )

    async def expect_ttl(job: str) -> None:
        ttl_ms = await redis_client.pttl(f"{prefix}:events:job:{job.removeprefix('jobs/')}")
        assert 0 < ttl_ms <= REDIS_RETENTION_SECONDS * 1000

    yield ChannelCase(channel, expect_ttl)
    await channel.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def case(request: pytest.FixtureRequest) -> ChannelCase:
    """Each channel implementation in turn."""
    found: ChannelCase = request.getfixturevalue(f"{request.param}_case")
    return found


@pytest.fixture
def channel(case: ChannelCase) -> EventChannel:
    return case.channel
