"""Per-job budgets end to end: real jobs run by a worker pool with LedgerSpend, against the
jobs, engine, policy and ledger services in-process, the `local` model priced in the
ledger. A job whose BudgetSpec runs out after its first turn ends FAILED with
BUDGET_EXCEEDED, keeping exactly the usage it spent; and that usage, the ledger's records
of the job and the usage on its turn events agree to the nano-dollar."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TypeAlias, TypeVar

import grpc
import pytest
from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2
from agentrt.jobs.v1 import jobs_pb2
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from agentrt.ledger.v1.ledger_pb2 import Amounts, Budget, Price
from google.protobuf.timestamp_pb2 import Timestamp

from services.orchestrator.agent import tool_record_id
from services.orchestrator.guards import Hold
from services.orchestrator.spend import open_spend_guard

from .conftest import TENANT, System, words
from .test_loop import CountingTools, create_policy, job_with_tools, runner

Stub: TypeAlias = "ledger_pb2_grpc.LedgerServiceAsyncStub"

E = common_pb2
T = TypeVar("T")
MODEL = "local"
PROMPT = "call bump {}\ncall bump {}"
"""Turn 1 asks for two tool calls; turn 2 answers with their results."""
MAX_OUTPUT = 64
"""Each call's worst-case output, so that the worst cases stay small and readable."""
MONEY = re.compile(r"[0-9]+(\.[0-9]+)?")
"""The contract's form of an amount of US dollars: digits, at most one point, no exponent."""


@dataclass(frozen=True)
class Prices:
    """US dollars per million input and output tokens."""

    input: str
    output: str

    def cost(self, usage: common_pb2.Usage) -> Decimal:
        """What the ledger charges for `usage`: exact, rounded once to 1e-9, half to even."""
        exact = (
            usage.input_tokens * Decimal(self.input) + usage.output_tokens * Decimal(self.output)
        ) / Decimal(1_000_000)
        return exact.quantize(Decimal("1e-9"), rounding=ROUND_HALF_EVEN)


PRICES = [
    pytest.param(Prices("0.3", "1.1"), id="tenths"),
    # A call costs less than a micro-dollar: the sums must stay plain decimals.
    pytest.param(Prices("0.001", "0.0007"), id="sub-micro-dollar"),
]


def ledger_of(system: System) -> Stub:
    return ledger_pb2_grpc.LedgerServiceStub(system.infra.channel("ledger"))


async def prepare(system: System, prices: Prices) -> CountingTools:
    """The model's price, a generous daily budget of the tenant, the loop tests' policy and
    a started pool with LedgerSpend."""
    await price_and_budget(system, prices, MODEL)
    await create_policy(system)
    tools = CountingTools()
    await system.pool("worker-a", tools=runner(tools), spend=open_spend_guard(system.infra)).start()
    return tools


async def price_and_budget(system: System, prices: Prices, model: str) -> None:
    """The model's price and a generous daily budget of the tenant, so that every hold and
    record moves its counters."""
    ledger = ledger_of(system)
    await ledger.CreatePrice(
        ledger_pb2.CreatePriceRequest(
            price_id=model,
            price=Price(
                input_price_per_million=prices.input, output_price_per_million=prices.output
            ),
        )
    )
    daily = Budget(
        tenant=TENANT,
        period=Budget.PERIOD_DAY,
        limits=Amounts(tokens=10_000_000, cost="100", tool_calls=1000),
    )
    await ledger.CreateBudget(ledger_pb2.CreateBudgetRequest(budget_id="daily", budget=daily))


async def held(system: System) -> ledger_pb2.Amounts:
    """What the tenant's daily budget holds now."""
    status = await ledger_of(system).CheckBudget(
        ledger_pb2.CheckBudgetRequest(tenant=TENANT, principal="tester")
    )
    (daily,) = status.budgets
    return daily.reserved


async def run_job(system: System, budget: common_pb2.BudgetSpec | None = None) -> str:
    """Runs a two-turn job to its end; its name."""
    spec: dict[str, object] = {"params": E.ModelParams(max_output_tokens=MAX_OUTPUT)}
    if budget is not None:
        spec["budget"] = budget
    job = await job_with_tools(system, PROMPT, **spec)
    await system.end(job)
    return job


