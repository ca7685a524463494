"""Conversions between the engine's contract messages and its domain values."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2
from google.protobuf import json_format

from services.engine.completion import DeploymentStatus
from services.engine.model import (
    Attempt,
    ChatMessage,
    Completion,
    CompletionChunk,
    CompletionParams,
    IdempotencyHook,
    ModelInfo,
    TokenUsage,
    ToolCall,
    ToolSpec,
)
from services.engine.response_cache import NO_CACHE, CacheRequest
from services.kit.errors import FieldInvalid, FieldRequired

_ROLES = {
    common_pb2.ROLE_SYSTEM: "system",
    common_pb2.ROLE_USER: "user",
    common_pb2.ROLE_ASSISTANT: "assistant",
    common_pb2.ROLE_TOOL: "tool",
}
_ROLE_VALUES = {name: value for value, name in _ROLES.items()}
_HOOKS: dict[IdempotencyHook, engine_pb2.IdempotencyHook.ValueType] = {
    "start": engine_pb2.IDEMPOTENCY_HOOK_START,
    "hit": engine_pb2.IDEMPOTENCY_HOOK_HIT,
    "conflict": engine_pb2.IDEMPOTENCY_HOOK_CONFLICT,
    "complete": engine_pb2.IDEMPOTENCY_HOOK_COMPLETE,
    "fail": engine_pb2.IDEMPOTENCY_HOOK_FAIL,
}
_FINISH_REASONS = {
    "stop": engine_pb2.FINISH_REASON_STOP,
    "length": engine_pb2.FINISH_REASON_LENGTH,
    "tool_calls": engine_pb2.FINISH_REASON_TOOL_CALLS,
    "content_filter": engine_pb2.FINISH_REASON_CONTENT_FILTER,
}


def message_from_proto(message: common_pb2.Message, field: str) -> ChatMessage:
    role = _ROLES.get(message.role)
    if role is None:
        raise FieldInvalid(f"{field}.role", "must be SYSTEM, USER, ASSISTANT or TOOL")
    try:
        return ChatMessage(
            role,  # type: ignore[arg-type]
            message.content,
            tuple(ToolCall(c.id, c.name, c.arguments) for c in message.tool_calls),
            message.tool_call_id,
            message.name,
        )
    except ValueError as error:
        raise FieldInvalid(field, str(error)) from None


def message_to_proto(message: ChatMessage) -> common_pb2.Message:
    return common_pb2.Message(
        role=_ROLE_VALUES[message.role],
        content=message.content,
        tool_calls=[tool_call_to_proto(call) for call in message.tool_calls],
        tool_call_id=message.tool_call_id,
        name=message.name,
    )


def tool_call_to_proto(call: ToolCall) -> common_pb2.ToolCall:
    return common_pb2.ToolCall(id=call.id, name=call.name, arguments=call.arguments)


def request_from_proto(
    request: engine_pb2.CompleteRequest,
) -> tuple[tuple[ChatMessage, ...], tuple[ToolSpec, ...], CompletionParams]:
    """The conversation, tools and parameters of a request; INVALID_ARGUMENT when bad."""
    if not request.model:
        raise FieldRequired("model")
    if not request.messages:
        raise FieldRequired("messages")
    messages = tuple(
        message_from_proto(m, f"messages[{i}]") for i, m in enumerate(request.messages)
    )
    return messages, tools_from_proto(request.tools), params_from_proto(request.params)


def tools_from_proto(tools: Sequence[common_pb2.ToolSpec]) -> tuple[ToolSpec, ...]:
    specs = []
    for i, tool in enumerate(tools):
        try:
            specs.append(
                ToolSpec(tool.name, tool.description, json_format.MessageToDict(tool.parameters))
            )
        except ValueError as error:
            raise FieldInvalid(f"tools[{i}]", str(error)) from None
    return tuple(specs)


def params_from_proto(params: common_pb2.ModelParams) -> CompletionParams:
    try:
        return CompletionParams(
            temperature=params.temperature if params.HasField("temperature") else None,
            max_output_tokens=(
                params.max_output_tokens if params.HasField("max_output_tokens") else None
            ),
            stop=tuple(params.stop),
        )
    except ValueError as error:
        raise FieldInvalid("params", str(error)) from None


def cache_from_proto(policy: common_pb2.CachePolicy) -> CacheRequest:
    if not policy.enabled:
        return NO_CACHE  # what nearly every call sends: nothing to read
    return CacheRequest(
        enabled=policy.enabled,
        ttl_seconds=policy.ttl.ToTimedelta().total_seconds(),
        allow_sampled=policy.allow_sampled,
    )


def usage_to_proto(usage: TokenUsage, cache_hit: bool = False) -> common_pb2.Usage:
    return common_pb2.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        cache_write_input_tokens=usage.cache_write_input_tokens,
        total_tokens=usage.total_tokens,
        model_calls=0 if cache_hit else 1,
        cache_hit=cache_hit,
    )


_OUTCOMES = {
    "ok": engine_pb2.ATTEMPT_OUTCOME_OK,
    "rate_limited": engine_pb2.ATTEMPT_OUTCOME_RATE_LIMITED,
    "unavailable": engine_pb2.ATTEMPT_OUTCOME_UNAVAILABLE,
    "timeout": engine_pb2.ATTEMPT_OUTCOME_TIMEOUT,
    "rejected": engine_pb2.ATTEMPT_OUTCOME_REJECTED,
    "breaker_open": engine_pb2.ATTEMPT_OUTCOME_BREAKER_OPEN,
}
_BREAKER_STATES = {
    "closed": engine_pb2.BREAKER_STATE_CLOSED,
    "open": engine_pb2.BREAKER_STATE_OPEN,
    "half_open": engine_pb2.BREAKER_STATE_HALF_OPEN,
}


def attempt_to_proto(attempt: Attempt) -> engine_pb2.Attempt:
    proto = engine_pb2.Attempt(
        deployment=attempt.deployment,
        model=attempt.model,
        outcome=_OUTCOMES[attempt.outcome],
        error=attempt.error,
    )
    proto.duration.FromTimedelta(timedelta(seconds=attempt.seconds))
    return proto


def completion_to_proto(completion: Completion) -> engine_pb2.CompleteResponse:
    return engine_pb2.CompleteResponse(
        message=message_to_proto(completion.message),
        finish_reason=_FINISH_REASONS[completion.finish_reason],
        usage=usage_to_proto(completion.usage, completion.cache_hit),
        model=completion.model,
        provider=completion.provider,
        replayed=completion.replayed,
        attempts=[attempt_to_proto(a) for a in completion.attempts],
        idempotency_hooks=[_HOOKS[hook] for hook in completion.idempotency_hooks],
    )


def chunk_to_proto(chunk: CompletionChunk) -> engine_pb2.CompleteChunk:
    hooks = [_HOOKS[hook] for hook in chunk.idempotency_hooks]
    if not chunk.finish_reason:
        return engine_pb2.CompleteChunk(text_delta=chunk.text_delta, idempotency_hooks=hooks)
    return engine_pb2.CompleteChunk(
        text_delta=chunk.text_delta,
        finish_reason=_FINISH_REASONS[chunk.finish_reason],
        tool_calls=[tool_call_to_proto(call) for call in chunk.tool_calls],
        usage=usage_to_proto(chunk.usage or TokenUsage(0, 0), chunk.cache_hit),
        model=chunk.model,
        provider=chunk.provider,
        attempts=[attempt_to_proto(a) for a in chunk.attempts],
        replayed=chunk.replayed,
        idempotency_hooks=hooks,
    )


def model_to_proto(
    info: ModelInfo, deployments: Sequence[DeploymentStatus] = ()
) -> engine_pb2.Model:
    return engine_pb2.Model(
        name=f"models/{info.id}",
        provider=info.provider,
        context_window=info.context_window,
        supports_tools=info.supports_tools,
        supports_streaming=info.supports_streaming,
        deployments=[
            engine_pb2.ModelDeployment(
                deployment=d.route.provider.name,
                model=d.route.model,
                priority=d.route.priority,
                weight=d.route.weight,
                breaker=_BREAKER_STATES[d.breaker],
            )
            for d in deployments
        ],
    )
