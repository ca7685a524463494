"""The completion engine: routing, retries, idempotency and streaming over real providers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from types import MappingProxyType

import pytest

from services.engine.catalog import ModelCatalog
from services.engine.completion import CompletionEngine, request_fingerprint
from services.engine.errors import (
    IdempotencyConflict,
    ModelNotFound,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
)
from services.engine.idempotency import IdempotencyTracker
from services.engine.model import ChatMessage, CompletionChunk, CompletionParams, ToolSpec
from services.engine.providers.local import LocalProvider
from services.engine.providers.openai_compat import OpenAICompatProvider

from .openai_server import Failure, OpenAIServer, Reply

HELLO = [ChatMessage("user", "hello")]
LONG_TEXT = " ".join(f"word{i}" for i in range(100))


@pytest.fixture
async def engine(openai_provider: OpenAICompatProvider) -> AsyncIterator[CompletionEngine]:
    catalog = ModelCatalog([LocalProvider(chunk_delay=0.01), openai_provider])
    await catalog.refresh()
    yield CompletionEngine(catalog, IdempotencyTracker(), max_attempts=3, backoff_base=0.01)


async def test_server_errors_are_retried_until_success(
    openai_server: OpenAIServer, engine: CompletionEngine
) -> None:
    openai_server.fail_next(2, Failure(500))

    completion = await engine.complete("gpt-test", HELLO)

    assert completion.message.content == "echo: hello"
    assert len(openai_server.chat_requests) == 3


async def test_rate_limit_waits_as_long_as_the_server_asks(
    openai_server: OpenAIServer, engine: CompletionEngine
) -> None:
    openai_server.fail_next(1, Failure(429, retry_after="0.3"))

    started = time.monotonic()
    completion = await engine.complete("gpt-test", HELLO)

    assert time.monotonic() - started >= 0.3
    assert completion.message.content == "echo: hello"
    assert len(openai_server.chat_requests) == 2


async def test_a_rate_limit_beyond_the_longest_wait_is_passed_on(
    openai_server: OpenAIServer, openai_provider: OpenAICompatProvider
) -> None:
    catalog = ModelCatalog([openai_provider])
    await catalog.refresh()
    impatient = CompletionEngine(catalog, IdempotencyTracker(), max_retry_wait=5)
    openai_server.fail_next(1, Failure(429, retry_after="120"))

    with pytest.raises(RateLimited) as limited:
        await impatient.complete("gpt-test", HELLO)

    assert limited.value.retry_after == 120
    assert len(openai_server.chat_requests) == 1


async def test_attempts_are_bounded(openai_server: OpenAIServer, engine: CompletionEngine) -> None:
    openai_server.fail_next(5, Failure(502, "bad gateway"))

    with pytest.raises(ProviderUnavailable, match="bad gateway"):
        await engine.complete("gpt-test", HELLO)

    assert len(openai_server.chat_requests) == 3


async def test_rejections_are_not_retried(
    openai_server: OpenAIServer, engine: CompletionEngine
) -> None:
    openai_server.fail_next(1, Failure(400, "messages: field required"))

    with pytest.raises(ProviderRejected, match="field required"):
        await engine.complete("gpt-test", HELLO)

    assert len(openai_server.chat_requests) == 1


async def test_unknown_model_is_not_found_before_any_call(
    openai_server: OpenAIServer, engine: CompletionEngine
) -> None:
    with pytest.raises(ModelNotFound):
        await engine.complete("gpt-9", HELLO)
    with pytest.raises(ModelNotFound):
        engine.stream("gpt-9", HELLO)
    with pytest.raises(ValueError, match="at least one message"):
        await engine.complete("local", [])
    assert openai_server.chat_requests == []


async def test_idempotency_key_runs_the_call_once(
    openai_server: OpenAIServer, engine: CompletionEngine
) -> None:
    first, second = await asyncio.gather(
        engine.complete("gpt-test", HELLO, idempotency_key="job-1/step-1"),
        engine.complete("gpt-test", HELLO, idempotency_key="job-1/step-1"),
    )
    third = await engine.complete("gpt-test", HELLO, idempotency_key="job-1/step-1")

    assert first.message == second.message == third.message
    assert not first.replayed and first.attempts[0].outcome == "ok"
    assert second.replayed and third.replayed
    assert second.attempts == third.attempts == ()
    assert len(openai_server.chat_requests) == 1
    with pytest.raises(IdempotencyConflict):
        await engine.complete(
            "gpt-test", [ChatMessage("user", "other")], idempotency_key="job-1/step-1"
        )


def test_fingerprint_is_stable_and_tells_requests_apart() -> None:
    tool = ToolSpec("lookup", "Find", {"type": "object", "properties": {"q": {"type": "string"}}})
    same_tool = ToolSpec("lookup", "Find", MappingProxyType(dict(tool.parameters)))
    params = CompletionParams(temperature=0.2)

    base = request_fingerprint("m", HELLO, [tool], params)

    assert base == request_fingerprint("m", list(HELLO), (same_tool,), CompletionParams(0.2))
    assert base != request_fingerprint("m", HELLO, [tool], CompletionParams(temperature=0.3))
    assert base != request_fingerprint("other", HELLO, [tool], params)
    assert base != request_fingerprint("m", HELLO, [], params)


async def test_stream_retries_before_the_first_chunk(
    openai_server: OpenAIServer, engine: CompletionEngine
) -> None:
    openai_server.fail_next(2, Failure(503))

    chunks = [c async for c in engine.stream("gpt-test", HELLO)]

    assert "".join(c.text_delta for c in chunks) == "echo: hello"
    assert chunks[-1].finish_reason == "stop"
    assert len(openai_server.chat_requests) == 3


async def test_stream_is_not_retried_once_chunks_were_delivered(
    openai_server: OpenAIServer, engine: CompletionEngine
) -> None:
    openai_server.reply_next(Reply(text="one two three", error_after=3))
    received: list[CompletionChunk] = []

    with pytest.raises(ProviderUnavailable, match="the model crashed"):
        async for chunk in engine.stream("gpt-test", HELLO):
            received.append(chunk)

    assert [c.text_delta for c in received] == ["one ", "two "]
    assert len(openai_server.chat_requests) == 1


async def test_closing_the_stream_disconnects_from_the_server(
    openai_server: OpenAIServer, engine: CompletionEngine
) -> None:
    openai_server.reply_next(Reply(text=LONG_TEXT, chunk_delay=0.02))

    async with aclosing(engine.stream("gpt-test", HELLO)) as chunks:
        async for chunk in chunks:
            if chunk.text_delta == "word1 ":
                break

    await asyncio.wait_for(openai_server.disconnected.wait(), timeout=2)
    assert openai_server.disconnects == 1
    assert openai_server.chunks_sent < 20


async def test_cancelling_the_consumer_disconnects_from_the_server(
    openai_server: OpenAIServer, engine: CompletionEngine
) -> None:
    openai_server.reply_next(Reply(text=LONG_TEXT, chunk_delay=0.02))
    first_chunk = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.stream("gpt-test", HELLO):
            first_chunk.set()

    consumer = asyncio.create_task(consume())
    await first_chunk.wait()
    consumer.cancel()

    await asyncio.wait_for(openai_server.disconnected.wait(), timeout=2)
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert openai_server.chunks_sent < 20


async def test_local_models_work_without_a_network(engine: CompletionEngine) -> None:
    completion = await engine.complete("local", HELLO, idempotency_key="k")
    chunks = [c async for c in engine.stream("local-slow", HELLO)]

    assert completion.provider == "local"
    assert "".join(c.text_delta for c in chunks) == completion.message.content
    assert [m.id for m in await engine.list_models()] == [
        "gpt-mini",
        "gpt-test",
        "local",
        "local-slow",
    ]
