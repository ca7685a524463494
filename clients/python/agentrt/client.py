"""The async Python client of the agentrt gateway: run agents, follow their events, manage jobs."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from google.protobuf import duration_pb2, struct_pb2

from agentrt.common.v1 import common_pb2
from agentrt.errors import UnavailableError, error_from_rpc
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2

if TYPE_CHECKING:
    from agentrt.gateway.v1.gateway_pb2_grpc import RuntimeServiceAsyncStub

Job = jobs_pb2.Job
JobSpec = jobs_pb2.JobSpec
Action = jobs_pb2.Action
RuntimeEvent = common_pb2.RuntimeEvent
JobState: TypeAlias = common_pb2.JobState.ValueType
ActionState: TypeAlias = jobs_pb2.Action.State.ValueType
JobPage: TypeAlias = tuple[list[jobs_pb2.Job], str]
"""One page of ListJobs: the jobs and the token of the next page ("" on the last one)."""
ActionPage: TypeAlias = tuple[list[jobs_pb2.Action], str]
"""One page of ListActions: the actions and the token of the next page."""

TERMINAL_STATES: frozenset[JobState] = frozenset(
    {
        common_pb2.JOB_STATE_SUCCEEDED,
        common_pb2.JOB_STATE_FAILED,
        common_pb2.JOB_STATE_CANCELLED,
        common_pb2.JOB_STATE_TIMED_OUT,
    }
)
"""The states a job never leaves."""

TERMINAL_EVENTS: frozenset[common_pb2.EventType.ValueType] = frozenset(
    {
        common_pb2.EVENT_TYPE_JOB_SUCCEEDED,
        common_pb2.EVENT_TYPE_JOB_FAILED,
        common_pb2.EVENT_TYPE_JOB_CANCELLED,
        common_pb2.EVENT_TYPE_JOB_TIMED_OUT,
    }
)
"""The event types that end a job's event stream."""

_EventCall: TypeAlias = grpc.aio.UnaryStreamCall[Any, common_pb2.RuntimeEvent]


