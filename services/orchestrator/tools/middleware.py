"""The middleware chain around every tool call: telemetry, logging, budget, retry, timeout.

Each middleware does one thing and hands the call on with `call_next`. The chain is
composed per job (`job_chain`) from the job's ToolOptions and BudgetSpec, outermost
first:

    Telemetry → Logging → Budget → Retry → Timeout → the tool's source

so the span and the log line cover the whole call, its retries included; the budget
counts a call once however often it is retried; and the timeout cuts each attempt, so a
timed-out attempt of an idempotent tool can be retried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Protocol

from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2
from agentrt.retries import backoff_delay
from opentelemetry import trace

from services.kit.telemetry import Capture
from services.kit.telemetry import capture as process_capture
from services.orchestrator.guards import BudgetExceeded
from services.orchestrator.tools.base import ToolFailed, ToolInvocation, ToolOutput, ToolSource
from services.orchestrator.tools.builtin import SOURCE_NAME as BUILTIN

log = logging.getLogger(__name__)


@dataclass
class CallStats:
    """What happened inside the chain, for the middlewares outside it to report."""

    attempts: int = 0
    """Attempts that reached the tool's source."""


@dataclass(frozen=True)
class ToolCallContext:
    """One tool call on its way through the chain."""

    invocation: ToolInvocation
    spec: common_pb2.ToolSpec
    """The tool as offered to the job: its schema and whether it is idempotent."""
    source: str
    """The name of the ToolSource that serves it: "builtin" or "plugins/{plugin}"."""
    calls_so_far: int
    """Tool calls the job made before this one."""
    timeout: float | None = None
    """Seconds the source may take for this attempt; set by Timeout."""
    stats: CallStats = field(default_factory=CallStats)


Next = Callable[[ToolCallContext], Awaitable[ToolOutput]]


class Middleware(Protocol):
    """One link of the chain: does its one job around `call_next`."""

    async def __call__(self, context: ToolCallContext, call_next: Next) -> ToolOutput: ...


def compose(middlewares: Sequence[Middleware], terminal: Next) -> Next:
    """The chain as one callable: middlewares[0] is outermost, `terminal` runs the tool."""
    call = terminal
    for middleware in reversed(middlewares):
        call = partial(middleware, call_next=call)
    return call


def call_source(source: ToolSource) -> Next:
    """The end of every chain: one attempt at the tool's source, counted."""

    async def call(context: ToolCallContext) -> ToolOutput:
        context.stats.attempts += 1
        return await source.call(context.invocation, context.timeout)

    return call


class ToolTimedOut(ToolFailed):
    """An attempt ran past the job's tool-call timeout and was cut off."""

    def __init__(self, tool: str, seconds: float) -> None:
        super().__init__(f"tool {tool!r} did not answer within {seconds:g} s", retryable=True)


def outcome(result: ToolOutput | BaseException) -> str:
    """How a call ended, as logs and spans name it: ok, error (the tool answered with an
    error), timeout, failed, budget_exceeded, cancelled or crashed (a bug)."""
    if isinstance(result, ToolOutput):
        return "error" if result.is_error else "ok"
    if isinstance(result, ToolTimedOut):
        return "timeout"
    if isinstance(result, ToolFailed):
        return "failed"
    if isinstance(result, BudgetExceeded):
        return "budget_exceeded"
    if isinstance(result, asyncio.CancelledError):
        return "cancelled"
    return "crashed"


async def _ending(context: ToolCallContext, call_next: Next) -> ToolOutput | BaseException:
    """The call's output, or the exception it raised (to report, then re-raise)."""
    try:
        return await call_next(context)
    except BaseException as error:  # reported by the caller, then raised again
        return error


