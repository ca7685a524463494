"""OpenAI's chat-completions JSON, as the gateway serves it: requests in, answers and errors out.

Free of I/O: the HTTP handlers (services/gateway/openai_http.py) parse a body with
`parse_chat_request` and write what `completion_body`, `ChunkWriter` and `error_body` make.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2
from agentrt.gateway.v1 import models_pb2
from google.protobuf import json_format, struct_pb2

from services.kit.errors import FieldInvalid, FieldRequired

_ROLES = {
    "system": common_pb2.ROLE_SYSTEM,
    "developer": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
    "tool": common_pb2.ROLE_TOOL,
}
FINISH_REASONS = {
    engine_pb2.FINISH_REASON_STOP: "stop",
    engine_pb2.FINISH_REASON_LENGTH: "length",
    engine_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
    engine_pb2.FINISH_REASON_CONTENT_FILTER: "content_filter",
}

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
"""The HTTP status of each gRPC status (Google's own mapping); others are 500."""

_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def parse_chat_request(body: object) -> tuple[models_pb2.CompleteRequest, bool, bool]:
    """The model call a /v1/chat/completions body asks for, whether to stream, and whether
    a stream ends with a usage chunk (`stream_options.include_usage`). Raises
    InvalidArgument naming the field that is wrong."""
    if not isinstance(body, Mapping):
        raise FieldInvalid("body", "a JSON object")
    model = body.get("model")
    if not model:
        raise FieldRequired("model")
    if not isinstance(model, str):
        raise FieldInvalid("model", "a string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise FieldRequired("messages")
    request = models_pb2.CompleteRequest(
        model=model,
        messages=[_message(raw, f"messages[{i}]") for i, raw in enumerate(messages)],
        tools=[_tool(raw, f"tools[{i}]") for i, raw in enumerate(_list(body, "tools"))],
    )
    _params(body, request.params)
    request.policy.name = _policy_set(body)
    n = body.get("n", 1)
    if n not in (None, 1):
        raise FieldInvalid("n", "only 1 choice is served")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise FieldInvalid("stream", "true or false")
    options = body.get("stream_options") or {}
    if not isinstance(options, Mapping):
        raise FieldInvalid("stream_options", "an object")
    return request, stream, bool(options.get("include_usage"))


def _policy_set(body: Mapping[str, Any]) -> str:
    """The policy set a call names in agentrt's extension field `policy` (its id, as
    ModelService's `policy.name`; the OpenAI SDKs send it with `extra_body`); empty for
    the default set. An id that names no set is refused later, as over gRPC (NOT_FOUND)."""
    policy = body.get("policy")
    if policy is None:
        return ""
    if not isinstance(policy, str):
        raise FieldInvalid("policy", "a policy set id, a string")
    return policy


def _list(body: Mapping[str, Any], field: str) -> list[Any]:
    value = body.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise FieldInvalid(field, "an array")
    return value


def _message(raw: object, field: str) -> common_pb2.Message:
    if not isinstance(raw, Mapping):
        raise FieldInvalid(field, "an object with a role")
    role = _ROLES.get(str(raw.get("role")))
    if role is None:
        raise FieldInvalid(f"{field}.role", f"one of {', '.join(_ROLES)}")
    message = common_pb2.Message(role=role, content=_content(raw.get("content"), field))
    if isinstance(raw.get("name"), str):
        message.name = raw["name"]
    if role == common_pb2.ROLE_TOOL:
        message.tool_call_id = str(raw.get("tool_call_id") or "")
    for i, call in enumerate(raw.get("tool_calls") or ()):
        at = f"{field}.tool_calls[{i}]"
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not function.get("name"):
            raise FieldInvalid(at, "a function tool call with a name")
        arguments = function.get("arguments")
        message.tool_calls.append(
            common_pb2.ToolCall(
                id=str(call.get("id") or ""),
                name=str(function["name"]),
                arguments=arguments if isinstance(arguments, str) else json.dumps(arguments),
            )
        )
    return message


def _content(content: object, field: str) -> str:
    """Text content: a string, or text parts (joined); other parts are not served."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise FieldInvalid(f"{field}.content", "a string or an array of text parts")
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") != "text":
            raise FieldInvalid(f"{field}.content[{i}]", "only text parts are served")
        texts.append(str(part.get("text") or ""))
    return "".join(texts)


def _tool(raw: object, field: str) -> common_pb2.ToolSpec:
    function = raw.get("function") if isinstance(raw, Mapping) else None
    if not isinstance(raw, Mapping) or raw.get("type", "function") != "function":
        raise FieldInvalid(f"{field}.type", "only function tools are served")
    if not isinstance(function, Mapping) or not function.get("name"):
        raise FieldRequired(f"{field}.function.name")
    spec = common_pb2.ToolSpec(
        name=str(function["name"]), description=str(function.get("description") or "")
    )
    parameters = function.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, Mapping):
            raise FieldInvalid(f"{field}.function.parameters", "a JSON Schema object")
        spec.parameters.CopyFrom(json_format.ParseDict(dict(parameters), struct_pb2.Struct()))
    return spec


def _params(body: Mapping[str, Any], params: common_pb2.ModelParams) -> None:
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise FieldInvalid("temperature", "a number")
        params.temperature = float(temperature)
    for field in ("max_completion_tokens", "max_tokens"):
        limit = body.get(field)
        if limit is None:
            continue
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise FieldInvalid(field, "a positive integer")
        params.max_output_tokens = limit
        break
    stop = body.get("stop")
    if isinstance(stop, str):
        params.stop.append(stop)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        params.stop.extend(stop)
    elif stop is not None:
        raise FieldInvalid("stop", "a string or an array of strings")


def _tool_calls(calls: Any, indexed: bool) -> list[dict[str, Any]]:
    wire = []
    for index, call in enumerate(calls):
        item: dict[str, Any] = {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        if indexed:
            item["index"] = index
        wire.append(item)
    return wire


def usage_body(usage: common_pb2.Usage) -> dict[str, Any]:
    """OpenAI's usage object, with the call's cost (a decimal string, as the ledger
    recorded it; empty when the model has no price) and its prompt-cache writes where
    OpenRouter puts them (OpenAI's usage has no place for them)."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_input_tokens,
            "cache_write_tokens": usage.cache_write_input_tokens,
        },
        "cost": usage.cost,
    }


def completion_body(answer: models_pb2.CompleteResponse) -> dict[str, Any]:
    """A `chat.completion` object."""
    message: dict[str, Any] = {"role": "assistant", "content": answer.message.content or None}
    if answer.message.tool_calls:
        message["tool_calls"] = _tool_calls(answer.message.tool_calls, indexed=False)
    return {
        "id": answer.id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": FINISH_REASONS.get(answer.finish_reason, "stop"),
                "logprobs": None,
            }
        ],
        "usage": usage_body(answer.usage),
    }


