"""Joining calls in flight by idempotency key: streams too, within one engine and across two
engine replicas (real gRPC servers sharing the real Redis) in front of a real upstream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc
import pytest
import redis.asyncio as redis
from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2, engine_pb2_grpc

from services.engine.catalog import ModelCatalog
from services.engine.completion import CompletionEngine, request_fingerprint
from services.engine.errors import IdempotencyConflict, ProviderUnavailable
from services.engine.flights import InProcessFlights, RedisFlights
from services.engine.idempotency import IdempotencyTracker
from services.engine.model import ChatMessage, CompletionParams
from services.engine.providers.openai_compat import OpenAICompatProvider
from services.engine.server import EngineConfig, EngineUnit
from services.kit.server import Server
from tests.services.kit.status import error_info

from .openai_server import Failure, OpenAIServer, Reply

pytestmark = pytest.mark.integration

HELLO = [ChatMessage("user", "hello")]
SLOW = Reply(text="one two three four five", chunk_delay=0.05)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


async def engine_on(
    provider: OpenAICompatProvider, flights: RedisFlights | InProcessFlights
) -> tuple[CompletionEngine, IdempotencyTracker]:
    catalog = ModelCatalog([provider])
    await catalog.refresh()
    tracker = IdempotencyTracker(flights=flights)
    return CompletionEngine(catalog, tracker, max_attempts=1), tracker


async def test_a_stream_in_flight_is_joined_with_the_same_deltas(
    openai_server: OpenAIServer, openai_provider: OpenAICompatProvider
) -> None:
    engine, tracker = await engine_on(openai_provider, InProcessFlights())
    openai_server.reply_next(SLOW)

    async def collect() -> list[str]:
        chunks = [c async for c in engine.stream("gpt-test", HELLO, idempotency_key="k")]
        assert chunks[-1].finish_reason == "stop"
        return [c.text_delta for c in chunks[:-1] if c.text_delta]

    async def later() -> list[str]:
        await asyncio.sleep(0.12)  # joins once a few deltas went out
        return await collect()

    lead, joined = await asyncio.gather(collect(), later())

    assert lead == joined == ["one ", "two ", "three ", "four ", "five"]
    assert len(openai_server.chat_requests) == 1
    assert tracker.counts == {"start": 1, "complete": 1, "hit": 1}


async def test_a_complete_that_joined_makes_the_call_when_the_leader_goes_away(
    openai_server: OpenAIServer,
    openai_provider: OpenAICompatProvider,
    client: redis.Redis,
    redis_prefix: str,
) -> None:
    one, _ = await engine_on(openai_provider, RedisFlights(client, redis_prefix))
    other, _ = await engine_on(openai_provider, RedisFlights(client, redis_prefix))
    openai_server.reply_next(SLOW)
    leader = one.stream("gpt-test", HELLO, idempotency_key="k")
    first = await anext(leader)
    assert first.text_delta

    joiner = asyncio.create_task(other.complete("gpt-test", HELLO, idempotency_key="k"))
    await asyncio.sleep(0.1)
    await leader.aclose()

    completion = await asyncio.wait_for(joiner, 5)
    assert completion.message.content == "echo: hello" and not completion.replayed
    assert len(openai_server.chat_requests) == 2


async def test_a_stream_that_joined_ends_with_an_error_when_the_leader_goes_mid_way(
    openai_server: OpenAIServer,
    openai_provider: OpenAICompatProvider,
    client: redis.Redis,
    redis_prefix: str,
) -> None:
    one, _ = await engine_on(openai_provider, RedisFlights(client, redis_prefix))
    other, _ = await engine_on(openai_provider, RedisFlights(client, redis_prefix))
    openai_server.reply_next(SLOW)
    leader = one.stream("gpt-test", HELLO, idempotency_key="k")
    await anext(leader)
    joined = other.stream("gpt-test", HELLO, idempotency_key="k")
    assert (await anext(joined)).text_delta == "one "

    await leader.aclose()

    with pytest.raises(ProviderUnavailable, match="abandoned mid-stream"):
        await asyncio.wait_for(_text(joined), 5)
    assert len(openai_server.chat_requests) == 1


async def test_the_leaders_error_reaches_a_joiner_on_another_replica(
    openai_server: OpenAIServer,
    openai_provider: OpenAICompatProvider,
    client: redis.Redis,
    redis_prefix: str,
) -> None:
    one, _ = await engine_on(openai_provider, RedisFlights(client, redis_prefix))
    other, tracker = await engine_on(openai_provider, RedisFlights(client, redis_prefix))
    openai_server.reply_next(Reply(text="a b c d", chunk_delay=0.05, error_after=3))

    async def later() -> str:
        await asyncio.sleep(0.05)
        return await _text(other.stream("gpt-test", HELLO, idempotency_key="k"))

    outcomes = await asyncio.gather(
        _text(one.stream("gpt-test", HELLO, idempotency_key="k")), later(), return_exceptions=True
    )

    assert all(isinstance(o, ProviderUnavailable) for o in outcomes), outcomes
    assert "error mid-stream" in str(outcomes[1])
    assert len(openai_server.chat_requests) == 1
    assert tracker.counts["hit"] == 1


async def test_a_key_in_flight_for_another_request_conflicts_across_replicas(
    openai_server: OpenAIServer,
    openai_provider: OpenAICompatProvider,
    client: redis.Redis,
    redis_prefix: str,
) -> None:
    one, _ = await engine_on(openai_provider, RedisFlights(client, redis_prefix))
    other, tracker = await engine_on(openai_provider, RedisFlights(client, redis_prefix))
    openai_server.reply_next(SLOW)
    running = one.stream("gpt-test", HELLO, idempotency_key="k")
    await anext(running)

    with pytest.raises(IdempotencyConflict):
        await other.complete("gpt-test", [ChatMessage("user", "other")], idempotency_key="k")
    assert tracker.counts["conflict"] == 1
    await running.aclose()


async def _text(chunks: AsyncIterator[object]) -> str:
    text = []
    async with aclosing(chunks):  # type: ignore[type-var]
        async for chunk in chunks:
            text.append(chunk.text_delta)  # type: ignore[attr-defined]
    return "".join(text)


@pytest.fixture
async def replicas(
    openai_server: OpenAIServer, redis_url: str, redis_prefix: str
) -> AsyncIterator[list[engine_pb2_grpc.EngineServiceAsyncStub]]:
    env = {"AGENTRT_OPENAI_BASE_URL": openai_server.url, "AGENTRT_OPENAI_API_KEY": "test-key"}
    clients, servers, channels = [], [], []
    for _ in range(2):
        connection = redis.Redis.from_url(redis_url)
        server = Server("127.0.0.1:0", "engine")
        await server.start([EngineUnit(EngineConfig.from_env(env), connection, redis_prefix)])
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        clients.append(connection)
        servers.append(server)
        channels.append(channel)
    yield [engine_pb2_grpc.EngineServiceStub(channel) for channel in channels]
    for channel in channels:
        await channel.close(None)
    for server in servers:
        await server.stop(grace=1.0)
    for connection in clients:
        await connection.aclose()


def request(key: str, text: str = "hello") -> engine_pb2.CompleteRequest:
    message = common_pb2.Message(role=common_pb2.ROLE_USER, content=text)
    return engine_pb2.CompleteRequest(model="gpt-test", messages=[message], idempotency_key=key)


async def test_two_stream_completes_with_one_key_on_two_replicas_make_one_upstream_call(
    openai_server: OpenAIServer, replicas: list[engine_pb2_grpc.EngineServiceAsyncStub]
) -> None:
    openai_server.reply_next(SLOW)

    async def stream(
        replica: engine_pb2_grpc.EngineServiceAsyncStub,
    ) -> list[engine_pb2.CompleteChunk]:
        call = replica.StreamComplete(request("job-1:1:0"), timeout=10)
        return [chunk async for chunk in call]

    streams = await asyncio.gather(*(stream(replica) for replica in replicas))

    assert len(openai_server.chat_requests) == 1
    texts = ["".join(chunk.text_delta for chunk in chunks) for chunks in streams]
    assert texts == ["one two three four five"] * 2
    lasts = [chunks[-1] for chunks in streams]
    assert sorted(last.replayed for last in lasts) == [False, True]
    assert all(last.usage.output_tokens == 5 and last.provider == "openai" for last in lasts)
    [leader] = [last for last in lasts if not last.replayed]
    assert [a.outcome for a in leader.attempts] == [engine_pb2.ATTEMPT_OUTCOME_OK]

    # Once done, either replica replays it, Complete as well.
    again = await replicas[1].Complete(request("job-1:1:0"), timeout=5)
    assert again.replayed and again.message.content == texts[0]
    assert len(openai_server.chat_requests) == 1


async def test_a_reused_key_is_an_idempotency_conflict_over_grpc(
    openai_server: OpenAIServer, replicas: list[engine_pb2_grpc.EngineServiceAsyncStub]
) -> None:
    await replicas[0].Complete(request("k"), timeout=5)

    with pytest.raises(grpc.aio.AioRpcError) as conflict:
        await replicas[1].Complete(request("k", "something else"), timeout=5)

    assert conflict.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(conflict.value).reason == "IDEMPOTENCY_CONFLICT"


async def test_an_upstream_failure_reaches_the_caller_over_grpc(
    openai_server: OpenAIServer, replicas: list[engine_pb2_grpc.EngineServiceAsyncStub]
) -> None:
    openai_server.fail_next(3, Failure(500))

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await replicas[0].Complete(request("k"), timeout=5)

    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(failed.value).reason == "PROVIDER_ERROR"


async def test_a_cached_answer_is_served_by_another_replica_and_says_so(
    openai_server: OpenAIServer, replicas: list[engine_pb2_grpc.EngineServiceAsyncStub]
) -> None:
    def cached(tenant: str) -> engine_pb2.CompleteRequest:
        call = request("")
        call.tenant = tenant
        call.params.temperature = 0.0
        call.cache.enabled = True
        call.cache.ttl.FromSeconds(60)
        return call

    first = await replicas[0].Complete(cached("tenants/a"), timeout=5)
    hit = await replicas[1].Complete(cached("tenants/a"), timeout=5)
    other_tenant = await replicas[1].Complete(cached("tenants/b"), timeout=5)

    assert not first.usage.cache_hit and first.usage.model_calls == 1
    assert hit.usage.cache_hit and hit.message == first.message
    assert (hit.usage.total_tokens, hit.usage.model_calls) == (0, 0)
    assert not other_tenant.usage.cache_hit
    assert len(openai_server.chat_requests) == 2


async def test_an_engine_whose_redis_is_down_still_answers_and_joins_in_process(
    openai_server: OpenAIServer,
) -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1)
    unit = EngineUnit(
        EngineConfig.from_env(
            {"AGENTRT_OPENAI_BASE_URL": openai_server.url, "AGENTRT_OPENAI_API_KEY": "test-key"}
        ),
        unreachable,
        "down",
    )
    server = Server("127.0.0.1:0", "engine")
    await server.start([unit])
    openai_server.reply_next(SLOW)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = engine_pb2_grpc.EngineServiceStub(channel)
            cached = request("k")
            cached.params.temperature = 0.0
            cached.cache.enabled = True
            answers = await asyncio.gather(
                stub.Complete(cached, timeout=10), stub.Complete(cached, timeout=10)
            )
    finally:
        await server.stop(grace=1.0)
        await unreachable.aclose()

    assert [a.message.content for a in answers] == ["one two three four five"] * 2
    assert sorted(a.replayed for a in answers) == [False, True]
    assert len(openai_server.chat_requests) == 1
    assert unit.tracker.counts["hit"] == 1


async def test_a_leader_that_crashed_is_taken_over_once_its_lease_expires(
    openai_server: OpenAIServer,
    openai_provider: OpenAICompatProvider,
    client: redis.Redis,
    redis_prefix: str,
) -> None:
    # What a replica killed mid-call leaves: its lock, with a lease it no longer renews.
    fingerprint = request_fingerprint("gpt-test", HELLO, (), CompletionParams())
    lock = json.dumps({"fingerprint": fingerprint, "leader": "crashed"})
    await client.set(f"{redis_prefix}:engine:flight:k", lock, px=400)
    engine, _ = await engine_on(openai_provider, RedisFlights(client, redis_prefix))

    started = time.monotonic()
    completion = await asyncio.wait_for(engine.complete("gpt-test", HELLO, idempotency_key="k"), 5)

    assert time.monotonic() - started >= 0.3
    assert completion.message.content == "echo: hello" and not completion.replayed
    assert len(openai_server.chat_requests) == 1
