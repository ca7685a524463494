"""OpenAI's chat-completions JSON: requests parsed into model calls, chunks and errors written."""

from __future__ import annotations

import pytest
from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2
from agentrt.gateway.v1 import models_pb2

from services.gateway.openai_wire import ChunkWriter, error_body, parse_chat_request
from services.kit.errors import InvalidArgument


def test_a_request_with_tools_and_tool_results_becomes_a_model_call() -> None:
    request, stream, include_usage = parse_chat_request(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
            ],
            "max_completion_tokens": 9,
            "stop": "END",
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "policy": "strict",
        }
    )
    assert (stream, include_usage) == (True, True)
    assert request.policy.name == "strict"
    roles = [m.role for m in request.messages]
    assert roles == [
        common_pb2.ROLE_SYSTEM,
        common_pb2.ROLE_USER,
        common_pb2.ROLE_ASSISTANT,
        common_pb2.ROLE_TOOL,
    ]
    assert request.messages[1].content == "ab"
    assert request.messages[2].tool_calls[0] == common_pb2.ToolCall(
        id="c1", name="f", arguments="{}"
    )
    assert request.messages[3].tool_call_id == "c1"
    assert request.tools[0].name == "f" and request.tools[0].parameters["type"] == "object"
    assert request.params.max_output_tokens == 9
    assert list(request.params.stop) == ["END"]
    assert request.params.HasField("temperature") and request.params.temperature == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": [{"role": "user"}]}, "model"),
        ({"model": "m", "messages": [{"role": "user"}], "stop": 3}, "stop"),
        ({"model": "m", "messages": [{"role": "user"}], "stream": "yes"}, "stream"),
        ({"model": "m", "messages": [{"role": "user"}], "tools": {}}, "tools"),
        ({"model": "m", "messages": [{"role": "user"}], "max_tokens": True}, "max_tokens"),
        ({"model": "m", "messages": [{"role": "user"}], "policy": {"name": "x"}}, "policy"),
    ],
)
def test_a_bad_field_is_named(body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        parse_chat_request(body)
    assert refused.value.metadata["field"] == field


def test_a_stream_is_the_role_the_text_the_calls_the_finish_then_the_usage() -> None:
    writer = ChunkWriter("m", include_usage=True)
    events = [
        *writer.events(models_pb2.CompleteChunk(id="x", text_delta="he")),
        *writer.events(models_pb2.CompleteChunk(id="x", text_delta="y")),
        *writer.events(
            models_pb2.CompleteChunk(
                id="x",
                finish_reason=engine_pb2.FINISH_REASON_TOOL_CALLS,
                tool_calls=[common_pb2.ToolCall(id="c", name="f", arguments="{}")],
                usage=common_pb2.Usage(
                    input_tokens=3,
                    output_tokens=2,
                    cached_input_tokens=1,
                    cache_write_input_tokens=2,
                    cost="0.1",
                ),
                model="m-1",
            )
        ),
    ]
    deltas = [e["choices"][0]["delta"] if e["choices"] else None for e in events]
    assert deltas[:3] == [{"role": "assistant", "content": ""}, {"content": "he"}, {"content": "y"}]
    assert deltas[3]["tool_calls"][0]["index"] == 0  # type: ignore[index]
    assert events[4]["choices"][0]["finish_reason"] == "tool_calls"
    assert events[4]["model"] == "m-1"
    assert events[5]["usage"]["total_tokens"] == 5 and events[5]["usage"]["cost"] == "0.1"
    details = events[5]["usage"]["prompt_tokens_details"]
    assert details == {"cached_tokens": 1, "cache_write_tokens": 2}
    assert {e["id"] for e in events} == {"x"}


@pytest.mark.parametrize(
    ("code", "reason", "status", "kind"),
    [
        ("INVALID_ARGUMENT", "FIELD_INVALID", 400, "invalid_request_error"),
        ("UNAUTHENTICATED", "API_KEY_INVALID", 401, "authentication_error"),
        ("PERMISSION_DENIED", "POLICY_DENIED", 403, "permission_error"),
        ("NOT_FOUND", "MODEL_NOT_FOUND", 404, "not_found_error"),
        ("RESOURCE_EXHAUSTED", "BUDGET_EXCEEDED", 429, "insufficient_quota"),
        ("RESOURCE_EXHAUSTED", "PROVIDER_ERROR", 429, "rate_limit_error"),
        ("UNAVAILABLE", "PROVIDER_ERROR", 503, "api_error"),
        ("INTERNAL", "INTERNAL", 500, "api_error"),
    ],
)
def test_errors_take_the_http_status_of_their_grpc_status(
    code: str, reason: str, status: int, kind: str
) -> None:
    got, body = error_body(code, "why", reason, "f")
    assert got == status
    assert body == {"error": {"message": "why", "type": kind, "param": "f", "code": reason.lower()}}
