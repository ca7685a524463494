"""Domain values of the engine: messages, tools, completions and token usage."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]
AttemptOutcome = Literal["ok", "rate_limited", "unavailable", "timeout", "rejected", "breaker_open"]
IdempotencyHook = Literal["start", "hit", "conflict", "complete", "fail"]
"""What the idempotency tracker did with a call that has a key (see idempotency.py)."""

ROLES: frozenset[str] = frozenset(get_args(Role))
FINISH_REASONS: frozenset[str] = frozenset(get_args(FinishReason))

# The function-name rule of the OpenAI API, which every compatible server also enforces.
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class ToolCall:
    """A model's request to call one tool."""

    id: str
    """Identifier the tool result must refer to (`ChatMessage.tool_call_id`)."""
    name: str
    arguments: str
    """The arguments as JSON text, exactly as the model wrote them (possibly invalid JSON)."""


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation."""

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    """Tool calls an assistant message asks for."""
    tool_call_id: str = ""
    """For a `tool` message: the id of the call this message answers."""
    name: str = ""
    """Optional participant name (user/system) or tool name (tool)."""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown message role {self.role!r}; expected one of {sorted(ROLES)}")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"a {self.role} message cannot carry tool calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")


@dataclass(frozen=True)
class ToolSpec:
    """A tool offered to the model."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    """JSON Schema of the arguments object."""

    def __post_init__(self) -> None:
        if not TOOL_NAME.fullmatch(self.name):
            raise ValueError(
                f"invalid tool name {self.name!r}: use 1-64 letters, digits, '_' or '-'"
            )


@dataclass(frozen=True)
class CompletionParams:
    """Sampling parameters of a completion; None leaves the provider's default."""

    temperature: float | None = None
    max_output_tokens: int | None = None
    stop: tuple[str, ...] = ()
    """Sequences at which the model stops; they are not part of the output."""

    def __post_init__(self) -> None:
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be between 0 and 2, got {self.temperature}")
        if self.max_output_tokens is not None and self.max_output_tokens < 1:
            raise ValueError(f"max_output_tokens must be positive, got {self.max_output_tokens}")
        if any(not s for s in self.stop):
            raise ValueError("stop sequences must not be empty")


@dataclass(frozen=True)
class TokenUsage:
    """Tokens consumed by one or more model calls."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    """Part of `input_tokens` served from the provider's prompt cache."""
    cache_write_input_tokens: int = 0
    """Part of `input_tokens` written to the provider's prompt cache."""

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            cache_write_input_tokens=self.cache_write_input_tokens + other.cache_write_input_tokens,
        )


@dataclass(frozen=True)
class Completion:
    """The whole answer of one model call."""

    message: ChatMessage
    finish_reason: FinishReason
    usage: TokenUsage
    model: str
    """The id of the model that answered, as its deployment knows it."""
    provider: str
    attempts: tuple[Attempt, ...] = ()
    """Every deployment tried for this answer; empty when it was replayed or cached."""
    replayed: bool = False
    """Recorded under the same idempotency key, or made by a call in flight that was joined."""
    cache_hit: bool = False
    """Served from the response cache: no provider was called, the usage counts nothing."""
    idempotency_hooks: tuple[IdempotencyHook, ...] = ()
    """The idempotency hooks this call went through, in order; none without a key."""


@dataclass(frozen=True)
class Attempt:
    """One try of one deployment during a call."""

    deployment: str
    model: str
    outcome: AttemptOutcome
    seconds: float
    """How long the try took; 0 when it was skipped."""
    error: str = ""


@dataclass(frozen=True)
class CompletionChunk:
    """A piece of a streamed answer.

    Text arrives in deltas; tool calls, once assembled from the provider's deltas, arrive
    whole in the last chunk, which alone carries `finish_reason` and `usage`.
    """

    text_delta: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason | Literal[""] = ""
    usage: TokenUsage | None = None
    model: str = ""
    """On the last chunk from the engine: the model that answered."""
    provider: str = ""
    """On the last chunk from the engine: the deployment that answered."""
    attempts: tuple[Attempt, ...] = ()
    """On the last chunk from the engine: every deployment tried."""
    replayed: bool = False
    cache_hit: bool = False
    idempotency_hooks: tuple[IdempotencyHook, ...] = ()
    """The idempotency hooks that fired since the previous chunk of the call."""


@dataclass(frozen=True)
class ModelInfo:
    """A model the engine can route to."""

    id: str
    provider: str
    context_window: int
    """Maximum tokens of input plus output; 0 when the provider does not say."""
    supports_tools: bool
    supports_streaming: bool


def closing_chunk(completion: Completion, streamed: str = "") -> CompletionChunk:
    """The last chunk of a stream that answers `completion`, after `streamed` text."""
    return CompletionChunk(
        text_delta=completion.message.content.removeprefix(streamed),
        tool_calls=completion.message.tool_calls,
        finish_reason=completion.finish_reason,
        usage=completion.usage,
        model=completion.model,
        provider=completion.provider,
        attempts=completion.attempts,
        replayed=completion.replayed,
        cache_hit=completion.cache_hit,
    )


def completion_of(chunk: CompletionChunk, text: str) -> Completion:
    """The whole answer of a stream whose last chunk is `chunk` and whose text is `text`."""
    if not chunk.finish_reason or chunk.usage is None:
        raise ValueError("only the last chunk of a stream carries its finish reason and usage")
    return Completion(
        message=ChatMessage("assistant", text, chunk.tool_calls),
        finish_reason=chunk.finish_reason,
        usage=chunk.usage,
        model=chunk.model,
        provider=chunk.provider,
        attempts=chunk.attempts,
        replayed=chunk.replayed,
        cache_hit=chunk.cache_hit,
    )
