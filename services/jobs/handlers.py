"""JobService: validates names and fields, delegates to the JobManager."""

from __future__ import annotations

from typing import Any

import grpc
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc

from services.jobs.manager import JobManager
from services.jobs.store import JobFilter
from services.kit import validate
from services.kit.errors import FieldRequired
from services.kit.names import parse_action_name, parse_job_name

Context = grpc.aio.ServicerContext[Any, Any]


def _tenant(tenant: str) -> str:
    if not tenant:
        raise FieldRequired("tenant")
    return validate.printable(tenant, "tenant")


def _lease(lease_id: str) -> str:
    return validate.printable(lease_id, "lease_id")


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    """Jobs for the gateway, leases and progress for orchestrator workers.

    Callers are internal: the tenant in a request is the one the gateway authenticated.
    """

    def __init__(self, manager: JobManager) -> None:
        self._jobs = manager

    async def CreateJob(self, request: jobs_pb2.CreateJobRequest, context: Context) -> jobs_pb2.Job:
        if not request.principal:
            raise FieldRequired("principal")
        job, _ = await self._jobs.create_job(
            _tenant(request.tenant),
            validate.printable(request.principal, "principal"),
            request.spec,
            request.request_id,
            request.trace_id,
        )
        return job

    async def GetJob(self, request: jobs_pb2.GetJobRequest, context: Context) -> jobs_pb2.Job:
        return await self._jobs.get_job(_tenant(request.tenant), parse_job_name(request.name))

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: Context
    ) -> jobs_pb2.ListJobsResponse:
        job_filter = JobFilter(
            states=tuple(request.states),
            session=validate.text(request.session, "session"),
            created_after=validate.optional_timestamp(request, "create_time_after"),
            created_before=validate.optional_timestamp(request, "create_time_before"),
            parent=request.parent,
            root=request.root,
        )
        jobs, token = await self._jobs.list_jobs(
            _tenant(request.tenant),
            job_filter,
            request.page_size,
            validate.page_token(request.page_token),
        )
        return jobs_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    async def CancelJob(self, request: jobs_pb2.CancelJobRequest, context: Context) -> jobs_pb2.Job:
        job_id = parse_job_name(request.name)
        reason = validate.text(request.reason, "reason")
        return await self._jobs.cancel(_tenant(request.tenant), job_id, reason)

    async def LeaseJobs(
        self, request: jobs_pb2.LeaseJobsRequest, context: Context
    ) -> jobs_pb2.LeaseJobsResponse:
        leases = await self._jobs.lease_jobs(
            validate.printable(request.worker, "worker"),
            request.max_jobs,
            validate.duration(request.lease_duration, "lease_duration").total_seconds(),
            validate.duration(request.wait_timeout, "wait_timeout").total_seconds(),
            runtime_version=validate.text(request.runtime_version, "runtime_version"),
        )
        response = jobs_pb2.LeaseJobsResponse()
        for lease in leases:
            granted = response.leases.add(
                job=lease.job, lease_id=lease.lease_id, awaited_action=lease.awaited_action
            )
            granted.expire_time.FromDatetime(lease.expire_time)
            if lease.checkpoint is not None:
                granted.checkpoint.CopyFrom(lease.checkpoint)
        return response

    async def HeartbeatLease(
        self, request: jobs_pb2.HeartbeatLeaseRequest, context: Context
    ) -> jobs_pb2.HeartbeatLeaseResponse:
        expire = await self._jobs.heartbeat(
            parse_job_name(request.name),
            _lease(request.lease_id),
            validate.duration(request.lease_duration, "lease_duration").total_seconds(),
        )
        response = jobs_pb2.HeartbeatLeaseResponse()
        response.expire_time.FromDatetime(expire)
        return response

    async def CheckpointJob(
        self, request: jobs_pb2.CheckpointJobRequest, context: Context
    ) -> jobs_pb2.Job:
        return await self._jobs.checkpoint(
            parse_job_name(request.name),
            _lease(request.lease_id),
            request.checkpoint if request.HasField("checkpoint") else None,
            request.message if request.HasField("message") else None,
            request.turn_usage if request.HasField("turn_usage") else None,
            request.tool_calls,
            request.within_turn,
            request.model,
        )

    async def FinishJob(self, request: jobs_pb2.FinishJobRequest, context: Context) -> jobs_pb2.Job:
        return await self._jobs.finish(
            parse_job_name(request.name),
            _lease(request.lease_id),
            request.state,
            request.result if request.HasField("result") else None,
            request.failure if request.HasField("failure") else None,
            request.usage if request.HasField("usage") else None,
            request.checkpoint if request.HasField("checkpoint") else None,
            request.message if request.HasField("message") else None,
            request.turn_usage if request.HasField("turn_usage") else None,
            request.model,
        )

    async def ReleaseJob(
        self, request: jobs_pb2.ReleaseJobRequest, context: Context
    ) -> jobs_pb2.Job:
        return await self._jobs.release(
            parse_job_name(request.name),
            _lease(request.lease_id),
            validate.text(request.reason, "reason"),
        )

    async def ListJobEvents(
        self, request: jobs_pb2.ListJobEventsRequest, context: Context
    ) -> jobs_pb2.ListJobEventsResponse:
        events, state = await self._jobs.list_events(
            _tenant(request.tenant) if request.tenant else None,
            parse_job_name(request.name),
            request.after_sequence,
            request.page_size,
        )
        return jobs_pb2.ListJobEventsResponse(events=events, job_state=state)

    async def RequireAction(
        self, request: jobs_pb2.RequireActionRequest, context: Context
    ) -> jobs_pb2.Action:
        return await self._jobs.require_action(
            parse_job_name(request.parent, "parent"),
            _lease(request.lease_id),
            request.action if request.HasField("action") else None,
            request.timeout if request.HasField("timeout") else None,
            request.checkpoint if request.HasField("checkpoint") else None,
        )

    async def GetAction(
        self, request: jobs_pb2.GetActionRequest, context: Context
    ) -> jobs_pb2.Action:
        job_id, action_id = parse_action_name(request.name)
        return await self._jobs.get_action(_tenant(request.tenant), job_id, action_id)

    async def ListActions(
        self, request: jobs_pb2.ListActionsRequest, context: Context
    ) -> jobs_pb2.ListActionsResponse:
        actions, token = await self._jobs.list_actions(
            _tenant(request.tenant),
            parse_job_name(request.parent, "parent"),
            list(request.states),
            request.page_size,
            validate.page_token(request.page_token),
        )
        return jobs_pb2.ListActionsResponse(actions=actions, next_page_token=token)

    async def ResolveAction(
        self, request: jobs_pb2.ResolveActionRequest, context: Context
    ) -> jobs_pb2.Action:
        target: str | tuple[str, str]
        match request.WhichOneof("target"):
            case "name":
                target = parse_action_name(request.name)
            case "resume_token":
                target = validate.printable(request.resume_token, "resume_token")
            case _:
                raise FieldRequired("resume_token")
        return await self._jobs.resolve_action(
            _tenant(request.tenant),
            validate.printable(request.principal, "principal"),
            target,
            request.outcome if request.HasField("outcome") else None,
            validate.printable(request.request_id, "request_id"),
        )

    async def CancelAction(
        self, request: jobs_pb2.CancelActionRequest, context: Context
    ) -> jobs_pb2.Action:
        job_id, action_id = parse_action_name(request.name)
        return await self._jobs.cancel_action(
            _tenant(request.tenant), job_id, action_id, validate.text(request.reason, "reason")
        )

    async def AwaitChildren(
        self, request: jobs_pb2.AwaitChildrenRequest, context: Context
    ) -> jobs_pb2.AwaitChildrenResponse:
        job, waiting = await self._jobs.await_children(
            parse_job_name(request.name),
            request.lease_id,
            request.children,
            request.checkpoint if request.HasField("checkpoint") else None,
        )
        return jobs_pb2.AwaitChildrenResponse(job=job, waiting=waiting)
