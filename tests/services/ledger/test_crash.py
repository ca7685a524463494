"""SIGKILL between reserve and settle, of the ledger or of the worker holding the
reservation: no usage is lost, the reservation is released by expiry, nothing counts
twice. The ledgers are `agentrt serve ledger` processes on PostgreSQL; the worker is
LedgerSpend, in this process or in one that is killed."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeAlias

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import grpc
import pytest
from agentrt.common.v1 import common_pb2
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from agentrt.ledger.v1.ledger_pb2 import Amounts, Budget, Price, Reservation

from services.kit.ids import new_id
from services.kit.storage import StorageConfig, migrate
from services.ledger.store import SQL_DIRECTORY
from services.orchestrator.spend import LedgerHold, LedgerSpend, SpendConfig
from tests.services.ledger.conftest import LedgerDatabases
from tests.services.ledger.ledger_processes import ledger_processes
from tests.services.ledger.spend_calls import TENANT, USAGE, model_call, worker_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

Stub: TypeAlias = "ledger_pb2_grpc.LedgerServiceAsyncStub"

REPO = Path(__file__).resolve().parents[3]
WAIT = 30.0
"""Seconds a test waits for something the ledger must do, before it fails."""
COST = "0.00028"
"""USAGE at the price `prepare` sets: 120 input tokens at 1.00 + 80 output at 2.00 per
million."""


@pytest.fixture
async def dsn(pg_dsn: str, ledger_databases: LedgerDatabases) -> str:
    """The migrated database the ledger processes share, checked after the test."""
    config = ledger_databases.track(StorageConfig("postgres", None, pg_dsn, "ledger"))
    await migrate(config, SQL_DIRECTORY)
    return pg_dsn


async def test_a_ledger_killed_between_reserve_and_settle_loses_and_doubles_nothing(
    dsn: str, tmp_path: Path
) -> None:
    with ledger_processes(dsn, tmp_path / "logs") as ledgers:
        address = ledgers.start()
        async with grpc.aio.insecure_channel(address) as channel:
            stub: Stub = ledger_pb2_grpc.LedgerServiceStub(channel)
            await prepare(stub)
            spend = LedgerSpend(stub, SpendConfig(reservation_ttl=1, settle_retry_seconds=120))
            job = worker_job(f"jobs/{new_id()}")
            hold = await spend.reserve_model_call(job, common_pb2.Usage(), model_call())
            forgotten = await spend.reserve_model_call(job, common_pb2.Usage(), model_call())

            ledgers.kill(address)
            settling = asyncio.create_task(
                spend.settle_model_call(job, hold, USAGE, "turn-1.model")
            )
            await failed_to_connect(channel)  # The settle met the dead ledger.
            ledgers.start(address)
            settled = await asyncio.wait_for(settling, 120)

            assert settled.cost == COST
            await until(lambda: state_of(dsn, forgotten.reservation), Reservation.STATE_EXPIRED)
            # Delivered again (a retry whose answer was lost): counted once.
            assert await spend.settle_model_call(job, hold, USAGE, "turn-1.model") == settled
            assert await state_of(dsn, hold.reservation) == Reservation.STATE_SETTLED
            await expect_spent_once(stub, dsn)


async def test_a_worker_killed_between_reserve_and_settle_leaves_nothing_held(
    dsn: str, tmp_path: Path
) -> None:
    job_name = f"jobs/{new_id()}"
    with ledger_processes(dsn, tmp_path / "logs") as ledgers:
        address = ledgers.start()
        async with grpc.aio.insecure_channel(address) as channel:
            stub: Stub = ledger_pb2_grpc.LedgerServiceStub(channel)
            await prepare(stub)
            dead = await reserve_in_a_worker_then_kill_it(address, job_name)

            await until(lambda: state_of(dsn, dead), Reservation.STATE_EXPIRED)
            assert (await status(stub)).reserved.tokens == 0
            # The worker that takes the job over repeats the turn under the same record
            # id; the dead worker's settle arriving late after all counts once too.
            spend = LedgerSpend(stub)
            job = worker_job(job_name)
            hold = await spend.reserve_model_call(job, common_pb2.Usage(), model_call())
            await spend.settle_model_call(job, hold, USAGE, "turn-1.model")
            late = LedgerHold(reservation=dead, model="m1")
            assert (await spend.settle_model_call(job, late, USAGE, "turn-1.model")).cost == COST
            await expect_spent_once(stub, dsn)


async def failed_to_connect(channel: grpc.aio.Channel) -> None:
    """Wait until a call on `channel` found nobody listening."""
    async with asyncio.timeout(WAIT):
        state = channel.get_state()
        while state != grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            await channel.wait_for_state_change(state)
            state = channel.get_state()


async def reserve_in_a_worker_then_kill_it(address: str, job_name: str) -> str:
    """The reservation a worker process made (ttl 2 s) before it was SIGKILLed."""
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.services.ledger.reserve_and_hang",
        address,
        job_name,
        "2",
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert worker.stdout is not None
        line = await asyncio.wait_for(worker.stdout.readline(), WAIT)
        name = line.decode().strip()
        assert name.startswith("reservations/"), f"the worker printed {line!r}"
    finally:
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
    return name


async def prepare(stub: Stub) -> None:
    """A price for m1 and a daily budget of the tenant, both far from their limits."""
    await stub.CreatePrice(
        ledger_pb2.CreatePriceRequest(
            price_id="m1",
            price=Price(input_price_per_million="1.00", output_price_per_million="2.00"),
        )
    )
    budget = Budget(
        tenant=TENANT, period=Budget.PERIOD_DAY, limits=Amounts(tokens=1_000_000, cost="10")
    )
    await stub.CreateBudget(ledger_pb2.CreateBudgetRequest(budget_id="daily", budget=budget))


async def status(stub: Stub) -> ledger_pb2.BudgetStatus:
    response = await stub.CheckBudget(
        ledger_pb2.CheckBudgetRequest(tenant=TENANT, principal="alice")
    )
    (only,) = response.budgets
    return only


async def expect_spent_once(stub: Stub, dsn: str) -> None:
    """USAGE was recorded exactly once, and nothing is held any more."""
    found = await status(stub)
    spent = USAGE.input_tokens + USAGE.output_tokens
    assert (found.spent.tokens, found.spent.cost, found.reserved.tokens) == (spent, COST, 0)
    connection = await asyncpg.connect(dsn, server_settings={"search_path": "ledger"})
    try:
        assert await connection.fetchval("SELECT count(*) FROM usage_records") == 1
    finally:
        await connection.close()


async def state_of(dsn: str, reservation: str) -> int:
    connection = await asyncpg.connect(dsn, server_settings={"search_path": "ledger"})
    try:
        state = await connection.fetchval(
            "SELECT state FROM reservations WHERE id = $1", reservation.split("/", 1)[1]
        )
    finally:
        await connection.close()
    return int(state)


async def until(read: Callable[[], Awaitable[int]], expected: int) -> None:
    """Poll `read` until it gives `expected`, for up to WAIT seconds."""
    async with asyncio.timeout(WAIT):
        while True:
            if await read() == expected:
                return
            await asyncio.sleep(0.1)
