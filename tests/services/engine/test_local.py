"""The built-in deterministic local model."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from services.engine.errors import ModelNotFound
from services.engine.model import (
    ChatMessage,
    CompletionChunk,
    CompletionParams,
    ToolCall,
    ToolSpec,
)
from services.engine.providers.local import LOCAL_MODEL, LOCAL_SLOW_MODEL, LocalProvider
from services.engine.tokens import estimate_usage

NO_PARAMS = CompletionParams()
LOOKUP = ToolSpec(name="lookup", description="Find a fact", parameters={"type": "object"})
CONVERSATION = [
    ChatMessage("system", "You are terse."),
    ChatMessage("user", "first question"),
    ChatMessage("assistant", "first answer"),
    ChatMessage("user", "what is the capital of France?"),
]


async def collect(
    provider: LocalProvider,
    model: str,
    messages: Sequence[ChatMessage],
    tools: Sequence[ToolSpec] = (),
) -> list[CompletionChunk]:
    return [c async for c in provider.stream(model, messages, tools, NO_PARAMS)]


async def test_answer_restates_the_last_user_message_and_counts_turns() -> None:
    completion = await LocalProvider().complete(LOCAL_MODEL, CONVERSATION, [], NO_PARAMS)

    assert completion.message.content.startswith(
        'Turn 2. You said: "what is the capital of France?".'
    )
    assert completion.finish_reason == "stop"
    assert (completion.model, completion.provider) == (LOCAL_MODEL, "local")


async def test_same_conversation_same_answer_and_usage() -> None:
    first = await LocalProvider().complete(LOCAL_MODEL, CONVERSATION, [LOOKUP], NO_PARAMS)
    second = await LocalProvider().complete(LOCAL_MODEL, CONVERSATION, [LOOKUP], NO_PARAMS)

    assert first == second
    assert first.usage == estimate_usage(CONVERSATION, [LOOKUP], first.message)
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0


async def test_stream_matches_complete() -> None:
    provider = LocalProvider(chunk_delay=0)
    completion = await provider.complete(LOCAL_MODEL, CONVERSATION, [], NO_PARAMS)
    for model in (LOCAL_MODEL, LOCAL_SLOW_MODEL):
        chunks = await collect(provider, model, CONVERSATION)
        assert "".join(c.text_delta for c in chunks) == completion.message.content
        assert chunks[-1].finish_reason == "stop"
        assert chunks[-1].usage == completion.usage
    assert len(await collect(provider, LOCAL_MODEL, CONVERSATION)) == 2


async def test_call_directive_for_an_offered_tool_becomes_tool_calls() -> None:
    ask = ChatMessage("user", 'Please:\ncall lookup {"q": "France"}\ncall lookup {"q": "Spain"}')
    messages = [ChatMessage("user", "hi"), ChatMessage("assistant", "hello"), ask]

    completion = await LocalProvider().complete(LOCAL_MODEL, messages, [LOOKUP], NO_PARAMS)
    chunks = await collect(LocalProvider(), LOCAL_MODEL, messages, [LOOKUP])

    expected = (
        ToolCall(id="call_3_0", name="lookup", arguments='{"q": "France"}'),
        ToolCall(id="call_3_1", name="lookup", arguments='{"q": "Spain"}'),
    )
    assert completion.message.tool_calls == expected
    assert completion.message.content == ""
    assert completion.finish_reason == "tool_calls"
    assert chunks == [
        CompletionChunk(tool_calls=expected, finish_reason="tool_calls", usage=completion.usage)
    ]


async def test_call_directive_for_a_tool_not_offered_is_just_text() -> None:
    messages = [ChatMessage("user", 'call delete_everything {"really": true}')]

    completion = await LocalProvider().complete(LOCAL_MODEL, messages, [LOOKUP], NO_PARAMS)

    assert completion.finish_reason == "stop"
    assert "call delete_everything" in completion.message.content


async def test_answer_after_tool_results_quotes_them() -> None:
    call = ToolCall(id="call_1_0", name="lookup", arguments='{"q": "France"}')
    messages = [
        ChatMessage("user", 'call lookup {"q": "France"}'),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", "Paris", tool_call_id="call_1_0"),
    ]

    completion = await LocalProvider().complete(LOCAL_MODEL, messages, [LOOKUP], NO_PARAMS)

    assert completion.finish_reason == "stop"
    assert completion.message.content == "Tool lookup returned: Paris"


async def test_output_limit_and_stop_sequences_apply() -> None:
    messages = [ChatMessage("user", "one two three four five six")]
    provider = LocalProvider()

    limited = await provider.complete(
        LOCAL_MODEL, messages, [], CompletionParams(max_output_tokens=3)
    )
    stopped = await provider.complete(LOCAL_MODEL, messages, [], CompletionParams(stop=("You",)))

    assert (limited.message.content, limited.finish_reason) == ("Turn 1.", "length")
    assert limited.usage.output_tokens == 3
    assert (stopped.message.content, stopped.finish_reason) == ("Turn 1. ", "stop")


async def test_slow_model_streams_small_chunks_with_a_bounded_delay() -> None:
    delay = 0.02
    provider = LocalProvider(chunk_delay=delay)
    messages = [ChatMessage("user", "tell me slowly")]

    started = time.monotonic()
    chunks = await collect(provider, LOCAL_SLOW_MODEL, messages)
    elapsed = time.monotonic() - started

    pieces = len(chunks) - 1
    assert pieces > 10
    assert all(len(c.text_delta.split()) == 1 for c in chunks[:-1])
    assert pieces * delay <= elapsed < pieces * delay + 1.0


async def test_unknown_model_is_not_found() -> None:
    with pytest.raises(ModelNotFound):
        await LocalProvider().complete("gpt-4o", CONVERSATION, [], NO_PARAMS)
    with pytest.raises(ModelNotFound):
        await collect(LocalProvider(), "gpt-4o", CONVERSATION)


async def test_lists_both_models() -> None:
    models = await LocalProvider().list_models()

    assert [m.id for m in models] == [LOCAL_MODEL, LOCAL_SLOW_MODEL]
    assert all(m.provider == "local" and m.context_window > 0 for m in models)


async def test_a_system_prompt_scripts_answers_for_workflows() -> None:
    provider = LocalProvider()
    script = ChatMessage(
        "system",
        'You route requests.\nif "invoice" reply: billing\nif "plan" reply: ["a", "b"]\n'
        "reply: echo {input}",
    )

    async def answer(prompt: str) -> str:
        done = await provider.complete(
            LOCAL_MODEL, [script, ChatMessage("user", prompt)], [], NO_PARAMS
        )
        return done.message.content

    assert await answer("My INVOICE is wrong") == "billing"
    assert await answer("make a plan") == '["a", "b"]'
    assert await answer("hello") == "echo hello"
    plain = await provider.complete(LOCAL_MODEL, [ChatMessage("user", "reply: x")], [], NO_PARAMS)
    assert "You said" in plain.message.content  # only a system prompt scripts answers
