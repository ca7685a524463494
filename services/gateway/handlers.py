"""RuntimeService: authenticates every call, validates it, and delegates to jobs and engine.

The tenant and principal always come from the caller's API key; whatever a request
says, a call only ever reaches the jobs of the key's tenant.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc
from agentrt.common.v1.common_pb2 import JobState, RuntimeEvent
from agentrt.engine.v1 import engine_pb2, engine_pb2_grpc
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc

from services.gateway.auth import Credentials, authenticate
from services.gateway.event_watch import event_filter, watch_events
from services.gateway.keys import Principal
from services.gateway.models import ModelDirectory
from services.gateway.watch import (
    ResumePoint,
    parse_resume_point,
    watch_job,
)
from services.kit.errors import FieldInvalid, FieldRequired
from services.kit.events import EventChannel
from services.kit.labels import WHAT_IF_LABEL
from services.kit.names import parse_job_name
from services.kit.request_context import update_request_context
from services.kit.telemetry import current_trace_id

Context = grpc.aio.ServicerContext[Any, Any]

MODEL_NAME_PREFIX = "models/"


async def list_engine_models(engine: engine_pb2_grpc.EngineServiceAsyncStub) -> list[str]:
    """The ids of every model the engine serves, across all pages of ListModels."""
    ids: list[str] = []
    token = ""
    while True:
        page = await engine.ListModels(
            engine_pb2.ListModelsRequest(page_size=1000, page_token=token)
        )
        ids.extend(model.name.removeprefix(MODEL_NAME_PREFIX) for model in page.models)
        token = page.next_page_token
        if not token:
            return ids


class RuntimeHandler(gateway_pb2_grpc.RuntimeServiceServicer):
    """The public API: run agents, follow their events, resolve their actions."""

    def __init__(
        self,
        keys: Credentials,
        jobs: jobs_pb2_grpc.JobServiceAsyncStub,
        models: ModelDirectory,
        events: EventChannel,
        default_model: str,
    ) -> None:
        self._keys = keys
        self._jobs = jobs
        self._models = models
        self._events = events
        self._default_model = default_model

    async def Execute(self, request: gateway_pb2.ExecuteRequest, context: Context) -> jobs_pb2.Job:
        caller = await authenticate(context, self._keys, request.request_id)
        return await self._create_job(caller, request)

    async def ExecuteStream(
        self, request: gateway_pb2.ExecuteRequest, context: Context
    ) -> AsyncIterator[RuntimeEvent]:
        caller = await authenticate(context, self._keys, request.request_id)
        job = await self._create_job(caller, request)
        # A job just created has its whole history still in the live stream; an older
        # one returned for a reused request_id is read from its history first.
        fresh = (
            job.state == JobState.JOB_STATE_QUEUED
            and job.last_event_id == f"{parse_job_name(job.name)}.1"
        )
        async with aclosing(self._watch(caller, job.name, ResumePoint(), fresh)) as events:
            async for event in events:
                yield event

    async def WatchJob(
        self, request: gateway_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[RuntimeEvent]:
        caller = await authenticate(context, self._keys)
        after = parse_resume_point(parse_job_name(request.name), request.after_event_id)
        async with aclosing(self._watch(caller, request.name, after, fresh=False)) as events:
            async for event in events:
                yield event

    async def GetJob(self, request: gateway_pb2.GetJobRequest, context: Context) -> jobs_pb2.Job:
        caller = await authenticate(context, self._keys)
        parse_job_name(request.name)
        return await self._jobs.GetJob(
            jobs_pb2.GetJobRequest(tenant=caller.tenant, name=request.name)
        )

    async def ListJobs(
        self, request: gateway_pb2.ListJobsRequest, context: Context
    ) -> gateway_pb2.ListJobsResponse:
        caller = await authenticate(context, self._keys)
        if request.parent:
            parse_job_name(request.parent, "parent")
        if request.root:
            parse_job_name(request.root, "root")
        forwarded = jobs_pb2.ListJobsRequest(
            tenant=caller.tenant,
            page_size=request.page_size,
            page_token=request.page_token,
            states=request.states,
            session=request.session,
            parent=request.parent,
            root=request.root,
        )
        if request.HasField("create_time_after"):
            forwarded.create_time_after.CopyFrom(request.create_time_after)
        if request.HasField("create_time_before"):
            forwarded.create_time_before.CopyFrom(request.create_time_before)
        listed = await self._jobs.ListJobs(forwarded)
        return gateway_pb2.ListJobsResponse(
            jobs=listed.jobs, next_page_token=listed.next_page_token
        )

    async def CancelJob(
        self, request: gateway_pb2.CancelJobRequest, context: Context
    ) -> jobs_pb2.Job:
        caller = await authenticate(context, self._keys)
        parse_job_name(request.name)
        return await self._jobs.CancelJob(
            jobs_pb2.CancelJobRequest(
                tenant=caller.tenant, name=request.name, reason=request.reason
            )
        )

    async def ListActions(
        self, request: gateway_pb2.ListActionsRequest, context: Context
    ) -> gateway_pb2.ListActionsResponse:
        caller = await authenticate(context, self._keys)
        parse_job_name(request.parent, "parent")
        listed = await self._jobs.ListActions(
            jobs_pb2.ListActionsRequest(
                tenant=caller.tenant,
                parent=request.parent,
                states=request.states,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        )
        return gateway_pb2.ListActionsResponse(
            actions=listed.actions, next_page_token=listed.next_page_token
        )

    async def ResolveAction(
        self, request: gateway_pb2.ResolveActionRequest, context: Context
    ) -> jobs_pb2.Action:
        caller = await authenticate(context, self._keys)
        forwarded = jobs_pb2.ResolveActionRequest(
            tenant=caller.tenant, principal=caller.principal, request_id=request.request_id
        )
        if request.HasField("outcome"):
            forwarded.outcome.CopyFrom(request.outcome)
        target = request.WhichOneof("target")
        if target == "resume_token":
            forwarded.resume_token = request.resume_token
        elif target == "name":
            forwarded.name = request.name
        return await self._jobs.ResolveAction(forwarded)

    async def WatchEvents(
        self, request: gateway_pb2.WatchEventsRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.WatchEventsResponse]:
        caller = await authenticate(context, self._keys)
        wanted = event_filter(request, caller.tenant, caller.admin)
        followed = watch_events(self._events, request.after_cursor, wanted, self._lookup_job)
        async with aclosing(followed) as events:
            async for cursor, event in events:
                yield gateway_pb2.WatchEventsResponse(event=event, cursor=cursor)

    async def _lookup_job(self, tenant: str, name: str) -> jobs_pb2.Job | None:
        try:
            return await self._jobs.GetJob(jobs_pb2.GetJobRequest(tenant=tenant, name=name))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def _create_job(
        self, caller: Principal, request: gateway_pb2.ExecuteRequest
    ) -> jobs_pb2.Job:
        if not request.HasField("spec"):
            raise FieldRequired("spec")
        spec = request.spec
        if not spec.prompt and not spec.messages:
            raise FieldRequired("spec.prompt")
        if spec.parent:
            # Child jobs are made by the orchestrator; a caller naming a parent could
            # attach its job to another tenant's tree.
            raise FieldInvalid("spec.parent", "is set by the runtime for child jobs")
        if spec.node:
            raise FieldInvalid("spec.node", "is set by the runtime for child jobs")
        if WHAT_IF_LABEL in spec.labels:
            # A what-if job is charged to no budget: only the replay service makes one.
            raise FieldInvalid(f"spec.labels[{WHAT_IF_LABEL!r}]", "is set by the runtime only")
        if not spec.model:
            spec.model = self._default_model
        update_request_context(session=spec.session)
        await self._models.require(spec.model)
        return await self._jobs.CreateJob(
            jobs_pb2.CreateJobRequest(
                tenant=caller.tenant,
                principal=caller.principal,
                spec=spec,
                request_id=request.request_id,
                trace_id=current_trace_id(),
            )
        )

    def _watch(
        self, caller: Principal, job: str, after: ResumePoint, fresh: bool
    ) -> AsyncGenerator[RuntimeEvent, None]:
        async def read_history(
            after_sequence: int, page_size: int
        ) -> jobs_pb2.ListJobEventsResponse:
            # The tenant makes the read fail with NOT_FOUND for another tenant's job,
            # so no separate GetJob is needed to hide it.
            return await self._jobs.ListJobEvents(
                jobs_pb2.ListJobEventsRequest(
                    tenant=caller.tenant,
                    name=job,
                    after_sequence=after_sequence,
                    page_size=page_size,
                )
            )

        return watch_job(job, after, read_history, self._events, fresh=fresh)
