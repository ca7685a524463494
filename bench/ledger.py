"""Benchmark of what the ledger adds to a model call: one reserve before it, one settle after.

On a fresh PostgreSQL database (or SQLite file) with a price and two budgets (a tenant's
daily tokens and cost, and a principal's monthly cost), it times reserve + settle pairs
three ways:

- store: the backend's LedgerStore in this process (the SQL alone: on PostgreSQL one
  statement to reserve, one transaction to settle);
- service: the orchestrator's LedgerSpend (reserve_model_call + settle_model_call, the
  price cached) over gRPC to `agentrt serve ledger` running as its own process;
- raw gRPC: ReserveBudget + SettleReservation stubs against that same process.

Pairs run one after another (the latency one model call pays), after a warm-up; it prints
p50/p90/p99 of the pair and of each half. With --window-records N, N usage records are
recorded in the budgets' current windows first, as a busy day would have: a pair's cost
must not grow with them. Usage: python bench/ledger.py [--calls N]
[--mode store|service|both] [--backend postgres|sqlite] [--window-records N].
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2
from agentrt.jobs.v1 import jobs_pb2
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from agentrt.ledger.v1.ledger_pb2 import Amounts, Budget, UsageKind, UsageRecord

from services.kit.ids import new_id
from services.kit.loop import run_main
from services.kit.money import parse_price
from services.kit.storage import StorageConfig, migrate
from services.ledger import records
from services.ledger.records import ReservationRequest
from services.ledger.store import SQL_DIRECTORY, open_ledger_store
from services.orchestrator.spend import LedgerSpend, SpendConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.main_path import pg_database
from tests.services.ledger.ledger_processes import ledger_processes

WARM_UP = 200
TENANT = "bench"
USAGE = common_pb2.Usage(input_tokens=900, output_tokens=300)

Timed = Callable[[int], Awaitable[tuple[float, float]]]
"""One reserve + settle, numbered; returns the seconds each half took."""


def usage_record() -> UsageRecord:
    """One model call's usage of the benchmark's principal."""
    return UsageRecord(
        kind=UsageKind.USAGE_KIND_MODEL_CALL,
        usage=USAGE,
        model="m1",
        tenant=TENANT,
        principal="alice",
        job="jobs/bench",
    )


def usage_entry(record_id: str) -> records.UsageEntry:
    """`usage_record()`, validated as the store takes it."""
    return records.usage_entry(record_id, usage_record(), "")


async def prepare(config: StorageConfig, window_records: int) -> None:
    """Migrate; a price for m1 and the budgets a call is reserved against; then
    `window_records` usage records in the budgets' current windows."""
    await migrate(config, SQL_DIRECTORY)
    store = await open_ledger_store(config)
    now = datetime.now(UTC)
    try:
        await store.create_price("m1", parse_price("2.50", "10", "1.25", ""), now)
        daily = Budget(tenant=TENANT, period=Budget.PERIOD_DAY)
        daily.limits.CopyFrom(Amounts(tokens=10**12, cost="1000000"))
        monthly = Budget(tenant=TENANT, principal="alice", period=Budget.PERIOD_MONTH)
        monthly.limits.CopyFrom(Amounts(cost="1000000"))
        await store.create_budget("daily", records.budget_spec(daily), now)
        await store.create_budget("alice", records.budget_spec(monthly), now)
        run = new_id()
        for n in range(window_records):
            await store.record_usage(usage_entry(f"{run}.fill.{n}"), datetime.now(UTC))
    finally:
        await store.close()


async def measure(label: str, pair: Timed, calls: int) -> None:
    for n in range(WARM_UP):
        await pair(-n - 1)
    halves = [await pair(n) for n in range(calls)]
    report(label, halves)


def report(label: str, halves: list[tuple[float, float]]) -> None:
    def line(name: str, values: list[float]) -> str:
        ordered = sorted(values)

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

        return f"  {name:<16} p50={pct(50):6.2f}ms p90={pct(90):6.2f}ms p99={pct(99):6.2f}ms"

    print(f"{label} ({len(halves)} calls, one at a time)")
    print(line("reserve+settle", [a + b for a, b in halves]))
    print(line("reserve", [a for a, _ in halves]))
    print(line("settle", [b for _, b in halves]))


