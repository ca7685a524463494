"""Concurrent reservations never overspend on PostgreSQL: 50 at once against a budget that
fits one admit exactly one, round after round, through one store and through two ledger
processes; duplicated usage records count once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from agentrt.common.v1.common_pb2 import Usage
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from agentrt.ledger.v1.ledger_pb2 import Amounts, Budget, Reservation, UsageKind, UsageRecord

from services.kit.errors import ResourceExhausted
from services.kit.storage import StorageConfig, migrate
from services.ledger import records
from services.ledger.records import BudgetSpec, Quantities, ReservationRequest
from services.ledger.store import SQL_DIRECTORY, LedgerStore, open_ledger_store
from tests.services.kit.status import error_info
from tests.services.ledger.conftest import T0, LedgerDatabases, budget
from tests.services.ledger.ledger_processes import ledger_processes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROUNDS = 200
CONCURRENT = 50
TIMEOUT = 30

DIMENSIONS: Sequence[tuple[str, Amounts]] = (
    ("tokens", Amounts(tokens=600)),
    ("cost", Amounts(cost="0.600000001")),
    ("tool_calls", Amounts(tool_calls=1)),
)
"""Per dimension, an amount of which the budget of `_fitting_one` fits exactly one."""


def _fitting_one(dimension: str, tenant: str) -> BudgetSpec:
    if dimension == "tokens":
        return budget(tenant=tenant, tokens=1000)
    if dimension == "cost":
        return budget(tenant=tenant, cost="1.00")
    return budget(tenant=tenant, tool_calls=1)


@pytest.fixture
async def pg_store(pg_dsn: str, ledger_databases: LedgerDatabases) -> AsyncIterator[LedgerStore]:
    """One PostgreSQL store (one pool) reused by every round."""
    config = ledger_databases.track(StorageConfig("postgres", None, pg_dsn, "ledger"))
    await migrate(config, SQL_DIRECTORY)
    store = await open_ledger_store(config)
    try:
        yield store
    finally:
        await store.close()


async def test_one_store_admits_exactly_one_of_50_in_every_round(pg_store: LedgerStore) -> None:
    for round_number in range(ROUNDS):
        dimension, amount = DIMENSIONS[round_number % len(DIMENSIONS)]
        tenant = f"t{round_number}"
        await pg_store.create_budget(f"b{round_number}", _fitting_one(dimension, tenant), T0)
        if round_number % 2:
            # Half the rounds race on a counter that exists already, half on making it.
            await pg_store.check_budget(tenant, "alice", Quantities(), T0)
        request = _reservation(tenant, amount)
        results = await asyncio.gather(
            *(pg_store.reserve(request, T0) for _ in range(CONCURRENT)), return_exceptions=True
        )
        admitted = [r for r in results if isinstance(r, Reservation)]
        denied = [r for r in results if isinstance(r, ResourceExhausted)]
        assert len(admitted) + len(denied) == CONCURRENT, [
            r for r in results if isinstance(r, Exception) and not isinstance(r, ResourceExhausted)
        ]
        assert len(admitted) == 1, f"round {round_number} ({dimension}): {len(admitted)} admitted"
        assert {d.metadata["dimension"] for d in denied} == {dimension}


async def test_two_ledger_processes_admit_exactly_one_of_50_in_every_round(
    pg_dsn: str, tmp_path: Path, ledger_databases: LedgerDatabases
) -> None:
    config = ledger_databases.track(StorageConfig("postgres", None, pg_dsn, "ledger"))
    await migrate(config, SQL_DIRECTORY)
    with ledger_processes(pg_dsn, tmp_path / "logs") as ledgers:
        addresses = [ledgers.start(), ledgers.start()]
        async with (
            grpc.aio.insecure_channel(addresses[0]) as first,
            grpc.aio.insecure_channel(addresses[1]) as second,
        ):
            stubs = [ledger_pb2_grpc.LedgerServiceStub(c) for c in (first, second)]
            for round_number in range(ROUNDS):
                await _grpc_round(stubs, round_number)


async def _grpc_round(stubs: list[ledger_pb2_grpc.LedgerServiceAsyncStub], number: int) -> None:
    """50 reservations split over both ledgers: one admitted, the rest BUDGET_EXCEEDED. The
    admitted one is settled on one ledger while its usage record is delivered to both at
    once as well: the record counts once."""
    tenant = f"t{number}"
    message = Budget(tenant=tenant, period=Budget.PERIOD_DAY)
    message.limits.tokens = 1000
    await stubs[0].CreateBudget(
        ledger_pb2.CreateBudgetRequest(budget_id=f"b{number}", budget=message), timeout=TIMEOUT
    )
    request = ledger_pb2.ReserveBudgetRequest(
        tenant=tenant, principal="alice", amounts=Amounts(tokens=600)
    )
    calls = [stubs[n % 2].ReserveBudget(request, timeout=TIMEOUT) for n in range(CONCURRENT)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    admitted = [r for r in results if isinstance(r, Reservation)]
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(admitted) + len(failed) == CONCURRENT
    assert len(admitted) == 1, f"round {number}: {len(admitted)} admitted"
    assert {(e.code(), error_info(e).reason) for e in failed} == {
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED")
    }

    usage = ledger_pb2.RecordUsageRequest(
        usage_record_id=f"call-{number}",
        usage_record=UsageRecord(
            kind=UsageKind.USAGE_KIND_MODEL_CALL,
            usage=Usage(input_tokens=300, output_tokens=200),
            model="m1",
            tenant=tenant,
            principal="alice",
        ),
    )
    settle = ledger_pb2.SettleReservationRequest(name=admitted[0].name, usage_records=[usage])
    await asyncio.gather(
        stubs[0].SettleReservation(settle, timeout=TIMEOUT),
        stubs[0].RecordUsage(usage, timeout=TIMEOUT),
        stubs[1].RecordUsage(usage, timeout=TIMEOUT),
        stubs[1].SettleReservation(settle, timeout=TIMEOUT),
    )
    check = await stubs[number % 2].CheckBudget(
        ledger_pb2.CheckBudgetRequest(tenant=tenant, principal="alice"), timeout=TIMEOUT
    )
    assert [(s.spent.tokens, s.reserved.tokens) for s in check.budgets] == [(500, 0)]


def _reservation(tenant: str, amount: Amounts) -> ReservationRequest:
    quantities = records.parse_amounts(amount, "amounts")
    return ReservationRequest(
        tenant=tenant,
        principal="alice",
        job="jobs/j1",
        amounts=quantities,
        ttl=timedelta(minutes=5),
        request_id="",
        request_hash=records.request_hash(tenant, quantities),
    )
