"""Decoding the OpenAI wire format: the shapes the various compatible servers send."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from services.engine.errors import ProviderRejected, ProviderUnavailable, RateLimited
from services.engine.model import ChatMessage, ToolCall
from services.engine.providers.openai_wire import (
    SseDecoder,
    StreamAssembly,
    http_error,
    parse_message,
    retry_after,
)

HELLO = [ChatMessage("user", "hello")]


def test_sse_decoder_joins_data_lines_and_skips_other_fields() -> None:
    sse = SseDecoder()
    lines = [": keep-alive", "event: message", 'data: {"a":', "data:1}", "", "data: [DONE]"]

    events = [data for line in lines if (data := sse.line(line)) is not None]

    assert events == ['{"a":\n1}']
    assert sse.flush() == "[DONE]"
    assert sse.flush() is None


def test_tool_calls_sent_whole_without_an_index_stay_separate() -> None:
    assembly = StreamAssembly("ollama")
    for name in ("first", "second"):
        call = {"id": f"id-{name}", "function": {"name": name, "arguments": {"n": 1}}}
        assembly.feed(json.dumps({"choices": [{"delta": {"tool_calls": [call]}}]}))
    assembly.feed(json.dumps({"choices": [{"delta": {}, "finish_reason": "stop"}]}))

    last = assembly.last_chunk(HELLO, [])

    assert last.tool_calls == (
        ToolCall("id-first", "first", '{"n": 1}'),
        ToolCall("id-second", "second", '{"n": 1}'),
    )
    assert last.finish_reason == "tool_calls"


def test_an_error_event_mid_stream_is_a_provider_failure() -> None:
    assembly = StreamAssembly("vllm")
    with pytest.raises(ProviderUnavailable, match="out of memory"):
        assembly.feed('{"object": "error", "error": {"message": "out of memory"}}')


def test_malformed_events_are_provider_failures_and_done_ends_the_stream() -> None:
    assembly = StreamAssembly("llama.cpp")
    with pytest.raises(ProviderUnavailable, match="malformed"):
        assembly.feed("{not json")
    with pytest.raises(ProviderUnavailable, match="malformed"):
        assembly.feed('{"choices": [7]}')
    assert not assembly.finished
    assert assembly.feed("[DONE]") == ""
    assert assembly.finished
    assert assembly.feed('{"choices": [{"delta": {"content": "late"}}]}') == ""


def test_non_streamed_message_without_ids_or_content() -> None:
    body = {
        "choices": [
            {
                "message": {"content": None, "tool_calls": [{"function": {"name": "f"}}]},
                "finish_reason": "tool_calls",
            }
        ]
    }

    message, reason, usage = parse_message(body)

    assert message == ChatMessage("assistant", "", tool_calls=(ToolCall("call_0", "f", ""),))
    assert (reason, usage) == ("tool_calls", None)


@pytest.mark.parametrize(
    "text",
    [
        '{"error": {"message": "bad key", "type": "auth"}}',
        '{"error": "bad key"}',
        '{"object": "error", "message": "bad key"}',
        "bad key",
    ],
)
def test_error_message_is_found_in_every_shape(text: str) -> None:
    error = http_error("p", 403, {}, text)
    assert isinstance(error, ProviderRejected)
    assert (error.status, error.message) == (403, "bad key")


def test_status_decides_the_error_kind() -> None:
    assert isinstance(http_error("p", 503, {}, ""), ProviderUnavailable)
    assert isinstance(http_error("p", 408, {}, ""), ProviderUnavailable)
    limited = http_error("p", 429, {"retry-after": "2"}, "")
    assert isinstance(limited, RateLimited) and limited.retry_after == 2.0
    rejected = http_error("p", 404, {}, "")
    assert isinstance(rejected, ProviderRejected) and rejected.message == "HTTP 404"


def test_retry_after_reads_seconds_and_dates() -> None:
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    seconds = retry_after(in_a_minute)

    assert seconds is not None and 55 < seconds <= 60
    assert retry_after("3") == 3.0
    assert retry_after("-1") == 0.0
    assert retry_after("soon") is None
    assert retry_after(None) is None
