"""Every service as a process with a Prometheus endpoint: the series move under a small load."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from agentrt import Client
from agentrt.common.v1.common_pb2 import ErrorReason, Usage
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from agentrt.ledger.v1.ledger_pb2 import Amounts, Budget
from google.protobuf.duration_pb2 import Duration

from tests.e2e.conftest import create_key
from tests.e2e.processes import SERVICES, Cluster, cluster, free_ports

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$")


@pytest.fixture
def metered(
    pg_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> Iterator[tuple[Cluster, dict[str, str]]]:
    """The services as processes, each with its own scrape endpoint."""
    endpoints = {
        service: f"127.0.0.1:{port}"
        for service, port in zip(SERVICES, free_ports(len(SERVICES)), strict=True)
    }
    per_service = {
        service: {"AGENTRT_METRICS_ADDRESS": address, "AGENTRT_JOBS_METRICS_SECONDS": "0.1"}
        for service, address in endpoints.items()
    }
    with cluster(pg_dsn, redis_url, redis_prefix, tmp_path, per_service=per_service) as running:
        yield running, endpoints


def scrape(address: str) -> dict[str, float]:
    """Every sample of the endpoint, keyed by name and labels."""
    reply = httpx.get(f"http://{address}/metrics", timeout=5)
    reply.raise_for_status()
    samples = {}
    for line in reply.text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples[match[1] + (match[2] or "")] = float(match[3])
    return samples


def total(samples: dict[str, float], name: str, *labels: str) -> float:
    return sum(
        value
        for key, value in samples.items()
        if key.split("{")[0] == name and all(label in key for label in labels)
    )


async def test_every_service_counts_its_rpcs_and_the_ledger_its_tokens(
    metered: tuple[Cluster, dict[str, str]],
) -> None:
    running, endpoints = metered
    key = create_key(running, "acme", "alice")
    tight = create_key(running, "tight", "bob")
    async with grpc.aio.insecure_channel(running.address("ledger")) as channel:
        await ledger_pb2_grpc.LedgerServiceStub(channel).CreateBudget(
            ledger_pb2.CreateBudgetRequest(
                budget_id="tiny",
                budget=Budget(tenant="tight", period=Budget.PERIOD_DAY, limits=Amounts(tokens=1)),
            )
        )
    before = {service: scrape(address) for service, address in endpoints.items()}
    async with Client(running.address("gateway"), key) as client:
        for n in range(3):
            job = await client.run(f"hello {n}")
            assert job.usage.total_tokens > 0
    async with Client(running.address("gateway"), tight) as client:
        refused = await client.run("over budget")
        assert refused.failure.reason == ErrorReason.ERROR_REASON_BUDGET_EXCEEDED
    after = {service: scrape(address) for service, address in endpoints.items()}

    requests = "agentrt_rpc_server_requests_total"
    for service in SERVICES:
        assert total(after[service], requests) > 0, service
        assert total(after[service], "agentrt_rpc_server_duration_seconds_count") > 0, service
    for service, method in [
        ("gateway", "RuntimeService/Execute"),
        ("jobs", "JobService/CreateJob"),
        ("engine", "EngineService/"),
        ("ledger", "LedgerService/"),
    ]:
        grew = total(after[service], requests, method) - total(before[service], requests, method)
        assert grew >= 3, (service, method, grew)
    tokens = "agentrt_ledger_tokens_total"
    spent = total(after["ledger"], tokens, 'tenant="acme"', 'model="local"')
    assert spent - total(before["ledger"], tokens, 'tenant="acme"') > 0
    assert total(after["ledger"], tokens, 'direction="output"') > 0
    await expect_prompt_cache_tokens_counted(running, endpoints["ledger"])
    denials = "agentrt_ledger_budget_denials_total"
    assert total(after["ledger"], denials, 'tenant="tight"') >= 1
    assert total(after["ledger"], denials, 'tenant="acme"') == 0


async def expect_prompt_cache_tokens_counted(running: Cluster, endpoint: str) -> None:
    """A recorded model call's prompt-cache reads and writes move their own series, and
    the tokens series by its input tokens alone."""
    series = "agentrt_ledger_prompt_cache_tokens_total"
    before = scrape(endpoint)
    usage = Usage(
        input_tokens=1000, output_tokens=10, cached_input_tokens=600, cache_write_input_tokens=300
    )
    record = ledger_pb2.UsageRecord(
        tenant="acme", kind=ledger_pb2.USAGE_KIND_MODEL_CALL, model="claude", usage=usage
    )
    async with grpc.aio.insecure_channel(running.address("ledger")) as channel:
        await ledger_pb2_grpc.LedgerServiceStub(channel).RecordUsage(
            ledger_pb2.RecordUsageRequest(usage_record_id="cached-1", usage_record=record)
        )
    after = scrape(endpoint)

    def grew(name: str, *labels: str) -> float:
        where = ('tenant="acme"', 'model="claude"', *labels)
        return total(after, name, *where) - total(before, name, *where)

    assert grew(series, 'use="read"') == 600
    assert grew(series, 'use="write"') == 300
    assert grew("agentrt_ledger_tokens_total") == 1010


async def test_the_jobs_gauges_show_a_job_waiting_in_the_queue(
    metered: tuple[Cluster, dict[str, str]],
) -> None:
    running, endpoints = metered
    key = create_key(running, "acme", "alice")
    running.kill("orchestrator")
    async with Client(running.address("gateway"), key) as client:
        await client.execute("nobody runs me")
        deadline = time.monotonic() + 10
        while True:
            samples = scrape(endpoints["jobs"])
            queued = total(samples, "agentrt_jobs_live", 'state="queued"')
            if queued >= 1 and total(samples, "agentrt_jobs_queue_age_seconds") > 0:
                break
            assert time.monotonic() < deadline, samples
            await asyncio.sleep(0.1)
    assert total(samples, "agentrt_jobs_live", 'state="running"') == 0
    pending = [key for key in samples if key.split("{")[0] == "agentrt_jobs_actions_pending"]
    assert len(pending) == 1 and samples[pending[0]] == 0


async def test_a_lease_taken_over_after_it_expired_is_counted(
    metered: tuple[Cluster, dict[str, str]],
) -> None:
    running, endpoints = metered
    key = create_key(running, "acme", "alice")
    running.kill("orchestrator")
    takeovers = "agentrt_jobs_lease_takeovers_total"
    before = total(scrape(endpoints["jobs"]), takeovers)
    async with Client(running.address("gateway"), key) as client:
        job = await client.execute("a worker takes me and dies")
    async with grpc.aio.insecure_channel(running.address("jobs")) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)

        async def lease(worker: str) -> jobs_pb2.LeaseJobsResponse:
            request = jobs_pb2.LeaseJobsRequest(
                worker=worker,
                lease_duration=Duration(seconds=1),
                wait_timeout=Duration(seconds=5),
            )
            response: jobs_pb2.LeaseJobsResponse = await jobs.LeaseJobs(request, timeout=10)
            return response

        [first] = (await lease("crashed")).leases  # and never heard of again
        assert first.job.name == job.name
        await asyncio.sleep(1.2)
        [second] = (await lease("rescuer")).leases
    assert second.job.name == job.name and second.job.attempt == 2
    assert total(scrape(endpoints["jobs"]), takeovers) - before == 1
