"""The gRPC jobs port against the real jobs service, behind a proxy that cuts calls off:
a call cut off is tried again, and a repeat of one that was applied is harmless."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc

from services.dev import local_config
from services.kit.infra import open_infrastructure
from services.kit.server import Server
from services.orchestrator.ports import GrpcJobsPort
from services.serve import migrate_all
from services.units import create_unit
from tests.faulty_proxy import Fault, proxying

if TYPE_CHECKING:
    from agentrt.jobs.v1.jobs_pb2_grpc import JobServiceAsyncStub

TENANT = "acme"
JOBS = "/agentrt.jobs.v1.JobService"
LOST = Fault(grpc.StatusCode.UNAVAILABLE)
"""The call was applied; its answer never came back."""
CANCELLED = Fault(grpc.StatusCode.CANCELLED, reaches_gateway=False)
"""The service shut down before it started the call."""


@asynccontextmanager
async def jobs_behind_a_proxy(
    tmp_path: Path, faults: Mapping[str, Sequence[Fault | None]]
) -> AsyncIterator[tuple[GrpcJobsPort, JobServiceAsyncStub, jobs_pb2.JobLease]]:
    """A port to a jobs service through the proxy, a direct stub, and a job it leased."""
    server = Server("127.0.0.1:0", "jobs")
    infra = await open_infrastructure(local_config(tmp_path, server.port))
    try:
        await migrate_all(infra, ["jobs"])
        await server.start([await create_unit("jobs", infra)])
        address = f"127.0.0.1:{server.port}"
        faults = {f"{JOBS}/{method}": plan for method, plan in faults.items()}
        async with (
            proxying(address, faults) as (proxied, _),
            grpc.aio.insecure_channel(proxied) as channel,
            grpc.aio.insecure_channel(address) as direct_channel,
        ):
            direct: JobServiceAsyncStub = jobs_pb2_grpc.JobServiceStub(direct_channel)
            spec = jobs_pb2.JobSpec(prompt="hi", model="local")
            await direct.CreateJob(
                jobs_pb2.CreateJobRequest(tenant=TENANT, principal="p", spec=spec)
            )
            port = GrpcJobsPort(channel, "w1", 30.0, retry_attempts=4, retry_backoff=0.01)
            [lease] = await port.lease_jobs(1, 1.0)
            yield port, direct, lease
        await server.stop(grace=1.0)
    finally:
        await infra.close()


async def event_types(direct: JobServiceAsyncStub, job: str) -> list[str]:
    request = jobs_pb2.ListJobEventsRequest(tenant=TENANT, name=job, page_size=100)
    events = (await direct.ListJobEvents(request)).events
    return [common_pb2.EventType.Name(event.type).removeprefix("EVENT_TYPE_") for event in events]


async def test_checkpoints_whose_answers_are_lost_are_recorded_once(tmp_path: Path) -> None:
    async with jobs_behind_a_proxy(tmp_path, {"CheckpointJob": [LOST, LOST]}) as (
        port,
        direct,
        lease,
    ):
        name = lease.job.name
        turn = jobs_pb2.Checkpoint(turn=1, state=b"turn 1")
        saved = await port.checkpoint(name, lease.lease_id, turn, None, common_pb2.Usage())
        assert saved.turns == 1
        called = common_pb2.ToolCalled(call=common_pb2.ToolCall(id="c1", name="calculator"))
        within = jobs_pb2.Checkpoint(turn=1, state=b"after c1")
        await port.checkpoint(name, lease.lease_id, within, None, None, [called])
        assert await event_types(direct, name) == [
            "JOB_CREATED",
            "JOB_STARTED",
            "TURN_COMPLETED",
            "USAGE_RECORDED",
            "TOOL_CALLED",
        ]


async def test_a_call_the_service_cancels_as_it_shuts_down_is_tried_again(
    tmp_path: Path,
) -> None:
    faults = {"HeartbeatLease": [CANCELLED], "GetJob": [CANCELLED, CANCELLED]}
    async with jobs_behind_a_proxy(tmp_path, faults) as (port, _, lease):
        await port.heartbeat(lease.job.name, lease.lease_id)
        assert (await port.get_job(TENANT, lease.job.name)).name == lease.job.name


async def test_a_finish_whose_answer_is_lost_is_not_a_lost_lease(tmp_path: Path) -> None:
    async with jobs_behind_a_proxy(tmp_path, {"FinishJob": [LOST]}) as (port, direct, lease):
        name = lease.job.name
        result = jobs_pb2.JobResult(output="done")
        state = common_pb2.JOB_STATE_SUCCEEDED
        assert await port.finish(name, lease.lease_id, state, common_pb2.Usage(), result) is None
        job = await direct.GetJob(jobs_pb2.GetJobRequest(tenant=TENANT, name=name))
        assert job.state == state and job.result.output == "done"
        assert (await event_types(direct, name)).count("JOB_SUCCEEDED") == 1


async def test_an_action_whose_answer_is_lost_parks_the_job_once(tmp_path: Path) -> None:
    async with jobs_behind_a_proxy(tmp_path, {"RequireAction": [LOST]}) as (port, direct, lease):
        name = lease.job.name
        action = jobs_pb2.Action(kind=jobs_pb2.ACTION_KIND_APPROVAL)
        checkpoint = jobs_pb2.Checkpoint(turn=0, state=b"asking")
        assert await port.require_action(name, lease.lease_id, action, None, checkpoint) is None
        assert len(await port.list_actions(TENANT, name)) == 1
        job = await direct.GetJob(jobs_pb2.GetJobRequest(tenant=TENANT, name=name))
        assert job.state == common_pb2.JOB_STATE_WAITING