class ChunkWriter:
    """The `chat.completion.chunk` objects of one stream, from the model API's chunks."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self._model = model
        self._include_usage = include_usage
        self._created = int(time.time())
        self._started = False

    def events(self, chunk: models_pb2.CompleteChunk) -> list[dict[str, Any]]:
        """The objects to send for `chunk`: the role first, then the text; on the last
        chunk the tool calls, the finish reason and (when asked for) the usage."""
        out = []
        if not self._started:
            self._started = True
            out.append(self._chunk(chunk.id, {"role": "assistant", "content": ""}))
        if chunk.text_delta:
            out.append(self._chunk(chunk.id, {"content": chunk.text_delta}))
        if chunk.tool_calls:
            out.append(
                self._chunk(chunk.id, {"tool_calls": _tool_calls(chunk.tool_calls, indexed=True)})
            )
        if chunk.finish_reason != engine_pb2.FINISH_REASON_UNSPECIFIED:
            if chunk.model:
                self._model = chunk.model
            out.append(self._chunk(chunk.id, {}, FINISH_REASONS.get(chunk.finish_reason, "stop")))
            if self._include_usage:
                last = self._chunk(chunk.id, {})
                last["choices"] = []
                last["usage"] = usage_body(chunk.usage)
                out.append(last)
        return out

    def _chunk(
        self, call_id: str, delta: dict[str, Any], finish: str | None = None
    ) -> dict[str, Any]:
        return {
            "id": call_id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }


def error_body(code: str, message: str, reason: str, field: str = "") -> tuple[int, dict[str, Any]]:
    """The HTTP status and OpenAI-shaped error object of a failure with gRPC status
    `code` (by name) and ErrorInfo `reason`; `error.code` is the reason in lowercase."""
    status = HTTP_STATUS.get(code, 500)
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    if reason == "BUDGET_EXCEEDED":
        kind = "insufficient_quota"
    return status, {
        "error": {
            "message": message,
            "type": kind,
            "param": field or None,
            "code": reason.lower() or None,
        }
    }


def models_body(models: list[models_pb2.Model]) -> dict[str, Any]:
    """The `list` object of GET /v1/models."""
    return {"object": "list", "data": [model_body(model) for model in models]}


def model_body(model: models_pb2.Model) -> dict[str, Any]:
    return {
        "id": model.name.removeprefix("models/"),
        "object": "model",
        "created": 0,
        "owned_by": "agentrt",
    }
