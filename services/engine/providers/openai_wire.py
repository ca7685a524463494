"""The OpenAI chat-completions wire format: request bodies, responses, stream events, errors.

Only the subset that OpenAI, vLLM, Ollama and llama.cpp all speak is used.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

from services.engine.errors import EngineError, ProviderRejected, ProviderUnavailable, RateLimited
from services.engine.model import (
    ChatMessage,
    CompletionChunk,
    CompletionParams,
    FinishReason,
    TokenUsage,
    ToolCall,
    ToolSpec,
)
from services.engine.tokens import estimate_usage

_MAX_ERROR_TEXT = 500


def request_body(
    model: str,
    messages: Sequence[ChatMessage],
    tools: Sequence[ToolSpec],
    params: CompletionParams,
    *,
    stream: bool,
) -> dict[str, Any]:
    """The JSON body of `POST /chat/completions`."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [_wire_message(m) for m in messages],
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    if tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": dict(t.parameters),
                },
            }
            for t in tools
        ]
    if params.temperature is not None:
        body["temperature"] = params.temperature
    if params.max_output_tokens is not None:
        # `max_tokens` rather than OpenAI's newer `max_completion_tokens`: every server knows it.
        body["max_tokens"] = params.max_output_tokens
    if params.stop:
        body["stop"] = list(params.stop)
    return body


def _wire_message(message: ChatMessage) -> dict[str, Any]:
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
        if not message.content:
            wire["content"] = None
    if message.role == "tool":
        wire["tool_call_id"] = message.tool_call_id
    elif message.name:
        wire["name"] = message.name
    return wire


def parse_message(body: Mapping[str, Any]) -> tuple[ChatMessage, object, TokenUsage | None]:
    """The answer, raw finish reason and usage of a non-streamed response.

    Raises KeyError, TypeError, ValueError or IndexError when the body is malformed.
    """
    choice = body["choices"][0]
    wire = choice["message"]
    calls = tuple(
        ToolCall(
            id=raw.get("id") or f"call_{index}",
            name=raw["function"]["name"],
            arguments=_arguments_text(raw["function"].get("arguments")),
        )
        for index, raw in enumerate(wire.get("tool_calls") or ())
    )
    message = ChatMessage(role="assistant", content=wire.get("content") or "", tool_calls=calls)
    return message, choice.get("finish_reason"), parse_usage(body.get("usage"))


def _arguments_text(arguments: object) -> str:
    if arguments is None:
        return ""
    if isinstance(arguments, str):
        return arguments
    # A few servers send the arguments as an object rather than as JSON text.
    return json.dumps(arguments)


def parse_usage(raw: object) -> TokenUsage | None:
    """Token usage from a response's `usage` object, or None when there is none. Cache
    writes come as OpenRouter (and agentrt's own gateway) send them,
    `prompt_tokens_details.cache_write_tokens`; OpenAI itself reports none."""
    if not isinstance(raw, Mapping):
        return None
    details = raw.get("prompt_tokens_details")
    if not isinstance(details, Mapping):
        details = {}
    return TokenUsage(
        input_tokens=int(raw.get("prompt_tokens") or 0),
        output_tokens=int(raw.get("completion_tokens") or 0),
        cached_input_tokens=int(details.get("cached_tokens") or 0),
        cache_write_input_tokens=int(details.get("cache_write_tokens") or 0),
    )


def finish_reason(raw: object, has_tool_calls: bool) -> FinishReason:
    """Normalise a server's finish reason; tool calls win over a plain `stop`."""
    if raw == "length":
        return "length"
    if raw == "content_filter":
        return "content_filter"
    return "tool_calls" if has_tool_calls else "stop"


