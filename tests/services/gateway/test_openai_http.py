"""The OpenAI-compatible endpoint, driven by the official `openai` package with an agentrt key:
chats and streams on the built-in model, recorded in the ledger; budgets, policy and bad
keys refused with the error classes OpenAI's SDK raises for them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from agentrt.common.v1.common_pb2 import Usage
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.dev import LocalSystem
from tests.services.gateway.conftest import eventually_served
from tests.services.gateway.model_api_support import (
    MODEL,
    deny_model,
    expect_usage_on,
    reserved_tokens,
    set_token_budget,
    system,
    usage_records,
)

__all__ = ["system"]  # the fixture, for this module's tests


class Counted:
    """The requests an httpx client sent."""

    def __init__(self) -> None:
        self.sent = 0

    async def __call__(self, request: object) -> None:
        self.sent += 1


@pytest.fixture
def sent() -> Counted:
    return Counted()


@pytest.fixture
async def client(system: LocalSystem, sent: Counted) -> AsyncIterator[openai.AsyncOpenAI]:
    http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [sent]}, timeout=10)
    async with openai.AsyncOpenAI(
        base_url=f"{system.http_url}/v1", api_key=system.api_key, http_client=http
    ) as sdk:
        yield sdk


HELLO: list[Any] = [{"role": "user", "content": "hello"}]
BOGUS_SCHEMA = {"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}


async def test_a_chat_answers_and_its_usage_is_in_the_ledger(
    client: openai.AsyncOpenAI, system: LocalSystem
) -> None:
    chat = await client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=64)

    [choice] = chat.choices
    assert choice.message.role == "assistant"
    assert "hello" in (choice.message.content or "")
    assert choice.finish_reason == "stop"
    assert chat.model == MODEL
    assert chat.usage is not None and chat.usage.completion_tokens > 0
    [record] = await usage_records(system)
    assert record.name == f"usageRecords/{chat.id}"
    assert record.usage.input_tokens == chat.usage.prompt_tokens
    assert record.usage.output_tokens == chat.usage.completion_tokens
    assert (record.tenant, record.model) == ("dev", MODEL)
    assert record.usage.cost == (chat.usage.model_extra or {})["cost"] != ""


async def test_the_requests_span_carries_the_calls_usage(
    client: openai.AsyncOpenAI, spans: InMemorySpanExporter
) -> None:
    chat = await client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=64)
    span = await eventually_served(spans, "POST /v1/chat/completions")
    assert chat.usage is not None
    usage = Usage(
        input_tokens=chat.usage.prompt_tokens,
        output_tokens=chat.usage.completion_tokens,
        cost=(chat.usage.model_extra or {})["cost"],
    )
    expect_usage_on(span, usage)


async def test_a_stream_sends_chunks_then_usage_then_done(
    client: openai.AsyncOpenAI, system: LocalSystem
) -> None:
    stream = await client.chat.completions.create(
        model="local-slow",
        messages=[{"role": "user", "content": "tell me a story"}],
        max_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 1  # word by word, as local-slow streams
    assert "story" in "".join(texts)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    [record] = await usage_records(system)
    assert record.usage.output_tokens == usage.completion_tokens > 0
    assert record.name == f"usageRecords/{chunks[0].id}"


async def test_tools_come_back_as_tool_calls_and_their_results_go_in(
    client: openai.AsyncOpenAI,
) -> None:
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "calculator",
                "description": "arithmetic",
                "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
            },
        }
    ]
    asked: list[Any] = [{"role": "user", "content": 'call calculator {"expression": "6*7"}'}]
    chat = await client.chat.completions.create(model=MODEL, messages=asked, tools=tools)
    [choice] = chat.choices
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "6*7"}

    stream = await client.chat.completions.create(
        model=MODEL, messages=asked, tools=tools, stream=True
    )
    deltas = [c.choices[0].delta for c in [chunk async for chunk in stream] if c.choices]
    [streamed] = [call for delta in deltas for call in delta.tool_calls or []]
    assert (streamed.index, streamed.id) == (0, call.id)
    assert streamed.function is not None and streamed.function.name == "calculator"

    answered = await client.chat.completions.create(
        model=MODEL,
        messages=[
            *asked,
            choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "42"},
        ],
        tools=tools,
    )
    assert answered.choices[0].finish_reason == "stop"
    assert "42" in (answered.choices[0].message.content or "")


async def test_models_lists_what_the_engine_serves(client: openai.AsyncOpenAI) -> None:
    listed = [model.id async for model in client.models.list()]
    assert listed == ["local", "local-slow"]
    assert (await client.models.retrieve("local")).id == "local"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")


async def test_a_budget_stops_the_call_with_a_rate_limit_error_at_once(
    client: openai.AsyncOpenAI, system: LocalSystem, sent: Counted
) -> None:
    await set_token_budget(system, 50)  # below the worst case of a 64-token answer

    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=64)
    error = refused.value
    assert error.status_code == 429
    assert error.code == "budget_exceeded"
    assert "budgets/dev-daily" in error.message
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=64, stream=True
        )
    assert sent.sent == 2  # the SDK did not retry: the budget says so until it resets
    assert await usage_records(system) == []


async def test_a_policy_deny_is_a_permission_error(
    client: openai.AsyncOpenAI, system: LocalSystem
) -> None:
    await deny_model(system)

    with pytest.raises(openai.PermissionDeniedError) as refused:
        await client.chat.completions.create(model=MODEL, messages=HELLO)
    assert refused.value.code == "policy_denied"
    assert "denied by policy: " in refused.value.message
    assert [model.id async for model in client.models.list()] == ["local-slow"]


async def test_a_call_is_decided_by_the_policy_set_it_names_as_over_grpc(
    client: openai.AsyncOpenAI, system: LocalSystem
) -> None:
    await deny_model(system, policy_set="strict", tenant="dev")

    with pytest.raises(openai.PermissionDeniedError) as refused:
        await client.chat.completions.create(
            model=MODEL, messages=HELLO, extra_body={"policy": "strict"}
        )
    assert refused.value.code == "policy_denied"
    with pytest.raises(openai.PermissionDeniedError):
        await client.chat.completions.create(
            model=MODEL, messages=HELLO, stream=True, extra_body={"policy": "strict"}
        )
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(
            model=MODEL, messages=HELLO, extra_body={"policy": "nope"}
        )
    assert missing.value.code == "not_found"
    assert await usage_records(system) == []
    chat = await client.chat.completions.create(model=MODEL, messages=HELLO)  # the default set
    assert chat.choices[0].finish_reason == "stop"


async def test_a_bad_key_is_an_authentication_error(system: LocalSystem) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{system.http_url}/v1", api_key="agk_not-a-key", max_retries=0
    ) as stranger:
        with pytest.raises(openai.AuthenticationError) as refused:
            await stranger.chat.completions.create(model=MODEL, messages=HELLO)
        assert refused.value.code == "api_key_invalid"
        with pytest.raises(openai.AuthenticationError):
            await stranger.models.list()


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope", "messages": HELLO}, 404, None),
        ({"model": MODEL, "messages": []}, 400, "messages"),
        (
            {"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]},
            400,
            "messages[0].role",
        ),
        ({"model": MODEL, "messages": HELLO, "max_tokens": -1}, 400, "max_tokens"),
        ({"model": MODEL, "messages": HELLO, "n": 2}, 400, "n"),
        ({"model": MODEL, "messages": HELLO, "tools": [BOGUS_SCHEMA]}, 400, "tools[0].parameters"),
    ],
    ids=["unknown-model", "no-messages", "bad-role", "bad-max-tokens", "two-choices", "schema"],
)
async def test_bad_requests_get_openais_error_shape(
    system: LocalSystem, body: dict[str, Any], status: int, param: str | None
) -> None:
    async with httpx.AsyncClient(base_url=system.http_url, timeout=10) as http:
        answer = await http.post(
            "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {system.api_key}"},
        )
    assert answer.status_code == status
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["message"]
    assert await usage_records(system) == []


async def test_a_body_that_is_not_json_is_a_400(system: LocalSystem) -> None:
    async with httpx.AsyncClient(base_url=system.http_url, timeout=10) as http:
        answer = await http.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"authorization": f"Bearer {system.api_key}"},
        )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "body"


async def test_an_idempotency_key_replays_the_call_and_refuses_another_request(
    client: openai.AsyncOpenAI, system: LocalSystem
) -> None:
    key = {"Idempotency-Key": "order-42"}
    first = await client.chat.completions.create(model=MODEL, messages=HELLO, extra_headers=key)
    again = await client.chat.completions.create(model=MODEL, messages=HELLO, extra_headers=key)
    assert again.id == first.id
    assert again.choices[0].message.content == first.choices[0].message.content

    other: list[Any] = [{"role": "user", "content": "something else"}]
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(model=MODEL, messages=other, extra_headers=key)
    assert refused.value.code == "idempotency_conflict"  # the engine's answer, relayed
    assert [r.name for r in await usage_records(system)] == [f"usageRecords/{first.id}"]


async def test_a_call_joins_the_callers_trace_down_to_its_usage_record(
    system: LocalSystem,
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with httpx.AsyncClient(base_url=system.http_url, timeout=10) as http:
        answer = await http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": HELLO},
            headers={
                "authorization": f"Bearer {system.api_key}",
                "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
            },
        )
    assert answer.status_code == 200
    [record] = await usage_records(system)
    assert record.trace_id == trace_id


async def test_a_stream_the_client_abandons_gives_its_hold_back(system: LocalSystem) -> None:
    await set_token_budget(system, 1_000_000)
    body = {"model": "local-slow", "messages": [{"role": "user", "content": "a long story"}]}
    async with (
        httpx.AsyncClient(base_url=system.http_url, timeout=10) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json={**body, "stream": True},
            headers={"authorization": f"Bearer {system.api_key}"},
        ) as answer,
    ):
        assert answer.status_code == 200
        lines = answer.aiter_lines()
        assert (await anext(lines)).startswith("data: ")
        assert await reserved_tokens(system) > 0  # the call's worst case, held
    # The client went away mid-answer: the hold is released, nothing is recorded.
    for _ in range(100):
        if await reserved_tokens(system) == 0:
            break
        await asyncio.sleep(0.05)
    assert await reserved_tokens(system) == 0
    assert await usage_records(system) == []
