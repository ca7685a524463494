"""A real gRPC server speaking RuntimeService from a script, to test how the client resumes.

It serves one job's events and breaks each stream as the test says; it records every
request and the metadata it came with. Like the real gateway, a resumed stream starts
again one event early (events are delivered at least once), so the client must skip it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from agentrt.common.v1 import common_pb2
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2

JOB_ID = "a" * 26
JOB = f"jobs/{JOB_ID}"


def history() -> list[common_pb2.RuntimeEvent]:
    """A job's events: created, started, two streamed deltas, a turn, succeeded."""

    def event(
        sequence: int, kind: common_pb2.EventType.ValueType, delta: int = 0, **payload: Any
    ) -> common_pb2.RuntimeEvent:
        suffix = f".{delta}" if delta else ""
        return common_pb2.RuntimeEvent(
            id=f"{JOB_ID}.{sequence}{suffix}", type=kind, sequence=sequence, job=JOB, **payload
        )

    return [
        event(1, common_pb2.EVENT_TYPE_JOB_CREATED),
        event(2, common_pb2.EVENT_TYPE_JOB_STARTED, attempt=common_pb2.JobAttempt(attempt=1)),
        event(
            2,
            common_pb2.EVENT_TYPE_OUTPUT_DELTA,
            1,
            output_delta=common_pb2.OutputDelta(turn=1, text="Hel"),
        ),
        event(
            2,
            common_pb2.EVENT_TYPE_OUTPUT_DELTA,
            2,
            output_delta=common_pb2.OutputDelta(turn=1, text="lo"),
        ),
        event(3, common_pb2.EVENT_TYPE_TURN_COMPLETED),
        event(
            4,
            common_pb2.EVENT_TYPE_JOB_SUCCEEDED,
            job_succeeded=common_pb2.JobSucceeded(output="Hello"),
        ),
    ]


@dataclass
class ScriptedGateway(gateway_pb2_grpc.RuntimeServiceServicer):
    """Serves `events`; stream number i breaks after `breaks[i]` events (None: never)."""

    events: list[common_pb2.RuntimeEvent] = field(default_factory=history)
    breaks: Sequence[int | None] = ()
    break_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    end_cleanly: bool = False
    """Break by ending the stream without a status error instead."""
    state: common_pb2.JobState.ValueType = common_pb2.JOB_STATE_RUNNING
    watches: list[str] = field(default_factory=list)
    """The after_event_id of every WatchJob, in order."""
    executions: list[str] = field(default_factory=list)
    """The request_id of every ExecuteStream, in order."""
    authorizations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._limits = iter(self.breaks)

    async def WatchJob(
        self, request: gateway_pb2.WatchJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[common_pb2.RuntimeEvent]:
        self._record(context)
        self.watches.append(request.after_event_id)
        ids = [event.id for event in self.events]
        start = ids.index(request.after_event_id) if request.after_event_id else 0
        async for event in self._stream(self.events[start:], context):
            yield event

    async def ExecuteStream(
        self, request: gateway_pb2.ExecuteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[common_pb2.RuntimeEvent]:
        self._record(context)
        self.executions.append(request.request_id)
        async for event in self._stream(self.events, context):
            yield event

    async def GetJob(
        self, request: gateway_pb2.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.Job:
        self._record(context)
        return jobs_pb2.Job(name=request.name, state=self.state)

    async def _stream(
        self, events: list[common_pb2.RuntimeEvent], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[common_pb2.RuntimeEvent]:
        limit = next(self._limits, None)
        for sent, event in enumerate(events):
            if sent == limit:
                if self.end_cleanly:
                    return
                await context.abort(self.break_code, "the stream broke")
            if event.type in (
                common_pb2.EVENT_TYPE_JOB_SUCCEEDED,
                common_pb2.EVENT_TYPE_JOB_FAILED,
            ):
                self.state = (
                    common_pb2.JOB_STATE_SUCCEEDED
                    if event.type == common_pb2.EVENT_TYPE_JOB_SUCCEEDED
                    else common_pb2.JOB_STATE_FAILED
                )
            yield event

    async def _unimplemented(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")

    Execute = ListJobs = CancelJob = ListActions = ResolveAction = _unimplemented

    async def WatchEvents(
        self, request: gateway_pb2.WatchEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[gateway_pb2.WatchEventsResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")
        yield gateway_pb2.WatchEventsResponse()  # never reached: makes this a stream handler

    def _record(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        metadata = dict(context.invocation_metadata() or ())
        self.authorizations.append(str(metadata.get("authorization", "")))


@asynccontextmanager
async def serving(gateway: ScriptedGateway) -> AsyncIterator[str]:
    """Serves the gateway on a free local port; yields its endpoint."""
    server = grpc.aio.server()
    gateway_pb2_grpc.add_RuntimeServiceServicer_to_server(gateway, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