class Telemetry:
    """An OpenTelemetry span `agent.tool` around each call, with the GenAI semantic
    conventions' tool attributes and the call's outcome."""

    def __init__(self, tracer: trace.Tracer | None = None, capture: Capture | None = None) -> None:
        self._tracer = tracer or trace.get_tracer("agentrt.orchestrator")
        self._capture = capture or process_capture()

    async def __call__(self, context: ToolCallContext, call_next: Next) -> ToolOutput:
        call = context.invocation.call
        attributes: dict[str, str] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": call.name,
            "gen_ai.tool.call.id": call.id,
            "gen_ai.tool.type": "function" if context.source == BUILTIN else "extension",
            "agentrt.job": context.invocation.job.name,
            "agentrt.tool.source": context.source,
        }
        if self._capture.tool_args:
            attributes["gen_ai.tool.call.arguments"] = call.arguments
        with self._tracer.start_as_current_span(
            "agent.tool",
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            result = await _ending(context, call_next)
            ended = outcome(result)
            span.set_attribute("agentrt.tool.outcome", ended)
            span.set_attribute("agentrt.tool.attempts", context.stats.attempts)
            if ended != "ok":
                span.set_status(trace.StatusCode.ERROR, ended)
            if isinstance(result, BaseException):
                if ended == "crashed":
                    span.record_exception(result)
                raise result
            return result


class Logging:
    """One log line per call: job, tool, call id, outcome, attempts, duration."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger

    async def __call__(self, context: ToolCallContext, call_next: Next) -> ToolOutput:
        started = time.monotonic()
        result = await _ending(context, call_next)
        ended = outcome(result)
        call = context.invocation.call
        self._log.log(
            logging.WARNING if ended in ("crashed", "timeout", "failed") else logging.INFO,
            "tool call job=%s tool=%s call=%s source=%s outcome=%s attempts=%d duration_ms=%.1f",
            context.invocation.job.name,
            call.name,
            call.id,
            context.source,
            ended,
            context.stats.attempts,
            (time.monotonic() - started) * 1000,
        )
        if isinstance(result, BaseException):
            raise result
        return result


class Budget:
    """Refuses the call when the job has made `limit` tool calls already.

    `field` names where the limit comes from, for the failure message."""

    def __init__(self, limit: int, field: str) -> None:
        self.limit = limit
        self.field = field

    async def __call__(self, context: ToolCallContext, call_next: Next) -> ToolOutput:
        if context.calls_so_far >= self.limit:
            raise BudgetExceeded(self._failure(context.calls_so_far))
        return await call_next(context)

    def _failure(self, calls_so_far: int) -> common_pb2.Failure:
        this_call = calls_so_far + 1
        overrun = this_call - self.limit
        return common_pb2.Failure(
            reason=common_pb2.ERROR_REASON_BUDGET_EXCEEDED,
            message=(
                f"tool-call budget exceeded: {self.field} allows {self.limit} tool calls, "
                f"and this would be call {this_call} ({overrun} over the limit)"
            ),
            metadata={
                "budget": "tool_calls",
                "field": self.field,
                "limit": str(self.limit),
                "used": str(calls_so_far),
                "overrun": str(overrun),
            },
        )


class Retry:
    """Tries a call to an idempotent tool again when an attempt fails for a passing
    reason (ToolFailed with retryable, a timeout), up to `max_attempts` in all, with
    jittered exponential backoff. Other tools are tried once: running a call twice may
    do its side effect twice."""

    def __init__(self, max_attempts: int, backoff: float) -> None:
        self.max_attempts = max_attempts
        self.backoff = backoff

    async def __call__(self, context: ToolCallContext, call_next: Next) -> ToolOutput:
        if not context.spec.idempotent:
            return await call_next(context)
        attempt = 1
        while True:
            invocation = dataclasses.replace(context.invocation, attempt=attempt)
            try:
                return await call_next(dataclasses.replace(context, invocation=invocation))
            except ToolFailed as failure:
                if not failure.retryable or attempt >= self.max_attempts:
                    raise
                log.info(
                    "retrying tool call job=%s tool=%s call=%s after attempt %d: %s",
                    context.invocation.job.name,
                    context.invocation.call.name,
                    context.invocation.call.id,
                    attempt,
                    failure.message,
                )
            await asyncio.sleep(backoff_delay(attempt, base=self.backoff))
            attempt += 1


class Timeout:
    """Cuts each attempt off after `seconds`, as a retryable ToolTimedOut; the source is
    told the same limit so that it can pass it on (e.g. as a gRPC deadline)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def __call__(self, context: ToolCallContext, call_next: Next) -> ToolOutput:
        try:
            async with asyncio.timeout(self.seconds):
                return await call_next(dataclasses.replace(context, timeout=self.seconds))
        except TimeoutError:
            raise ToolTimedOut(context.invocation.call.name, self.seconds) from None


@dataclass(frozen=True)
class ToolDefaults:
    """What applies when a job's ToolOptions leave a field unset."""

    call_timeout: float = 30.0
    """Seconds one attempt may take."""
    max_attempts: int = 3
    """Attempts in all for an idempotent tool."""
    backoff: float = 0.2
    """Seconds before the first retry; doubled (and jittered) for each later one."""


@dataclass(frozen=True)
class JobToolLimits:
    """The tool limits of one job: its ToolOptions and BudgetSpec over the defaults."""

    call_timeout: float
    max_attempts: int
    max_tool_calls: int | None
    """None when neither the budget nor the options limit tool calls."""
    limit_field: str
    """Which field `max_tool_calls` comes from, for messages."""


def job_limits(job: jobs_pb2.Job, defaults: ToolDefaults) -> JobToolLimits:
    """The job's limits. The smaller of budget.max_tool_calls and
    tool_options.max_tool_calls applies when both are set."""
    spec = job.spec
    options = spec.tool_options
    timeout = options.call_timeout.ToTimedelta()
    limits: list[tuple[int, str]] = []
    if spec.budget.HasField("max_tool_calls"):
        limits.append((spec.budget.max_tool_calls, "spec.budget.max_tool_calls"))
    if options.HasField("max_tool_calls"):
        limits.append((options.max_tool_calls, "spec.tool_options.max_tool_calls"))
    limit, limit_field = min(limits) if limits else (None, "")
    return JobToolLimits(
        call_timeout=timeout.total_seconds() if timeout > timedelta(0) else defaults.call_timeout,
        max_attempts=options.max_attempts or defaults.max_attempts,
        max_tool_calls=limit,
        limit_field=limit_field,
    )


def job_chain(
    job: jobs_pb2.Job, defaults: ToolDefaults, tracer: trace.Tracer | None = None
) -> list[Middleware]:
    """The middlewares of the job's tool calls, outermost first."""
    limits = job_limits(job, defaults)
    chain: list[Middleware] = [Telemetry(tracer), Logging()]
    if limits.max_tool_calls is not None:
        chain.append(Budget(limits.max_tool_calls, limits.limit_field))
    chain.append(Retry(limits.max_attempts, defaults.backoff))
    chain.append(Timeout(limits.call_timeout))
    return chain
