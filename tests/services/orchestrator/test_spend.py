"""LedgerSpend against a real ledger server: worst-case reservations, the job's BudgetSpec,
tenant budgets, unpriced models, tool calls, and failing closed when the ledger is gone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TypeAlias

import grpc
import pytest
from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2
from agentrt.jobs.v1 import jobs_pb2
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from agentrt.ledger.v1.ledger_pb2 import Amounts, Budget, Price

from services.engine.convert import message_from_proto
from services.engine.model import ChatMessage
from services.engine.tokens import estimate_message_tokens
from services.kit.config import ConfigError, RuntimeConfig
from services.kit.events import InMemoryEventChannel, InMemoryWakeups
from services.kit.ids import new_id
from services.kit.infra import Infrastructure
from services.kit.server import Server
from services.kit.storage import migrate
from services.ledger.server import create_unit
from services.ledger.store import SQL_DIRECTORY
from services.orchestrator import spend as spend_module
from services.orchestrator.guards import BudgetExceeded, SpendGuard
from services.orchestrator.spend import (
    LedgerHold,
    LedgerSpend,
    LedgerUnavailable,
    SpendConfig,
    open_spend_guard,
    runtime_deadline,
)
from tests.e2e.processes import free_port

from .conftest import TENANT, System
from .test_loop import CountingTools, create_policy, job_with_tools, runner

Stub: TypeAlias = "ledger_pb2_grpc.LedgerServiceAsyncStub"

NOW = datetime(2030, 1, 15, 12, tzinfo=UTC)
JOB = f"jobs/{new_id()}"
PARENT = f"jobs/{new_id()}"


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Stub]:
    """A ledger unit on SQLite behind a real server."""
    infra = Infrastructure(
        RuntimeConfig.from_env({"AGENTRT_DATA_DIR": str(tmp_path)}),
        InMemoryEventChannel(),
        InMemoryWakeups(),
    )
    await migrate(infra.storage("ledger"), SQL_DIRECTORY)
    unit = await create_unit(infra)
    server = Server("127.0.0.1:0", "ledger")
    await server.start([unit])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield ledger_pb2_grpc.LedgerServiceStub(channel)
    finally:
        await server.stop(grace=1.0)
        await unit.close()
        await infra.close()


def spend_on(ledger: Stub, **config: object) -> LedgerSpend:
    return LedgerSpend(ledger, SpendConfig(**config), clock=lambda: NOW)  # type: ignore[arg-type]


def job(budget: common_pb2.BudgetSpec | None = None, parent: str = "") -> jobs_pb2.Job:
    made = jobs_pb2.Job(
        name=JOB,
        tenant="acme",
        principal="alice",
        spec=jobs_pb2.JobSpec(model="m1", parent=parent),
        trace_id="0af7651916cd43dd8448eb211c80319c",
    )
    if budget is not None:
        made.spec.budget.CopyFrom(budget)
    made.create_time.FromDatetime(NOW - timedelta(seconds=10))
    return made


def call(max_output: int | None = 100, model: str = "m1") -> engine_pb2.CompleteRequest:
    request = engine_pb2.CompleteRequest(
        model=model,
        messages=[common_pb2.Message(role=common_pb2.ROLE_USER, content="hello world")],
        idempotency_key="j1:1:0",
    )
    if max_output is not None:
        request.params.max_output_tokens = max_output
    return request


async def priced(ledger: Stub, model: str = "m1") -> None:
    await ledger.CreatePrice(
        ledger_pb2.CreatePriceRequest(
            price_id=model,
            price=Price(input_price_per_million="1.00", output_price_per_million="2.00"),
        )
    )


async def budgeted(ledger: Stub, name: str = "daily", **limits: object) -> None:
    budget = Budget(tenant="acme", period=Budget.PERIOD_DAY, limits=Amounts(**limits))  # type: ignore[arg-type]
    await ledger.CreateBudget(ledger_pb2.CreateBudgetRequest(budget_id=name, budget=budget))


async def status(ledger: Stub) -> ledger_pb2.BudgetStatus:
    response = await ledger.CheckBudget(
        ledger_pb2.CheckBudgetRequest(tenant="acme", principal="alice")
    )
    (only,) = response.budgets
    return only


def as_spend_guard(spend: LedgerSpend) -> SpendGuard:
    """mypy checks here that LedgerSpend implements the SpendGuard protocol."""
    return spend


async def test_a_model_call_holds_its_worst_case_and_settles_its_real_usage(ledger: Stub) -> None:
    await priced(ledger)
    await budgeted(ledger, tokens=100_000, cost="1.00")
    spend = spend_on(ledger)

    hold = await spend.reserve_model_call(job(), common_pb2.Usage(), call(max_output=100))

    worst = spend.worst_case(call(max_output=100), None)
    assert worst.output_tokens == 100
    assert isinstance(hold, LedgerHold) and hold.model == "m1"
    held = await status(ledger)
    assert held.reserved.tokens == worst.tokens
    # Input at 1.00 and output at 2.00 per million tokens.
    assert held.reserved.cost == f"0.000{worst.input_tokens + 200:03d}"

    usage = common_pb2.Usage(input_tokens=10, output_tokens=20)
    settled = await spend.settle_model_call(job(parent=PARENT), hold, usage, "j1.1.model")
    assert settled.cost == "0.00005"
    assert settled.total_tokens == 30
    again = await spend.settle_model_call(job(parent=PARENT), hold, usage, "j1.1.model")
    assert again == settled

    after = await status(ledger)
    assert (after.spent.tokens, after.spent.cost, after.reserved.tokens) == (30, "0.00005", 0)
    records = await ledger.ListUsageRecords(ledger_pb2.ListUsageRecordsRequest(tenant="acme"))
    (record,) = records.usage_records
    assert (record.job, record.parent_job, record.model) == (JOB, PARENT, "m1")
    assert record.trace_id == "0af7651916cd43dd8448eb211c80319c"


async def test_the_hold_is_an_upper_bound_when_cache_writes_cost_more_than_input(
    ledger: Stub,
) -> None:
    price = Price(
        input_price_per_million="1",
        output_price_per_million="2",
        cache_write_price_per_million="3.75",
    )
    await ledger.CreatePrice(ledger_pb2.CreatePriceRequest(price_id="m1", price=price))
    await budgeted(ledger, tokens=100_000, cost="1.00")
    spend = spend_on(ledger)
    request = call(max_output=100)

    hold = await spend.reserve_model_call(job(), common_pb2.Usage(), request)
    held = await status(ledger)
    worst = spend.worst_case(request, None)
    # The worst call writes its whole prompt to the cache and makes all its output.
    written = common_pb2.Usage(
        input_tokens=worst.input_tokens,
        cache_write_input_tokens=worst.input_tokens,
        output_tokens=worst.output_tokens,
    )
    settled = await spend.settle_model_call(job(), hold, written, "j1.1.model")

    assert Decimal(held.reserved.cost) == Decimal(worst.input_tokens * 375 + 200 * 100) / 10**8
    assert Decimal(settled.cost) == Decimal(held.reserved.cost)
    assert settled.cache_write_input_tokens == worst.input_tokens
    (record,) = (
        await ledger.ListUsageRecords(ledger_pb2.ListUsageRecordsRequest(tenant="acme"))
    ).usage_records
    assert record.usage.cache_write_input_tokens == worst.input_tokens


async def test_without_max_output_tokens_the_configured_default_is_held(ledger: Stub) -> None:
    await budgeted(ledger, tokens=100_000)
    spend = spend_on(ledger, default_max_output_tokens=2000)

    await spend.reserve_model_call(job(), common_pb2.Usage(), call(max_output=None))

    assert (await status(ledger)).reserved.tokens == spend.worst_case(call(2000), None).tokens


async def test_a_released_hold_gives_its_amounts_back(ledger: Stub) -> None:
    await budgeted(ledger, tokens=1000)
    spend = spend_on(ledger)
    hold = await spend.reserve_model_call(job(), common_pb2.Usage(), call())

    await spend.release(hold, "the model call failed")
    await spend.release(hold, "released twice: no change")

    assert (await status(ledger)).reserved.tokens == 0


@pytest.mark.parametrize(
    ("budget", "spent", "expected"),
    [
        (
            common_pb2.BudgetSpec(max_tokens=100),
            common_pb2.Usage(input_tokens=30, output_tokens=10),
            "job budget max_tokens (100) would be exceeded by ",
        ),
        (
            common_pb2.BudgetSpec(max_cost="0.0001"),
            common_pb2.Usage(cost="0.00009"),
            "job budget max_cost (0.0001) would be exceeded by 0.000",
        ),
        (
            common_pb2.BudgetSpec(max_turns=2),
            common_pb2.Usage(model_calls=2),
            "job budget max_turns (2) would be exceeded by 1: 2 model calls made so far",
        ),
    ],
)
async def test_the_jobs_budget_spec_refuses_a_call_naming_the_limit_and_the_overrun(
    ledger: Stub, budget: common_pb2.BudgetSpec, spent: common_pb2.Usage, expected: str
) -> None:
    await priced(ledger)
    await budgeted(ledger, tokens=1000)
    spend = spend_on(ledger)

    with pytest.raises(BudgetExceeded) as denied:
        await spend.reserve_model_call(job(budget), spent, call(max_output=100))

    failure = denied.value.failure
    assert failure.reason == common_pb2.ERROR_REASON_BUDGET_EXCEEDED
    assert failure.message.startswith(expected), failure.message
    assert failure.metadata["budget"].startswith("job.spec.budget.max_")
    assert (await status(ledger)).reserved.tokens == 0


async def test_the_overrun_of_max_tokens_counts_the_worst_case(ledger: Stub) -> None:
    spend = spend_on(ledger)
    request = call(max_output=100)
    worst = spend.worst_case(request, None)
    budget = common_pb2.BudgetSpec(max_tokens=worst.tokens + 39)

    with pytest.raises(BudgetExceeded) as denied:
        await spend.reserve_model_call(job(budget), common_pb2.Usage(input_tokens=40), request)

    assert denied.value.failure.metadata["overrun"] == "1"
    await spend.reserve_model_call(job(budget), common_pb2.Usage(input_tokens=39), request)


async def test_max_runtime_refuses_calls_once_the_job_ran_past_it(ledger: Stub) -> None:
    spend = spend_on(ledger)
    budget = common_pb2.BudgetSpec()
    budget.max_runtime.FromSeconds(5)

    with pytest.raises(BudgetExceeded) as denied:
        await spend.reserve_model_call(job(budget), common_pb2.Usage(), call())
    with pytest.raises(BudgetExceeded):
        await spend.check_tool_call(job(budget), common_pb2.Usage())

    assert "job budget max_runtime (5s) would be exceeded by 5.000s" in str(denied.value)
    assert runtime_deadline(job(budget)) == NOW - timedelta(seconds=5)
    assert runtime_deadline(job()) is None


async def test_a_tenant_budget_refuses_a_call_naming_the_budget_period_and_overrun(
    ledger: Stub,
) -> None:
    await budgeted(ledger, tokens=100)
    spend = spend_on(ledger)

    with pytest.raises(BudgetExceeded) as denied:
        await spend.reserve_model_call(job(), common_pb2.Usage(), call(max_output=100))

    failure = denied.value.failure
    assert failure.reason == common_pb2.ERROR_REASON_BUDGET_EXCEEDED
    assert failure.message.startswith(
        "tenant budget budgets/daily would be exceeded: tokens limit 100 per day, overrun "
    )
    assert failure.metadata["budget"] == "budgets/daily"
    assert failure.metadata["dimension"] == "tokens"


async def test_an_unpriced_model_is_refused_when_a_cost_limit_applies(ledger: Stub) -> None:
    spend = spend_on(ledger)
    await spend.reserve_model_call(job(), common_pb2.Usage(), call())  # No cost limit.
    with pytest.raises(BudgetExceeded) as by_job:
        await spend.reserve_model_call(
            job(common_pb2.BudgetSpec(max_cost="1")), common_pb2.Usage(), call()
        )
    await budgeted(ledger, cost="1.00")
    fresh = spend_on(ledger)  # Another worker: nothing cached.

    with pytest.raises(BudgetExceeded) as by_tenant:
        await fresh.reserve_model_call(job(), common_pb2.Usage(), call())

    assert "the model has no price in the ledger" in by_job.value.failure.message
    assert "model 'm1' has no price in the ledger" in by_tenant.value.failure.message
    allowing = spend_on(ledger, unpriced_models="allow")
    hold = await allowing.reserve_model_call(job(), common_pb2.Usage(), call())
    usage = common_pb2.Usage(input_tokens=10, output_tokens=20)
    settled = await allowing.settle_model_call(job(), hold, usage, "j1.1.model")
    assert settled.cost == ""


async def test_tool_calls_are_held_then_recorded_against_the_tenants_budget(ledger: Stub) -> None:
    await budgeted(ledger, tool_calls=2)
    spend = spend_on(ledger)
    tool = common_pb2.ToolCall(id="c1", name="search")

    await spend.check_tool_call(job(), common_pb2.Usage())
    await spend.check_tool_call(job(), common_pb2.Usage())  # Again, after an approval.
    assert (await status(ledger)).reserved.tool_calls == 1
    await spend.record_tool_call(job(), tool, "j1.c1.tool")
    await spend.record_tool_call(job(), tool, "j1.c1.tool")  # Delivered twice.
    await spend.check_tool_call(job(), common_pb2.Usage(tool_calls=1))
    await spend.record_tool_call(job(), common_pb2.ToolCall(id="c2", name="x"), "j1.c2.tool")

    with pytest.raises(BudgetExceeded) as denied:
        await spend.check_tool_call(job(), common_pb2.Usage(tool_calls=2))
    held = await status(ledger)
    assert (held.spent.tool_calls, held.reserved.tool_calls) == (2, 0)
    assert "tool_calls limit 2 per day" in denied.value.failure.message


async def test_a_check_before_an_approval_holds_nothing_and_still_refuses(ledger: Stub) -> None:
    await budgeted(ledger, tool_calls=1)
    spend = spend_on(ledger)
    other = spend_on(ledger)  # The worker that runs the call once it is approved.

    # Before approval: checked against the budget, and nothing stays held meanwhile.
    await spend.check_tool_call(job(), common_pb2.Usage(), hold=False)
    assert (await status(ledger)).reserved.tool_calls == 0
    # Approved, run on another worker: one hold, settled by the record.
    await other.check_tool_call(job(), common_pb2.Usage())
    assert (await status(ledger)).reserved.tool_calls == 1
    await other.record_tool_call(job(), common_pb2.ToolCall(id="c1", name="x"), "j1.c1.tool")
    held = await status(ledger)
    assert (held.spent.tool_calls, held.reserved.tool_calls) == (1, 0)

    # The budget is spent: the next call is refused before anyone is asked to approve it.
    with pytest.raises(BudgetExceeded):
        await spend.check_tool_call(job(), common_pb2.Usage(tool_calls=1), hold=False)
    assert (await status(ledger)).reserved.tool_calls == 0


async def test_the_jobs_max_tool_calls_refuses_the_next_tool_call(ledger: Stub) -> None:
    spend = spend_on(ledger)

    with pytest.raises(BudgetExceeded) as denied:
        await spend.check_tool_call(
            job(common_pb2.BudgetSpec(max_tool_calls=3)), common_pb2.Usage(tool_calls=3)
        )

    assert denied.value.failure.message.startswith(
        "job budget max_tool_calls (3) would be exceeded by 1"
    )


async def test_without_a_ledger_nothing_is_admitted() -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as channel:
        spend = LedgerSpend(
            ledger_pb2_grpc.LedgerServiceStub(channel),
            SpendConfig(retry_seconds=0.3, settle_retry_seconds=0.3, attempt_timeout=1),
        )

        with pytest.raises(LedgerUnavailable) as denied:
            await spend.reserve_model_call(job(), common_pb2.Usage(), call())
        with pytest.raises(LedgerUnavailable):
            await spend.check_tool_call(job(), common_pb2.Usage())
        with pytest.raises(LedgerUnavailable):
            await spend.settle_model_call(
                job(), LedgerHold("reservations/x"), common_pb2.Usage(), "j1.1.model"
            )
        await spend.release(LedgerHold("reservations/x"), "logged, not raised")

    assert isinstance(denied.value, BudgetExceeded)
    assert denied.value.failure.reason == common_pb2.ERROR_REASON_DEPENDENCY_UNAVAILABLE
    assert "the ledger is unavailable" in denied.value.failure.message


async def test_a_job_stopped_by_its_tenants_budget_fails_keeping_what_it_spent(
    system: System,
) -> None:
    ledger_stub: Stub = ledger_pb2_grpc.LedgerServiceStub(system.infra.channel("ledger"))
    no_tools = Budget(tenant=TENANT, period=Budget.PERIOD_DAY, limits=Amounts(tool_calls=0))
    await ledger_stub.CreateBudget(
        ledger_pb2.CreateBudgetRequest(budget_id="no-tools", budget=no_tools)
    )
    await create_policy(system)
    tools = CountingTools()
    await system.pool("worker-a", tools=runner(tools), spend=open_spend_guard(system.infra)).start()

    job = await job_with_tools(system, "call bump {}")

    assert (await system.end(job)).type == common_pb2.EVENT_TYPE_JOB_FAILED
    done = await system.get_job(job)
    assert done.failure.reason == common_pb2.ERROR_REASON_BUDGET_EXCEEDED
    assert done.failure.message.startswith(
        "tenant budget budgets/no-tools would be exceeded: tool_calls limit 0 per day, overrun 1"
    )
    assert tools.runs["bump"] == 0
    recorded = await ledger_stub.ListUsageRecords(
        ledger_pb2.ListUsageRecordsRequest(tenant=TENANT, job=job)
    )
    (model_call,) = recorded.usage_records
    assert done.usage.model_calls == 1
    assert model_call.usage.input_tokens == done.usage.input_tokens > 0
    assert model_call.usage.output_tokens == done.usage.output_tokens


def test_the_configuration_is_read_from_the_environment() -> None:
    config = SpendConfig.from_env(
        {"AGENTRT_RESERVATION_TTL_SECONDS": "90", "AGENTRT_UNPRICED_MODELS": "Allow"}
    )
    assert (config.reservation_ttl, config.unpriced_models) == (90.0, "allow")
    with pytest.raises(ConfigError, match="AGENTRT_UNPRICED_MODELS"):
        SpendConfig.from_env({"AGENTRT_UNPRICED_MODELS": "maybe"})
    with pytest.raises(ConfigError, match="at most 3600"):
        SpendConfig.from_env({"AGENTRT_RESERVATION_TTL_SECONDS": "7200"})


def test_the_worst_case_estimates_only_the_messages_added_since_the_jobs_last_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spend = LedgerSpend(None)  # type: ignore[arg-type]  # worst_case calls no ledger
    converted: list[str] = []
    real = message_from_proto

    def counting(message: common_pb2.Message, field: str) -> ChatMessage:
        converted.append(message.content)
        return real(message, field)

    monkeypatch.setattr(spend_module, "message_from_proto", counting)

    def turn(count: int, job_name: str = "jobs/j1") -> engine_pb2.CompleteRequest:
        request = call()
        request.job = job_name
        del request.messages[:]
        for index in range(count):
            role = common_pb2.ROLE_USER if index % 2 == 0 else common_pb2.ROLE_ASSISTANT
            request.messages.add(role=role, content=f"message number {index} " * (index + 1))
        return request

    def full(request: engine_pb2.CompleteRequest) -> int:
        messages = [real(m, "m") for m in request.messages]
        return estimate_message_tokens(messages) + 100  # max_output_tokens of call()

    for count in (1, 3, 6, 10):
        converted.clear()
        request = turn(count)
        assert spend.worst_case(request, None).tokens == full(request)
    assert len(converted) == 4  # The 7th to 10th messages only: the rest was estimated.

    # A conversation that is not the one estimated (its last known message changed) is
    # estimated again in full; so is another job's.
    changed = turn(10)
    changed.messages[9].content = "rewritten"
    converted.clear()
    assert spend.worst_case(changed, None).tokens == full(changed)
    assert len(converted) == 10
    converted.clear()
    assert spend.worst_case(turn(10, "jobs/j2"), None).tokens == full(turn(10, "jobs/j2"))
    assert len(converted) == 10
