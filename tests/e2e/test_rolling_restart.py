"""End to end: a rolling restart under load. Each service runs as its own process on
PostgreSQL and Redis; while the Python client submits jobs through the gateway (it retries
a call that found no gateway with the same request_id, as clients are told to), every
service in turn is sent SIGTERM and started again. Every job succeeds, exactly once per
request_id, and the ledger's usage records equal the jobs' usage."""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from agentrt import Client, RetryPolicy
from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2
from agentrt.ledger.v1 import ledger_pb2_grpc

from services.jobs.states import TERMINAL
from services.kit.storage import StorageConfig
from tests.e2e.conftest import create_key
from tests.e2e.processes import SERVICES, Cluster, cluster
from tests.e2e.test_budget_sigkill import (
    MODEL,
    PRINCIPAL,
    TENANT,
    expect_counters_are_the_records,
    expect_records_are_the_jobs_usage,
    price_and_budget,
    usage_records,
)
from tests.services.ledger.conftest import check_invariant

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(300)]

T = TypeVar("T")
JOBS = 500
"""The load of the issue's goal."""
SUBMIT_EVERY = 0.045
"""Seconds between submissions (about 22 jobs a second, some 15 running at a time): the
load lasts about as long as the restarts."""
PROMPT = " ".join(f"word{index}" for index in range(8))
"""`local-slow` streams the answer in about 12 chunks of 0.05 s: a job runs ~0.6 s."""
RESTARTS_WITHIN = 60.0
"""Seconds a call may take, its retries included, while a service restarts."""
THROUGH_RESTARTS = RetryPolicy(attempts=1000, initial_backoff=0.2, max_backoff=0.2)
"""Retries of a call, with the same request_id, every 0.2 s until RESTARTS_WITHIN is
over, however many tries that takes: a restart on a loaded machine may outlast the
default policy's eight."""


@pytest.fixture
def processes(pg_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Cluster]:
    with cluster(
        pg_dsn,
        redis_url,
        redis_prefix,
        tmp_path,
        extra={"AGENTRT_LEASE_SECONDS": "2", "AGENTRT_LOCAL_SLOW_CHUNK_DELAY": "0.05"},
    ) as running:
        yield running


async def test_a_rolling_restart_under_load_fails_no_job(processes: Cluster, pg_dsn: str) -> None:
    key = create_key(processes, TENANT, PRINCIPAL)
    async with (
        Client(
            processes.address("gateway"),
            key,
            call_timeout=RESTARTS_WITHIN,
            retry=THROUGH_RESTARTS,
        ) as client,
        grpc.aio.insecure_channel(processes.address("ledger")) as ledger_channel,
    ):
        ledger = ledger_pb2_grpc.LedgerServiceStub(ledger_channel)
        await price_and_budget(ledger)

        async def submit(index: int) -> str:
            prompt = f"{index} {PROMPT}"
            job = await client.execute(prompt, model=MODEL, request_id=f"rolling-{index}")
            return job.name

        async def load() -> list[str]:
            submitted = []
            for index in range(JOBS):
                submitted.append(asyncio.create_task(submit(index)))
                await asyncio.sleep(SUBMIT_EVERY)
            return list(await asyncio.gather(*submitted))

        loading = asyncio.create_task(load())
        for service in SERVICES:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(restart, processes, service)
        names = await loading

        async def ended(name: str) -> jobs_pb2.Job | None:
            job = await client.get(name)
            return job if job.state in TERMINAL else None

        done = [await poll(functools.partial(ended, name)) for name in names]
        failed = {
            job.name: job.failure for job in done if job.state != common_pb2.JOB_STATE_SUCCEEDED
        }
        assert not failed
        # The restarts reached running jobs: some were given back and taken up again.
        assert any(job.attempt >= 2 for job in done)
        # One job per request_id, however often a submission was retried.
        assert len(set(names)) == JOBS
        listed = [job async for job in client.iter_jobs(page_size=500)]
        assert len(listed) == JOBS

        expect_records_are_the_jobs_usage(await usage_records(ledger), done)
        await expect_counters_are_the_records(ledger)
    await check_invariant(StorageConfig("postgres", None, pg_dsn, "ledger"))


def restart(processes: Cluster, service: str) -> None:
    """SIGTERM (the service drains), then the same service again on its address."""
    process = processes.processes.pop(service)
    process.send_signal(signal.SIGTERM)
    process.wait(30)
    processes.start(service)


async def poll(read: Callable[[], Awaitable[T | None]], within: float = 120.0) -> T:
    async with asyncio.timeout(within):
        while True:
            found = await read()
            if found is not None:
                return found
            await asyncio.sleep(0.1)
