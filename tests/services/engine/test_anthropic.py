"""The Anthropic provider against a real HTTP server speaking the Messages API."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest

from services.engine.catalog import ModelCatalog
from services.engine.completion import CompletionEngine
from services.engine.convert import usage_to_proto
from services.engine.deployments import RouteTarget
from services.engine.errors import ProviderRejected, ProviderUnavailable, RateLimited
from services.engine.idempotency import IdempotencyTracker
from services.engine.model import ChatMessage, CompletionParams, TokenUsage, ToolCall, ToolSpec
from services.engine.providers.anthropic import AnthropicConfig, AnthropicProvider
from services.engine.providers.openai_compat import OpenAICompatConfig, OpenAICompatProvider

from .anthropic_server import CACHE_READ, CACHE_WRITE, AnthropicServer, Failure, Reply
from .openai_server import OpenAIServer

MODEL = "claude-test"
HELLO = [ChatMessage("system", "Be brief."), ChatMessage("user", "hello there")]
WEATHER = ToolSpec("get_weather", "Current weather", {"type": "object", "properties": {"city": {}}})
NO_PARAMS = CompletionParams()


@pytest.fixture
async def server() -> AsyncIterator[AnthropicServer]:
    running = AnthropicServer()
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def provider(server: AnthropicServer) -> AsyncIterator[AnthropicProvider]:
    config = AnthropicConfig(server.url, server.api_key, (MODEL,), name="claude")
    anthropic = AnthropicProvider(config)
    yield anthropic
    await anthropic.aclose()


def usage(messages: int, output: int) -> TokenUsage:
    # Our input counts cache writes and reads too; the API counts them apart.
    return TokenUsage(
        10 * messages + CACHE_WRITE + CACHE_READ,
        output,
        cached_input_tokens=CACHE_READ,
        cache_write_input_tokens=CACHE_WRITE,
    )


async def test_complete_sends_system_apart_and_reads_usage_with_cache_tokens(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    params = CompletionParams(temperature=0.2, max_output_tokens=50, stop=("END",))
    completion = await provider.complete(MODEL, HELLO, [WEATHER], params)

    assert completion.message == ChatMessage("assistant", "echo: hello there")
    assert completion.finish_reason == "stop"
    assert completion.usage == usage(1, 3)
    assert usage_to_proto(completion.usage).cache_write_input_tokens == CACHE_WRITE
    assert (completion.model, completion.provider) == (MODEL, "claude")
    [sent] = server.requests
    assert sent == {
        "model": MODEL,
        "max_tokens": 50,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        "tools": [
            {
                "name": "get_weather",
                "description": "Current weather",
                "input_schema": dict(WEATHER.parameters),
            }
        ],
        "temperature": 0.2,
        "stop_sequences": ["END"],
    }
    assert server.headers[0]["anthropic-version"] == "2023-06-01"


async def test_tool_use_and_tool_results_round_trip(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    server.replies.append(
        Reply(tool_uses=(("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Oslo"})))
    )
    first = await provider.complete(MODEL, HELLO, [WEATHER], NO_PARAMS)
    assert first.finish_reason == "tool_calls"
    assert first.message.tool_calls == (
        ToolCall("toolu_0", "get_weather", '{"city": "Paris"}'),
        ToolCall("toolu_1", "get_weather", '{"city": "Oslo"}'),
    )

    history = [
        *HELLO,
        first.message,
        ChatMessage("tool", "sunny", tool_call_id="toolu_0"),
        ChatMessage("tool", "snow", tool_call_id="toolu_1"),
    ]
    await provider.complete(MODEL, history, [WEATHER], NO_PARAMS)

    turns = server.requests[-1]["messages"]
    assert turns[1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_0",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_0", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "snow"},
            ],
        },
    ]
    assert server.requests[-1]["max_tokens"] == 4096


async def test_stream_reads_every_event_into_deltas_and_a_closing_chunk(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    server.replies.append(
        Reply(text="let me look", tool_uses=(("get_weather", {"city": "Paris", "unit": "C"}),))
    )
    chunks = [c async for c in provider.stream(MODEL, HELLO, [WEATHER], NO_PARAMS)]

    *deltas, last = chunks
    assert [c.text_delta for c in deltas] == ["let ", "me ", "look"]
    assert last.finish_reason == "tool_calls"
    [call] = last.tool_calls
    assert (call.id, call.name) == ("toolu_0", "get_weather")
    assert json.loads(call.arguments) == {"city": "Paris", "unit": "C"}
    assert last.usage == usage(1, 3 + 5)
    assert server.requests[-1]["stream"] is True


async def test_max_tokens_is_a_length_finish(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    server.replies.append(Reply(text="cut", stop_reason="max_tokens"))
    assert (await provider.complete(MODEL, HELLO, [], NO_PARAMS)).finish_reason == "length"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (529, ProviderUnavailable),
        (500, ProviderUnavailable),
        (429, RateLimited),
        (400, ProviderRejected),
    ],
)
async def test_errors_map_to_the_engines(
    server: AnthropicServer, provider: AnthropicProvider, status: int, error: type[Exception]
) -> None:
    server.failures.append(Failure(status, "Overloaded" if status == 529 else "nope", "2"))
    with pytest.raises(error) as raised:
        await provider.complete(MODEL, HELLO, [], NO_PARAMS)
    if status == 429:
        assert raised.value.retry_after == 2.0  # type: ignore[attr-defined]
    if status == 529:
        assert "Overloaded" in str(raised.value)


async def test_an_overloaded_error_mid_stream_ends_it(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    server.replies.append(Reply(text="one two three four", error_after=4))
    with pytest.raises(ProviderUnavailable, match="Overloaded"):
        _ = [c async for c in provider.stream(MODEL, HELLO, [], NO_PARAMS)]


async def test_an_overloaded_anthropic_deployment_falls_over_to_an_openai_one(
    server: AnthropicServer, provider: AnthropicProvider, openai_server: OpenAIServer
) -> None:
    openai = OpenAICompatProvider(OpenAICompatConfig(openai_server.url, openai_server.api_key))
    targets = [RouteTarget("claude", MODEL), RouteTarget("openai", "gpt-test", priority=1)]
    catalog = ModelCatalog([provider, openai], {"smart": targets})
    await catalog.refresh()
    engine = CompletionEngine(catalog, IdempotencyTracker())
    server.failures.append(Failure(529, "Overloaded"))

    started = time.monotonic()
    completion = await engine.complete("smart", HELLO)

    assert time.monotonic() - started < 1.0
    assert (completion.provider, completion.model) == ("openai", "gpt-test")
    assert [a.outcome for a in completion.attempts] == ["unavailable", "ok"]
    await openai.aclose()
