"""What the agent loop needs from the jobs service and the engine, and their gRPC clients."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import grpc
from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2, engine_pb2_grpc
from agentrt.errors import error_from_rpc
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from agentrt.retries import BROKEN_OFF, Repeated, RetryPolicy, retried
from google.protobuf.duration_pb2 import Duration

from services.kit.errors import IDEMPOTENCY_HOOKS
from services.kit.interceptors import LONG_LIVED
from services.kit.version import RUNTIME_VERSION
from services.orchestrator.tools.base import ToolOutput

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_ACTIONS_PAGE = 500
"""The largest page ListActions serves."""
DeltaSink = Callable[[str], Awaitable[None]]
"""Receives each piece of text of a streamed answer as it arrives."""
HookSink = Callable[[Sequence[engine_pb2.IdempotencyHook.ValueType], str], Awaitable[None]]
"""Receives the engine's idempotency hooks of a call as they fire, with the engine's error
for those of a failed call ("" otherwise)."""


class LeaseLost(Exception):
    """The worker no longer holds the job: it was cancelled, finished, or taken over."""


class JobsUnavailable(Exception):
    """The jobs service could not be reached, or its answer is unknown; the lease will
    expire and another worker resumes the job from its last checkpoint."""


class ModelCallFailed(Exception):
    """The engine could not answer a model call."""

    def __init__(self, reason: common_pb2.ErrorReason.ValueType, message: str, retryable: bool):
        super().__init__(message)
        self.reason = reason
        """MODEL_NOT_FOUND, PROVIDER_ERROR or DEADLINE_EXCEEDED."""
        self.message = message
        self.retryable = retryable
        """True when the same call may succeed later (provider down or rate limiting)."""


@dataclass(frozen=True)
class FinalTurn:
    """The last turn of a run, recorded by FinishJob together with the job's end
    instead of by a CheckpointJob of its own: one round trip and one transaction less."""

    checkpoint: jobs_pb2.Checkpoint
    message: common_pb2.Message
    usage: common_pb2.Usage
    model: str = ""
    """The model that answered the turn, as the engine reported it."""


class JobsPort(Protocol):
    """The jobs service as one running job sees it. Every method raises LeaseLost once the
    lease is gone, and JobsUnavailable when the service cannot be reached."""

    async def heartbeat(self, job: str, lease_id: str) -> None:
        """Extends the lease by the worker's lease duration."""
        ...

    async def checkpoint(
        self,
        job: str,
        lease_id: str,
        checkpoint: jobs_pb2.Checkpoint,
        message: common_pb2.Message | None,
        turn_usage: common_pb2.Usage | None,
        tool_calls: Sequence[common_pb2.ToolCalled] = (),
        within_turn: bool = False,
        model: str = "",
    ) -> jobs_pb2.Job:
        """Records a completed turn, answered by `model` (as the engine reported it), or
        with `tool_calls` or `within_turn` progress within the turn (one tool.called event
        per tool call, in the same transaction); returns the job as it now is."""
        ...

    async def require_action(
        self,
        job: str,
        lease_id: str,
        action: jobs_pb2.Action,
        timeout: float | None,
        checkpoint: jobs_pb2.Checkpoint,
    ) -> jobs_pb2.Action | None:
        """Creates a pending action with the checkpoint to resume from: the job becomes
        WAITING and the lease is given up. `timeout` None means the service's default.
        None when a retry found the job WAITING: the first try created the action, and
        its answer was lost."""
        ...

    async def get_action(self, tenant: str, name: str) -> jobs_pb2.Action:
        """The action named `name` ("jobs/{job}/actions/{action}")."""
        ...

    async def list_actions(self, tenant: str, job: str) -> list[jobs_pb2.Action]:
        """Every action of the job, oldest first."""
        ...

    async def finish(
        self,
        job: str,
        lease_id: str,
        state: common_pb2.JobState.ValueType,
        usage: common_pb2.Usage,
        result: jobs_pb2.JobResult | None = None,
        failure: common_pb2.Failure | None = None,
        final_turn: FinalTurn | None = None,
    ) -> jobs_pb2.Job | None:
        """Ends the job as SUCCEEDED (with result) or FAILED / TIMED_OUT (with failure),
        recording `final_turn` in the same transaction, and returns it; None when a retry
        found it ended so: the first try ended it, and its answer was lost."""
        ...

    async def release(self, job: str, lease_id: str, reason: str) -> None:
        """Gives the job back to the queue."""
        ...