async def failure_of(system: System, budget: common_pb2.BudgetSpec) -> common_pb2.Failure:
    """The failure of a job run with `budget`, which must have ended FAILED."""
    done = await system.get_job(await run_job(system, budget))
    assert done.state == E.JOB_STATE_FAILED, done
    return done.failure


async def first_turns_worst_case(system: System, budget: common_pb2.BudgetSpec) -> str:
    """The worst case of the first model call of PROMPT, as the refusal of a job whose
    budget (1 token, or 1 nano-dollar) is too small for any call reports it. The local
    model is deterministic, so every job of PROMPT has this worst case."""
    failure = await failure_of(system, budget)
    found = re.search(r"so far \+ this call's worst case ([0-9.]+)", failure.message)
    assert found, failure.message
    assert failure.message.startswith(("job budget max_tokens (1) ", "job budget max_cost ("))
    return found.group(1)


def model_turns(events: list[common_pb2.RuntimeEvent]) -> list[common_pb2.TurnCompleted]:
    return [e.turn_completed for e in events if e.type == E.EVENT_TYPE_TURN_COMPLETED]


def dollars(text: str) -> Decimal:
    """An amount the contract wrote: a plain decimal string (empty is zero)."""
    assert text == "" or MONEY.fullmatch(text), f"not a plain decimal amount: {text!r}"
    return Decimal(text or "0")


def tokens_and_cost(usages: list[common_pb2.Usage]) -> tuple[int, int, Decimal]:
    return (
        sum(u.input_tokens for u in usages),
        sum(u.output_tokens for u in usages),
        sum((dollars(u.cost) for u in usages), Decimal(0)),
    )


async def records_of(system: System, job: str) -> list[ledger_pb2.UsageRecord]:
    listed = await ledger_of(system).ListUsageRecords(
        ledger_pb2.ListUsageRecordsRequest(tenant=TENANT, job=job, page_size=1000)
    )
    assert not listed.next_page_token
    return list(listed.usage_records)


async def expect_ledger_agrees(
    system: System, job: str, usage: common_pb2.Usage, prices: Prices
) -> None:
    """The ledger recorded the job's model calls and tool calls once each: their tokens and
    cost are the job's, and each model call is priced exactly at `prices`."""
    recorded = await records_of(system, job)
    calls = [r for r in recorded if r.kind == ledger_pb2.USAGE_KIND_MODEL_CALL]
    tools = [r for r in recorded if r.kind == ledger_pb2.USAGE_KIND_TOOL_CALL]
    assert (len(calls), len(tools)) == (usage.model_calls, usage.tool_calls)
    assert all(r.model == MODEL for r in calls)
    for record in calls:
        assert dollars(record.usage.cost) == prices.cost(record.usage) > 0
    assert tokens_and_cost([r.usage for r in recorded]) == (
        usage.input_tokens,
        usage.output_tokens,
        dollars(usage.cost),
    )


async def expect_tenant_counters_match_records(system: System) -> None:
    """The tenant's budget counts what its usage records sum to, and holds nothing."""
    ledger = ledger_of(system)
    status = await ledger.CheckBudget(
        ledger_pb2.CheckBudgetRequest(tenant=TENANT, principal="tester")
    )
    (daily,) = status.budgets
    listed = await ledger.ListUsageRecords(
        ledger_pb2.ListUsageRecordsRequest(tenant=TENANT, page_size=1000)
    )
    records = [r.usage for r in listed.usage_records]
    inputs, outputs, cost = tokens_and_cost(records)
    assert daily.spent.tokens == inputs + outputs
    assert dollars(daily.spent.cost) == cost
    assert daily.spent.tool_calls == sum(
        r.kind == ledger_pb2.USAGE_KIND_TOOL_CALL for r in listed.usage_records
    )
    held = daily.reserved
    assert (held.tokens, dollars(held.cost), held.tool_calls) == (0, Decimal(0), 0)
    start = Timestamp()
    start.FromDatetime(datetime.now(UTC) - timedelta(days=1))
    report = await ledger.GetUsageReport(
        ledger_pb2.GetUsageReportRequest(start_time=start, tenant=TENANT)
    )
    (row,) = report.rows
    assert (row.usage.total_tokens, dollars(row.usage.cost)) == (inputs + outputs, cost)