async def bench_store(config: StorageConfig, calls: int) -> None:
    store = await open_ledger_store(config)
    run = new_id()

    async def pair(n: int) -> tuple[float, float]:
        amounts = records.parse_amounts(Amounts(tokens=5000, cost="0.05"), "amounts")
        request = ReservationRequest(
            tenant=TENANT,
            principal="alice",
            job="jobs/bench",
            amounts=amounts,
            ttl=timedelta(minutes=5),
            request_id=f"{run}.{n}",
            request_hash=records.request_hash(n),
        )
        entry = usage_entry(f"{run}.{n}")
        started = time.perf_counter()
        held = await store.reserve(request, datetime.now(UTC))
        reserved = time.perf_counter()
        await store.settle(held.name.split("/")[1], [entry], datetime.now(UTC))
        return reserved - started, time.perf_counter() - reserved

    try:
        await measure(f"store: {type(store).__name__} in-process", pair, calls)
    finally:
        await store.close()


async def bench_service(address: str, calls: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub: ledger_pb2_grpc.LedgerServiceAsyncStub = ledger_pb2_grpc.LedgerServiceStub(channel)
        spend = LedgerSpend(stub, SpendConfig())
        job = jobs_pb2.Job(
            name=f"jobs/{new_id()}", tenant=TENANT, principal="alice", spec=jobs_pb2.JobSpec()
        )
        request = engine_pb2.CompleteRequest(
            model="m1",
            messages=[common_pb2.Message(role=common_pb2.ROLE_USER, content="write a poem " * 40)],
        )
        request.params.max_output_tokens = 1000

        async def spend_pair(n: int) -> tuple[float, float]:
            started = time.perf_counter()
            hold = await spend.reserve_model_call(job, common_pb2.Usage(), request)
            reserved = time.perf_counter()
            await spend.settle_model_call(job, hold, USAGE, f"{job.name[5:]}.{n}.model")
            return reserved - started, time.perf_counter() - reserved

        await measure("service: LedgerSpend over gRPC to a ledger process", spend_pair, calls)

        async def raw_pair(n: int) -> tuple[float, float]:
            reserve = ledger_pb2.ReserveBudgetRequest(
                tenant=TENANT, principal="alice", amounts=Amounts(tokens=5000, cost="0.05")
            )
            record = ledger_pb2.RecordUsageRequest(
                usage_record_id=f"raw.{job.name[5:]}.{n}",
                usage_record=usage_record(),
            )
            started = time.perf_counter()
            held = await stub.ReserveBudget(reserve)
            reserved = time.perf_counter()
            settle = ledger_pb2.SettleReservationRequest(name=held.name, usage_records=[record])
            await stub.SettleReservation(settle)
            return reserved - started, time.perf_counter() - reserved

        await measure("raw gRPC: ReserveBudget + SettleReservation stubs", raw_pair, calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["store", "service", "both"], default="both")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--window-records", type=int, default=0)
    args = parser.parse_args()
    if args.backend == "sqlite":
        if args.mode != "store":
            parser.error("--backend sqlite measures the store only: pass --mode store")
        with tempfile.TemporaryDirectory() as tmp:
            config = StorageConfig("sqlite", Path(tmp) / "ledger.db", None, "ledger")
            asyncio.run(prepare(config, args.window_records))
            run_main(bench_store(config, args.calls))
        return
    with pg_database() as dsn:
        config = StorageConfig("postgres", None, dsn, "ledger")
        asyncio.run(prepare(config, args.window_records))
        if args.mode in ("store", "both"):
            run_main(bench_store(config, args.calls))
        if args.mode in ("service", "both"):
            with (
                tempfile.TemporaryDirectory() as tmp,
                ledger_processes(dsn, Path(tmp)) as ledgers,
            ):
                os.environ.setdefault("AGENTRT_LOG_LEVEL", "WARNING")
                address = ledgers.start()
                run_main(bench_service(address, args.calls))


if __name__ == "__main__":
    main()