class TreePort(Protocol):
    """The jobs service as a job that runs child jobs sees it (workflows, run_agent)."""

    async def create_child(
        self, parent: jobs_pb2.Job, spec: jobs_pb2.JobSpec, request_id: str
    ) -> jobs_pb2.Job:
        """Creates (or, for a request_id seen before, returns) a child of `parent`.
        Raises grpc.aio.AioRpcError for a refusal (RESOURCE_EXHAUSTED, INVALID_ARGUMENT)."""
        ...

    async def get_job(self, tenant: str, name: str) -> jobs_pb2.Job: ...

    async def await_children(
        self,
        job: str,
        lease_id: str,
        children: Sequence[str],
        checkpoint: jobs_pb2.Checkpoint,
    ) -> bool:
        """True when the job now waits (its lease is gone) until one of `children` ends;
        False when one had already ended (the lease is kept)."""
        ...

    async def cancel_job(self, tenant: str, name: str, reason: str) -> None:
        """Cancels a job that has not finished; one that has is left as it is."""
        ...


class ToolsPort(Protocol):
    """The tools of a job (services.orchestrator.tools.runner.ToolRunner)."""

    async def offer(self, job: jobs_pb2.Job) -> list[common_pb2.ToolSpec]:
        """The specs of the tools the job's spec names, as the model is shown them.
        Raises UnknownTool for a name no source serves."""
        ...

    def validate(self, spec: common_pb2.ToolSpec, call: common_pb2.ToolCall) -> ToolOutput | None:
        """None when the call's arguments are valid against `spec`, else the error output
        to give the model instead of running (or handing out) the call."""
        ...

    async def run(
        self,
        job: jobs_pb2.Job,
        call: common_pb2.ToolCall,
        calls_so_far: int,
        offered: common_pb2.ToolSpec | None = None,
    ) -> ToolOutput:
        """Runs a built-in or plugin tool call through the job's middleware chain; a
        failure is a ToolOutput with is_error. `offered`: the spec the call was already
        validated against. Raises BudgetExceeded."""
        ...


class ModelPort(Protocol):
    """The engine's streaming model call."""

    async def stream(
        self,
        request: engine_pb2.CompleteRequest,
        time_left: float | None,
        on_delta: DeltaSink,
        on_hooks: HookSink,
    ) -> engine_pb2.CompleteChunk:
        """Streams an answer: passes each text delta to `on_delta` and each idempotency
        hook to `on_hooks` as they arrive, and returns the last chunk (finish reason, tool
        calls, usage); the call may take `time_left` seconds (None: the channel's
        default). Raises ModelCallFailed. Cancelling the caller cancels the call, which
        closes the provider's stream."""
        ...