async def expect_stopped_after_the_first_turn(
    system: System, job: str, prices: Prices, tools: CountingTools
) -> jobs_pb2.Job:
    """The job ran its first turn and both tool calls, was refused its second model call,
    and kept (on the job, its events and in the ledger) exactly what it spent."""
    done = await system.get_job(job)
    assert done.state == E.JOB_STATE_FAILED
    assert done.failure.reason == E.ERROR_REASON_BUDGET_EXCEEDED
    assert (done.usage.model_calls, done.usage.tool_calls) == (1, 2)
    assert tools.runs["bump"] == 2
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens > 0
    assert dollars(done.usage.cost) > 0
    (turn,) = model_turns(await system.history(job))
    assert turn.turn == 1 and len(turn.message.tool_calls) == 2
    assert tokens_and_cost([turn.usage]) == tokens_and_cost([done.usage])
    await expect_ledger_agrees(system, job, done.usage, prices)
    await expect_tenant_counters_match_records(system)
    return done


async def test_a_stopping_pool_gives_back_the_hold_of_a_model_call_it_cuts(
    system: System,
) -> None:
    await price_and_budget(system, Prices("0.3", "1.1"), "local-slow")
    pool = system.pool("worker-a", spend=open_spend_guard(system.infra))
    await pool.start()
    job = await system.create_job(prompt=words(40), model="local-slow")
    await system.first_event(job.name, lambda event: event.type == E.EVENT_TYPE_OUTPUT_DELTA)
    assert (await held(system)).tokens > 0

    await pool.stop()
    # As a draining process does next: it closes its channels, cutting any call under way.
    await system.infra.channel("ledger").close(None)

    # Nothing the worker reserved is left held until its ttl.
    async with grpc.aio.insecure_channel(system.infra.config.addresses["ledger"]) as channel:
        status = await ledger_pb2_grpc.LedgerServiceStub(channel).CheckBudget(
            ledger_pb2.CheckBudgetRequest(tenant=TENANT, principal="tester")
        )
    (daily,) = status.budgets
    assert daily.reserved.tokens == 0
    assert (await system.get_job(job.name)).state == E.JOB_STATE_QUEUED


async def test_a_run_cut_while_reserving_leaves_nothing_held(system: System) -> None:
    await price_and_budget(system, Prices("0.3", "1.1"), MODEL)
    spend = open_spend_guard(system.infra)
    job = await system.create_job(prompt="hello", model=MODEL)
    user = E.Message(role=E.ROLE_USER, content="hello")
    request = engine_pb2.CompleteRequest(
        model=MODEL, messages=[user], tenant=TENANT, job=job.name, idempotency_key="k"
    )
    # Once uncut, which also caches the price: the cuts below land in ReserveBudget.
    await spend.release(await spend.reserve_model_call(job, E.Usage(), request), "warm")

    async def reserve() -> Hold:
        return await spend.reserve_model_call(job, E.Usage(), request)

    await expect_cuts_leave_nothing_held(system, reserve, lambda hold: spend.release(hold, "uncut"))


async def test_a_run_cut_while_checking_a_tool_call_leaves_nothing_held(system: System) -> None:
    await price_and_budget(system, Prices("0.3", "1.1"), MODEL)
    spend = open_spend_guard(system.infra)
    job = await system.create_job(prompt="hello", model=MODEL)
    records = iter(range(100))

    async def record(_: None) -> None:
        call = E.ToolCall(id=f"call_{next(records)}", name="t")
        await spend.record_tool_call(job, call, tool_record_id(job.name, 1, call.id))

    # Before an approval: a hold made and given back at once, a cut in either call.
    await expect_cuts_leave_nothing_held(
        system, lambda: spend.check_tool_call(job, E.Usage(), hold=False), record
    )
    # Right before the call: a hold kept for its record, unless the check was cut.
    await expect_cuts_leave_nothing_held(
        system, lambda: spend.check_tool_call(job, E.Usage()), record
    )


async def expect_cuts_leave_nothing_held(
    system: System,
    spend: Callable[[], Awaitable[T]],
    settle: Callable[[T], Awaitable[None]],
) -> None:
    """Cuts `spend` at pauses from 0.5 to 8 ms in, and `settle`s what it made when it was
    not cut; expects the tenant's budget to hold nothing after each, and some cuts to land."""
    cut = 0
    for pause in (0.0005, 0.001, 0.002, 0.003, 0.004, 0.006, 0.008):
        spending = asyncio.ensure_future(spend())
        await asyncio.sleep(pause)
        spending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await spending
        if spending.cancelled():
            cut += 1
        else:
            await settle(spending.result())
        assert await held_until_given_back(system) == (0, 0), f"held after a cut {pause} s in"
    assert cut > 0


