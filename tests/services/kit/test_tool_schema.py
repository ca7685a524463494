"""Argument checks: what the model is told when its call does not fit the tool's schema."""

from __future__ import annotations

from typing import Any

import pytest
from agentrt.common.v1 import common_pb2

from services.kit.tool_schema import (
    InvalidArguments,
    check_call,
    schema_of,
    schema_problem,
)
from tests.services.orchestrator.tools.sources import tool

ORDER = tool(
    "place_order",
    {
        "type": "object",
        "properties": {
            "sku": {"type": "string", "pattern": "^[a-z][0-9]+$"},
            "quantity": {"type": "integer", "minimum": 1, "maximum": 10},
            "express": {"type": "boolean"},
            "lines": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"note": {"type": "string", "maxLength": 5}},
                },
            },
        },
        "required": ["sku", "quantity"],
        "additionalProperties": False,
    },
)


def problem(arguments: str, spec: common_pb2.ToolSpec = ORDER) -> str:
    with pytest.raises(InvalidArguments) as raised:
        check_call(spec, common_pb2.ToolCall(id="c1", name=spec.name, arguments=arguments))
    return raised.value.message


def test_valid_arguments_come_back_parsed() -> None:
    call = common_pb2.ToolCall(name="place_order", arguments='{"sku": "a1", "quantity": 2}')

    assert check_call(ORDER, call) == {"sku": "a1", "quantity": 2}


def test_empty_arguments_are_an_empty_object() -> None:
    assert check_call(tool("ping"), common_pb2.ToolCall(name="ping", arguments=" ")) == {}
    assert "'sku' is a required property" in problem("")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            '{"sku": "a1", "quantity": 2',
            "the arguments are not valid JSON: Expecting ',' delimiter at line 1 column 28",
        ),
        ("[1, 2]", "the arguments must be a JSON object, not an array"),
        ('"a1"', "the arguments must be a JSON object, not a string"),
        (
            '{"sku": "a1"}',
            "invalid arguments for tool 'place_order': 'quantity' is a required property",
        ),
        (
            '{"sku": "a1", "quantity": "two"}',
            "invalid arguments for tool 'place_order': argument 'quantity': 'two' is not of "
            "type 'integer'",
        ),
        (
            '{"sku": "a1", "quantity": 11}',
            "argument 'quantity': 11 is greater than the maximum of 10",
        ),
        ('{"sku": "A1", "quantity": 1}', "argument 'sku': 'A1' does not match '^[a-z][0-9]+$'"),
        (
            '{"sku": "a1", "quantity": 1, "lines": [{"note": "ok"}, {"note": "too long"}]}',
            "argument 'lines[1].note': 'too long' is too long",
        ),
        (
            '{"sku": "a1", "quantity": 1, "colour": "red"}',
            "Additional properties are not allowed ('colour' was unexpected)",
        ),
    ],
)
def test_each_problem_names_the_field_and_what_is_wrong(arguments: str, message: str) -> None:
    assert message in problem(arguments)


def test_several_problems_are_listed_in_a_stable_order_up_to_five() -> None:
    many = tool("many", {"type": "object", "required": [f"f{n}" for n in range(7)]})

    message = problem("{}", many)

    assert message == (
        "invalid arguments for tool 'many': 'f0' is a required property; 'f1' is a required "
        "property; 'f2' is a required property; 'f3' is a required property; 'f4' is a "
        "required property (and 2 more)"
    )
    assert problem('{"sku": 1, "quantity": 0}') == (
        "invalid arguments for tool 'place_order': argument 'quantity': 0 is less than the "
        "minimum of 1; argument 'sku': 1 is not of type 'string'"
    )


def test_a_tool_with_a_broken_schema_cannot_be_called() -> None:
    broken = tool("broken", {"type": "object", "properties": {"a": {"type": "no-such-type"}}})

    assert problem("{}", broken) == (
        "tool 'broken' has an invalid parameter schema and cannot be called"
    )


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        (
            {"type": "object", "required": "a"},
            "not a valid JSON Schema: at 'required': 'a' is not of type 'array'",
        ),
        ({"type": "object", "properties": {"a": {"minimum": "1"}}}, "properties.a.minimum"),
        ({"type": "array"}, "must describe a JSON object"),
    ],
)
def test_schema_problems_are_explained(schema: dict[str, Any], why: str) -> None:
    found = schema_problem(tool("t", schema).parameters)

    assert found is not None and why in found


def test_whole_numbers_in_a_schema_read_as_integers() -> None:
    spec = tool("t", {"type": "object", "properties": {"s": {"maxLength": 3}}})

    assert schema_of(spec.parameters) == {
        "type": "object",
        "properties": {"s": {"maxLength": 3}},
    }
    assert schema_of(common_pb2.ToolSpec().parameters) == {"type": "object"}