class GrpcJobsPort:
    """JobsPort (and the worker's LeaseJobs) over the JobService stub."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        worker_id: str,
        lease_seconds: float,
        retry_attempts: int = 4,
        retry_backoff: float = 0.2,
    ) -> None:
        """A call cut off (UNAVAILABLE, or a CANCELLED the worker did not ask for: a jobs
        service shutting down cancels the calls it had not started) is tried
        `retry_attempts` times in all, waiting about `retry_backoff * 2**i` seconds
        between tries. Each call is harmless to repeat: see `_call`."""
        self._stub = jobs_pb2_grpc.JobServiceStub(channel)
        self._worker_id = worker_id
        self._lease_seconds = lease_seconds
        self._lease_duration = _duration(lease_seconds)
        self._retry = RetryPolicy(
            attempts=retry_attempts,
            initial_backoff=retry_backoff,
            max_backoff=retry_backoff * 2.0 ** (retry_attempts - 1),
        )
        self.last_contact: datetime | None = None
        """When a lease was last granted or extended: the worker's heartbeat time."""

    async def lease_jobs(self, max_jobs: int, wait_seconds: float) -> list[jobs_pb2.JobLease]:
        """Long-polls for up to `max_jobs` runnable jobs; raises grpc.aio.AioRpcError."""
        request = jobs_pb2.LeaseJobsRequest(
            worker=self._worker_id,
            max_jobs=max_jobs,
            lease_duration=self._lease_duration,
            wait_timeout=_duration(wait_seconds),
            runtime_version=RUNTIME_VERSION,
        )
        # The margin covers the round trip and the service's own scheduling.
        timeout = wait_seconds + max(2.0, wait_seconds / 2)
        response = await self._stub.LeaseJobs(request, timeout=timeout, metadata=LONG_LIVED)
        self.last_contact = datetime.now(UTC)
        return list(response.leases)

    async def heartbeat(self, job: str, lease_id: str) -> None:
        request = jobs_pb2.HeartbeatLeaseRequest(
            name=job, lease_id=lease_id, lease_duration=self._lease_duration
        )
        # Past the lease duration an answer no longer matters: the lease has expired.
        await self._call(lambda: self._stub.HeartbeatLease(request, timeout=self._lease_seconds))
        self.last_contact = datetime.now(UTC)

    async def checkpoint(
        self,
        job: str,
        lease_id: str,
        checkpoint: jobs_pb2.Checkpoint,
        message: common_pb2.Message | None,
        turn_usage: common_pb2.Usage | None,
        tool_calls: Sequence[common_pb2.ToolCalled] = (),
        within_turn: bool = False,
        model: str = "",
    ) -> jobs_pb2.Job:
        request = jobs_pb2.CheckpointJobRequest(
            name=job,
            lease_id=lease_id,
            checkpoint=checkpoint,
            message=message,
            turn_usage=turn_usage,
            tool_calls=tool_calls,
            within_turn=within_turn,
            model=model,
        )
        # The jobs service answers a repeat of the checkpoint it holds without a change.
        return await self._call(lambda: self._stub.CheckpointJob(request))

    async def require_action(
        self,
        job: str,
        lease_id: str,
        action: jobs_pb2.Action,
        timeout: float | None,
        checkpoint: jobs_pb2.Checkpoint,
    ) -> jobs_pb2.Action | None:
        request = jobs_pb2.RequireActionRequest(
            parent=job,
            lease_id=lease_id,
            action=action,
            timeout=None if timeout is None else _duration(timeout),
            checkpoint=checkpoint,
        )

        async def parked_before(error: grpc.aio.AioRpcError) -> None:
            if _lost_lease_state(error) != common_pb2.JOB_STATE_WAITING:
                raise error

        return await self._call(lambda: self._stub.RequireAction(request), parked_before)

    async def get_action(self, tenant: str, name: str) -> jobs_pb2.Action:
        request = jobs_pb2.GetActionRequest(tenant=tenant, name=name)
        return await self._call(functools.partial(self._stub.GetAction, request))

    async def list_actions(self, tenant: str, job: str) -> list[jobs_pb2.Action]:
        actions: list[jobs_pb2.Action] = []
        token = ""
        while True:
            request = jobs_pb2.ListActionsRequest(
                tenant=tenant, parent=job, page_size=MAX_ACTIONS_PAGE, page_token=token
            )
            page = await self._call(functools.partial(self._stub.ListActions, request))
            actions.extend(page.actions)
            token = page.next_page_token
            if not token:
                return actions

    async def finish(
        self,
        job: str,
        lease_id: str,
        state: common_pb2.JobState.ValueType,
        usage: common_pb2.Usage,
        result: jobs_pb2.JobResult | None = None,
        failure: common_pb2.Failure | None = None,
        final_turn: FinalTurn | None = None,
    ) -> jobs_pb2.Job | None:
        request = jobs_pb2.FinishJobRequest(
            name=job, lease_id=lease_id, state=state, usage=usage, result=result, failure=failure
        )
        if final_turn is not None:
            request.checkpoint.CopyFrom(final_turn.checkpoint)
            request.message.CopyFrom(final_turn.message)
            request.turn_usage.CopyFrom(final_turn.usage)
            request.model = final_turn.model

        async def finished_before(error: grpc.aio.AioRpcError) -> None:
            if _lost_lease_state(error) != state:
                raise error

        return await self._call(lambda: self._stub.FinishJob(request), finished_before)

    async def release(self, job: str, lease_id: str, reason: str) -> None:
        request = jobs_pb2.ReleaseJobRequest(name=job, lease_id=lease_id, reason=reason)

        async def released_before(error: grpc.aio.AioRpcError) -> None:
            # The lease is gone, which is what a release asks for.
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise error

        await self._call(lambda: self._stub.ReleaseJob(request), released_before)

    async def create_child(
        self, parent: jobs_pb2.Job, spec: jobs_pb2.JobSpec, request_id: str
    ) -> jobs_pb2.Job:
        request = jobs_pb2.CreateJobRequest(
            tenant=parent.tenant,
            principal=parent.principal,
            spec=spec,
            request_id=request_id,
            trace_id=parent.trace_id,
        )
        return await self._call(lambda: self._stub.CreateJob(request))

    async def get_job(self, tenant: str, name: str) -> jobs_pb2.Job:
        request = jobs_pb2.GetJobRequest(tenant=tenant, name=name)
        return await self._call(lambda: self._stub.GetJob(request))

    async def await_children(
        self,
        job: str,
        lease_id: str,
        children: Sequence[str],
        checkpoint: jobs_pb2.Checkpoint,
    ) -> bool:
        request = jobs_pb2.AwaitChildrenRequest(
            name=job, lease_id=lease_id, children=children, checkpoint=checkpoint
        )

        async def parked_before(error: grpc.aio.AioRpcError) -> jobs_pb2.AwaitChildrenResponse:
            if _lost_lease_state(error) != common_pb2.JOB_STATE_WAITING:
                raise error
            return jobs_pb2.AwaitChildrenResponse(waiting=True)

        response = await self._call(lambda: self._stub.AwaitChildren(request), parked_before)
        return response.waiting

    async def cancel_job(self, tenant: str, name: str, reason: str) -> None:
        request = jobs_pb2.CancelJobRequest(tenant=tenant, name=name, reason=reason)
        # FAILED_PRECONDITION (read as LeaseLost) means it has already ended.
        with contextlib.suppress(LeaseLost):
            await self._call(lambda: self._stub.CancelJob(request))

    async def _call(
        self, send: Callable[[], Awaitable[T]], repeated: Repeated[T] | None = None
    ) -> T:
        """Sends a request, again while it is cut off (UNAVAILABLE or CANCELLED), and maps
        the service's refusals. Whether a cut-off call was applied is unknown, so every
        call is one whose repeat is harmless: a read, a heartbeat, a creation under a
        request_id, a checkpoint (the service answers a repeat of the one it holds
        unchanged); `repeated` reads the refusal a repeat of an applied call meets (a
        finished job's LEASE_LOST) as that call's answer."""
        try:
            return await retried(
                lambda _: send(), self._retry, None, codes=BROKEN_OFF, repeated=repeated
            )
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                raise LeaseLost(error.details() or code.name) from error
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise JobsUnavailable(f"no answer in time: {error.details()}") from error
            if code in BROKEN_OFF:
                raise JobsUnavailable(error.details() or code.name) from error
            raise