async def held_until_given_back(system: System) -> tuple[int, int]:
    """The tokens and tool calls the tenant's budget holds once nothing is held, or after
    2 s: a release the cut caller left behind may still be under way (its hold would
    otherwise count for the reservation's ttl, 300 s)."""
    deadline = asyncio.get_running_loop().time() + 2
    while True:
        reserved = await held(system)
        counts = (reserved.tokens, reserved.tool_calls)
        if counts == (0, 0) or asyncio.get_running_loop().time() > deadline:
            return counts
        await asyncio.sleep(0.01)


async def test_a_job_whose_max_tokens_runs_out_mid_run_fails_keeping_what_it_spent(
    system: System,
) -> None:
    prices = Prices("0.3", "1.1")
    tools = await prepare(system, prices)
    first = int(await first_turns_worst_case(system, E.BudgetSpec(max_tokens=1)))

    # Exactly the first call's worst case: it is admitted, the second call is not.
    job = await run_job(system, E.BudgetSpec(max_tokens=first))

    done = await expect_stopped_after_the_first_turn(system, job, prices, tools)
    refusal = re.fullmatch(
        rf"job budget max_tokens \({first}\) would be exceeded by ([0-9]+): ([0-9]+) used so "
        rf"far \+ this call's worst case ([0-9]+) \(([0-9]+) estimated input \+ {MAX_OUTPUT} "
        r"max output tokens\)",
        done.failure.message,
    )
    assert refusal, done.failure.message
    overrun, used, worst, estimated_input = (int(n) for n in refusal.groups())
    assert used == done.usage.total_tokens
    assert worst == estimated_input + MAX_OUTPUT >= first
    assert overrun == used + worst - first > 0
    assert dict(done.failure.metadata) == {
        "budget": "job.spec.budget.max_tokens",
        "limit": str(first),
        "overrun": str(overrun),
    }


@pytest.mark.parametrize("prices", PRICES)
async def test_a_job_whose_max_cost_runs_out_mid_run_fails_keeping_what_it_spent(
    system: System, prices: Prices
) -> None:
    tools = await prepare(system, prices)
    first = await first_turns_worst_case(system, E.BudgetSpec(max_cost="0.000000001"))

    job = await run_job(system, E.BudgetSpec(max_cost=first))

    done = await expect_stopped_after_the_first_turn(system, job, prices, tools)
    refusal = re.fullmatch(
        rf"job budget max_cost \({re.escape(first)}\) would be exceeded by ([0-9.]+): "
        r"([0-9.]+) spent so far \+ this call's worst case ([0-9.]+)",
        done.failure.message,
    )
    assert refusal, done.failure.message
    overrun, spent, worst = (dollars(amount) for amount in refusal.groups())
    assert spent == dollars(done.usage.cost)
    assert worst >= dollars(first)
    assert overrun == spent + worst - dollars(first) > 0
    assert done.failure.metadata["budget"] == "job.spec.budget.max_cost"
    assert dollars(done.failure.metadata["overrun"]) == overrun


@pytest.mark.parametrize("prices", PRICES)
async def test_a_priced_job_carries_its_cost_on_the_job_and_on_each_turn(
    system: System, prices: Prices
) -> None:
    tools = await prepare(system, prices)

    job = await run_job(system)

    done = await system.get_job(job)
    assert done.state == E.JOB_STATE_SUCCEEDED, done.failure
    assert (done.usage.model_calls, done.usage.tool_calls, tools.runs["bump"]) == (2, 2, 2)
    history = await system.history(job)
    turns = model_turns(history)
    assert [turn.turn for turn in turns] == [1, 2]
    for turn in turns:
        assert dollars(turn.usage.cost) == prices.cost(turn.usage) > 0
    assert tokens_and_cost([t.usage for t in turns]) == tokens_and_cost([done.usage])
    (succeeded,) = [e for e in history if e.type == E.EVENT_TYPE_JOB_SUCCEEDED]
    assert succeeded.job_succeeded.usage == done.usage
    await expect_ledger_agrees(system, job, done.usage, prices)
    await expect_tenant_counters_match_records(system)
