"""The response cache: one suite for memory and the real Redis, then through the engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from services.engine.catalog import ModelCatalog
from services.engine.completion import CompletionEngine
from services.engine.idempotency import IdempotencyTracker
from services.engine.model import ChatMessage, Completion, CompletionParams, TokenUsage
from services.engine.providers.openai_compat import OpenAICompatProvider
from services.engine.response_cache import (
    CacheRequest,
    InMemoryResponseCache,
    RedisResponseCache,
    ResponseCache,
    cache_key,
)

from .openai_server import OpenAIServer

pytestmark = pytest.mark.integration

HELLO = [ChatMessage("user", "hello")]
GREEDY = CompletionParams(temperature=0.0)
SAMPLED = CompletionParams(temperature=0.7)
CACHE = CacheRequest(enabled=True)


def answer(text: str) -> Completion:
    return Completion(ChatMessage("assistant", text), "stop", TokenUsage(5, 2), "m", "p")


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest, client: redis.Redis, redis_prefix: str) -> ResponseCache:
    if request.param == "redis":
        return RedisResponseCache(client, redis_prefix)
    return InMemoryResponseCache()


async def test_a_stored_answer_is_a_hit_and_another_request_a_miss(cache: ResponseCache) -> None:
    key = cache_key("tenants/a", "fp-1")
    assert await cache.get(key) is None

    await cache.put(key, answer("cached"), ttl_seconds=30)

    assert await cache.get(key) == answer("cached")
    assert await cache.get(cache_key("tenants/a", "fp-2")) is None


async def test_tenants_never_share_entries(cache: ResponseCache) -> None:
    await cache.put(cache_key("tenants/a", "fp"), answer("a's"), ttl_seconds=30)

    assert await cache.get(cache_key("tenants/b", "fp")) is None
    assert cache_key("tenants/a", "fp") != cache_key("tenants/a\0", "fp")


async def test_an_entry_expires_after_its_ttl(cache: ResponseCache) -> None:
    key = cache_key("tenants/a", "fp")
    await cache.put(key, answer("short"), ttl_seconds=0.2)
    assert await cache.get(key) is not None

    await asyncio.sleep(0.3)

    assert await cache.get(key) is None


def test_sampled_output_is_cached_only_when_asked() -> None:
    assert CACHE.applies_to(GREEDY)
    assert not CACHE.applies_to(SAMPLED)
    assert not CACHE.applies_to(CompletionParams())  # the provider's default samples
    assert CacheRequest(enabled=True, allow_sampled=True).applies_to(SAMPLED)
    assert not CacheRequest(allow_sampled=True).applies_to(SAMPLED)


async def test_the_memory_cache_keeps_at_most_max_entries() -> None:
    cache = InMemoryResponseCache(max_entries=2)
    for name in "abc":
        await cache.put(name, answer(name), ttl_seconds=30)
    assert [await cache.get(name) is not None for name in "abc"] == [False, True, True]


@pytest.fixture
async def engine(openai_provider: OpenAICompatProvider, cache: ResponseCache) -> CompletionEngine:
    catalog = ModelCatalog([openai_provider])
    await catalog.refresh()
    return CompletionEngine(catalog, IdempotencyTracker(), cache=cache)


async def test_a_hit_calls_no_provider_and_costs_nothing(
    openai_server: OpenAIServer, engine: CompletionEngine
) -> None:
    first = await engine.complete("gpt-test", HELLO, params=GREEDY, tenant="t", cache=CACHE)
    second = await engine.complete("gpt-test", HELLO, params=GREEDY, tenant="t", cache=CACHE)

    assert not first.cache_hit and first.usage.total_tokens > 0
    assert second.cache_hit and second.message == first.message
    assert second.usage == TokenUsage(0, 0) and second.attempts == ()
    assert len(openai_server.chat_requests) == 1


async def test_no_cache_unless_asked_and_per_tenant(
    openai_server: OpenAIServer, engine: CompletionEngine
) -> None:
    await engine.complete("gpt-test", HELLO, params=GREEDY, tenant="t")
    await engine.complete("gpt-test", HELLO, params=GREEDY, tenant="t")
    await engine.complete("gpt-test", HELLO, params=SAMPLED, tenant="t", cache=CACHE)
    await engine.complete("gpt-test", HELLO, params=SAMPLED, tenant="t", cache=CACHE)
    await engine.complete("gpt-test", HELLO, params=GREEDY, tenant="t", cache=CACHE)
    other = await engine.complete("gpt-test", HELLO, params=GREEDY, tenant="u", cache=CACHE)

    assert not other.cache_hit
    assert len(openai_server.chat_requests) == 6


async def test_a_stream_fills_the_cache_and_a_hit_streams_in_one_chunk(
    openai_server: OpenAIServer, engine: CompletionEngine
) -> None:
    streamed = [
        c async for c in engine.stream("gpt-test", HELLO, params=GREEDY, tenant="t", cache=CACHE)
    ]
    hit = [
        c async for c in engine.stream("gpt-test", HELLO, params=GREEDY, tenant="t", cache=CACHE)
    ]
    completed = await engine.complete("gpt-test", HELLO, params=GREEDY, tenant="t", cache=CACHE)

    assert len(streamed) > 1 and not streamed[-1].cache_hit
    [only] = hit
    assert only.cache_hit and only.text_delta == "".join(c.text_delta for c in streamed)
    assert only.usage == TokenUsage(0, 0)
    assert completed.cache_hit
    assert len(openai_server.chat_requests) == 1


async def test_the_ttl_of_the_call_is_honoured(
    openai_server: OpenAIServer, engine: CompletionEngine
) -> None:
    short = CacheRequest(enabled=True, ttl_seconds=0.2)
    await engine.complete("gpt-test", HELLO, params=GREEDY, tenant="t", cache=short)
    await asyncio.sleep(0.3)

    again = await engine.complete("gpt-test", HELLO, params=GREEDY, tenant="t", cache=short)

    assert not again.cache_hit
    assert len(openai_server.chat_requests) == 2