class SseDecoder:
    """Joins the `data:` lines of Server-Sent Events and hands out each event's data."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def line(self, line: str) -> str | None:
        """Feed one line; returns the data of the event that a blank line completes."""
        if not line:
            return self.flush()
        if line.startswith("data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(" ") else value)
        # Comments and the event/id/retry fields carry nothing this API uses.
        return None

    def flush(self) -> str | None:
        """The data of an event left unterminated at the end of the stream."""
        if not self._data:
            return None
        data = "\n".join(self._data)
        self._data = []
        return data


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class StreamAssembly:
    """Accumulates the events of one streamed completion into its final chunk."""

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._text: list[str] = []
        self._calls: dict[int, _PartialCall] = {}
        self._finish_reason: object = None
        self._usage: TokenUsage | None = None
        self._done = False

    @property
    def finished(self) -> bool:
        """Whether the server said the answer is complete ([DONE] or a finish reason)."""
        return self._done or self._finish_reason is not None

    def feed(self, data: str | None) -> str:
        """Take the data of one event (None: no event yet); returns its text delta."""
        if data is None or self._done:
            return ""
        if data == "[DONE]":
            self._done = True
            return ""
        try:
            event = json.loads(data)
            if not isinstance(event, Mapping):
                raise TypeError(f"expected a JSON object, got {type(event).__name__}")
            return self._feed_event(event)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ProviderUnavailable(self._provider, f"malformed stream event: {exc!r}") from exc

    def _feed_event(self, event: Mapping[str, Any]) -> str:
        if "error" in event:
            raise ProviderUnavailable(self._provider, f"error mid-stream: {error_text(event)}")
        usage = parse_usage(event.get("usage"))
        if usage is not None:
            self._usage = usage
        text = ""
        for choice in event.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text += delta.get("content") or ""
            for call_delta in delta.get("tool_calls") or ():
                self._feed_call(call_delta)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        self._text.append(text)
        return text

    def _feed_call(self, delta: Mapping[str, Any]) -> None:
        # Servers that send each call whole may leave out the index.
        index = delta.get("index")
        key = len(self._calls) if index is None else index
        partial = self._calls.setdefault(key, _PartialCall())
        partial.id = partial.id or delta.get("id") or ""
        function = delta.get("function") or {}
        # Some servers repeat the name in every delta, so the first one is kept.
        partial.name = partial.name or function.get("name") or ""
        partial.arguments.append(_arguments_text(function.get("arguments")))

    def last_chunk(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]
    ) -> CompletionChunk:
        """The closing chunk: assembled tool calls, finish reason, usage (estimated if absent)."""
        calls = tuple(
            ToolCall(id=p.id or f"call_{i}", name=p.name, arguments="".join(p.arguments))
            for i, p in sorted(self._calls.items())
        )
        answer = ChatMessage(role="assistant", content="".join(self._text), tool_calls=calls)
        return CompletionChunk(
            tool_calls=calls,
            finish_reason=finish_reason(self._finish_reason, bool(calls)),
            usage=self._usage or estimate_usage(messages, tools, answer),
        )


def http_error(provider: str, status: int, headers: Mapping[str, str], text: str) -> EngineError:
    """The domain error for an HTTP error response."""
    message = _error_message(text) or f"HTTP {status}"
    if status == 429:
        return RateLimited(provider, message, retry_after(headers.get("retry-after")))
    if status >= 500 or status == 408:
        return ProviderUnavailable(provider, f"HTTP {status}: {message}")
    return ProviderRejected(provider, status, message)


def _error_message(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:_MAX_ERROR_TEXT]
    return error_text(body) if isinstance(body, Mapping) else text.strip()[:_MAX_ERROR_TEXT]


def error_text(body: Mapping[str, Any]) -> str:
    """The message of an error body, in any of the shapes these servers use."""
    error = body.get("error")
    if isinstance(error, Mapping):
        return str(error.get("message") or error)[:_MAX_ERROR_TEXT]
    if error:
        return str(error)[:_MAX_ERROR_TEXT]
    return str(body.get("message") or body)[:_MAX_ERROR_TEXT]


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delay in seconds or an HTTP date)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None
