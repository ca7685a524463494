"""A provider for Anthropic's Messages API: system, tools (tool_use / tool_result), SSE streams."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.engine.errors import ProviderUnavailable
from services.engine.model import (
    ChatMessage,
    Completion,
    CompletionChunk,
    CompletionParams,
    FinishReason,
    ModelInfo,
    TokenUsage,
    ToolCall,
    ToolSpec,
)
from services.engine.providers.openai_compat import transport_errors
from services.engine.providers.openai_wire import SseDecoder, error_text, http_error

API_VERSION = "2023-06-01"
_MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError)
_STOP_REASONS: Mapping[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


@dataclass(frozen=True)
class AnthropicConfig:
    """Where and how to reach Anthropic's API (or a server speaking it)."""

    base_url: str = "https://api.anthropic.com/v1"
    """API root including the version; requests go to `{base_url}/messages`."""
    api_key: str = field(default="", repr=False)
    """Sent as `x-api-key`. Kept out of repr."""
    models: tuple[str, ...] = ()
    """Model ids to serve, e.g. `claude-sonnet-4-5`."""
    timeout_seconds: float = 60.0
    """Longest wait for the server to answer, or to send the next piece of a stream."""
    connect_timeout_seconds: float = 10.0
    default_max_tokens: int = 4096
    """The API requires an output limit; used when the call sets none."""
    name: str = "anthropic"
    """The provider's (deployment's) name in the catalog."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        if self.timeout_seconds <= 0 or self.connect_timeout_seconds <= 0:
            raise ValueError("timeouts must be positive")


class AnthropicProvider:
    """Completions from the Messages API, over one pooled HTTP client."""

    def __init__(self, config: AnthropicConfig) -> None:
        self._config = config
        headers = {"anthropic-version": API_VERSION}
        if config.api_key:
            headers["x-api-key"] = config.api_key
        self._client = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(config.timeout_seconds, connect=config.connect_timeout_seconds),
        )

    @property
    def name(self) -> str:
        return self._config.name

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(m, self.name, 0, True, True) for m in self._config.models]

    async def complete(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        params: CompletionParams,
    ) -> Completion:
        payload = request_body(model, messages, tools, params, self._config.default_max_tokens)
        with self._transport_errors():
            response = await self._client.post("messages", json=payload)
        if response.status_code >= 400:
            raise http_error(self.name, response.status_code, response.headers, response.text)
        try:
            message, reason, usage = parse_message(response.json())
        except _MALFORMED as exc:
            raise ProviderUnavailable(self.name, f"malformed message: {exc!r}") from exc
        return Completion(message, reason, usage, model, self.name)

    async def stream(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        params: CompletionParams,
    ) -> AsyncGenerator[CompletionChunk, None]:
        payload = request_body(model, messages, tools, params, self._config.default_max_tokens)
        payload["stream"] = True
        assembly = MessageAssembly(self.name)
        sse = SseDecoder()
        with self._transport_errors():
            # Leaving this block for any reason, the consumer's aclose included, closes it.
            async with self._client.stream("POST", "messages", json=payload) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise http_error(
                        self.name, response.status_code, response.headers, response.text
                    )
                async for line in response.aiter_lines():
                    text = assembly.feed(sse.line(line))
                    if text:
                        yield CompletionChunk(text_delta=text)
                text = assembly.feed(sse.flush())
                if text:
                    yield CompletionChunk(text_delta=text)
        if not assembly.stopped:
            raise ProviderUnavailable(self.name, "the stream ended before message_stop")
        yield assembly.last_chunk()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _transport_errors(self) -> AbstractContextManager[None]:
        return transport_errors(self.name, self._config.base_url)


def request_body(
    model: str,
    messages: Sequence[ChatMessage],
    tools: Sequence[ToolSpec],
    params: CompletionParams,
    default_max_tokens: int,
) -> dict[str, Any]:
    """The JSON body of `POST /messages`: system text apart, tool results as user turns."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message)
        # The API wants user and assistant turns to alternate: merge neighbours of a role,
        # e.g. the results of several tool calls, into one turn.
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": params.max_output_tokens or default_max_tokens,
        "messages": turns,
    }
    if system:
        body["system"] = system
    if tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": dict(t.parameters)}
            for t in tools
        ]
    if params.temperature is not None:
        # The API's range is 0-1, the engine's (OpenAI's) 0-2.
        body["temperature"] = min(params.temperature, 1.0)
    if params.stop:
        body["stop_sequences"] = list(params.stop)
    return body


