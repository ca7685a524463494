"""SpendBatcher through LedgerSpend against a real ledger server: concurrent jobs' holds and
settlements travel in few BatchSpend calls, each job gets its own answer or denial, and a
ledger without BatchSpend is sent single calls."""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import pytest
from agentrt.common.v1 import common_pb2
from agentrt.ledger.v1 import ledger_pb2_grpc

from services.kit.config import RuntimeConfig
from services.kit.events import InMemoryEventChannel, InMemoryWakeups
from services.kit.infra import Infrastructure
from services.kit.server import Server
from services.kit.storage import migrate
from services.ledger.server import LedgerUnit, create_unit
from services.ledger.store import SQL_DIRECTORY
from services.orchestrator.guards import BudgetExceeded, Hold
from services.orchestrator.spend import LedgerSpend, SpendConfig

from .test_spend import budgeted, call, job, priced, status

Stub: TypeAlias = "ledger_pb2_grpc.LedgerServiceAsyncStub"
JOBS = 30


class CountingCalls(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Counts the calls the channel makes, by method name."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        method = details.method
        name = method.decode() if isinstance(method, bytes) else method
        self.calls[name.rsplit("/", 1)[1]] += 1
        return await continuation(details, request)


async def serve_ledger(
    tmp_path: Path, change: Callable[[LedgerUnit], None] = lambda unit: None
) -> AsyncIterator[tuple[Stub, CountingCalls]]:
    infra = Infrastructure(
        RuntimeConfig.from_env({"AGENTRT_DATA_DIR": str(tmp_path)}),
        InMemoryEventChannel(),
        InMemoryWakeups(),
    )
    await migrate(infra.storage("ledger"), SQL_DIRECTORY)
    unit = await create_unit(infra)
    change(unit)
    server = Server("127.0.0.1:0", "ledger")
    await server.start([unit])
    counting = CountingCalls()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}",
            interceptors=[counting],  # type: ignore[list-item]
        ) as channel:
            yield ledger_pb2_grpc.LedgerServiceStub(channel), counting
    finally:
        await server.stop(grace=1.0)
        await unit.close()
        await infra.close()


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[tuple[Stub, CountingCalls]]:
    """A ledger on SQLite behind a real server, reached through a counting channel."""
    async for served in serve_ledger(tmp_path):
        yield served


def without_batches(unit: LedgerUnit) -> None:
    """The ledger of a release before BatchSpend: the generated servicer's default."""
    servicer = unit._servicer
    servicer.BatchSpend = functools.partial(  # type: ignore[method-assign, assignment]
        ledger_pb2_grpc.LedgerServiceServicer.BatchSpend, servicer
    )


@pytest.fixture
async def old_ledger(tmp_path: Path) -> AsyncIterator[tuple[Stub, CountingCalls]]:
    async for served in serve_ledger(tmp_path, without_batches):
        yield served


async def run_jobs(
    spend: LedgerSpend, count: int, prefix: str = "job"
) -> list[Hold | BudgetExceeded]:
    """`count` jobs reserving a call at once; each admitted one settles 40 tokens."""

    async def one(i: int) -> Hold | BudgetExceeded:
        request = call(max_output=100)
        request.idempotency_key = f"{prefix}-{i}:1:0"
        try:
            hold = await spend.reserve_model_call(job(), common_pb2.Usage(), request)
        except BudgetExceeded as denied:
            return denied
        usage = common_pb2.Usage(input_tokens=30, output_tokens=10)
        await spend.settle_model_call(job(), hold, usage, f"{prefix}-record-{i}")
        return hold

    return await asyncio.gather(*(one(i) for i in range(count)))


async def test_concurrent_jobs_share_batches_and_each_gets_its_own_answer(
    ledger: tuple[Stub, CountingCalls],
) -> None:
    stub, counting = ledger
    await priced(stub)
    # Each call's worst case is about 105 tokens: 2000 admit some 19 of 30 at once.
    await budgeted(stub, tokens=2000)
    spend = LedgerSpend(stub, SpendConfig())
    await run_jobs(spend, 1, "first")  # The price is cached from here on.
    counting.calls.clear()

    outcomes = await run_jobs(spend, JOBS)

    admitted = [o for o in outcomes if isinstance(o, Hold)]
    denied = [o for o in outcomes if isinstance(o, BudgetExceeded)]
    assert admitted and denied and len(admitted) + len(denied) == JOBS
    assert len({hold.reservation for hold in admitted}) == len(admitted)
    assert {d.failure.metadata["budget"] for d in denied} == {"budgets/daily"}
    assert all(d.failure.reason == common_pb2.ERROR_REASON_BUDGET_EXCEEDED for d in denied)
    # JOBS reserves and len(admitted) settles went in far fewer calls, none of them single.
    assert set(counting.calls) == {"BatchSpend"}
    assert counting.calls["BatchSpend"] <= (JOBS + len(admitted)) // 3
    spent = await status(stub)
    assert (spent.spent.tokens, spent.reserved.tokens) == (40 * (len(admitted) + 1), 0)


async def test_a_ledger_without_batches_is_sent_single_calls(
    old_ledger: tuple[Stub, CountingCalls],
) -> None:
    stub, counting = old_ledger
    await priced(stub)
    await budgeted(stub, tokens=100_000)
    spend = LedgerSpend(stub, SpendConfig())

    outcomes = await run_jobs(spend, 5)

    assert all(isinstance(o, Hold) for o in outcomes)
    # Refused by the first (and a second already on its way), never asked again.
    assert 1 <= counting.calls["BatchSpend"] <= 2
    assert (counting.calls["ReserveBudget"], counting.calls["SettleReservation"]) == (5, 5)
    assert (await status(stub)).spent.tokens == 5 * 40


async def test_one_call_per_operation_when_batching_is_off(
    ledger: tuple[Stub, CountingCalls],
) -> None:
    stub, counting = ledger
    await priced(stub)
    spend = LedgerSpend(stub, SpendConfig(batch_operations=1))

    await run_jobs(spend, 3)

    assert "BatchSpend" not in counting.calls
    assert (counting.calls["ReserveBudget"], counting.calls["SettleReservation"]) == (3, 3)
