"""End to end: each service its own process on PostgreSQL and Redis, driven by generated stubs."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import pytest
from agentrt.common.v1 import common_pb2
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2

from services.kit.events import is_transient
from tests.e2e.conftest import create_key
from tests.e2e.processes import Cluster

if TYPE_CHECKING:
    from agentrt.gateway.v1.gateway_pb2_grpc import RuntimeServiceAsyncStub

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def gateway(running: Cluster) -> tuple[grpc.aio.Channel, RuntimeServiceAsyncStub]:
    channel = grpc.aio.insecure_channel(running.address("gateway"))
    return channel, gateway_pb2_grpc.RuntimeServiceStub(channel)


async def events_until_end(
    stub: RuntimeServiceAsyncStub, key: str, job: str
) -> list[common_pb2.RuntimeEvent]:
    call = stub.WatchJob(
        gateway_pb2.WatchJobRequest(name=job), metadata=(("authorization", f"Bearer {key}"),)
    )
    return [event async for event in call]


async def test_jobs_run_through_the_gateway(processes: Cluster) -> None:
    key = create_key(processes, "acme", "alice")
    auth = (("authorization", f"Bearer {key}"),)
    channel, stub = gateway(processes)
    async with channel:
        jobs = await asyncio.gather(
            *(
                stub.Execute(
                    gateway_pb2.ExecuteRequest(spec=jobs_pb2.JobSpec(prompt=f"hello {i}")),
                    metadata=auth,
                    timeout=10,
                )
                for i in range(20)
            )
        )
        assert all(job.state == common_pb2.JOB_STATE_QUEUED for job in jobs)
        for i, job in enumerate(jobs):
            events = await asyncio.wait_for(events_until_end(stub, key, job.name), 30)
            assert events[0].type == common_pb2.EVENT_TYPE_JOB_CREATED
            assert events[-1].type == common_pb2.EVENT_TYPE_JOB_SUCCEEDED
            assert f"hello {i}" in events[-1].job_succeeded.output
            done = await stub.GetJob(gateway_pb2.GetJobRequest(name=job.name), metadata=auth)
            assert done.state == common_pb2.JOB_STATE_SUCCEEDED
            assert done.usage.total_tokens > 0


async def test_a_killed_orchestrator_loses_no_job_and_runs_it_once(processes: Cluster) -> None:
    key = create_key(processes, "acme", "alice")
    auth = (("authorization", f"Bearer {key}"),)
    channel, stub = gateway(processes)
    async with channel:
        job = await stub.Execute(
            gateway_pb2.ExecuteRequest(
                spec=jobs_pb2.JobSpec(prompt="tell me a long story", model="local-slow")
            ),
            metadata=auth,
        )
        watch = stub.WatchJob(gateway_pb2.WatchJobRequest(name=job.name), metadata=auth)
        seen: list[common_pb2.RuntimeEvent] = []
        async for event in watch:
            seen.append(event)
            if event.type == common_pb2.EVENT_TYPE_OUTPUT_DELTA:
                break  # the model is streaming: the orchestrator is mid-job
        processes.kill("orchestrator")
        processes.start("orchestrator", name="orchestrator-2")
        resumed = [
            event
            async for event in stub.WatchJob(
                gateway_pb2.WatchJobRequest(name=job.name, after_event_id=seen[-1].id),
                metadata=auth,
            )
        ]
        history = [e for e in seen + resumed if not is_transient(e)]
        finished = [e for e in history if e.type == common_pb2.EVENT_TYPE_JOB_SUCCEEDED]
        assert len(finished) == 1
        starts = [e.attempt.attempt for e in history if e.type == common_pb2.EVENT_TYPE_JOB_STARTED]
        assert starts == [1, 2]
        sequences = [e.sequence for e in history]
        assert sequences == sorted(set(sequences))
        done = await stub.GetJob(gateway_pb2.GetJobRequest(name=job.name), metadata=auth)
        assert done.state == common_pb2.JOB_STATE_SUCCEEDED
        assert done.attempt == 2
