"""What only the Redis Streams channel does: its keys, expiry, trimming and client checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from agentrt.common.v1.common_pb2 import EventType

from services.kit.events import RedisEventChannel
from tests.services.kit.events.sample_events import (
    closing,
    delta,
    history,
    ids,
    stored_events,
    take,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix.rstrip(":")


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_events_are_stored_serialized_under_the_documented_keys(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    channel = RedisEventChannel(client, prefix=prefix)
    await channel.publish([history("a", 1), delta("a", 1, 1)])
    job_events = stored_events(await client.xrange(f"{prefix}:events:job:a"))
    global_events = stored_events(await client.xrange(f"{prefix}:events:all"))
    assert job_events == [history("a", 1), delta("a", 1, 1)]
    assert global_events == [history("a", 1)]
    await channel.close()


async def test_a_terminal_event_shortens_the_job_stream_expiry_to_the_retention(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    channel = RedisEventChannel(client, prefix=prefix, job_retention_seconds=120)
    await channel.publish([history("a", 1)])
    safety = await client.pttl(f"{prefix}:events:job:a")
    assert 24 * 3600 * 1000 < safety <= 2 * 24 * 3600 * 1000
    await channel.publish([history("a", 2, EventType.EVENT_TYPE_JOB_CANCELLED)])
    assert 0 < await client.pttl(f"{prefix}:events:job:a") <= 120_000
    await channel.publish([delta("a", 2, 1)])  # a straggler after the end
    assert 0 < await client.pttl(f"{prefix}:events:job:a") <= 120_000
    assert await client.pttl(f"{prefix}:events:all") == -1
    await channel.close()


async def test_a_stream_recreated_after_it_expired_still_expires(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    channel = RedisEventChannel(client, prefix=prefix)
    await channel.publish([delta("a", 9, 1)])
    assert 0 < await client.pttl(f"{prefix}:events:job:a") <= 2 * 24 * 3600 * 1000
    await channel.close()


async def test_the_global_stream_is_trimmed_by_length(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    channel = RedisEventChannel(client, prefix=prefix, global_maxlen=100)
    await channel.publish([history("a", n) for n in range(1, 1001)])
    assert 100 <= await client.xlen(f"{prefix}:events:all") < 1000
    assert await client.xlen(f"{prefix}:events:job:a") == 1000
    await channel.close()


async def test_a_resp3_client_follows_like_a_resp2_one(redis_url: str, prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, protocol=3)
    channel = RedisEventChannel(client, prefix=prefix)
    follower = channel.follow_job("jobs/a", "0")
    await channel.publish([history("a", 1), delta("a", 1, 1)])
    assert ids(await take(follower, 2)) == ["a.1", "a.1.1"]
    await channel.close()
    await client.aclose()


async def test_following_outlasts_a_short_socket_timeout(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=0.5)
    channel = RedisEventChannel(client, prefix=prefix)
    follower = channel.follow_job("jobs/a", "0")
    waiting = asyncio.create_task(take(follower, 1))
    # Stay idle for longer than the socket timeout: the reader must block for less.
    await asyncio.sleep(1.2)
    await channel.publish([history("a", 1)])
    assert ids(await waiting) == ["a.1"]
    assert "reading event streams failed" not in caplog.text
    await channel.close()
    await client.aclose()


async def test_the_readers_control_stream_always_expires(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    channel = RedisEventChannel(client, prefix=prefix)
    async with closing(channel.follow_job("jobs/a", "0")) as first:
        await channel.publish([history("a", 1)])
        await take(first, 1)
        # Each new stream followed signals the reader through its control stream.
        for job in ("b", "c"):
            async with closing(channel.follow_job(f"jobs/{job}", "0")) as follower:
                await channel.publish([history(job, 1)])
                assert ids(await take(follower, 1)) == [f"{job}.1"]
    readers = client.scan_iter(f"{prefix}:events:reader:*", count=100_000)
    [control] = [key async for key in readers]
    assert 0 < await client.pttl(control) <= 60_000
    await channel.close()


async def test_a_malformed_entry_is_skipped(client: redis.asyncio.Redis, prefix: str) -> None:
    channel = RedisEventChannel(client, prefix=prefix)
    await client.xadd(f"{prefix}:events:job:a", {b"e": b"\xff not a protobuf"})
    await client.xadd(f"{prefix}:events:job:a", {b"other": b"field"})
    await channel.publish([history("a", 1)])
    async with closing(channel.follow_job("jobs/a", "0")) as follower:
        assert ids(await take(follower, 1)) == ["a.1"]
    await channel.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"decode_responses": True}, "must not decode responses"),
        ({"socket_timeout": 0.1}, "too short for blocking stream reads"),
    ],
)
async def test_an_unsuitable_client_is_refused(
    redis_url: str, options: dict[str, Any], message: str
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, **options)
    with pytest.raises(ValueError, match=message):
        RedisEventChannel(client)
    await client.aclose()
