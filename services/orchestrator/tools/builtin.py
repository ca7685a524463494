"""The tools every orchestrator serves itself: small, exact, and without network access.

Models are poor at arithmetic, do not know the time, and lose their way in large JSON
documents; these tools do those things exactly. Each returns text (JSON where the answer
has parts) and refuses bad input with a ToolFailed whose message says what to change.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agentrt.common.v1 import common_pb2

from services.orchestrator.tools.base import ToolFailed, ToolInvocation, ToolOutput
from services.orchestrator.workflow.sub_agents import run_agent_spec

SOURCE_NAME = "builtin"

MAX_EXPRESSION_CHARS = 1000
MAX_NESTING = 100
"""Deepest expression calculator evaluates (its walk is recursive)."""
MAX_RESULT_BITS = 4096
"""Largest integer (in bits) calculator works with; bigger results would cost seconds
of CPU in the event loop, which a timeout cannot interrupt."""
MAX_DOCUMENT_CHARS = 1_000_000
MAX_TEXT_CHARS = 1_000_000


@dataclass(frozen=True)
class BuiltinTool:
    """One built-in tool: what the model is shown, and the function that answers."""

    spec: common_pb2.ToolSpec
    run: Callable[[Mapping[str, Any]], str]


def _spec(name: str, description: str, parameters: dict[str, Any]) -> common_pb2.ToolSpec:
    """A built-in tool's spec. All of them are idempotent: they have no side effects, so
    running a call twice is as good as running it once."""
    spec = common_pb2.ToolSpec(
        name=name,
        description=description,
        kind=common_pb2.TOOL_KIND_BUILTIN,
        idempotent=True,
    )
    spec.parameters.update(parameters)
    return spec


# calculator


_BINARY: Mapping[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: Mapping[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_FUNCTIONS: Mapping[str, Callable[..., Any]] = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "ln": math.log,
    "log": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "floor": math.floor,
    "ceil": math.ceil,
    "factorial": math.factorial,
}
_CONSTANTS: Mapping[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression, computed by walking its syntax tree: only
    numbers, + - * / // % **, parentheses, the functions in _FUNCTIONS and the constants
    pi, e, tau are allowed; anything else (names, attributes, strings, calls of other
    functions) is refused. Never `eval`: that would run any Python the model writes."""
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
        return _evaluate(tree.body)
    except SyntaxError as error:
        raise ToolFailed(f"not an arithmetic expression: {error.msg}") from None
    except (RecursionError, MemoryError):
        raise ToolFailed("the expression is nested too deeply") from None
    except ZeroDivisionError:
        raise ToolFailed("division by zero") from None
    except (ValueError, OverflowError, TypeError) as error:
        raise ToolFailed(f"cannot compute this: {error}") from None


