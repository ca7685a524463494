"""The ToolRunner: resolving a job's tools among the sources, and running their calls."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from agentrt.common.v1 import common_pb2

from services.orchestrator.guards import BudgetExceeded
from services.orchestrator.tools.base import ToolInvocation, ToolOutput, ToolSource
from services.orchestrator.tools.builtin import BuiltinTools
from services.orchestrator.tools.middleware import ToolDefaults
from services.orchestrator.tools.runner import (
    ToolRunner,
    UnknownTool,
    find_offered,
    kind_of,
    static_sources,
)
from tests.services.orchestrator.tools.sources import (
    BrokenListing,
    Hanging,
    ScriptedSource,
    failing,
    job,
    tool,
)

Kind = common_pb2.ToolKind
SEARCH = tool(
    "search",
    {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    idempotent=True,
)


def wanted(name: str, kind: Kind.ValueType = Kind.TOOL_KIND_UNSPECIFIED) -> common_pb2.ToolSpec:
    """A tool as a caller names it in a JobSpec."""
    return common_pb2.ToolSpec(name=name, kind=kind)


def client_tool() -> common_pb2.ToolSpec:
    spec = tool("pick_file", {"type": "object", "properties": {"glob": {"type": "string"}}})
    spec.kind = Kind.TOOL_KIND_CLIENT
    return spec


def call(name: str, **arguments: object) -> common_pb2.ToolCall:
    return common_pb2.ToolCall(id="call-7", name=name, arguments=json.dumps(arguments))


class Sources:
    """A provider whose sources a test changes while the runner lives."""

    def __init__(self, *sources: ToolSource) -> None:
        self.sources = list(sources)

    async def __call__(self) -> Sequence[ToolSource]:
        return self.sources


@pytest.fixture
def plugin() -> ScriptedSource:
    return ScriptedSource("plugins/web", [SEARCH, tool("calculator")])


@pytest.fixture
def runner(plugin: ScriptedSource) -> ToolRunner:
    return ToolRunner(Sources(plugin, BuiltinTools()), ToolDefaults(backoff=0))


async def test_offer_resolves_each_tool_from_its_source(runner: ToolRunner) -> None:
    offered = await runner.offer(
        job(
            wanted("search"),
            wanted("calculator"),
            wanted("text_stats", Kind.TOOL_KIND_BUILTIN),
            client_tool(),
        )
    )

    assert [(spec.name, spec.kind) for spec in offered] == [
        ("search", Kind.TOOL_KIND_PLUGIN),
        ("calculator", Kind.TOOL_KIND_BUILTIN),
        ("text_stats", Kind.TOOL_KIND_BUILTIN),
        ("pick_file", Kind.TOOL_KIND_CLIENT),
    ]
    assert offered[0].parameters == SEARCH.parameters and offered[0].idempotent
    assert offered[0].description == "the search tool"
    assert "arithmetic" in offered[1].description, "the built-in one comes first"
    assert offered[3] == client_tool(), "client tools are passed through as given"


async def test_a_kind_picks_among_sources_serving_the_same_name(
    runner: ToolRunner, plugin: ScriptedSource
) -> None:
    [offered] = await runner.offer(job(wanted("calculator", Kind.TOOL_KIND_PLUGIN)))
    output = await runner.run(
        job(wanted("calculator", Kind.TOOL_KIND_PLUGIN)), call("calculator"), 0
    )

    assert offered.kind == Kind.TOOL_KIND_PLUGIN and offered.description == "the calculator tool"
    assert output == ToolOutput("calculator {}") and len(plugin.calls) == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            wanted("teleport"),
            "spec.tools[1] names tool 'teleport', which no built-in tool or registered plugin "
            "serves",
        ),
        (
            wanted("search", Kind.TOOL_KIND_BUILTIN),
            "spec.tools[1] names tool 'search', which is not a builtin tool (it is served by "
            "plugins/web)",
        ),
        (
            wanted("json_query", Kind.TOOL_KIND_PLUGIN),
            "spec.tools[1] names tool 'json_query', which is not a plugin tool (it is served by "
            "builtin)",
        ),
    ],
)
async def test_a_tool_no_source_serves_is_an_unknown_tool(
    runner: ToolRunner, spec: common_pb2.ToolSpec, message: str
) -> None:
    with pytest.raises(UnknownTool) as raised:
        await runner.offer(job(wanted("calculator"), spec))

    failure = raised.value.failure
    assert failure.reason == common_pb2.ERROR_REASON_TOOL_ERROR
    assert failure.message == message
    assert failure.metadata["field"] == "spec.tools[1]"
    assert failure.metadata["tool"] == spec.name


async def test_sources_are_asked_again_so_later_plugins_are_seen() -> None:
    sources = Sources(BuiltinTools())
    runner = ToolRunner(sources)
    the_job = job(wanted("search"))
    with pytest.raises(UnknownTool):
        await runner.offer(the_job)

    sources.sources.append(ScriptedSource("plugins/web", [SEARCH]))

    assert [spec.name for spec in await runner.offer(the_job)] == ["search"]
    assert not (await runner.run(the_job, call("search", q="x"), 0)).is_error


async def test_a_source_that_cannot_list_is_left_out() -> None:
    runner = ToolRunner(static_sources(BrokenListing("plugins/down", [SEARCH]), BuiltinTools()))

    assert len(await runner.offer(job(wanted("calculator")))) == 1
    with pytest.raises(UnknownTool):
        await runner.offer(job(wanted("search")))


async def test_kind_of_tells_client_tools_from_server_tools(runner: ToolRunner) -> None:
    offered = await runner.offer(job(wanted("search"), wanted("text_stats"), client_tool()))

    assert kind_of(offered, "search") == Kind.TOOL_KIND_PLUGIN
    assert kind_of(offered, "text_stats") == Kind.TOOL_KIND_BUILTIN
    assert kind_of(offered, "pick_file") == Kind.TOOL_KIND_CLIENT
    assert kind_of(offered, "nope") == Kind.TOOL_KIND_UNSPECIFIED
    assert runner.kind_of(offered, "pick_file") == Kind.TOOL_KIND_CLIENT
    assert find_offered(offered, "nope") is None


async def test_run_validates_then_calls_the_owning_source(
    runner: ToolRunner, plugin: ScriptedSource
) -> None:
    the_job = job(wanted("search"), wanted("calculator", Kind.TOOL_KIND_BUILTIN))

    found = await runner.run(the_job, call("search", q="otters"), 0)
    computed = await runner.run(the_job, call("calculator", expression="6 * 7"), 1)

    assert found == ToolOutput("search {'q': 'otters'}")
    assert computed == ToolOutput("42")
    [(invocation, timeout)] = plugin.calls
    assert invocation.arguments == {"q": "otters"} and invocation.job is the_job
    assert timeout == 30.0, "the default call timeout reaches the source"


@pytest.mark.parametrize(
    ("tool_call", "message"),
    [
        (
            common_pb2.ToolCall(id="c", name="search", arguments="{q:"),
            "the arguments are not valid JSON",
        ),
        (call("search", query="x"), "invalid arguments for tool 'search': 'q' is a required"),
        (
            call("teleport"),
            "no such tool: 'teleport'; the tools you may call are: 'search', 'pick_file'",
        ),
        (call("pick_file"), "runs in the client"),
    ],
)
async def test_a_bad_call_is_told_to_the_model_and_not_run(
    runner: ToolRunner, plugin: ScriptedSource, tool_call: common_pb2.ToolCall, message: str
) -> None:
    output = await runner.run(job(wanted("search"), client_tool()), tool_call, 0)

    assert output.is_error and message in output.text
    assert plugin.calls == []


async def test_a_failing_tool_is_an_error_output_after_its_retries() -> None:
    plugin = ScriptedSource("plugins/web", [SEARCH], failing(5))
    runner = ToolRunner(static_sources(plugin), ToolDefaults(backoff=0))

    output = await runner.run(job(wanted("search")), call("search", q="x"), 0)

    assert output == ToolOutput("the backend is unreachable", is_error=True)
    assert len(plugin.calls) == 3, "the default max_attempts for an idempotent tool"


async def test_a_timed_out_tool_is_an_error_output() -> None:
    plugin = ScriptedSource("plugins/web", [tool("slow")], Hanging())
    runner = ToolRunner(static_sources(plugin))
    the_job = job(wanted("slow"))
    the_job.spec.tool_options.call_timeout.FromMilliseconds(50)

    output = await runner.run(the_job, call("slow"), 0)

    assert output == ToolOutput("tool 'slow' did not answer within 0.05 s", is_error=True)


async def test_a_crashing_tool_is_an_error_output_without_internals() -> None:
    async def crash(invocation: ToolInvocation) -> ToolOutput:
        raise KeyError("secret internals")

    runner = ToolRunner(static_sources(ScriptedSource("plugins/web", [SEARCH], crash)))

    output = await runner.run(job(wanted("search")), call("search", q="x"), 0)

    assert output == ToolOutput("tool 'search' failed with an internal error", is_error=True)


async def test_a_spent_budget_ends_the_job(runner: ToolRunner, plugin: ScriptedSource) -> None:
    the_job = job(wanted("search"), budget=common_pb2.BudgetSpec(max_tool_calls=2))

    assert not (await runner.run(the_job, call("search", q="x"), 1)).is_error
    with pytest.raises(BudgetExceeded) as raised:
        await runner.run(the_job, call("search", q="x"), 2)

    assert raised.value.failure.metadata["overrun"] == "1"
    assert len(plugin.calls) == 1


async def test_validate_checks_a_client_tools_arguments(runner: ToolRunner) -> None:
    spec = client_tool()

    assert runner.validate(spec, call("pick_file", glob="*.py")) is None
    refused = runner.validate(spec, call("pick_file", glob=3))
    assert refused == ToolOutput(
        "invalid arguments for tool 'pick_file': argument 'glob': 3 is not of type 'string'",
        is_error=True,
    )


async def test_an_unknown_tool_says_which_sources_could_not_be_listed() -> None:
    runner = ToolRunner(static_sources(BrokenListing("plugins/down", [SEARCH]), BuiltinTools()))

    with pytest.raises(UnknownTool, match=r"\(plugins/down could not list its tools\)"):
        await runner.offer(job(wanted("search")))


async def test_a_tool_whose_plugin_went_away_is_an_error_output() -> None:
    sources = Sources(ScriptedSource("plugins/web", [SEARCH]))
    runner = ToolRunner(sources)
    the_job = job(wanted("search"))
    await runner.offer(the_job)

    sources.sources.clear()
    output = await runner.run(the_job, call("search", q="x"), 0)

    assert output.is_error and "not available now" in output.text


async def test_a_call_run_with_its_offered_spec_keeps_what_the_model_was_offered() -> None:
    plugin = ScriptedSource("plugins/web", [SEARCH], failing(1))
    runner = ToolRunner(Sources(plugin), ToolDefaults(backoff=0))
    the_job = job(wanted("search"))
    (offered,) = await runner.offer(the_job)
    # The plugin now serves the tool as not idempotent: the call the model was offered
    # as idempotent is retried as offered, not as served now.
    changed = tool("search", dict(SEARCH.parameters), idempotent=False)
    plugin.tools = [changed]

    output = await runner.run(the_job, call("search", q="x"), 0, offered)

    assert not output.is_error
    assert len(plugin.calls) == 2  # The failed attempt, then the retry.
    # Without the offered spec the call is resolved now: not idempotent, not retried.
    plugin.answer = failing(1)
    again = await runner.run(the_job, call("search", q="x"), 0)
    assert again.is_error and len(plugin.calls) == 3