def _lost_lease_state(error: grpc.aio.AioRpcError) -> common_pb2.JobState.ValueType | None:
    """The job's state a LEASE_LOST refusal names; None for another error."""
    failed = error_from_rpc(error)
    state = failed.metadata.get("state", "")
    if failed.reason != "LEASE_LOST" or state not in common_pb2.JobState.keys():  # noqa: SIM118
        return None
    return common_pb2.JobState.Value(state)


class GrpcModelPort:
    """ModelPort over the EngineService stub."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = engine_pb2_grpc.EngineServiceStub(channel)

    async def stream(
        self,
        request: engine_pb2.CompleteRequest,
        time_left: float | None,
        on_delta: DeltaSink,
        on_hooks: HookSink,
    ) -> engine_pb2.CompleteChunk:
        # With a timeout of its own the call may outlive the channel's default deadline
        # (a long answer); without one, the default bounds it.
        metadata = LONG_LIVED if time_left is not None else None
        call = self._stub.StreamComplete(request, timeout=time_left, metadata=metadata)
        last = engine_pb2.CompleteChunk()
        try:
            async for chunk in call:
                if chunk.idempotency_hooks:
                    await on_hooks(chunk.idempotency_hooks, "")
                if chunk.text_delta:
                    await on_delta(chunk.text_delta)
                last = chunk
        except grpc.aio.AioRpcError as error:
            failed = model_call_failed(error)
            hooks = failed_call_hooks(error)
            if hooks:
                await on_hooks(hooks, failed.message)
            raise failed from error
        finally:
            # A no-op once the stream ended; when the run is cancelled it ends the RPC
            # now, which closes the provider's stream in the engine.
            call.cancel()
        return last


def model_call_failed(error: grpc.aio.AioRpcError) -> ModelCallFailed:
    """What an engine status means for the agent loop."""
    code = error.code()
    message = error.details() or code.name
    if code == grpc.StatusCode.NOT_FOUND:
        return ModelCallFailed(common_pb2.ERROR_REASON_MODEL_NOT_FOUND, message, retryable=False)
    # CANCELLED here is the engine's, never the run's own (that raises CancelledError): an
    # engine that shuts down (a rolling restart) cancels the calls it had not started.
    if code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    ):
        return ModelCallFailed(common_pb2.ERROR_REASON_PROVIDER_ERROR, message, retryable=True)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ModelCallFailed(common_pb2.ERROR_REASON_DEADLINE_EXCEEDED, message, retryable=True)
    return ModelCallFailed(common_pb2.ERROR_REASON_PROVIDER_ERROR, message, retryable=False)


def failed_call_hooks(error: grpc.aio.AioRpcError) -> list[engine_pb2.IdempotencyHook.ValueType]:
    """The idempotency hooks the engine names in a failed call's ErrorInfo (engine.proto);
    a name this worker does not know is left out."""
    named = error_from_rpc(error).metadata.get(IDEMPOTENCY_HOOKS, "")
    known = engine_pb2.IdempotencyHook.keys()
    hooks = (f"IDEMPOTENCY_HOOK_{name.upper()}" for name in named.split(",") if name)
    return [engine_pb2.IdempotencyHook.Value(hook) for hook in hooks if hook in known]


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration
