"""End to end: the Python client retries through a gateway that goes away. Each service
runs as its own process on PostgreSQL and Redis; the gateway is killed and started again
on its port, or sent SIGTERM while it holds a call, which it then cancels. Each call
succeeds, and creates its job once."""

from __future__ import annotations

import asyncio
import logging
import signal

import pytest
from agentrt import Client, RetryPolicy

from tests.e2e.conftest import create_key
from tests.e2e.processes import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(120)]

PATIENT = RetryPolicy(attempts=200, initial_backoff=0.05, max_backoff=0.2)
"""Retries enough to outlast a gateway restart (some seconds)."""
CALLS = 100


async def jobs_of(client: Client) -> list[str]:
    jobs, _ = await client.list(page_size=500)
    return [job.name for job in jobs]


async def test_a_call_made_while_the_gateway_is_down_succeeds_once_it_is_back(
    processes: Cluster,
) -> None:
    key = create_key(processes, "acme", "retries")
    async with Client(processes.address("gateway"), key, retry=PATIENT) as client:
        assert await jobs_of(client) == []  # the connection is up, then the gateway dies
        await asyncio.to_thread(processes.kill, "gateway")
        executing = asyncio.create_task(client.execute("hello", model="local"))
        await asyncio.sleep(1.0)
        assert not executing.done()  # retrying on UNAVAILABLE
        await asyncio.to_thread(processes.start, "gateway")
        job = await executing
        assert await jobs_of(client) == [job.name]


async def test_calls_the_gateway_cancels_as_it_shuts_down_are_retried(
    processes: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    key = create_key(processes, "acme", "retries")
    gateway = processes.processes["gateway"]
    async with Client(processes.address("gateway"), key, retry=PATIENT, call_timeout=60) as client:
        assert await jobs_of(client) == []
        # Calls that reach a stopped gateway wait in its socket; woken with SIGTERM, it
        # drains while it is still taking them in, and cancels those it has not started.
        gateway.send_signal(signal.SIGSTOP)
        with caplog.at_level(logging.INFO, logger="agentrt.retries"):
            executing = [
                asyncio.create_task(client.execute(f"hello {index}", model="local"))
                for index in range(CALLS)
            ]
            await asyncio.sleep(0.5)
            gateway.send_signal(signal.SIGTERM)
            gateway.send_signal(signal.SIGCONT)
            await asyncio.to_thread(gateway.wait, 30)
            processes.processes.pop("gateway")
            await asyncio.to_thread(processes.start, "gateway")
            jobs = await asyncio.gather(*executing)
        assert "failed with CANCELLED" in caplog.text, caplog.text
        listed = await jobs_of(client)
    assert sorted(listed) == sorted(job.name for job in jobs)
    assert len(set(listed)) == CALLS