def _evaluate(node: ast.expr, depth: int = 0) -> int | float:
    if depth > MAX_NESTING:
        raise ToolFailed("the expression is nested too deeply")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _bounded(_UNARY[type(node.op)](_evaluate(node.operand, depth + 1)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left, depth + 1), _evaluate(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _bounded(_BINARY[type(node.op)](left, right))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        arguments = [_evaluate(argument, depth + 1) for argument in node.args]
        if node.func.id == "factorial" and arguments and abs(arguments[0]) > 500:
            raise ValueError("factorial is limited to numbers up to 500")
        return _bounded(_FUNCTIONS[node.func.id](*arguments))
    raise ToolFailed(f"not allowed in an arithmetic expression: {ast.unparse(node)[:80]!r}")


def _check_power(base: int | float, exponent: int | float) -> None:
    """Refuses integer powers whose result would exceed MAX_RESULT_BITS before computing
    them (9**9**9 would otherwise run for minutes)."""
    if not (isinstance(base, int) and isinstance(exponent, int)) or abs(base) <= 1:
        return
    if exponent * math.log2(abs(base)) > MAX_RESULT_BITS:
        raise ValueError(f"the result would have more than {MAX_RESULT_BITS} bits")


def _bounded(value: Any) -> int | float:
    if isinstance(value, complex):
        raise ValueError("the result is a complex number")
    if not isinstance(value, int | float):
        raise ValueError("the result is not a number")
    if isinstance(value, int) and value.bit_length() > MAX_RESULT_BITS:
        raise ValueError(f"the result would have more than {MAX_RESULT_BITS} bits")
    return value


def _calculator(arguments: Mapping[str, Any]) -> str:
    value = calculate(arguments["expression"])
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolFailed("the result is not a finite number")
    return repr(value) if isinstance(value, float) else str(value)


CALCULATOR = BuiltinTool(
    _spec(
        "calculator",
        "Evaluates an arithmetic expression exactly and returns the number. Use it for "
        "any arithmetic instead of computing in your head. Supports numbers, + - * / "
        "// (floor division) % (remainder) ** or ^ (power), parentheses, the constants "
        "pi, e, tau and the functions abs, round, min, max, sqrt, exp, ln, log, log10, "
        "log2, sin, cos, tan, asin, acos, atan (radians), floor, ceil, factorial. "
        "Integers are exact at any size up to 4096 bits. Example: "
        '{"expression": "(3 + 4) * 2 ** 10 / 7"}.',
        {
            "type": "object",
            "properties": {
                "expression": {
                    "type": "string",
                    "description": "The expression, e.g. 'sqrt(2) * 10' or '17 % 5'.",
                    "minLength": 1,
                    "maxLength": MAX_EXPRESSION_CHARS,
                }
            },
            "required": ["expression"],
            "additionalProperties": False,
        },
    ),
    _calculator,
)


# current_time


def _zone(name: str) -> tzinfo:
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ToolFailed(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/Paris' or "
            "'America/New_York', or 'UTC'"
        ) from None


def _current_time(arguments: Mapping[str, Any], now: Callable[[], datetime]) -> str:
    zone_name = arguments.get("timezone", "UTC")
    zone = _zone(zone_name)
    utc = now().astimezone(UTC)
    local = utc.astimezone(zone)
    answer = {
        "utc": utc.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "timezone": zone_name,
        "local": local.isoformat(timespec="seconds"),
        "weekday": local.strftime("%A"),
        "utc_offset": local.strftime("%z"),
    }
    return json.dumps(answer)


def _current_time_tool(now: Callable[[], datetime]) -> BuiltinTool:
    return BuiltinTool(
        _spec(
            "current_time",
            "Returns the current date and time: in UTC, and in a time zone if you name "
            "one. Use it whenever the answer depends on today's date or the time. The "
            'answer is JSON: {"utc": ISO-8601 in UTC, "timezone", "local": ISO-8601 '
            'with offset, "weekday", "utc_offset"}.',
            {
                "type": "object",
                "properties": {
                    "timezone": {
                        "type": "string",
                        "description": "An IANA time zone such as 'Asia/Tokyo'; default 'UTC'.",
                        "minLength": 1,
                        "maxLength": 64,
                    }
                },
                "additionalProperties": False,
            },
        ),
        lambda arguments: _current_time(arguments, now),
    )


# json_query

_PATH_PART = re.compile(r"""\.?([^.\[\]]+)|\[(-?\d+)\]|\[(?:"([^"]*)"|'([^']*)')\]""")


def parse_path(path: str) -> list[str | int]:
    """The steps of a path such as `a.b[0].c` or `["key.with.dots"][-1]`: object keys as
    strings, array indexes as ints. Raises ToolFailed for a path it cannot read."""
    steps: list[str | int] = []
    position = 0
    while position < len(path):
        match = _PATH_PART.match(path, position)
        if match is None or (match.group(1) is not None and position and path[position] != "."):
            raise ToolFailed(
                f"cannot read the path at character {position + 1}: {path[position:][:40]!r}; "
                "write keys with dots (a.b), indexes in brackets ([0], [-1]) and keys with "
                'special characters quoted (["a.b"])'
            )
        key, index, double_quoted, single_quoted = match.groups()
        if index is not None:
            steps.append(int(index))
        else:
            quoted = double_quoted if double_quoted is not None else single_quoted
            steps.append(key if key is not None else quoted)
        position = match.end()
    return steps


def query(document: Any, steps: Sequence[str | int]) -> Any:
    """The value at `steps` in `document`; ToolFailed names the first step that fails."""
    value = document
    for depth, step in enumerate(steps):
        where = _path_text(steps[:depth]) or "the document"
        if isinstance(step, int) and isinstance(value, list):
            if not -len(value) <= step < len(value):
                raise ToolFailed(f"index {step} is out of range at {where} (length {len(value)})")
            value = value[step]
        elif isinstance(value, dict) and str(step) in value:
            value = value[str(step)]
        elif isinstance(value, dict):
            keys = ", ".join(repr(key) for key in list(value)[:20])
            raise ToolFailed(f"no key {str(step)!r} at {where}; its keys are: {keys}")
        else:
            raise ToolFailed(f"{where} is {_kind(value)}, so it has no {_step_text(step)}")
    return value


def _path_text(steps: Sequence[str | int]) -> str:
    text = ""
    for step in steps:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
    return text


def _step_text(step: str | int) -> str:
    return f"index {step}" if isinstance(step, int) else f"key {step!r}"


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a boolean" if isinstance(value, bool) else "a number"


def _json_query(arguments: Mapping[str, Any]) -> str:
    try:
        document = json.loads(arguments["document"])
    except json.JSONDecodeError as error:
        raise ToolFailed(
            f"the document is not valid JSON: {error.msg} at line {error.lineno} column "
            f"{error.colno}"
        ) from None
    value = query(document, parse_path(arguments.get("path", "")))
    return json.dumps(value, ensure_ascii=False)


JSON_QUERY = BuiltinTool(
    _spec(
        "json_query",
        "Extracts one value from a JSON document by its path and returns it as JSON. "
        "Use it to read a field out of a large or nested document exactly. Path syntax: "
        "object keys separated by dots, array indexes in brackets (negative counts from "
        'the end), keys containing dots or brackets quoted in brackets: "items[0].price", '
        '"users[-1].name", \'["a.b"].c\'. An empty path returns the whole document. If a '
        "step does not exist the error says where and which keys there are.",
        {
            "type": "object",
            "properties": {
                "document": {
                    "type": "string",
                    "description": "The JSON document, as text.",
                    "maxLength": MAX_DOCUMENT_CHARS,
                },
                "path": {
                    "type": "string",
                    "description": "Where the value is, e.g. 'data.items[2].id'; default "
                    "'' (the whole document).",
                    "maxLength": 1000,
                },
            },
            "required": ["document"],
            "additionalProperties": False,
        },
    ),
    _json_query,
)


# text_stats


def text_stats(text: str) -> dict[str, int]:
    """Counts of `text`: characters (Unicode code points), words (runs of non-space
    characters), lines (a final line without a newline counts; empty text has none),
    UTF-8 bytes and non-blank lines."""
    lines = text.splitlines()
    return {
        "characters": len(text),
        "characters_without_spaces": sum(1 for char in text if not char.isspace()),
        "words": len(text.split()),
        "lines": len(lines),
        "non_blank_lines": sum(1 for line in lines if line.strip()),
        "bytes_utf8": len(text.encode()),
    }


TEXT_STATS = BuiltinTool(
    _spec(
        "text_stats",
        "Counts the characters, words and lines of a text exactly. Use it whenever a "
        "length matters (limits, word counts) instead of estimating. Returns JSON with "
        "characters, characters_without_spaces, words (separated by whitespace), lines, "
        "non_blank_lines and bytes_utf8.",
        {
            "type": "object",
            "properties": {
                "text": {
                    "type": "string",
                    "description": "The text to count.",
                    "maxLength": MAX_TEXT_CHARS,
                }
            },
            "required": ["text"],
            "additionalProperties": False,
        },
    ),
    lambda arguments: json.dumps(text_stats(arguments["text"])),
)


def _run_agent_elsewhere(arguments: Mapping[str, Any]) -> str:
    raise ToolFailed("run_agent starts a child job, which only the agent loop can do")


RUN_AGENT_TOOL = BuiltinTool(run_agent_spec(), _run_agent_elsewhere)
"""Offered like the others; the agent loop answers its calls (services.orchestrator.
workflow.sub_agents), since the parent waits on the child job it starts."""


class BuiltinTools:
    """The ToolSource of the built-in tools: calculator, current_time, json_query,
    text_stats and run_agent. They run in the worker's event loop, are quick and bounded, so the
    `timeout` of a call is left to the middleware."""

    def __init__(self, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        tools = [CALCULATOR, _current_time_tool(now), JSON_QUERY, TEXT_STATS, RUN_AGENT_TOOL]
        self._tools = {tool.spec.name: tool for tool in tools}

    @property
    def name(self) -> str:
        return SOURCE_NAME

    async def list_tools(self) -> Sequence[common_pb2.ToolSpec]:
        return [tool.spec for tool in self._tools.values()]

    async def call(self, invocation: ToolInvocation, timeout: float | None) -> ToolOutput:
        tool = self._tools.get(invocation.call.name)
        if tool is None:
            raise ToolFailed(f"no built-in tool is called {invocation.call.name!r}")
        return ToolOutput(tool.run(invocation.arguments))
