"""Running workflows on a whole system through the client, and reading their trees."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import grpc
from agentrt import workflows as wf
from agentrt.client import Client
from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc

from services.dev import DEV_TENANT, LocalSystem


@dataclasses.dataclass(frozen=True)
class Tree:
    """A finished workflow job and its children, oldest first."""

    root: jobs_pb2.Job
    children: list[jobs_pb2.Job]

    @property
    def nodes(self) -> list[str]:
        return [child.spec.node for child in self.children]


def agents(**scripts: str) -> dict[str, jobs_pb2.AgentDefinition]:
    """Agents of the local model, each scripted by its system prompt."""
    return {name: wf.agent(script) for name, script in scripts.items()}


async def children_of(system: LocalSystem, job: str) -> list[jobs_pb2.Job]:
    async with grpc.aio.insecure_channel(system.endpoint) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        found: list[jobs_pb2.Job] = []
        token = ""
        while True:
            page = await stub.ListJobs(
                jobs_pb2.ListJobsRequest(
                    tenant=DEV_TENANT, parent=job, page_size=500, page_token=token
                )
            )
            found.extend(page.jobs)
            token = page.next_page_token
            if not token:
                return sorted(found, key=lambda j: (j.create_time.ToNanoseconds(), j.name))


async def history(system: LocalSystem, job: str) -> list[common_pb2.RuntimeEvent]:
    async with grpc.aio.insecure_channel(system.endpoint) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        events: list[common_pb2.RuntimeEvent] = []
        while True:
            page = await stub.ListJobEvents(
                jobs_pb2.ListJobEventsRequest(
                    tenant=DEV_TENANT,
                    name=job,
                    after_sequence=events[-1].sequence if events else 0,
                    page_size=1000,
                )
            )
            events.extend(page.events)
            if len(page.events) < 1000:
                return events


async def run_tree(system: LocalSystem, spec: jobs_pb2.JobSpec) -> Tree:
    """Runs a workflow job to its end through the gateway; returns it and its children."""
    if not spec.model:
        spec.model = "local"
    async with Client(system.endpoint, system.api_key) as client:
        job = await client.execute_spec(spec)
        done = await client.result(job)
    return Tree(done, await children_of(system, done.name))


def most_at_once(jobs: list[jobs_pb2.Job]) -> int:
    """The most of these jobs that ran at the same moment (start_time to end_time)."""
    moments: list[tuple[datetime, int]] = []
    for job in jobs:
        moments.append((job.start_time.ToDatetime(), 1))
        moments.append((job.end_time.ToDatetime(), -1))
    running = peak = 0
    for _, step in sorted(moments, key=lambda m: (m[0], m[1])):
        running += step
        peak = max(peak, running)
    return peak
