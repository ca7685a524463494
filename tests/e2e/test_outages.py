"""End to end: the ledger, the policy service or the engine is down for 10 s while jobs run.

Each service runs as its own process on PostgreSQL and Redis; the tenant has a budget, so
every model call reserves in the ledger, and workers revalidate the policy every 0.2 s, so
every turn reaches the policy service; a worker runs 3 jobs at once, so that jobs are
starting and ending throughout the outage. Workers that cannot reach a dependency give their
leases back and the jobs resume from their checkpoints once it is back: every job
succeeds, and the ledger's usage records equal the jobs' usage.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from agentrt.ledger.v1 import ledger_pb2_grpc

from services.jobs.states import TERMINAL
from services.kit.storage import StorageConfig
from tests.e2e.processes import Cluster, cluster
from tests.e2e.test_budget_sigkill import (
    MODEL,
    PRINCIPAL,
    TENANT,
    events_of,
    expect_counters_are_the_records,
    expect_records_are_the_jobs_usage,
    poll,
    price_and_budget,
    usage_records,
)
from tests.services.ledger.conftest import check_invariant

if TYPE_CHECKING:
    from agentrt.jobs.v1.jobs_pb2_grpc import JobServiceAsyncStub

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(240)]

JOBS = 12
OUTAGE_SECONDS = 10.0
PROMPT = " ".join(f"word{index}" for index in range(20))
"""`local-slow` streams the answer in about 25 chunks of 0.05 s: a job runs ~1.3 s."""


@pytest.fixture
def processes(pg_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Cluster]:
    with cluster(
        pg_dsn,
        redis_url,
        redis_prefix,
        tmp_path,
        extra={
            "AGENTRT_LEASE_SECONDS": "2",
            "AGENTRT_LOCAL_SLOW_CHUNK_DELAY": "0.05",
            "AGENTRT_POLICY_REVALIDATE_SECONDS": "0.2",
            # Jobs run in waves, so that some start (and ask the policy) during the outage.
            "AGENTRT_ORCHESTRATOR_CONCURRENCY": "3",
        },
    ) as running:
        yield running


@pytest.mark.parametrize("service", ["ledger", "policy", "engine"])
async def test_jobs_ride_out_a_dependency_down_for_ten_seconds(
    processes: Cluster, pg_dsn: str, service: str
) -> None:
    async with (
        grpc.aio.insecure_channel(processes.address("ledger")) as ledger_channel,
        grpc.aio.insecure_channel(processes.address("jobs")) as jobs_channel,
    ):
        ledger = ledger_pb2_grpc.LedgerServiceStub(ledger_channel)
        jobs: JobServiceAsyncStub = jobs_pb2_grpc.JobServiceStub(jobs_channel)
        await price_and_budget(ledger)
        names = [
            (
                await jobs.CreateJob(
                    jobs_pb2.CreateJobRequest(
                        tenant=TENANT,
                        principal=PRINCIPAL,
                        spec=jobs_pb2.JobSpec(prompt=f"{index} {PROMPT}", model=MODEL),
                    )
                )
            ).name
            for index in range(JOBS)
        ]
        await poll(lambda: _any_running(jobs, names))
        processes.kill(service)  # SIGKILL: mid-run for the jobs running now
        running = await _running(jobs, names)
        await asyncio.sleep(OUTAGE_SECONDS)
        # A job that was running when the service went down and has not ended 10 s later
        # (it runs ~1.3 s) waited for the service: retrying a settle, say, in its lease.
        waited = [name for name in running if await _ended(jobs, name) is None]
        processes.start(service)

        done = [await poll(functools.partial(_ended, jobs, name), within=120) for name in names]
        failed = {
            job.name: job.failure for job in done if job.state != common_pb2.JOB_STATE_SUCCEEDED
        }
        assert not failed
        # The outage was felt: some job gave its lease back and ran again, or waited out
        # the outage holding it.
        released = [
            event
            for name in names
            for event in await events_of(jobs, name)
            if event.type == common_pb2.EVENT_TYPE_JOB_REQUEUED
        ]
        assert released or waited, "no job was requeued or waited: the outage missed the jobs"

        # Every job's usage is in the ledger once, no more and no less; and the job's usage
        # is that of the turns its events record (a turn run twice is counted once).
        for job in done:
            turns = [
                event.turn_completed.usage
                for event in await events_of(jobs, job.name)
                if event.type == common_pb2.EVENT_TYPE_TURN_COMPLETED
            ]
            assert sum(u.input_tokens for u in turns) == job.usage.input_tokens, job.name
            assert sum(u.output_tokens for u in turns) == job.usage.output_tokens, job.name
        expect_records_are_the_jobs_usage(await usage_records(ledger), done)
        # A reservation whose reply the killed ledger never sent is held until its ttl.
        await expect_counters_are_the_records(ledger, holds_may_remain=service == "ledger")
    await check_invariant(StorageConfig("postgres", None, pg_dsn, "ledger"))


async def _any_running(jobs: JobServiceAsyncStub, names: list[str]) -> bool | None:
    for name in names:
        job = await jobs.GetJob(jobs_pb2.GetJobRequest(tenant=TENANT, name=name))
        if job.state == common_pb2.JOB_STATE_RUNNING:
            return True
    return None


async def _running(jobs: JobServiceAsyncStub, names: list[str]) -> list[str]:
    states = [await jobs.GetJob(jobs_pb2.GetJobRequest(tenant=TENANT, name=n)) for n in names]
    return [job.name for job in states if job.state == common_pb2.JOB_STATE_RUNNING]


async def _ended(jobs: JobServiceAsyncStub, name: str) -> jobs_pb2.Job | None:
    job = await jobs.GetJob(jobs_pb2.GetJobRequest(tenant=TENANT, name=name))
    return job if job.state in TERMINAL else None
