"""End to end: an orchestrator SIGKILLed while its model call holds a reservation in the
ledger. Each service runs as its own process on PostgreSQL and Redis; the tenant has a
budget, so every model call reserves its worst case first. Another orchestrator takes the
job over and it succeeds once; the dead worker's reservation is given back by the ledger's
sweeper when its ttl ends; the turn's usage is recorded once, and the budget's counters
are the sum of the usage records."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import grpc
import pytest
from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from agentrt.ledger.v1.ledger_pb2 import Amounts, Budget, Price, Reservation

from services.jobs.states import TERMINAL
from services.kit.storage import StorageConfig
from tests.e2e.processes import Cluster, cluster
from tests.services.ledger.conftest import check_invariant

if TYPE_CHECKING:
    from agentrt.jobs.v1.jobs_pb2_grpc import JobServiceAsyncStub
    from agentrt.ledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(300)]

T = TypeVar("T")
E = common_pb2
TENANT = "acme"
PRINCIPAL = "alice"
MODEL = "local-slow"
WAIT = 90.0
"""Seconds the test waits for something the system must do (a loaded 2-core machine)."""
KILLED_TTL = "2"
"""The reservation ttl of the orchestrator that is killed: its hold expires soon."""
PROMPT = " ".join(f"word{index}" for index in range(60))
"""`local-slow` streams the answer to it in about 75 chunks of 0.1 s: the call is in
flight for seconds, long enough to find its reservation and kill the worker mid-call."""


@pytest.fixture
def processes(pg_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Cluster]:
    """The services as processes with short leases, a ledger sweeper every 0.2 s and an
    orchestrator whose reservations last KILLED_TTL seconds."""
    with cluster(
        pg_dsn,
        redis_url,
        redis_prefix,
        tmp_path,
        extra={
            "AGENTRT_LEASE_SECONDS": "2",
            "AGENTRT_LOCAL_SLOW_CHUNK_DELAY": "0.1",
            "AGENTRT_RESERVATION_TTL_SECONDS": KILLED_TTL,
            "AGENTRT_RESERVATION_SWEEP_SECONDS": "0.2",
        },
    ) as running:
        yield running


async def test_an_orchestrator_killed_mid_call_leaves_no_hold_and_counts_the_turn_once(
    processes: Cluster, pg_dsn: str
) -> None:
    async with (
        grpc.aio.insecure_channel(processes.address("ledger")) as ledger_channel,
        grpc.aio.insecure_channel(processes.address("jobs")) as jobs_channel,
    ):
        ledger: LedgerServiceAsyncStub = ledger_pb2_grpc.LedgerServiceStub(ledger_channel)
        jobs: JobServiceAsyncStub = jobs_pb2_grpc.JobServiceStub(jobs_channel)
        await price_and_budget(ledger)
        job = await jobs.CreateJob(
            jobs_pb2.CreateJobRequest(
                tenant=TENANT,
                principal=PRINCIPAL,
                spec=jobs_pb2.JobSpec(prompt=PROMPT, model=MODEL),
            )
        )

        killed = await poll(lambda: active_reservation(pg_dsn, job.name))
        processes.kill("orchestrator")  # Between reserve and settle: the call streams.
        # The next worker's holds last long: only the dead worker's hold expires.
        processes.start(
            "orchestrator", name="orchestrator-2", extra={"AGENTRT_RESERVATION_TTL_SECONDS": "300"}
        )

        done = await poll(lambda: ended(jobs, job.name))
        assert done.state == E.JOB_STATE_SUCCEEDED, done.failure
        assert done.attempt >= 2
        assert "word59" in done.result.output
        history = await events_of(jobs, job.name)
        assert [e.type for e in history].count(E.EVENT_TYPE_JOB_SUCCEEDED) == 1
        starts = [e.attempt.attempt for e in history if e.type == E.EVENT_TYPE_JOB_STARTED]
        assert starts[:2] == [1, 2]  # The killed run, then the takeover.

        # The dead worker's reservation: never settled, expired by the sweeper.
        await poll(lambda: in_state(pg_dsn, job.name, killed, Reservation.STATE_EXPIRED))
        rows = await reservations_of(pg_dsn, job.name)
        assert rows[killed]["settled_records"] is None
        assert rows[killed]["end_time"] is not None
        assert Reservation.STATE_ACTIVE not in {row["state"] for row in rows.values()}
        job_id = job.name.removeprefix("jobs/")
        settled = [r for r in rows.values() if r["state"] == Reservation.STATE_SETTLED]
        assert settled, rows
        assert all(json.loads(r["settled_records"]) == [f"{job_id}.1.model"] for r in settled)

        # The turn is recorded once, with the job's usage and the turn event's.
        listed = await ledger.ListUsageRecords(
            ledger_pb2.ListUsageRecordsRequest(tenant=TENANT, job=job.name)
        )
        (record,) = listed.usage_records
        assert record.name == f"usageRecords/{job_id}.1.model"
        assert (record.kind, record.model) == (ledger_pb2.USAGE_KIND_MODEL_CALL, MODEL)
        usage = record.usage
        assert usage.input_tokens == done.usage.input_tokens > 0
        assert usage.output_tokens == done.usage.output_tokens > 0
        assert Decimal(usage.cost) == Decimal(done.usage.cost) > 0
        (turn,) = [e.turn_completed for e in history if e.type == E.EVENT_TYPE_TURN_COMPLETED]
        assert (turn.usage.input_tokens, turn.usage.output_tokens) == (
            usage.input_tokens,
            usage.output_tokens,
        )
        assert Decimal(turn.usage.cost) == Decimal(usage.cost)

        # The budget counts the tenant's usage records and holds nothing any more.
        await expect_counters_are_the_records(ledger)
    await check_invariant(StorageConfig("postgres", None, pg_dsn, "ledger"))


async def price_and_budget(ledger: LedgerServiceAsyncStub) -> None:
    """A price for the model and a daily budget of the tenant, far from its limits."""
    await ledger.CreatePrice(
        ledger_pb2.CreatePriceRequest(
            price_id=MODEL,
            price=Price(input_price_per_million="0.3", output_price_per_million="1.1"),
        ),
        wait_for_ready=True,
    )
    daily = Budget(
        tenant=TENANT, period=Budget.PERIOD_DAY, limits=Amounts(tokens=1_000_000, cost="10")
    )
    await ledger.CreateBudget(ledger_pb2.CreateBudgetRequest(budget_id="daily", budget=daily))


async def expect_counters_are_the_records(
    ledger: LedgerServiceAsyncStub, holds_may_remain: bool = False
) -> None:
    """Spent equals the usage records; nothing is still held unless `holds_may_remain`
    (a hold whose reply a killed ledger never sent stays until its ttl; the ledger's
    invariant, counters = records + holds, is checked apart)."""
    response = await ledger.CheckBudget(
        ledger_pb2.CheckBudgetRequest(tenant=TENANT, principal=PRINCIPAL)
    )
    (daily,) = response.budgets
    assert daily.budget == "budgets/daily"
    records = [r.usage for r in await usage_records(ledger)]
    assert daily.spent.tokens == sum(u.input_tokens + u.output_tokens for u in records)
    assert Decimal(daily.spent.cost) == sum((Decimal(u.cost or "0") for u in records), Decimal(0))
    if not holds_may_remain:
        assert (daily.reserved.tokens, Decimal(daily.reserved.cost or "0")) == (0, Decimal(0))


async def usage_records(ledger: LedgerServiceAsyncStub) -> list[ledger_pb2.UsageRecord]:
    """Every usage record of the tenant, page after page."""
    records: list[ledger_pb2.UsageRecord] = []
    token = ""
    while True:
        page = await ledger.ListUsageRecords(
            ledger_pb2.ListUsageRecordsRequest(tenant=TENANT, page_size=1000, page_token=token)
        )
        records.extend(page.usage_records)
        token = page.next_page_token
        if not token:
            return records


def expect_records_are_the_jobs_usage(
    records: Sequence[ledger_pb2.UsageRecord], jobs: Sequence[jobs_pb2.Job]
) -> None:
    """The ledger's usage records equal the jobs' own usage, job by job (tokens in and out,
    cost), and no record belongs to a job not among them: nothing spent went unrecorded,
    nothing was recorded twice."""
    by_job: dict[str, list[common_pb2.Usage]] = {}
    for record in records:
        by_job.setdefault(record.job, []).append(record.usage)
    assert set(by_job) <= {job.name for job in jobs}, "records of jobs that were not run"
    for job in jobs:
        usages = by_job.get(job.name, [])
        assert sum(u.input_tokens for u in usages) == job.usage.input_tokens > 0, job.name
        assert sum(u.output_tokens for u in usages) == job.usage.output_tokens > 0, job.name
        spent = sum((Decimal(u.cost or "0") for u in usages), Decimal(0))
        assert spent == Decimal(job.usage.cost or "0"), job.name


async def poll(read: Callable[[], Awaitable[T | None]], within: float = WAIT) -> T:
    """The first value of `read` that is not None, asked every 0.05 s for up to `within`."""
    async with asyncio.timeout(within):
        while True:
            found = await read()
            if found is not None:
                return found
            await asyncio.sleep(0.05)


async def ended(jobs: JobServiceAsyncStub, name: str) -> jobs_pb2.Job | None:
    job = await jobs.GetJob(jobs_pb2.GetJobRequest(tenant=TENANT, name=name))
    return job if job.state in TERMINAL else None


async def events_of(jobs: JobServiceAsyncStub, name: str) -> list[common_pb2.RuntimeEvent]:
    response = await jobs.ListJobEvents(
        jobs_pb2.ListJobEventsRequest(tenant=TENANT, name=name, page_size=1000)
    )
    return list(response.events)


async def reservations_of(dsn: str, job: str) -> dict[str, asyncpg.Record]:
    """The ledger's reservations for the job, by id, read from its PostgreSQL schema (the
    LedgerService has no RPC that lists reservations)."""
    connection = await asyncpg.connect(dsn, server_settings={"search_path": "ledger"})
    try:
        rows = await connection.fetch("SELECT * FROM reservations WHERE job = $1", job)
    finally:
        await connection.close()
    return {row["id"]: row for row in rows}


async def active_reservation(dsn: str, job: str) -> str | None:
    """The id of the job's ACTIVE reservation that holds tokens (a model call's)."""
    for reservation_id, row in (await reservations_of(dsn, job)).items():
        if row["state"] == Reservation.STATE_ACTIVE and row["tokens"] > 0:
            return reservation_id
    return None


async def in_state(dsn: str, job: str, reservation_id: str, state: int) -> bool | None:
    rows = await reservations_of(dsn, job)
    return True if rows[reservation_id]["state"] == state else None
