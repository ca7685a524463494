"""The ToolRunner: which tools a job is offered, and how one of its tool calls is run.

The agent loop uses it in three steps:

1. `offer(job)` once per run: the job's ToolSpecs resolved against the tool sources (the
   built-in tools, the registered plugins) and passed to the model. A tool that no
   source serves raises UnknownTool, and the loop fails the job with its `failure`:
   a job that was promised a tool cannot be run honestly without it.
2. For each call the model makes, `kind_of(offered, name)`: a client tool is handed to
   the caller as an action (after `validate`), anything else is `run`.
3. `run(job, call, calls_so_far, offered)`: the arguments checked against the tool's
   schema (unless the caller did, against the `offered` spec), then the job's middleware
   chain, then the tool's source. Whatever goes wrong with the call
   comes back as a ToolOutput with is_error, for the model to read; only a spent budget
   (BudgetExceeded) ends the job.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2
from opentelemetry import trace

from services.kit.tool_schema import InvalidArguments, check_call, parse_arguments
from services.orchestrator.guards import BudgetExceeded
from services.orchestrator.tools.base import ToolFailed, ToolInvocation, ToolOutput, ToolSource
from services.orchestrator.tools.builtin import SOURCE_NAME as BUILTIN
from services.orchestrator.tools.middleware import (
    ToolCallContext,
    ToolDefaults,
    call_source,
    compose,
    job_chain,
)

log = logging.getLogger(__name__)

ToolKind = common_pb2.ToolKind
SourceProvider = Callable[[], Awaitable[Sequence[ToolSource]]]
"""The tool sources as they are now: called for every offer and run, so that a plugin
registered (or removed) after the runner was built is seen."""


def static_sources(*sources: ToolSource) -> SourceProvider:
    """A provider of a fixed set of sources, e.g. just BuiltinTools()."""

    async def provide() -> Sequence[ToolSource]:
        return sources

    return provide


class UnknownTool(Exception):
    """A job's spec offers a tool that no source serves (or not the kind it asks for).

    The loop fails the job with `failure` (reason TOOL_ERROR, metadata "tool" and
    "field"): the tools a job is offered are part of its spec, and running it without
    one would change what was asked."""

    def __init__(self, tool: str, index: int, why: str) -> None:
        self.failure = common_pb2.Failure(
            reason=common_pb2.ERROR_REASON_TOOL_ERROR,
            message=f"spec.tools[{index}] names tool {tool!r}, which {why}",
            metadata={"tool": tool, "field": f"spec.tools[{index}]"},
        )
        super().__init__(self.failure.message)
        self.tool = tool


@dataclass(frozen=True)
class _Served:
    """A tool as one source serves it."""

    source: ToolSource
    spec: common_pb2.ToolSpec


@dataclass(frozen=True)
class _Catalog:
    """Every tool of every source, at one moment."""

    by_name: dict[str, list[_Served]]
    """Built-in tools first, then the sources in the provider's order."""
    unlisted: list[str]
    """Sources that could not list their tools (e.g. a plugin that is down)."""

    def find(self, name: str, kind: ToolKind.ValueType) -> _Served | None:
        """The first source of `name` of the wanted kind (UNSPECIFIED: any)."""
        candidates = self.by_name.get(name, [])
        if kind == ToolKind.TOOL_KIND_UNSPECIFIED:
            return candidates[0] if candidates else None
        want_builtin = kind == ToolKind.TOOL_KIND_BUILTIN
        return next((c for c in candidates if (c.source.name == BUILTIN) == want_builtin), None)

    def why_missing(self, requested: common_pb2.ToolSpec) -> str:
        """Why `find` found nothing for `requested`, for UnknownTool."""
        if requested.name in self.by_name:
            kind = ToolKind.Name(requested.kind).removeprefix("TOOL_KIND_").lower()
            where = ", ".join(candidate.source.name for candidate in self.by_name[requested.name])
            return f"is not a {kind} tool (it is served by {where})"
        why = "no built-in tool or registered plugin serves"
        if self.unlisted:
            why += f" ({', '.join(self.unlisted)} could not list its tools)"
        return why


def kind_of(offered: Sequence[common_pb2.ToolSpec], name: str) -> ToolKind.ValueType:
    """Where the offered tool `name` runs: BUILTIN, PLUGIN or CLIENT (as `offer` resolved
    it), or UNSPECIFIED when the job was not offered such a tool; `run` answers such a
    call with "no such tool"."""
    spec = find_offered(offered, name)
    return spec.kind if spec is not None else ToolKind.TOOL_KIND_UNSPECIFIED


def find_offered(offered: Sequence[common_pb2.ToolSpec], name: str) -> common_pb2.ToolSpec | None:
    """The offered tool called `name`, or None."""
    return next((spec for spec in offered if spec.name == name), None)


