"""The record of completed calls shared by engine replicas, on the real Redis."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import redis.asyncio as redis

from services.engine.catalog import ModelCatalog
from services.engine.completion import CompletionEngine
from services.engine.errors import IdempotencyConflict
from services.engine.idempotency import IdempotencyTracker
from services.engine.model import ChatMessage, ToolCall
from services.engine.providers.local import LocalProvider
from services.engine.shared_record import RedisCompletionRecord

from .test_idempotency import CountingCall, answer

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


def replica(client: redis.Redis, prefix: str) -> IdempotencyTracker:
    """The tracker of one engine replica: its own memory, the shared record."""
    return IdempotencyTracker(shared=RedisCompletionRecord(client, prefix.rstrip(":"), 60))


async def test_a_call_completed_on_one_replica_is_answered_by_another(
    client: redis.Redis, redis_prefix: str
) -> None:
    first, second = CountingCall("first"), CountingCall("second")
    one, other = replica(client, redis_prefix), replica(client, redis_prefix)

    done = await one.run("job-1:1:0", "fp", first)
    again = await other.run("job-1:1:0", "fp", second)

    assert (first.runs, second.runs) == (1, 0)
    assert again == replace(done, replayed=True, idempotency_hooks=("hit",))


async def test_the_same_key_for_another_request_is_a_conflict_across_replicas(
    client: redis.Redis, redis_prefix: str
) -> None:
    await replica(client, redis_prefix).run("k", "fp-a", CountingCall())
    with pytest.raises(IdempotencyConflict):
        await replica(client, redis_prefix).run("k", "fp-b", CountingCall())


async def test_a_record_round_trips_tool_calls_and_usage(
    client: redis.Redis, redis_prefix: str
) -> None:
    shared = RedisCompletionRecord(client, redis_prefix.rstrip(":"), 60)
    original = answer("x")
    with_tools = type(original)(
        message=ChatMessage("assistant", "", (ToolCall("c1", "search", '{"q": 1}'),)),
        finish_reason="tool_calls",
        usage=original.usage,
        model="local",
        provider="local",
    )
    await shared.put("k", "fp", with_tools)
    await shared.put("k", "fp", original)  # the first record wins
    assert await shared.get("k") == ("fp", with_tools)


async def test_an_unreachable_redis_neither_fails_nor_holds_up_the_call() -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1)
    tracker = IdempotencyTracker(shared=RedisCompletionRecord(unreachable, "x", 60, 0.2))
    started = time.monotonic()
    assert (await tracker.run("k", "fp", CountingCall())).message.content == "done #1"
    assert time.monotonic() - started < 1.5
    await unreachable.aclose()


async def test_a_stream_recorded_on_one_replica_is_replayed_by_another(
    client: redis.Redis, redis_prefix: str
) -> None:
    messages = [ChatMessage("user", "hello there")]
    engines = []
    for _ in range(2):
        catalog = ModelCatalog([LocalProvider(chunk_delay=0.0)])
        await catalog.refresh()
        engines.append(CompletionEngine(catalog, replica(client, redis_prefix)))
    streamed = [chunk async for chunk in engines[0].stream("local", messages, idempotency_key="k")]
    replayed = [chunk async for chunk in engines[1].stream("local", messages, idempotency_key="k")]
    assert len(streamed) > 1 and len(replayed) == 1
    assert replayed[0].text_delta == "".join(chunk.text_delta for chunk in streamed)
    assert replayed[0].usage == streamed[-1].usage
