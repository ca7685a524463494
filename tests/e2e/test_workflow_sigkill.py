"""End to end: the orchestrator is SIGKILLed while a map-reduce's children run and its
root waits on them. Each service runs as its own process on PostgreSQL and Redis. Another
orchestrator takes the children over; the tree succeeds and every node ran exactly once,
counted from the jobs' events and from the ledger's usage records."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import grpc
import pytest
from agentrt import workflows as wf
from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc

from services.jobs.states import TERMINAL
from tests.e2e.processes import Cluster

if TYPE_CHECKING:
    from agentrt.jobs.v1.jobs_pb2_grpc import JobServiceAsyncStub

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(120)]
T = TypeVar("T")
E = common_pb2
TENANT = "acme"
WAIT = 60.0
ITEMS = 4
ANSWER = " ".join(f"w{i}" for i in range(20))
"""`local-slow` streams it in 20 chunks of 0.1 s: each mapper runs for about 2 s."""


async def poll(read: Callable[[], Awaitable[T | None]], within: float = WAIT) -> T:
    async with asyncio.timeout(within):
        while True:
            found = await read()
            if found is not None:
                return found
            await asyncio.sleep(0.05)


async def children(jobs: JobServiceAsyncStub, root: str) -> list[jobs_pb2.Job]:
    page = await jobs.ListJobs(jobs_pb2.ListJobsRequest(tenant=TENANT, root=root, page_size=500))
    return [job for job in page.jobs if job.name != root]


async def events_of(jobs: JobServiceAsyncStub, name: str) -> list[common_pb2.RuntimeEvent]:
    response = await jobs.ListJobEvents(
        jobs_pb2.ListJobEventsRequest(tenant=TENANT, name=name, page_size=1000)
    )
    return list(response.events)


async def test_a_tree_survives_a_sigkill_of_its_orchestrator_and_runs_each_node_once(
    processes: Cluster,
) -> None:
    spec = wf.workflow_spec(
        "go",
        wf.map_reduce("m", "r", items=[str(i) for i in range(ITEMS)]),
        agents={
            "m": wf.agent(f"reply: {ANSWER}", model="local-slow"),
            "r": wf.agent("reply: reduced"),
        },
        model="local",
    )
    async with (
        grpc.aio.insecure_channel(processes.address("jobs")) as jobs_channel,
        grpc.aio.insecure_channel(processes.address("ledger")) as ledger_channel,
    ):
        jobs: JobServiceAsyncStub = jobs_pb2_grpc.JobServiceStub(jobs_channel)
        ledger = ledger_pb2_grpc.LedgerServiceStub(ledger_channel)
        root = await jobs.CreateJob(
            jobs_pb2.CreateJobRequest(tenant=TENANT, principal="alice", spec=spec)
        )

        async def mid_run() -> bool | None:
            parent = await jobs.GetJob(jobs_pb2.GetJobRequest(tenant=TENANT, name=root.name))
            running = [c for c in await children(jobs, root.name) if c.state == E.JOB_STATE_RUNNING]
            return True if parent.state == E.JOB_STATE_WAITING and running else None

        await poll(mid_run)
        processes.kill("orchestrator")  # The root waits; its children stream.
        processes.start("orchestrator", name="orchestrator-2")

        async def ended() -> jobs_pb2.Job | None:
            job = await jobs.GetJob(jobs_pb2.GetJobRequest(tenant=TENANT, name=root.name))
            return job if job.state in TERMINAL else None

        done = await poll(ended)
        assert done.state == E.JOB_STATE_SUCCEEDED, done.failure
        assert done.result.output == "reduced"

        tree = await children(jobs, root.name)
        nodes = Counter(child.spec.node for child in tree)
        assert nodes == Counter([f"map[{i}]" for i in range(ITEMS)] + ["reduce"])
        assert all(child.state == E.JOB_STATE_SUCCEEDED for child in tree)
        assert any(child.attempt >= 2 for child in tree), "a child must have been taken over"
        history = await events_of(jobs, root.name)
        created = Counter(e.child.node for e in history if e.type == E.EVENT_TYPE_CHILD_CREATED)
        finished = Counter(e.child.node for e in history if e.type == E.EVENT_TYPE_CHILD_FINISHED)
        assert created == finished == nodes
        for child in tree:
            child_events = await events_of(jobs, child.name)
            succeeded = [e for e in child_events if e.type == E.EVENT_TYPE_JOB_SUCCEEDED]
            turns = [e for e in child_events if e.type == E.EVENT_TYPE_TURN_COMPLETED]
            assert len(succeeded) == 1 and len(turns) <= 1, child.spec.node
            if child.spec.node.startswith("map["):
                assert succeeded[0].job_succeeded.output == ANSWER
        listed = await ledger.ListUsageRecords(
            ledger_pb2.ListUsageRecordsRequest(tenant=TENANT, root_job=root.name, page_size=1000)
        )
        per_job = Counter(record.job for record in listed.usage_records)
        assert per_job == Counter({child.name: 1 for child in tree})
