"""The engine's domain values and the token estimator."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.engine.model import ChatMessage, CompletionParams, TokenUsage, ToolCall, ToolSpec
from services.engine.tokens import (
    estimate_message_tokens,
    estimate_tokens,
    truncate_to_tokens,
)


def test_usage_adds_up() -> None:
    total = TokenUsage(10, 5, cached_input_tokens=2, cache_write_input_tokens=3) + TokenUsage(
        1, 2, cache_write_input_tokens=1
    )

    assert total == TokenUsage(11, 7, cached_input_tokens=2, cache_write_input_tokens=4)
    assert total.total_tokens == 18


@pytest.mark.parametrize(
    ("build", "complaint"),
    [
        (lambda: ChatMessage("robot", "hi"), "role"),  # type: ignore[arg-type]
        (lambda: ChatMessage("user", "x", tool_calls=(ToolCall("1", "f", "{}"),)), "tool calls"),
        (lambda: ChatMessage("tool", "result"), "tool_call_id"),
        (lambda: ToolSpec("has space", "", {}), "tool name"),
        (lambda: CompletionParams(temperature=3), "temperature"),
        (lambda: CompletionParams(max_output_tokens=0), "max_output_tokens"),
        (lambda: CompletionParams(stop=("",)), "stop"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(
    build: Callable[[], object], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        build()


def test_token_estimate_counts_word_pieces_and_punctuation() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("Hello, world!") == 4
    assert estimate_tokens("internationalization") == 4  # 20 letters, pieces of 6


def test_truncation_keeps_whole_tokens() -> None:
    assert truncate_to_tokens("one two three", 2) == "one two"
    assert truncate_to_tokens("one two three", 0) == ""
    assert truncate_to_tokens("one two ", 5) == "one two "


def test_message_estimate_includes_markup_and_tool_calls() -> None:
    plain = [ChatMessage("user", "hi there")]
    with_call = [
        *plain,
        ChatMessage("assistant", "", tool_calls=(ToolCall("c1", "lookup", '{"q": 1}'),)),
    ]

    assert estimate_message_tokens([]) == 3
    assert estimate_message_tokens(plain) == 3 + 3 + 2
    assert estimate_message_tokens(with_call) == 8 + 3 + 1 + estimate_tokens('{"q": 1}')