def _blocks(message: ChatMessage) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [
            {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.content}
        ]
    blocks: list[dict[str, Any]] = []
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call)})
    return blocks


def _input(call: ToolCall) -> Any:
    # The API wants the input as an object; a model's invalid JSON is sent back as text.
    try:
        value = json.loads(call.arguments or "{}")
    except ValueError:
        return {"arguments": call.arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def parse_usage(raw: Mapping[str, Any]) -> TokenUsage:
    """Usage with input_tokens counting the tokens read from and written to the prompt cache
    too (the API counts the three apart)."""
    fresh = int(raw.get("input_tokens") or 0)
    written = int(raw.get("cache_creation_input_tokens") or 0)
    read = int(raw.get("cache_read_input_tokens") or 0)
    return TokenUsage(
        input_tokens=fresh + written + read,
        output_tokens=int(raw.get("output_tokens") or 0),
        cached_input_tokens=read,
        cache_write_input_tokens=written,
    )


def parse_message(body: Mapping[str, Any]) -> tuple[ChatMessage, FinishReason, TokenUsage]:
    """The answer, finish reason and usage of a non-streamed response."""
    text: list[str] = []
    calls: list[ToolCall] = []
    for block in body["content"]:
        if block["type"] == "text":
            text.append(block["text"])
        elif block["type"] == "tool_use":
            calls.append(ToolCall(block["id"], block["name"], json.dumps(block["input"])))
    message = ChatMessage("assistant", "".join(text), tuple(calls))
    return message, _finish(body.get("stop_reason"), bool(calls)), parse_usage(body["usage"])


def _finish(raw: object, has_calls: bool) -> FinishReason:
    reason = _STOP_REASONS.get(raw, "stop") if isinstance(raw, str) else "stop"
    return "tool_calls" if has_calls and reason == "stop" else reason


@dataclass
class _Block:
    kind: str
    id: str = ""
    name: str = ""
    parts: list[str] = field(default_factory=list)


class MessageAssembly:
    """Accumulates a stream's events (message_start, content_block_start/delta/stop,
    message_delta, message_stop) into its text deltas and closing chunk."""

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._blocks: dict[int, _Block] = {}
        self._usage: dict[str, Any] = {}
        self._stop_reason: object = None
        self.stopped = False

    def feed(self, data: str | None) -> str:
        """Take the data of one event (None: no event yet); returns its text delta."""
        if data is None:
            return ""
        try:
            event = json.loads(data)
            return self._feed(event)
        except _MALFORMED as exc:
            raise ProviderUnavailable(self._provider, f"malformed stream event: {exc!r}") from exc

    def _feed(self, event: Mapping[str, Any]) -> str:
        kind = event["type"]
        if kind == "message_start":
            self._usage.update(event["message"].get("usage") or {})
        elif kind == "content_block_start":
            block = event["content_block"]
            self._blocks[event["index"]] = _Block(
                block["type"], block.get("id", ""), block.get("name", "")
            )
            if block["type"] == "text" and block.get("text"):
                self._blocks[event["index"]].parts.append(block["text"])
                return str(block["text"])
        elif kind == "content_block_delta":
            delta, block = event["delta"], self._blocks[event["index"]]
            if delta["type"] == "text_delta":
                block.parts.append(delta["text"])
                return str(delta["text"])
            if delta["type"] == "input_json_delta":
                block.parts.append(delta["partial_json"])
        elif kind == "message_delta":
            self._stop_reason = event["delta"].get("stop_reason") or self._stop_reason
            self._usage.update(event.get("usage") or {})
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            raise ProviderUnavailable(self._provider, f"error mid-stream: {error_text(event)}")
        return ""

    def last_chunk(self) -> CompletionChunk:
        calls = tuple(
            ToolCall(b.id, b.name, "".join(b.parts) or "{}")
            for _, b in sorted(self._blocks.items())
            if b.kind == "tool_use"
        )
        return CompletionChunk(
            tool_calls=calls,
            finish_reason=_finish(self._stop_reason, bool(calls)),
            usage=parse_usage(self._usage),
        )
