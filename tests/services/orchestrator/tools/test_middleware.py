"""Each middleware on its own, and the chain a job's options compose."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest
from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from services.kit.telemetry import Capture
from services.orchestrator.guards import BudgetExceeded
from services.orchestrator.tools.base import ToolFailed, ToolInvocation, ToolOutput
from services.orchestrator.tools.middleware import (
    Budget,
    Logging,
    Middleware,
    Retry,
    Telemetry,
    Timeout,
    ToolCallContext,
    ToolDefaults,
    ToolTimedOut,
    call_source,
    compose,
    job_chain,
    job_limits,
)
from tests.services.orchestrator.tools.sources import (
    Answer,
    Hanging,
    ScriptedSource,
    echo,
    failing,
    job,
    tool,
)

WAIT = 20.0
"""Seconds a test allows for what must happen far sooner; never a speed assertion."""


def context(
    spec: common_pb2.ToolSpec, calls_so_far: int = 0, the_job: jobs_pb2.Job | None = None
) -> ToolCallContext:
    call = common_pb2.ToolCall(id="call-1", name=spec.name, arguments="{}")
    return ToolCallContext(
        ToolInvocation(the_job or job(spec), call, {}), spec, "plugins/test", calls_so_far
    )


async def run(
    middlewares: Sequence[Middleware], spec: common_pb2.ToolSpec, answer: Answer = echo
) -> tuple[ToolOutput, ScriptedSource, ToolCallContext]:
    source = ScriptedSource("plugins/test", [spec], answer)
    ctx = context(spec)
    async with asyncio.timeout(WAIT):
        output = await compose(middlewares, call_source(source))(ctx)
    return output, source, ctx


# timeout


async def test_timeout_cuts_a_slow_tool_off_and_says_so() -> None:
    hanging = Hanging()
    source = ScriptedSource("plugins/test", [tool("slow")], hanging)
    chain = compose([Timeout(0.05)], call_source(source))

    with pytest.raises(ToolTimedOut) as raised:
        async with asyncio.timeout(WAIT):
            await chain(context(tool("slow")))

    assert raised.value.message == "tool 'slow' did not answer within 0.05 s"
    assert raised.value.retryable
    assert hanging.cancelled == 1, "the slow call was really cancelled"
    assert [timeout for _, timeout in source.calls] == [0.05], "the source is told the limit"


async def test_a_quick_tool_is_not_affected_by_the_timeout() -> None:
    output, _, _ = await run([Timeout(30)], tool("quick"))

    assert output == ToolOutput("quick {}")


# retry


async def test_an_idempotent_tool_is_retried_until_it_answers() -> None:
    output, source, ctx = await run([Retry(3, 0)], tool("lookup", idempotent=True), failing(2))

    assert output == ToolOutput("lookup {}")
    assert [invocation.attempt for invocation, _ in source.calls] == [1, 2, 3]
    assert ctx.stats.attempts == 3


async def test_retries_stop_at_max_attempts() -> None:
    with pytest.raises(ToolFailed, match="unreachable"):
        await run([Retry(4, 0)], tool("lookup", idempotent=True), failing(10))


async def test_a_tool_that_is_not_idempotent_is_tried_once() -> None:
    source = ScriptedSource("plugins/test", [tool("send_mail")], failing(1))
    ctx = context(tool("send_mail"))

    with pytest.raises(ToolFailed):
        await compose([Retry(3, 0)], call_source(source))(ctx)

    assert len(source.calls) == 1


async def test_a_failure_that_is_not_retryable_is_not_retried() -> None:
    source = ScriptedSource("plugins/test", [], failing(1, retryable=False))
    ctx = context(tool("lookup", idempotent=True))

    with pytest.raises(ToolFailed):
        await compose([Retry(3, 0)], call_source(source))(ctx)

    assert len(source.calls) == 1


async def test_a_timed_out_attempt_of_an_idempotent_tool_is_retried() -> None:
    hanging = Hanging(times=1)

    output, source, _ = await run(
        [Retry(3, 0), Timeout(0.05)], tool("lookup", idempotent=True), hanging
    )

    assert output == ToolOutput("lookup {}")
    assert hanging.cancelled == 1 and len(source.calls) == 2


# budget


async def test_budget_lets_calls_through_below_the_limit() -> None:
    spec = tool("t")
    source = ScriptedSource("plugins/test", [spec])

    output = await compose([Budget(3, "spec.budget.max_tool_calls")], call_source(source))(
        context(spec, calls_so_far=2)
    )

    assert not output.is_error


async def test_budget_refuses_the_call_over_the_limit_and_names_it() -> None:
    source = ScriptedSource("plugins/test", [tool("t")])
    chain = compose([Budget(3, "spec.budget.max_tool_calls")], call_source(source))

    with pytest.raises(BudgetExceeded) as raised:
        await chain(context(tool("t"), calls_so_far=3))

    failure = raised.value.failure
    assert failure.reason == common_pb2.ERROR_REASON_BUDGET_EXCEEDED
    assert failure.message == (
        "tool-call budget exceeded: spec.budget.max_tool_calls allows 3 tool calls, and this "
        "would be call 4 (1 over the limit)"
    )
    assert dict(failure.metadata) == {
        "budget": "tool_calls",
        "field": "spec.budget.max_tool_calls",
        "limit": "3",
        "used": "3",
        "overrun": "1",
    }
    assert source.calls == [], "the tool never ran"


def test_the_smaller_of_the_budget_and_the_tool_options_limit_applies() -> None:
    defaults = ToolDefaults()
    both = job(budget=common_pb2.BudgetSpec(max_tool_calls=5))
    both.spec.tool_options.max_tool_calls = 2
    budget_only = job(budget=common_pb2.BudgetSpec(max_tool_calls=5))
    options_zero = job()
    options_zero.spec.tool_options.max_tool_calls = 0

    assert job_limits(both, defaults).max_tool_calls == 2
    assert job_limits(both, defaults).limit_field == "spec.tool_options.max_tool_calls"
    assert job_limits(budget_only, defaults).max_tool_calls == 5
    assert job_limits(options_zero, defaults).max_tool_calls == 0
    assert job_limits(job(), defaults).max_tool_calls is None


def test_unset_options_take_the_defaults() -> None:
    defaults = ToolDefaults(call_timeout=12.0, max_attempts=4)
    custom = job()
    custom.spec.tool_options.call_timeout.FromMilliseconds(1500)
    custom.spec.tool_options.max_attempts = 7

    assert (job_limits(job(), defaults).call_timeout, job_limits(job(), defaults).max_attempts) == (
        12.0,
        4,
    )
    assert (
        job_limits(custom, defaults).call_timeout,
        job_limits(custom, defaults).max_attempts,
    ) == (
        1.5,
        7,
    )


# telemetry


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def tracer_of(exporter: InMemorySpanExporter) -> Telemetry:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Telemetry(provider.get_tracer("test"))


async def test_each_call_is_a_tool_call_span_with_genai_attributes(
    spans: InMemorySpanExporter,
) -> None:
    await run([tracer_of(spans), Retry(3, 0)], tool("lookup", idempotent=True), failing(1))

    [span] = spans.get_finished_spans()
    assert span.name == "agent.tool"
    assert dict(span.attributes or {}) == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "lookup",
        "gen_ai.tool.call.id": "call-1",
        "gen_ai.tool.type": "extension",
        "agentrt.job": "jobs/testjob",
        "agentrt.tool.source": "plugins/test",
        "agentrt.tool.outcome": "ok",
        "agentrt.tool.attempts": 2,
    }
    assert span.status.status_code == StatusCode.UNSET


async def test_tool_arguments_are_on_the_span_only_when_captured(
    spans: InMemorySpanExporter,
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("test")
    await run([Telemetry(tracer, Capture(tool_args=True))], tool("lookup"))
    await run([Telemetry(tracer, Capture())], tool("lookup"))

    captured, plain = spans.get_finished_spans()
    assert (captured.attributes or {})["gen_ai.tool.call.arguments"] == "{}"
    assert "gen_ai.tool.call.arguments" not in (plain.attributes or {})


async def test_a_failed_call_is_an_error_span(spans: InMemorySpanExporter) -> None:
    with pytest.raises(ToolTimedOut):
        await run([tracer_of(spans), Timeout(0.05)], tool("slow"), Hanging())

    [span] = spans.get_finished_spans()
    assert (span.attributes or {})["agentrt.tool.outcome"] == "timeout"
    assert span.status.status_code == StatusCode.ERROR


# logging


async def test_one_log_line_per_call_with_its_outcome(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.orchestrator.tools.middleware")

    await run([Logging(), Retry(3, 0)], tool("lookup", idempotent=True), failing(1))
    with pytest.raises(ToolFailed):
        await run([Logging()], tool("send"), failing(1))

    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tool call")]
    assert len(lines) == 2
    assert lines[0].startswith(
        "tool call job=jobs/testjob tool=lookup call=call-1 source=plugins/test outcome=ok "
        "attempts=2 duration_ms="
    )
    assert "tool=send call=call-1 source=plugins/test outcome=failed attempts=1" in lines[1]


# the chain a job gets


async def test_a_jobs_chain_applies_its_options_in_order() -> None:
    the_job = job(budget=common_pb2.BudgetSpec(max_tool_calls=1))
    the_job.spec.tool_options.call_timeout.FromMilliseconds(50)
    the_job.spec.tool_options.max_attempts = 2
    chain = job_chain(the_job, ToolDefaults(backoff=0))
    hanging = Hanging()
    source = ScriptedSource("plugins/test", [], hanging)
    run_chain = compose(chain, call_source(source))

    with pytest.raises(ToolTimedOut):
        async with asyncio.timeout(WAIT):
            await run_chain(context(tool("lookup", idempotent=True), 0, the_job))
    with pytest.raises(BudgetExceeded):
        await run_chain(context(tool("lookup", idempotent=True), 1, the_job))

    assert [type(m) for m in chain] == [Telemetry, Logging, Budget, Retry, Timeout]
    assert hanging.cancelled == 2, "two attempts, each cut off; the budget stopped the third"
