"""The built-in tools: exact answers, and clear refusals of what they cannot do."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from agentrt.common.v1 import common_pb2

from services.kit.tool_schema import check_call, schema_problem
from services.orchestrator.tools.base import ToolFailed, ToolInvocation, ToolOutput
from services.orchestrator.tools.builtin import BuiltinTools
from tests.services.orchestrator.tools.sources import job

NOW = datetime(2030, 6, 1, 12, 30, 5, tzinfo=UTC)


async def call(name: str, **arguments: Any) -> ToolOutput:
    """Runs a built-in tool as the runner would: arguments checked against its schema."""
    tools = BuiltinTools(now=lambda: NOW)
    spec = next(spec for spec in await tools.list_tools() if spec.name == name)
    tool_call = common_pb2.ToolCall(id="c1", name=name, arguments=json.dumps(arguments))
    invocation = ToolInvocation(job(), tool_call, check_call(spec, tool_call))
    return await tools.call(invocation, None)


async def test_every_builtin_tool_has_a_valid_schema_and_is_idempotent() -> None:
    specs = await BuiltinTools().list_tools()

    assert [spec.name for spec in specs] == [
        "calculator",
        "current_time",
        "json_query",
        "text_stats",
        "run_agent",
    ]
    for spec in specs:
        assert schema_problem(spec.parameters) is None, spec.name
        assert spec.idempotent and spec.kind == common_pb2.TOOL_KIND_BUILTIN
        assert len(spec.description) > 80, "the model needs to know when to use it"


@pytest.mark.parametrize(
    ("expression", "answer"),
    [
        ("1 + 2 * 3", "7"),
        ("(3 + 4) * 2 ** 10 / 7", "1024.0"),
        ("2 ^ 100", str(2**100)),
        ("17 % 5 + 17 // 5", "5"),
        ("-(-3)", "3"),
        ("round(sqrt(2), 3)", "1.414"),
        ("max(3, 9, 4) - min(2, 8)", "7"),
        ("factorial(20)", "2432902008176640000"),
        ("floor(pi * 100)", "314"),
        ("0.1 + 0.2", "0.30000000000000004"),
    ],
)
async def test_calculator_computes_exactly(expression: str, answer: str) -> None:
    assert await call("calculator", expression=expression) == ToolOutput(answer)


@pytest.mark.parametrize(
    ("expression", "complaint"),
    [
        ("__import__('os').system('true')", "not allowed"),
        ("open('/etc/passwd')", "not allowed"),
        ("(1).__class__", "not allowed"),
        ("x + 1", "expression: 'x'"),
        ("'a' * 3", "not allowed"),
        ("[1, 2]", "not allowed"),
        ("lambda: 1", "not allowed"),
        ("1 if 1 else 2", "not allowed"),
        ("2 < 3", "not allowed"),
        ("round(1.5, ndigits=1)", "not allowed"),
        ("1 +", "not an arithmetic expression"),
        ("1 / 0", "division by zero"),
        ("9 ** 9 ** 9", "more than 4096 bits"),
        ("factorial(100000)", "up to 500"),
        ("(-8) ** 0.5", "complex"),
        ("10.0 ** 400", "cannot compute"),
        ("1e308 * 10", "not a finite number"),
        ("-" * 101 + "1", "nested too deeply"),
        ("-" * 990 + "1", "nested too deeply"),
        ("sqrt(-1)", "cannot compute"),
    ],
)
async def test_calculator_refuses_what_is_not_bounded_arithmetic(
    expression: str, complaint: str
) -> None:
    with pytest.raises(ToolFailed) as refused:
        await call("calculator", expression=expression)

    assert complaint in refused.value.message
    assert not refused.value.retryable


async def test_current_time_is_utc_and_in_the_named_zone() -> None:
    utc = json.loads((await call("current_time")).text)
    tokyo = json.loads((await call("current_time", timezone="Asia/Tokyo")).text)

    assert utc == {
        "utc": "2030-06-01T12:30:05Z",
        "timezone": "UTC",
        "local": "2030-06-01T12:30:05+00:00",
        "weekday": "Saturday",
        "utc_offset": "+0000",
    }
    assert tokyo["utc"] == "2030-06-01T12:30:05Z"
    assert tokyo["local"] == "2030-06-01T21:30:05+09:00"
    assert tokyo["utc_offset"] == "+0900"


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../../etc/passwd", "America"])
async def test_current_time_refuses_an_unknown_zone(zone: str) -> None:
    with pytest.raises(ToolFailed, match=r"unknown time zone .* IANA name"):
        await call("current_time", timezone=zone)


DOCUMENT = json.dumps(
    {"order": {"items": [{"sku": "a1", "price": 3}, {"sku": "b2", "price": 4.5}]}, "a.b": [1]}
)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("order.items[1].price", 4.5),
        ("order.items[-1].sku", "b2"),
        ('["a.b"][0]', 1),
        ("order.items[0]", {"sku": "a1", "price": 3}),
        ("", json.loads(DOCUMENT)),
    ],
)
async def test_json_query_extracts_the_value_at_a_path(path: str, value: Any) -> None:
    output = await call("json_query", document=DOCUMENT, path=path)

    assert json.loads(output.text) == value


@pytest.mark.parametrize(
    ("document", "path", "complaint"),
    [
        (DOCUMENT, "order.customer", "no key 'customer' at order; its keys are: 'items'"),
        (DOCUMENT, "order.items[2]", "index 2 is out of range at order.items (length 2)"),
        (DOCUMENT, "order.items.sku", "order.items is an array, so it has no key 'sku'"),
        (DOCUMENT, "order..items", "cannot read the path at character 6"),
        ("{not json", "a", "the document is not valid JSON"),
    ],
)
async def test_json_query_says_where_a_path_fails(document: str, path: str, complaint: str) -> None:
    with pytest.raises(ToolFailed) as refused:
        await call("json_query", document=document, path=path)

    assert complaint in refused.value.message


async def test_text_stats_counts_characters_words_and_lines() -> None:
    output = await call("text_stats", text="héllo  world\n\nlast line")

    assert json.loads(output.text) == {
        "characters": 23,
        "characters_without_spaces": 18,
        "words": 4,
        "lines": 3,
        "non_blank_lines": 2,
        "bytes_utf8": 24,
    }
    assert json.loads((await call("text_stats", text="")).text)["lines"] == 0