class ToolRunner:
    """Offers a job its tools and runs their calls through the job's middleware chain.

    It keeps no state between calls and may serve every job of a worker at once. It
    asks the sources for their tools on every `offer` and `run`, so a source's
    `list_tools` must be cheap (a plugin source answers from its registry, not by
    calling the plugin)."""

    kind_of = staticmethod(kind_of)
    find_offered = staticmethod(find_offered)

    def __init__(
        self,
        sources: SourceProvider,
        defaults: ToolDefaults | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._sources = sources
        self._defaults = defaults or ToolDefaults()
        self._tracer = tracer

    async def offer(self, job: jobs_pb2.Job) -> list[common_pb2.ToolSpec]:
        """The job's tools as the model is shown them, in the spec's order.

        A BUILTIN, PLUGIN or UNSPECIFIED entry is looked up by name (built-in tools
        first, then the sources in the provider's order) and comes back as its source
        serves it: description, schema, `idempotent`, and kind BUILTIN or PLUGIN. A
        CLIENT entry is passed through as the caller wrote it. Raises UnknownTool."""
        catalog = await self._catalog()
        offered = []
        for index, requested in enumerate(job.spec.tools):
            if requested.kind == ToolKind.TOOL_KIND_CLIENT:
                offered.append(requested)
                continue
            found = catalog.find(requested.name, requested.kind)
            if found is None:
                raise UnknownTool(requested.name, index, catalog.why_missing(requested))
            offered.append(_as_offered(found))
        return offered

    def validate(self, spec: common_pb2.ToolSpec, call: common_pb2.ToolCall) -> ToolOutput | None:
        """None when the call's arguments are valid against the offered `spec`, else the
        error output to give the model instead of running (or handing out) the call."""
        try:
            check_call(spec, call)
        except InvalidArguments as invalid:
            return ToolOutput(invalid.message, is_error=True)
        return None

    async def run(
        self,
        job: jobs_pb2.Job,
        call: common_pb2.ToolCall,
        calls_so_far: int,
        offered: common_pb2.ToolSpec | None = None,
    ) -> ToolOutput:
        """Runs a built-in or plugin tool call of the job and returns what the model is
        told. `calls_so_far` is the job's tool calls before this one, for its budget.

        `offered` is the spec `offer` gave the call's tool, from a caller that has
        validated the call against it (the agent loop): the call is then neither resolved
        nor validated again, and the tool's `idempotent` is the one the model was offered.
        Without it the call is resolved against the job's spec and validated here.

        Raises BudgetExceeded when the job may make no more tool calls; every other
        problem (no such tool, invalid arguments, a failed or timed-out tool) is an
        output with is_error."""
        requested = offered or find_offered(job.spec.tools, call.name)
        if requested is None:
            return self._refused(job, call, "no_such_tool", _no_such_tool(job, call.name))
        if requested.kind == ToolKind.TOOL_KIND_CLIENT:
            text = f"tool {call.name!r} runs in the client and cannot be run by the server"
            return self._refused(job, call, "client_tool", text)
        found = (await self._catalog()).find(call.name, requested.kind)
        if found is None:
            text = (
                f"tool {call.name!r} is not available now: its plugin is not registered "
                "or cannot be reached"
            )
            return self._refused(job, call, "unavailable", text)
        spec = offered or _as_offered(found)
        try:
            arguments = parse_arguments(call.arguments) if offered else check_call(spec, call)
        except InvalidArguments as invalid:
            return self._refused(job, call, "invalid_arguments", invalid.message)
        context = ToolCallContext(
            ToolInvocation(job, call, arguments), spec, found.source.name, calls_so_far
        )
        chain = compose(job_chain(job, self._defaults, self._tracer), call_source(found.source))
        try:
            return await chain(context)
        except ToolFailed as failure:
            return ToolOutput(failure.message, is_error=True)
        except BudgetExceeded:
            raise
        except Exception:
            # A bug in a source must not end the job: the model is told the tool failed.
            log.exception("tool %s of job %s crashed", call.name, job.name)
            return ToolOutput(f"tool {call.name!r} failed with an internal error", is_error=True)

    async def _catalog(self) -> _Catalog:
        """The tools of the sources as they are now. A source that cannot list its tools
        is left out (and logged): its tools are then unknown."""
        sources = sorted(await self._sources(), key=lambda source: source.name != BUILTIN)
        catalog = _Catalog({}, [])
        for source in sources:
            try:
                tools = await source.list_tools()
            except Exception:
                log.warning("tool source %s could not list its tools", source.name, exc_info=True)
                catalog.unlisted.append(source.name)
                continue
            for spec in tools:
                catalog.by_name.setdefault(spec.name, []).append(_Served(source, spec))
        return catalog

    @staticmethod
    def _refused(job: jobs_pb2.Job, call: common_pb2.ToolCall, ended: str, text: str) -> ToolOutput:
        """The error output of a call that was not run, with its log line."""
        log.info(
            "tool call job=%s tool=%s call=%s outcome=%s",
            job.name,
            call.name[:64],
            call.id,
            ended,
        )
        return ToolOutput(text, is_error=True)


def _as_offered(served: _Served) -> common_pb2.ToolSpec:
    spec = common_pb2.ToolSpec()
    spec.CopyFrom(served.spec)
    builtin = served.source.name == BUILTIN
    spec.kind = ToolKind.TOOL_KIND_BUILTIN if builtin else ToolKind.TOOL_KIND_PLUGIN
    return spec


def _no_such_tool(job: jobs_pb2.Job, name: str) -> str:
    names = ", ".join(repr(tool.name) for tool in job.spec.tools) or "none"
    return f"no such tool: {name[:64]!r}; the tools you may call are: {names}"
