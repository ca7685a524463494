"""End to end: two jobs replicas on one port (127.0.0.1 and 127.0.0.2, as two pods behind
a headless Service), and every connection aged out each second. The gateway's and the
orchestrator's calls to jobs land on both replicas, and jobs that run for several
connection ages succeed, each watched by one stream that is never cut."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentrt.common.v1 import common_pb2
from agentrt.gateway.v1 import gateway_pb2
from agentrt.jobs.v1 import jobs_pb2

from tests.e2e.conftest import create_key
from tests.e2e.processes import Cluster, cluster, free_port
from tests.e2e.test_processes import events_until_end, gateway
from tests.services.kit.test_balancing import ipv4_target

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(180)]

REPLICAS = ("127.0.0.1", "127.0.0.2")
JOBS = 8
CHUNK_DELAY = 0.25
"""`local-slow` streams about 12 chunks: a job runs some 3 s, three connection ages."""
JOBS_CALL = re.compile(rb"rpc method=/agentrt\.jobs\.v1\.JobService/\w+ code=OK")


@pytest.fixture
def processes(pg_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Cluster]:
    port = free_port()
    with cluster(
        pg_dsn,
        redis_url,
        redis_prefix,
        tmp_path,
        extra={
            "AGENTRT_JOBS_ADDRESS": ipv4_target(REPLICAS, port),
            "AGENTRT_GRPC_MAX_CONNECTION_AGE_SECONDS": "1",
            "AGENTRT_LOCAL_SLOW_CHUNK_DELAY": str(CHUNK_DELAY),
        },
    ) as running:
        running.start("jobs", name="jobs-2", host=REPLICAS[1])
        yield running


def jobs_calls(running: Cluster, name: str) -> int:
    """The calls a jobs replica answered, from its request log."""
    return len(JOBS_CALL.findall((running.logs / f"{name}.log").read_bytes()))


async def test_jobs_calls_spread_over_both_replicas_through_age_outs(processes: Cluster) -> None:
    key = create_key(processes, "acme", "alice")
    auth = (("authorization", f"Bearer {key}"),)
    before = {name: jobs_calls(processes, name) for name in ("jobs", "jobs-2")}
    channel, stub = gateway(processes)
    async with channel:
        jobs = await asyncio.gather(
            *(
                stub.Execute(
                    gateway_pb2.ExecuteRequest(
                        spec=jobs_pb2.JobSpec(prompt=f"job {i} of several ages", model="local-slow")
                    ),
                    metadata=auth,
                    timeout=10,
                )
                for i in range(JOBS)
            )
        )
        # One stream a job, opened now and read to its end across the age-outs.
        watched = await asyncio.wait_for(
            asyncio.gather(*(events_until_end(stub, key, job.name) for job in jobs)), 60
        )
    for job, events in zip(jobs, watched, strict=True):
        assert events[0].type == common_pb2.EVENT_TYPE_JOB_CREATED, job.name
        assert events[-1].type == common_pb2.EVENT_TYPE_JOB_SUCCEEDED, job.name
        assert len({event.id for event in events}) == len(events), job.name
        elapsed = events[-1].time.ToDatetime() - events[0].time.ToDatetime()
        assert elapsed.total_seconds() > 2, "the job ended before connections aged out"
    answered = {name: jobs_calls(processes, name) - count for name, count in before.items()}
    # Creations, leases, heartbeats, checkpoints: each replica took a fair share.
    assert min(answered.values()) >= sum(answered.values()) / 4, answered
