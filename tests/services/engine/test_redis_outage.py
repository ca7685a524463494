"""An engine whose Redis is down: one short timeout, then Redis is skipped for a while."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from services.engine.model import ChatMessage, CompletionParams
from services.engine.providers.local import LOCAL_MODEL
from services.engine.redis_outage import RedisGuard, RedisOutage
from services.engine.response_cache import CacheRequest
from services.engine.server import EngineConfig, EngineUnit

from .openai_server import unused_url

HELLO = [ChatMessage("user", "hello")]
GREEDY = CompletionParams(temperature=0.0)
CACHE = CacheRequest(enabled=True)


@pytest.fixture
async def down() -> AsyncIterator[redis.Redis]:
    """A Redis client pointed at a closed port: every connection is refused."""
    port = unused_url().split(":")[2].split("/")[0]
    client = redis.Redis.from_url(f"redis://127.0.0.1:{port}")
    yield client
    await client.aclose()


async def test_keyed_cached_calls_cost_at_most_one_short_timeout(
    down: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    unit = EngineUnit(EngineConfig.from_env({}), down, "outage")
    await unit.start()
    try:
        caplog.set_level(logging.WARNING)
        took = []
        for n in range(3):
            started = time.monotonic()
            answer = await unit.engine.complete(
                LOCAL_MODEL, HELLO, params=GREEDY, idempotency_key=f"k{n}", tenant="t", cache=CACHE
            )
            took.append(time.monotonic() - started)
            assert answer.message.content
        stream = unit.engine.stream(
            LOCAL_MODEL, HELLO, params=GREEDY, idempotency_key="k-stream", tenant="t", cache=CACHE
        )
        started = time.monotonic()
        assert [chunk async for chunk in stream][-1].finish_reason
        took.append(time.monotonic() - started)
    finally:
        await unit.stop()
        await unit.close()

    assert took[0] < 0.8, took  # one timeout of 0.5 s at most
    assert max(took[1:]) < 0.2, took  # Redis skipped: in-replica behaviour at once
    outages = [r for r in caplog.records if "Redis is unreachable" in r.getMessage()]
    assert len(outages) == 1


async def test_redis_is_tried_again_after_the_skip_and_its_return_is_noticed(
    down: redis.Redis, redis_url: str
) -> None:
    now = [0.0]
    guard = RedisGuard(timeout_seconds=0.5, skip_seconds=5.0, clock=lambda: now[0])
    with pytest.raises(RedisOutage):
        await guard.run(down.ping)
    asked = []

    async def ping() -> bool:
        asked.append(True)
        return True

    with pytest.raises(RedisOutage):
        await guard.run(ping)  # skipped: not asked
    assert asked == []

    now[0] = 5.0
    up = redis.Redis.from_url(redis_url)
    try:
        assert await guard.run(up.ping)
    finally:
        await up.aclose()
    assert await guard.run(ping) and asked == [True]
