"""The OpenAI-compatible provider against a real HTTP server speaking that API."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from services.engine.errors import ProviderRejected, ProviderUnavailable, RateLimited
from services.engine.model import (
    ChatMessage,
    CompletionChunk,
    CompletionParams,
    TokenUsage,
    ToolCall,
    ToolSpec,
)
from services.engine.providers.openai_compat import OpenAICompatConfig, OpenAICompatProvider
from services.engine.tokens import estimate_message_tokens, estimate_tokens, estimate_tool_tokens

from .openai_server import (
    CACHE_WRITE_TOKENS,
    CACHED_TOKENS,
    Failure,
    OpenAIServer,
    Reply,
    unused_url,
)

HELLO = [ChatMessage(role="system", content="Be brief."), ChatMessage("user", "hello there")]
WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather of a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
NO_PARAMS = CompletionParams()


async def collect(
    provider: OpenAICompatProvider, tools: Sequence[ToolSpec] = ()
) -> list[CompletionChunk]:
    return [c async for c in provider.stream("gpt-test", HELLO, tools, NO_PARAMS)]


async def test_complete_sends_the_wire_format_and_reads_the_answer(
    openai_server: OpenAIServer, openai_provider: OpenAICompatProvider
) -> None:
    params = CompletionParams(temperature=0.5, max_output_tokens=50, stop=("END",))
    completion = await openai_provider.complete("gpt-test", HELLO, [WEATHER], params)

    assert completion.message == ChatMessage(role="assistant", content="echo: hello there")
    assert completion.finish_reason == "stop"
    assert completion.usage == TokenUsage(
        20, 3, cached_input_tokens=CACHED_TOKENS, cache_write_input_tokens=CACHE_WRITE_TOKENS
    )
    assert (completion.model, completion.provider) == ("gpt-test", "openai")
    [sent] = openai_server.requests
    assert sent.authorization == "Bearer test-key"
    assert sent.body == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there"},
        ],
        "stream": False,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather of a city",
                    "parameters": dict(WEATHER.parameters),
                },
            }
        ],
        "temperature": 0.5,
        "max_tokens": 50,
        "stop": ["END"],
    }


async def test_tool_calls_and_results_round_trip(
    openai_server: OpenAIServer, openai_provider: OpenAICompatProvider
) -> None:
    openai_server.reply_next(Reply(tool_calls=(("get_weather", '{"city": "Paris"}'),)))
    first = await openai_provider.complete("gpt-test", HELLO, [WEATHER], NO_PARAMS)
    call = ToolCall(id="call_0", name="get_weather", arguments='{"city": "Paris"}')
    assert first.message.tool_calls == (call,)
    assert first.finish_reason == "tool_calls"

    history = [*HELLO, first.message, ChatMessage("tool", "sunny", tool_call_id="call_0")]
    await openai_provider.complete("gpt-test", history, [WEATHER], NO_PARAMS)
    body = openai_server.requests[-1].body
    assert body is not None
    assert body["messages"][2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_0"},
    ]


async def test_stream_delivers_text_then_a_closing_chunk_with_usage(
    openai_server: OpenAIServer, openai_provider: OpenAICompatProvider
) -> None:
    openai_server.reply_next(Reply(text="one two three four"))
    chunks = await collect(openai_provider)

    *text_chunks, last = chunks
    assert [c.text_delta for c in text_chunks] == ["one ", "two ", "three ", "four"]
    assert all(not c.finish_reason and c.usage is None for c in text_chunks)
    assert last == CompletionChunk(
        finish_reason="stop",
        usage=TokenUsage(
            20, 4, cached_input_tokens=CACHED_TOKENS, cache_write_input_tokens=CACHE_WRITE_TOKENS
        ),
    )
    body = openai_server.requests[-1].body
    assert body is not None
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_stream_assembles_tool_call_deltas_into_whole_calls(
    openai_server: OpenAIServer, openai_provider: OpenAICompatProvider
) -> None:
    calls = (("get_weather", '{"city": "Paris", "unit": "C"}'), ("get_weather", '{"city": "Oslo"}'))
    openai_server.reply_next(Reply(tool_calls=calls))
    chunks = await collect(openai_provider, tools=[WEATHER])

    assert [c.text_delta for c in chunks] == [""]
    assert chunks[-1].finish_reason == "tool_calls"
    assert chunks[-1].tool_calls == (
        ToolCall(id="call_0", name="get_weather", arguments='{"city": "Paris", "unit": "C"}'),
        ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}'),
    )


async def test_missing_usage_is_estimated(
    openai_server: OpenAIServer, openai_provider: OpenAICompatProvider
) -> None:
    openai_server.reply_next(
        Reply(text="no usage here", include_usage=False),
        Reply(text="no usage here", include_usage=False),
    )
    expected = TokenUsage(
        input_tokens=estimate_message_tokens(HELLO) + estimate_tool_tokens([WEATHER]),
        output_tokens=estimate_tokens("no usage here"),
    )

    completion = await openai_provider.complete("gpt-test", HELLO, [WEATHER], NO_PARAMS)
    chunks = await collect(openai_provider, tools=[WEATHER])

    assert completion.usage == expected
    assert chunks[-1].usage == expected


async def test_wrong_key_is_rejected_with_the_server_message(openai_server: OpenAIServer) -> None:
    provider = OpenAICompatProvider(OpenAICompatConfig(base_url=openai_server.url, api_key="bad"))
    try:
        with pytest.raises(ProviderRejected) as rejected:
            await provider.complete("gpt-test", HELLO, [], NO_PARAMS)
        with pytest.raises(ProviderRejected):
            await collect(provider)
    finally:
        await provider.aclose()
    assert rejected.value.status == 401
    assert rejected.value.message == "Incorrect API key provided"
    assert not rejected.value.retryable


async def test_server_failures_map_to_retryable_errors(
    openai_server: OpenAIServer, openai_provider: OpenAICompatProvider
) -> None:
    openai_server.fail_next(1, Failure(500, "engine overloaded"))
    openai_server.fail_next(1, Failure(429, "slow down", retry_after="7"))

    with pytest.raises(ProviderUnavailable, match="engine overloaded") as unavailable:
        await openai_provider.complete("gpt-test", HELLO, [], NO_PARAMS)
    with pytest.raises(RateLimited) as limited:
        await collect(openai_provider)

    assert unavailable.value.retryable and limited.value.retryable
    assert limited.value.retry_after == 7.0
    assert limited.value.message == "slow down"


async def test_unreachable_server_is_unavailable() -> None:
    config = OpenAICompatConfig(base_url=unused_url(), name="gone")
    provider = OpenAICompatProvider(config)
    try:
        with pytest.raises(ProviderUnavailable, match="ConnectError"):
            await provider.complete("gpt-test", HELLO, [], NO_PARAMS)
        with pytest.raises(ProviderUnavailable):
            await collect(provider)
        with pytest.raises(ProviderUnavailable):
            await provider.list_models()
    finally:
        await provider.aclose()


async def test_slow_server_times_out_as_unavailable(openai_server: OpenAIServer) -> None:
    openai_server.reply_next(Reply(text="late", response_delay=1.0))
    config = OpenAICompatConfig(
        base_url=openai_server.url, api_key=openai_server.api_key, timeout_seconds=0.2
    )
    provider = OpenAICompatProvider(config)
    try:
        with pytest.raises(ProviderUnavailable, match="ReadTimeout"):
            await provider.complete("gpt-test", HELLO, [], NO_PARAMS)
    finally:
        await provider.aclose()


async def test_list_models_asks_the_server(
    openai_server: OpenAIServer, openai_provider: OpenAICompatProvider
) -> None:
    models = await openai_provider.list_models()

    assert [m.id for m in models] == ["gpt-test", "gpt-mini"]
    assert all(m.provider == "openai" and m.supports_tools for m in models)
    assert [(r.method, r.path) for r in openai_server.requests] == [("GET", "/v1/models")]


async def test_configured_models_are_listed_without_asking(openai_server: OpenAIServer) -> None:
    config = OpenAICompatConfig(base_url=openai_server.url, models=("fixed-a",), name="vllm")
    provider = OpenAICompatProvider(config)
    try:
        [model] = await provider.list_models()
    finally:
        await provider.aclose()
    assert (model.id, model.provider) == ("fixed-a", "vllm")
    assert openai_server.requests == []


def test_config_rejects_a_base_url_that_is_not_http() -> None:
    with pytest.raises(ValueError, match="base_url"):
        OpenAICompatConfig(base_url="127.0.0.1:8000/v1")


def test_config_repr_hides_the_key() -> None:
    config = OpenAICompatConfig(base_url="https://api.example.test/v1", api_key="sk-secret")
    assert "sk-secret" not in repr(config)