@dataclass(frozen=True)
class ResumePolicy:
    """How an event stream that breaks with UNAVAILABLE is reopened where it stopped."""

    attempts: int = 8
    """Reconnections in a row, with no event received in between, before giving up."""
    initial_backoff: float = 0.2
    """Seconds before the first reconnection; doubled at each further one."""
    max_backoff: float = 5.0
    """The longest wait between two reconnections, in seconds."""

    def backoff(self, failures: int) -> float:
        """The wait before reconnection number `failures` (from 1), with jitter so that
        many clients cut off together do not reconnect together."""
        ceiling = min(self.max_backoff, self.initial_backoff * 2.0 ** (failures - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def job_name(job: str | jobs_pb2.Job) -> str:
    """The resource name "jobs/{id}" of a job given as a Job, a name or a bare id."""
    name = job.name if isinstance(job, jobs_pb2.Job) else job.strip()
    if not name:
        raise ValueError("a job name or id is required")
    return name if name.startswith("jobs/") else f"jobs/{name}"


def job_spec(
    prompt: str,
    *,
    model: str = "",
    system_prompt: str = "",
    max_turns: int = 0,
    session: str = "",
    labels: Mapping[str, str] | None = None,
    timeout: float | None = None,
    budget: common_pb2.BudgetSpec | None = None,
) -> jobs_pb2.JobSpec:
    """A JobSpec for a single prompt; see `Client.execute` for the parameters. Build one to
    set what the keywords do not cover (messages, tools, params, policy) and pass it to
    `Client.execute_spec`."""
    spec = jobs_pb2.JobSpec(
        prompt=prompt,
        model=model,
        system_prompt=system_prompt,
        max_turns=max_turns,
        session=session,
        labels=dict(labels or {}),
        budget=budget,
    )
    if timeout is not None:
        spec.timeout.CopyFrom(_duration(timeout))
    return spec


class Client:
    """An async client of an agentrt gateway.

    Use it as an async context manager, so that its connection is closed::

        async with Client("127.0.0.1:50051", api_key) as client:
            job = await client.run("Write a haiku about queues", model="gpt-4o-mini")
            print(job.result.output)

    Failed calls raise `agentrt.AgentrtError` subclasses (`JobNotFoundError`,
    `InvalidArgumentError`, `UnauthenticatedError`, ...), never raw gRPC errors.
    """

    def __init__(
        self,
        endpoint: str,
        api_key: str,
        *,
        tls: bool = False,
        call_timeout: float | None = 30.0,
        resume: ResumePolicy | None = None,
    ) -> None:
        """Prepares a client of the gateway at `endpoint` ("host:port"); the connection
        is opened on the first call.

        `api_key` is sent as `authorization: Bearer <key>` on every call. `tls` connects
        with TLS and the system's root certificates. `call_timeout` is the deadline in
        seconds of every call except the event streams, which last as long as the job.
        `resume` says how a broken event stream is reopened.
        """
        if not endpoint.strip():
            raise ValueError("an endpoint (host:port) is required")
        if not api_key.strip():
            raise ValueError("an API key is required")
        self._endpoint = endpoint.strip()
        self._tls = tls
        self._metadata = (("authorization", f"Bearer {api_key.strip()}"),)
        self._call_timeout = call_timeout
        self._resume = resume or ResumePolicy()
        self._channel: grpc.aio.Channel | None = None
        self._stub: RuntimeServiceAsyncStub | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the connection; calls in progress are cancelled."""
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
            self._stub = None

    @property
    def _api(self) -> RuntimeServiceAsyncStub:
        if self._stub is None:
            if self._tls:
                credentials = grpc.ssl_channel_credentials()
                self._channel = grpc.aio.secure_channel(self._endpoint, credentials)
            else:
                self._channel = grpc.aio.insecure_channel(self._endpoint)
            self._stub = gateway_pb2_grpc.RuntimeServiceStub(self._channel)
        return self._stub

    async def execute(
        self,
        prompt: str,
        *,
        model: str = "",
        system_prompt: str = "",
        max_turns: int = 0,
        request_id: str = "",
        session: str = "",
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
        budget: common_pb2.BudgetSpec | None = None,
    ) -> jobs_pb2.Job:
        """Starts a job that answers `prompt` and returns it at once, QUEUED.

        `model` is a model id served by the deployment (empty: its default model);
        `system_prompt` an instruction put before the conversation; `max_turns` bounds
        the agent's model calls (0: the default, 8); `session` a bucket of your choice
        to list jobs by; `labels` your own key/value tags; `timeout` how many seconds
        the job may take from its creation (None: the default, 10 minutes); `budget`
        limits on tokens, cost and tool calls. With a `request_id` used before for the
        same request, the job created then is returned instead of a new one.

        Raises InvalidArgumentError (e.g. reason REQUEST_ID_REUSED for the same
        request_id with another request) and NotFoundError (MODEL_NOT_FOUND).
        """
        spec = job_spec(
            prompt,
            model=model,
            system_prompt=system_prompt,
            max_turns=max_turns,
            session=session,
            labels=labels,
            timeout=timeout,
            budget=budget,
        )
        return await self.execute_spec(spec, request_id)

    async def execute_spec(self, spec: jobs_pb2.JobSpec, request_id: str = "") -> jobs_pb2.Job:
        """Starts a job from a whole JobSpec (see `job_spec`) and returns it, QUEUED."""
        request = gateway_pb2.ExecuteRequest(spec=spec, request_id=request_id)
        with _translated_errors():
            return await self._api.Execute(request, **self._unary_options())

    def execute_stream(
        self,
        prompt: str,
        *,
        model: str = "",
        system_prompt: str = "",
        max_turns: int = 0,
        request_id: str = "",
        session: str = "",
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
        budget: common_pb2.BudgetSpec | None = None,
    ) -> AsyncIterator[common_pb2.RuntimeEvent]:
        """Starts a job like `execute` and yields its events until the terminal one.

        The first event is job.created; its `job` field names the job. A stream that
        breaks is resumed as `events` does. When no `request_id` is given one is made
        up, so that reopening a stream broken before its first event cannot start a
        second job.
        """
        spec = job_spec(
            prompt,
            model=model,
            system_prompt=system_prompt,
            max_turns=max_turns,
            session=session,
            labels=labels,
            timeout=timeout,
            budget=budget,
        )
        return self.execute_stream_spec(spec, request_id)

    def execute_stream_spec(
        self, spec: jobs_pb2.JobSpec, request_id: str = ""
    ) -> AsyncIterator[common_pb2.RuntimeEvent]:
        """Starts a job from a whole JobSpec and yields its events, as `execute_stream`."""
        request = gateway_pb2.ExecuteRequest(spec=spec, request_id=request_id or _new_request_id())

        def open_stream(last: common_pb2.RuntimeEvent | None) -> _EventCall:
            if last is None:
                return self._api.ExecuteStream(request, metadata=self._metadata)
            return self._watch(last.job, last.id)

        return self._follow(open_stream)

    def events(
        self, job: str | jobs_pb2.Job, after_event_id: str = ""
    ) -> AsyncIterator[common_pb2.RuntimeEvent]:
        """Yields a job's events: its history after `after_event_id` (from the beginning
        when empty), then live ones, and ends after the terminal event.

        Events are delivered at least once by the server; this iterator drops the ones it
        has already yielded. When the stream breaks with UNAVAILABLE (a gateway restart,
        a network cut) it is reopened after the last event received, with a growing
        pause, up to `ResumePolicy.attempts` times in a row; then UnavailableError is
        raised. Output deltas (job.output.delta) are live only: those sent while the
        stream was broken are not replayed, but the turn's job.turn.completed event is.

        Raises JobNotFoundError, InvalidArgumentError (a malformed name or event id).
        """
        name = job_name(job)

        def open_stream(last: common_pb2.RuntimeEvent | None) -> _EventCall:
            return self._watch(name, last.id if last is not None else after_event_id)

        return self._follow(open_stream, after_event_id)

    async def result(self, job: str | jobs_pb2.Job) -> jobs_pb2.Job:
        """Waits until the job has finished and returns it: SUCCEEDED with `result`, or
        FAILED, CANCELLED or TIMED_OUT with `failure` (reason and message)."""
        current = await self.get(job)
        if current.state not in TERMINAL_STATES:
            async for _ in self.events(current.name, current.last_event_id):
                pass
            current = await self.get(current.name)
        return current

    async def run(
        self,
        prompt: str,
        *,
        model: str = "",
        system_prompt: str = "",
        max_turns: int = 0,
        request_id: str = "",
        session: str = "",
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
        budget: common_pb2.BudgetSpec | None = None,
    ) -> jobs_pb2.Job:
        """Starts a job like `execute` and returns it once it has finished, like `result`.
        A failed job is returned (state FAILED and its `failure`), not raised."""
        job = await self.execute(
            prompt,
            model=model,
            system_prompt=system_prompt,
            max_turns=max_turns,
            request_id=request_id,
            session=session,
            labels=labels,
            timeout=timeout,
            budget=budget,
        )
        return await self.result(job)

    async def get(self, job: str | jobs_pb2.Job) -> jobs_pb2.Job:
        """Returns the job as it is now. Raises JobNotFoundError."""
        request = gateway_pb2.GetJobRequest(name=job_name(job))
        with _translated_errors():
            return await self._api.GetJob(request, **self._unary_options())

    async def list(
        self,
        *,
        states: Iterable[JobState] = (),
        session: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> JobPage:
        """Returns one page of your tenant's jobs, newest first, and the token of the next
        page ("" on the last one). `states` and `session` filter; `page_size` is at most
        500 (0: 50). See `iter_jobs` to go through every page."""
        request = gateway_pb2.ListJobsRequest(
            states=states, session=session, page_size=page_size, page_token=page_token
        )
        with _translated_errors():
            response = await self._api.ListJobs(request, **self._unary_options())
        return [*response.jobs], response.next_page_token

    async def iter_jobs(
        self, *, states: Iterable[JobState] = (), session: str = "", page_size: int = 0
    ) -> AsyncIterator[jobs_pb2.Job]:
        """Yields your tenant's jobs, newest first, fetching page after page as needed."""
        wanted = [*states]
        token = ""
        while True:
            jobs, token = await self.list(
                states=wanted, session=session, page_size=page_size, page_token=token
            )
            for job in jobs:
                yield job
            if not token:
                return

    async def cancel(self, job: str | jobs_pb2.Job, reason: str = "") -> jobs_pb2.Job:
        """Cancels a job that has not finished and returns it, CANCELLED; an in-flight
        model call is cut. Raises FailedPreconditionError (reason ILLEGAL_TRANSITION)
        when the job has already finished, and JobNotFoundError."""
        request = gateway_pb2.CancelJobRequest(name=job_name(job), reason=reason)
        with _translated_errors():
            return await self._api.CancelJob(request, **self._unary_options())

    async def list_actions(
        self,
        job: str | jobs_pb2.Job,
        *,
        states: Iterable[ActionState] = (),
        page_size: int = 0,
        page_token: str = "",
    ) -> ActionPage:
        """Returns one page of a job's actions (approvals, client tool calls, inputs),
        oldest first, and the token of the next page. Raises JobNotFoundError."""
        request = gateway_pb2.ListActionsRequest(
            parent=job_name(job), states=states, page_size=page_size, page_token=page_token
        )
        with _translated_errors():
            response = await self._api.ListActions(request, **self._unary_options())
        return [*response.actions], response.next_page_token

    async def resolve_action(
        self,
        outcome: Mapping[str, Any],
        *,
        resume_token: str = "",
        name: str = "",
        request_id: str = "",
    ) -> jobs_pb2.Action:
        """Resolves a pending action, given either its `resume_token` or its `name`
        ("jobs/{job}/actions/{action}"), with `outcome` such as {"approved": True} or a
        client tool's output; the job then continues. Raises FailedPreconditionError
        (ACTION_NOT_PENDING, RESUME_TOKEN_INVALID), NotFoundError, PermissionDeniedError.
        """
        if bool(resume_token) == bool(name):
            raise ValueError("give exactly one of resume_token and name")
        request = gateway_pb2.ResolveActionRequest(outcome=_struct(outcome), request_id=request_id)
        if resume_token:
            request.resume_token = resume_token
        else:
            request.name = name
        with _translated_errors():
            return await self._api.ResolveAction(request, **self._unary_options())

    def _unary_options(self) -> dict[str, Any]:
        return {"timeout": self._call_timeout, "metadata": self._metadata}

    def _watch(self, name: str, after_event_id: str) -> _EventCall:
        request = gateway_pb2.WatchJobRequest(name=name, after_event_id=after_event_id)
        return self._api.WatchJob(request, metadata=self._metadata)

    async def _follow(
        self,
        open_stream: Callable[[common_pb2.RuntimeEvent | None], _EventCall],
        after_event_id: str = "",
    ) -> AsyncIterator[common_pb2.RuntimeEvent]:
        """Yields the events of the streams `open_stream` opens, each one after the last
        event received (None before the first), until the terminal event."""
        seen = event_position(after_event_id) if after_event_id else None
        last: common_pb2.RuntimeEvent | None = None
        failures = 0
        while True:
            call = open_stream(last)
            try:
                async for event in call:
                    position = event_position(event.id)
                    if seen is not None and position is not None and position <= seen:
                        continue
                    failures = 0
                    last, seen = event, position
                    yield event
                    if event.type in TERMINAL_EVENTS:
                        return
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or failures >= self._resume.attempts:
                    raise error_from_rpc(error) from error
            else:
                if failures >= self._resume.attempts:
                    raise UnavailableError(
                        grpc.StatusCode.UNAVAILABLE, "", "the event stream ended before the job did"
                    )
            finally:
                call.cancel()
            failures += 1
            await asyncio.sleep(self._resume.backoff(failures))


def event_position(event_id: str) -> tuple[int, int] | None:
    """Where an event id ("<job>.<sequence>" or "<job>.<sequence>.<n>") sits in its job's
    stream, comparable with another event's; None for an id of another form.

    A history event comes before the transient events that follow it."""
    parts = event_id.split(".")
    if len(parts) not in (2, 3) or not all(part.isdigit() for part in parts[1:]):
        return None
    return int(parts[1]), int(parts[2]) if len(parts) == 3 else -1


@contextmanager
def _translated_errors() -> Iterator[None]:
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error) from error


def _duration(seconds: float) -> duration_pb2.Duration:
    if seconds < 0:
        raise ValueError(f"a timeout cannot be negative, got {seconds}")
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def _new_request_id() -> str:
    return uuid.uuid4().hex
