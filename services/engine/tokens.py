"""A deterministic token estimator for when a provider reports no usage (and for the local model).

It counts word pieces of at most six characters and each punctuation mark as a token, which
lands near real BPE tokenizers for English text and errs on the high side for long words:
the safer side for budget reservations.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from services.engine.model import ChatMessage, TokenUsage, ToolSpec

_TOKEN = re.compile(r"\w{1,6}|[^\w\s]")

# Chat formats wrap each message in a few tokens of markup, and prime the reply with a few more.
_PER_MESSAGE = 3
_REPLY_PRIMING = 3


def estimate_tokens(text: str) -> int:
    """Estimate the tokens of a piece of text."""
    # findall builds its list in C: several times faster than counting finditer's matches,
    # and this runs for every message of every call (the budget hold's estimate too).
    return len(_TOKEN.findall(text)) if text else 0


def truncate_to_tokens(text: str, limit: int) -> str:
    """Return the longest prefix of `text` that has at most `limit` estimated tokens."""
    end = 0
    for count, match in enumerate(_TOKEN.finditer(text), start=1):
        if count > limit:
            break
        end = match.end()
    else:
        return text
    return text[:end]


def estimate_message_tokens(messages: Sequence[ChatMessage]) -> int:
    """Estimate the input tokens of a conversation, including its chat markup."""
    total = _REPLY_PRIMING
    for message in messages:
        total += _PER_MESSAGE + estimate_tokens(message.content) + estimate_tokens(message.name)
        for call in message.tool_calls:
            total += estimate_tokens(call.name) + estimate_tokens(call.arguments)
    return total


def estimate_tool_tokens(tools: Sequence[ToolSpec]) -> int:
    """Estimate the input tokens taken by the tool definitions offered to the model."""
    return sum(
        estimate_tokens(tool.name)
        + estimate_tokens(tool.description)
        + estimate_tokens(json.dumps(dict(tool.parameters), sort_keys=True))
        for tool in tools
    )


def estimate_usage(
    messages: Sequence[ChatMessage], tools: Sequence[ToolSpec], answer: ChatMessage
) -> TokenUsage:
    """Estimate the usage of a call that answered `messages`, offered `tools`, with `answer`."""
    output = estimate_tokens(answer.content) + sum(
        estimate_tokens(call.name) + estimate_tokens(call.arguments) for call in answer.tool_calls
    )
    return TokenUsage(
        input_tokens=estimate_message_tokens(messages) + estimate_tool_tokens(tools),
        output_tokens=output,
    )
