"""Tool arguments checked against the tool's JSON Schema, with messages the model can act on.

A model writes tool arguments as JSON text and gets them wrong in ordinary ways: text
that is not JSON, a missing field, a string where a number belongs. Each of those is
answered to the model as the tool's output ("argument 'n': 'x' is not of type
'integer'"), so it can correct the call on its next turn; none of them fails the job.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema
from agentrt.common.v1 import common_pb2
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

DEFAULT_SCHEMA: Mapping[str, Any] = {"type": "object"}
"""The schema of a tool that declares none: any JSON object."""

MAX_PROBLEMS = 5
"""Most schema violations one message lists; the model fixes them a few at a time."""


class InvalidArguments(Exception):
    """A call's arguments are not JSON, or not valid against the tool's schema.
    `message` names the field and what is wrong, for the model."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def schema_of(parameters: Struct) -> dict[str, Any]:
    """The JSON Schema in a ToolSpec's `parameters`, as plain Python; an empty Struct is
    DEFAULT_SCHEMA. Whole numbers come back as ints (a Struct stores every number as a
    double) so that keywords such as maxLength read as they were written."""
    if not parameters.fields:
        return dict(DEFAULT_SCHEMA)
    schema: dict[str, Any] = _whole_numbers_as_ints(json_format.MessageToDict(parameters))
    return schema


def schema_problem(parameters: Struct) -> str | None:
    """Why `parameters` is not a usable argument schema (not a valid JSON Schema, or
    not one of an object), or None when it is."""
    schema = schema_of(parameters)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        where = _path(error.absolute_path)
        return f"not a valid JSON Schema: {f'at {where!r}: ' if where else ''}{error.message}"
    if schema.get("type", "object") != "object":
        return "must describe a JSON object (type 'object'), as tool arguments are one"
    return None


def parse_arguments(text: str) -> dict[str, Any]:
    """The arguments JSON text as a dict; empty text is {} (models omit the arguments of
    a tool that takes none). Raises InvalidArguments."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidArguments(
            f"the arguments are not valid JSON: {error.msg} at line {error.lineno} "
            f"column {error.colno}; send one JSON object"
        ) from None
    if not isinstance(value, dict):
        raise InvalidArguments(
            f"the arguments must be a JSON object, not {_json_type(value)}; "
            'send the fields by name, e.g. {"field": value}'
        )
    return value


def validate_arguments(spec: common_pb2.ToolSpec, arguments: Mapping[str, Any]) -> None:
    """Raises InvalidArguments listing (up to MAX_PROBLEMS of) what in `arguments` the
    tool's schema does not allow. A tool whose own schema is broken is reported as such:
    the model cannot fix that by changing its call."""
    schema = schema_of(spec.parameters)
    validator_class = jsonschema.validators.validator_for(schema)
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError:
        raise InvalidArguments(
            f"tool {spec.name!r} has an invalid parameter schema and cannot be called"
        ) from None
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(arguments), key=_error_order)
    if errors:
        raise InvalidArguments(_message(spec.name, errors))


def check_call(spec: common_pb2.ToolSpec, call: common_pb2.ToolCall) -> dict[str, Any]:
    """The call's arguments, parsed and valid against the spec's schema; raises
    InvalidArguments."""
    arguments = parse_arguments(call.arguments)
    validate_arguments(spec, arguments)
    return arguments


def _message(tool: str, errors: list[jsonschema.ValidationError]) -> str:
    problems = [_problem(error) for error in errors]
    shown = "; ".join(problems[:MAX_PROBLEMS])
    more = len(problems) - MAX_PROBLEMS
    suffix = f" (and {more} more)" if more > 0 else ""
    return f"invalid arguments for tool {tool!r}: {shown}{suffix}"


def _problem(error: jsonschema.ValidationError) -> str:
    """ "argument 'items[2].name': <what is wrong>", or just what is wrong when it is
    about the whole object (e.g. a required field is missing)."""
    where = _path(error.absolute_path)
    return f"argument {where!r}: {error.message}" if where else error.message


def _path(path: Iterable[str | int]) -> str:
    """A path as the model would write it: items[2].name."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _error_order(error: jsonschema.ValidationError) -> tuple[str, str]:
    """Errors in a stable order (by where, then what) so messages do not vary."""
    return (json.dumps(list(error.absolute_path)), error.message)


def _json_type(value: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _whole_numbers_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers_as_ints(item) for item in value]
    return value
