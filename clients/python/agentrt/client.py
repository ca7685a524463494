"""The async Python client of the agentrt gateway: run agents, follow their events, manage jobs."""

from __future__ import annotations

import asyncio
import builtins
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import grpc
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2, timestamp_pb2

from agentrt.common.v1 import common_pb2
from agentrt.errors import AlreadyExistsError, UnavailableError, error_from_rpc
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc, models_pb2, models_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from agentrt.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from agentrt.policy.v1 import policy_pb2, policy_pb2_grpc
from agentrt.recordings import Recordings
from agentrt.replay.v1 import replay_pb2_grpc
from agentrt.retries import BROKEN_OFF, NO_RETRY, Repeated, RetryPolicy, retried

if TYPE_CHECKING:
    from agentrt.gateway.v1.gateway_pb2_grpc import RuntimeServiceAsyncStub
    from agentrt.gateway.v1.models_pb2_grpc import ModelServiceAsyncStub
    from agentrt.ledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub
    from agentrt.orchestrator.v1.orchestrator_pb2_grpc import OrchestratorServiceAsyncStub
    from agentrt.policy.v1.policy_pb2_grpc import PolicyServiceAsyncStub

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
Budget = ledger_pb2.Budget
UsageReportRow = ledger_pb2.UsageReportRow
PolicySet = policy_pb2.PolicySet
Plugin = orchestrator_pb2.Plugin

BUDGET_PERIODS: Mapping[str, ledger_pb2.Budget.Period.ValueType] = {
    "day": ledger_pb2.Budget.PERIOD_DAY,
    "month": ledger_pb2.Budget.PERIOD_MONTH,
    "total": ledger_pb2.Budget.PERIOD_TOTAL,
}
"""The budget periods by the words the CLI and `set_budget` take."""

USAGE_DIMENSIONS: Mapping[str, ledger_pb2.UsageDimension.ValueType] = {
    "tenant": ledger_pb2.USAGE_DIMENSION_TENANT,
    "principal": ledger_pb2.USAGE_DIMENSION_PRINCIPAL,
    "model": ledger_pb2.USAGE_DIMENSION_MODEL,
    "day": ledger_pb2.USAGE_DIMENSION_DAY,
    "job": ledger_pb2.USAGE_DIMENSION_JOB_TREE,
}
"""What a usage report can group by; "job" is a job with all its child jobs."""

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

T = TypeVar("T")
_EventCall: TypeAlias = grpc.aio.UnaryStreamCall[Any, common_pb2.RuntimeEvent]
_ChunkCall: TypeAlias = grpc.aio.UnaryStreamCall[
    models_pb2.CompleteRequest, models_pb2.CompleteChunk
]


def job_name(job: str | jobs_pb2.Job) -> str:
    """The resource name "jobs/{id}" of a job given as a Job, a name or a bare id."""
    name = job.name if isinstance(job, jobs_pb2.Job) else job.strip()
    if not name:
        raise ValueError("a job name or id is required")
    return name if name.startswith("jobs/") else f"jobs/{name}"


def resource_name(collection: str, name_or_id: str) -> str:
    """ "budgets/monthly" for ("budgets", "monthly") or ("budgets", "budgets/monthly")."""
    name = name_or_id.strip()
    if not name:
        raise ValueError(f"a name or id in {collection} is required")
    return name if name.startswith(f"{collection}/") else f"{collection}/{name}"


def is_action_name(action_or_token: str) -> bool:
    """Whether the text names an action ("jobs/{job}/actions/{action}") rather than being
    a resume token, which is base64url and never contains a '/'."""
    return "/" in action_or_token


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
    cache: common_pb2.CachePolicy | None = None,
) -> jobs_pb2.JobSpec:
    """A JobSpec for a single prompt; see `Client.execute` for the parameters, and
    `cache` for whether the engine may answer the job's model calls from its response
    cache (never for sampled output unless `allow_sampled`). Build one to set what the
    keywords do not cover (messages, tools, params, policy) and pass it to
    `Client.execute_spec`."""
    spec = jobs_pb2.JobSpec(
        prompt=prompt,
        model=model,
        system_prompt=system_prompt,
        max_turns=max_turns,
        session=session,
        labels=dict(labels or {}),
        budget=budget,
        cache=cache,
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
        retry: RetryPolicy | None = None,
    ) -> None:
        """Prepares a client of the gateway at `endpoint` ("host:port"); the connection
        is opened on the first call.

        `api_key` is sent as `authorization: Bearer <key>` on every call. `tls` connects
        with TLS and the system's root certificates. `call_timeout` is the deadline in
        seconds of every call except the event streams, which last as long as the job.
        `retry` says how a call whose outcome is unknown is tried again and a broken
        event stream reopened (RetryPolicy(attempts=1): never); with a `call_timeout`
        the tries of a call together take at most that long.
        """
        if not endpoint.strip():
            raise ValueError("an endpoint (host:port) is required")
        if not api_key.strip():
            raise ValueError("an API key is required")
        self._endpoint = endpoint.strip()
        self._tls = tls
        self._metadata = (("authorization", f"Bearer {api_key.strip()}"),)
        self._call_timeout = call_timeout
        self._retry = retry or RetryPolicy()
        self._channel: grpc.aio.Channel | None = None
        self._stub: RuntimeServiceAsyncStub | None = None
        self._admin_stubs: dict[str, Any] = {}

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
            self._admin_stubs.clear()

    def _open_channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            if self._tls:
                credentials = grpc.ssl_channel_credentials()
                self._channel = grpc.aio.secure_channel(self._endpoint, credentials)
            else:
                self._channel = grpc.aio.insecure_channel(self._endpoint)
        return self._channel

    @property
    def _api(self) -> RuntimeServiceAsyncStub:
        if self._stub is None:
            self._stub = gateway_pb2_grpc.RuntimeServiceStub(self._open_channel())
        return self._stub

    def _admin_stub(self, name: str, make: Callable[[grpc.aio.Channel], Any]) -> Any:
        """A stub of an admin API, which the gateway forwards (docs/admin.md)."""
        if name not in self._admin_stubs:
            self._admin_stubs[name] = make(self._open_channel())
        return self._admin_stubs[name]

    @property
    def _ledger(self) -> LedgerServiceAsyncStub:
        stub: LedgerServiceAsyncStub = self._admin_stub("ledger", ledger_pb2_grpc.LedgerServiceStub)
        return stub

    @property
    def _policy(self) -> PolicyServiceAsyncStub:
        stub: PolicyServiceAsyncStub = self._admin_stub("policy", policy_pb2_grpc.PolicyServiceStub)
        return stub

    @property
    def _orchestrator(self) -> OrchestratorServiceAsyncStub:
        stub: OrchestratorServiceAsyncStub = self._admin_stub(
            "orchestrator", orchestrator_pb2_grpc.OrchestratorServiceStub
        )
        return stub

    @property
    def recordings(self) -> Recordings:
        """The replay service: recordings of runs, their files, playback, re-execution."""
        stub = self._admin_stub("replay", replay_pb2_grpc.ReplayServiceStub)
        return Recordings(stub, self._metadata, self._call_timeout, self._call)

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
        request = gateway_pb2.ExecuteRequest(spec=spec, request_id=request_id or _new_request_id())
        return await self._call(self._api.Execute, request)

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
        a network cut) or a CANCELLED it did not ask for (a gateway
        shutting down) it is reopened after the last event received, with a growing
        pause, up to `RetryPolicy.attempts` tries in a row; then UnavailableError is
        raised. Output deltas (job.output.delta) are live only: those sent while the
        stream was broken are not replayed, but the turn's job.turn.completed event is.

        Raises JobNotFoundError, InvalidArgumentError (a malformed name or event id).
        """
        name = job_name(job)

        def open_stream(last: common_pb2.RuntimeEvent | None) -> _EventCall:
            return self._watch(name, last.id if last is not None else after_event_id)

        return self._follow(open_stream, after_event_id)

    async def follow_events(
        self,
        *,
        types: Iterable[common_pb2.EventType.ValueType] = (),
        labels: Mapping[str, str] | None = None,
        session: str = "",
        all_tenants: bool = False,
        after_cursor: str = "",
    ) -> AsyncIterator[gateway_pb2.WatchEventsResponse]:
        """Yields the history events of every job of the key's tenant (every tenant's with
        `all_tenants` and an admin key) from now on, or after `after_cursor` (the `cursor`
        of a response received before), filtered by type, job labels and session; until
        the caller stops. A stream broken with UNAVAILABLE or CANCELLED is reopened after the last
        cursor, as `events` does. Raises InvalidArgumentError, PermissionDeniedError."""
        request = gateway_pb2.WatchEventsRequest(
            after_cursor=after_cursor,
            types=list(types),
            labels=dict(labels or {}),
            session=session,
            all_tenants=all_tenants,
        )
        failures = 0
        while True:
            call = self._api.WatchEvents(request, metadata=self._metadata)
            try:
                async for response in call:
                    failures = 0
                    request.after_cursor = response.cursor
                    yield response
            except grpc.aio.AioRpcError as error:
                if not self._may_reopen(error, failures):
                    raise error_from_rpc(error) from error
            finally:
                call.cancel()
            failures += 1
            await asyncio.sleep(self._retry.backoff(failures))

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
        return await self._call(self._api.GetJob, request)

    async def list(
        self,
        *,
        states: Iterable[JobState] = (),
        session: str = "",
        page_size: int = 0,
        page_token: str = "",
        parent: str | jobs_pb2.Job = "",
        root: str | jobs_pb2.Job = "",
    ) -> JobPage:
        """Returns one page of your tenant's jobs, newest first, and the token of the next
        page ("" on the last one). `states` and `session` filter, `parent` keeps a job's
        children and `root` the jobs of a tree (its root included); `page_size` is at most
        500 (0: 50). See `iter_jobs` to go through every page, `tree` for a whole tree."""
        request = gateway_pb2.ListJobsRequest(
            states=states,
            session=session,
            page_size=page_size,
            page_token=page_token,
            parent=job_name(parent) if parent else "",
            root=job_name(root) if root else "",
        )
        response = await self._call(self._api.ListJobs, request)
        return [*response.jobs], response.next_page_token

    async def iter_jobs(
        self,
        *,
        states: Iterable[JobState] = (),
        session: str = "",
        page_size: int = 0,
        parent: str | jobs_pb2.Job = "",
        root: str | jobs_pb2.Job = "",
    ) -> AsyncIterator[jobs_pb2.Job]:
        """Yields your tenant's jobs, newest first, fetching page after page as needed;
        the filters are those of `list`."""
        wanted = [*states]
        token = ""
        while True:
            jobs, token = await self.list(
                states=wanted,
                session=session,
                page_size=page_size,
                page_token=token,
                parent=parent,
                root=root,
            )
            for job in jobs:
                yield job
            if not token:
                return

    async def tree(self, job: str | jobs_pb2.Job) -> builtins.list[jobs_pb2.Job]:
        """Returns the job and all its descendants, depth first: each job before its
        children, children oldest first; `depth` says how deep each is in the tree (the
        root's is 0). Give a tree's root for the whole tree. Raises JobNotFoundError."""
        top = await self.get(job)
        children: dict[str, builtins.list[jobs_pb2.Job]] = {}
        async for member in self.iter_jobs(root=top.root, page_size=500):
            children.setdefault(member.spec.parent, []).append(member)
        ordered: builtins.list[jobs_pb2.Job] = []
        pending = [top]
        while pending:
            current = pending.pop()
            ordered.append(current)
            # Listed newest first: pushed as they come, the oldest is taken first.
            pending.extend(children.get(current.name, []))
        return ordered

    async def cancel(self, job: str | jobs_pb2.Job, reason: str = "") -> jobs_pb2.Job:
        """Cancels a job that has not finished and returns it, CANCELLED; an in-flight
        model call is cut. Raises FailedPreconditionError (reason ILLEGAL_TRANSITION)
        when the job has already finished, and JobNotFoundError."""
        request = gateway_pb2.CancelJobRequest(name=job_name(job), reason=reason)

        async def cancelled_before(error: grpc.aio.AioRpcError) -> jobs_pb2.Job:
            # A retry finds the job ended: by the first try when it is CANCELLED.
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                current = await self.get(request.name)
                if current.state == common_pb2.JOB_STATE_CANCELLED:
                    return current
            raise error

        return await self._call(self._api.CancelJob, request, repeated=cancelled_before)

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
        response = await self._call(self._api.ListActions, request)
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
        request = gateway_pb2.ResolveActionRequest(
            outcome=_struct(outcome), request_id=request_id or _new_request_id()
        )
        if resume_token:
            request.resume_token = resume_token
        else:
            request.name = name
        return await self._call(self._api.ResolveAction, request)

    async def resolve(
        self, action_or_token: str, outcome: Mapping[str, Any], *, request_id: str = ""
    ) -> jobs_pb2.Action:
        """Resolves a pending action given by its name ("jobs/{job}/actions/{action}") or
        by its resume token, with `outcome`; see `resolve_action`."""
        target = action_or_token.strip()
        if is_action_name(target):
            return await self.resolve_action(outcome, name=target, request_id=request_id)
        return await self.resolve_action(outcome, resume_token=target, request_id=request_id)

    async def approve(
        self, action_or_token: str, *, reason: str = "", request_id: str = ""
    ) -> jobs_pb2.Action:
        """Approves a pending approval (by name or resume token): the job goes on and
        makes the call it asked about."""
        outcome: dict[str, Any] = {"approved": True}
        if reason:
            outcome["reason"] = reason
        return await self.resolve(action_or_token, outcome, request_id=request_id)

    async def reject(
        self, action_or_token: str, *, reason: str = "", request_id: str = ""
    ) -> jobs_pb2.Action:
        """Rejects a pending approval (by name or resume token): the call is not made and
        the model is told it was rejected, with `reason`."""
        outcome: dict[str, Any] = {"approved": False}
        if reason:
            outcome["reason"] = reason
        return await self.resolve(action_or_token, outcome, request_id=request_id)

    # Admin APIs, forwarded by the gateway. Budgets and usage of its own tenant can be
    # read with any key; everything else needs an admin key (`agentrt keys create
    # --admin`; the dev key of `agentrt dev` is one). Raises PermissionDeniedError.

    async def set_price(
        self,
        model: str,
        *,
        input_price: str | None = None,
        output_price: str | None = None,
        cached_input_price: str | None = None,
        cache_write_price: str | None = None,
    ) -> ledger_pb2.Price:
        """Creates the price of `model` (US dollars per million tokens, exact decimal
        strings such as "2.50"), or changes only the prices given when it exists. Creating
        needs the input and output prices (without both, only an existing price is changed:
        NotFoundError otherwise); the cache-read and cache-write prices default to the
        input price ("" sets one back to it)."""
        given = {
            "input_price_per_million": input_price,
            "output_price_per_million": output_price,
            "cached_input_price_per_million": cached_input_price,
            "cache_write_price_per_million": cache_write_price,
        }
        paths = [path for path, value in given.items() if value is not None]
        if not paths:
            raise ValueError("give at least one price")
        price = ledger_pb2.Price(name=resource_name("prices", model))
        for path in paths:
            setattr(price, path, given[path])
        create: ledger_pb2.CreatePriceRequest | None = None
        if input_price is not None and output_price is not None:
            create = ledger_pb2.CreatePriceRequest(
                price_id=price.name.removeprefix("prices/"),
                price=price,
                request_id=_new_request_id(),
            )
        # The given prices set without an etag: sent twice, it leaves the same price.
        update = ledger_pb2.UpdatePriceRequest(
            price=price, update_mask=field_mask_pb2.FieldMask(paths=paths)
        )
        return await self._create_or_update(
            self._ledger.CreatePrice, create, self._ledger.UpdatePrice, update
        )

    async def get_price(self, model: str) -> ledger_pb2.Price:
        """The price, by name ("prices/{model}") or model. Raises NotFoundError."""
        request = ledger_pb2.GetPriceRequest(name=resource_name("prices", model))
        return await self._call(self._ledger.GetPrice, request)

    async def list_prices(self) -> builtins.list[ledger_pb2.Price]:
        """Every price, sorted by name."""
        request = ledger_pb2.ListPricesRequest(page_size=500)
        return await self._every_page(self._ledger.ListPrices, request, "prices")

    async def set_budget(
        self,
        budget_id: str,
        *,
        tenant: str,
        principal: str = "",
        period: str = "month",
        tokens: int | None = None,
        cost: str | None = None,
        tool_calls: int | None = None,
        warn_threshold: float | None = None,
        description: str = "",
    ) -> ledger_pb2.Budget:
        """Creates the budget `budget_id`, or replaces its period, limits, warn threshold
        and description when it exists. Limits left None are unlimited; `cost` is an
        exact decimal string of US dollars ("25.00"); `period` is day, month or total.
        A budget's tenant and principal never change (InvalidArgumentError)."""
        if period not in BUDGET_PERIODS:
            raise ValueError(f"period must be one of {', '.join(BUDGET_PERIODS)}, got {period!r}")
        budget = ledger_pb2.Budget(
            name=resource_name("budgets", budget_id),
            description=description,
            tenant=tenant,
            principal=principal,
            period=BUDGET_PERIODS[period],
            limits=ledger_pb2.Amounts(tokens=tokens, cost=cost, tool_calls=tool_calls),
            warn_threshold=warn_threshold,
        )
        create = ledger_pb2.CreateBudgetRequest(
            budget_id=budget.name.removeprefix("budgets/"),
            budget=budget,
            request_id=_new_request_id(),
        )
        # A whole replacement without an etag: sent twice, it leaves the same budget.
        update = ledger_pb2.UpdateBudgetRequest(
            budget=budget, update_mask=field_mask_pb2.FieldMask(paths=["*"])
        )
        return await self._create_or_update(
            self._ledger.CreateBudget, create, self._ledger.UpdateBudget, update
        )

    async def get_budget(self, budget: str) -> ledger_pb2.Budget:
        """The budget, by name ("budgets/{id}") or id. Raises NotFoundError."""
        request = ledger_pb2.GetBudgetRequest(name=resource_name("budgets", budget))
        return await self._call(self._ledger.GetBudget, request)

    async def list_budgets(self, *, tenant: str = "") -> builtins.list[ledger_pb2.Budget]:
        """Every budget (of `tenant` when given; a tenant key sees its own tenant's only),
        sorted by name."""
        request = ledger_pb2.ListBudgetsRequest(tenant=tenant, page_size=500)
        return await self._every_page(self._ledger.ListBudgets, request, "budgets")

    async def delete_budget(self, budget: str, *, etag: str = "") -> None:
        """Deletes a budget; with `etag`, only if it is unchanged (AbortedError)."""
        request = ledger_pb2.DeleteBudgetRequest(name=resource_name("budgets", budget), etag=etag)
        await self._call(self._ledger.DeleteBudget, request, repeated=_deleted_before)

    async def check_budget(
        self,
        *,
        tenant: str = "",
        principal: str = "",
        tokens: int | None = None,
        cost: str | None = None,
        tool_calls: int | None = None,
    ) -> ledger_pb2.CheckBudgetResponse:
        """What the budgets say about spending these amounts now (ALLOW, WARN or DENY, and
        what each budget has left); nothing is reserved. With a tenant key leave
        `tenant` empty: the key's own tenant is checked."""
        request = ledger_pb2.CheckBudgetRequest(
            tenant=tenant,
            principal=principal,
            amounts=ledger_pb2.Amounts(tokens=tokens, cost=cost, tool_calls=tool_calls),
        )
        return await self._call(self._ledger.CheckBudget, request)

    async def usage_report(
        self,
        *,
        start: datetime,
        end: datetime | None = None,
        group_by: Sequence[str] = ("tenant",),
        tenant: str = "",
        principal: str = "",
        model: str = "",
    ) -> builtins.list[ledger_pb2.UsageReportRow]:
        """Usage summed per group between `start` and `end` (default now), every page.
        `group_by` names dimensions of USAGE_DIMENSIONS (tenant, principal, model, day,
        job); empty sums everything into one row. A tenant key reports on its own tenant."""
        unknown = [name for name in group_by if name not in USAGE_DIMENSIONS]
        if unknown:
            choices = ", ".join(USAGE_DIMENSIONS)
            raise ValueError(f"cannot group usage by {', '.join(unknown)}; one of {choices}")
        request = ledger_pb2.GetUsageReportRequest(
            start_time=_timestamp(start),
            group_by=[USAGE_DIMENSIONS[name] for name in group_by],
            tenant=tenant,
            principal=principal,
            model=model,
            page_size=1000,
        )
        if end is not None:
            request.end_time.CopyFrom(_timestamp(end))
        return await self._every_page(self._ledger.GetUsageReport, request, "rows")

    async def create_policy_set(
        self, policy_set_id: str, policy_set: policy_pb2.PolicySet, *, request_id: str = ""
    ) -> policy_pb2.PolicySet:
        """Creates a policy set. Raises AlreadyExistsError, InvalidArgumentError (with the
        offending field in the error's metadata)."""
        request = policy_pb2.CreatePolicySetRequest(
            policy_set_id=policy_set_id,
            policy_set=policy_set,
            request_id=request_id or _new_request_id(),
        )
        return await self._call(self._policy.CreatePolicySet, request)

    async def get_policy_set(self, policy_set: str) -> policy_pb2.PolicySet:
        """The policy set, by name ("policySets/{id}") or id. Raises NotFoundError."""
        request = policy_pb2.GetPolicySetRequest(name=resource_name("policySets", policy_set))
        return await self._call(self._policy.GetPolicySet, request)

    async def list_policy_sets(self) -> builtins.list[policy_pb2.PolicySet]:
        """Every policy set, sorted by name."""
        request = policy_pb2.ListPolicySetsRequest(page_size=500)
        return await self._every_page(self._policy.ListPolicySets, request, "policy_sets")

    async def update_policy_set(
        self, policy_set: policy_pb2.PolicySet, update_mask: Sequence[str] = ()
    ) -> policy_pb2.PolicySet:
        """Updates the set `policy_set.name` names: the fields in `update_mask`
        ("description", "rules"; empty: those set). With `policy_set.etag` set (as read),
        raises AbortedError (ETAG_MISMATCH) when someone changed the set meanwhile."""
        request = policy_pb2.UpdatePolicySetRequest(
            policy_set=policy_set, update_mask=field_mask_pb2.FieldMask(paths=list(update_mask))
        )
        # Sent twice, an update checked against an etag fails the second time (ABORTED):
        # only one without an etag, which leaves the same set, is retried.
        retry = not policy_set.etag
        return await self._call(self._policy.UpdatePolicySet, request, retry=retry)

    async def delete_policy_set(self, policy_set: str, *, etag: str = "") -> None:
        """Deletes a policy set; with `etag`, only if it is unchanged (AbortedError)."""
        request = policy_pb2.DeletePolicySetRequest(
            name=resource_name("policySets", policy_set), etag=etag
        )
        await self._call(self._policy.DeletePolicySet, request, repeated=_deleted_before)

    async def register_plugin(
        self, plugin_id: str, manifest: orchestrator_pb2.PluginManifest, *, request_id: str = ""
    ) -> orchestrator_pb2.Plugin:
        """Registers a tool plugin; the orchestrator checks that its endpoint serves the
        tools the manifest lists. Raises AlreadyExistsError, FailedPreconditionError
        (TOOL_ERROR), UnavailableError (the endpoint cannot be reached)."""
        request = orchestrator_pb2.RegisterPluginRequest(
            plugin_id=plugin_id,
            plugin=orchestrator_pb2.Plugin(manifest=manifest),
            request_id=request_id or _new_request_id(),
        )
        return await self._call(self._orchestrator.RegisterPlugin, request)

    async def list_plugins(self) -> builtins.list[orchestrator_pb2.Plugin]:
        """Every registered plugin, sorted by name."""
        request = orchestrator_pb2.ListPluginsRequest(page_size=500)
        return await self._every_page(self._orchestrator.ListPlugins, request, "plugins")

    async def delete_plugin(self, plugin: str) -> None:
        """Unregisters a plugin; its tools disappear at once. Raises NotFoundError."""
        request = orchestrator_pb2.DeletePluginRequest(name=resource_name("plugins", plugin))
        await self._call(self._orchestrator.DeletePlugin, request, repeated=_deleted_before)

    # The model API (docs/model-api.md)

    @property
    def _models(self) -> ModelServiceAsyncStub:
        stub: ModelServiceAsyncStub = self._admin_stub("models", models_pb2_grpc.ModelServiceStub)
        return stub

    async def list_models(self) -> builtins.list[models_pb2.Model]:
        """The models your key may call directly, sorted by name."""
        request = models_pb2.ListModelsRequest(page_size=1000)
        return await self._every_page(self._models.ListModels, request, "models")

    async def complete(
        self,
        prompt: str | Sequence[common_pb2.Message],
        *,
        model: str,
        max_output_tokens: int = 0,
        tools: Sequence[common_pb2.ToolSpec] = (),
        request_id: str = "",
        policy: str = "",
    ) -> models_pb2.CompleteResponse:
        """One model call, no job: the answer, with its usage as the ledger recorded it.

        `prompt` is a user message's text or a whole conversation. The call is checked
        against the policy set `policy` (empty: the default set) and held against your
        budgets; `max_output_tokens`
        (0: the deployment's default) bounds what it holds. Raises ResourceExhaustedError
        (BUDGET_EXCEEDED), PermissionDeniedError (POLICY_DENIED), NotFoundError
        (MODEL_NOT_FOUND) and InvalidArgumentError. Only a call with a `request_id` (the
        engine's idempotency key: a repeat joins the first call) is tried again when its
        outcome is unknown.
        """
        request = _complete_request(prompt, model, max_output_tokens, tools, request_id, policy)
        return await self._call(self._models.Complete, request, retry=bool(request_id))

    async def stream_complete(
        self,
        prompt: str | Sequence[common_pb2.Message],
        *,
        model: str,
        max_output_tokens: int = 0,
        tools: Sequence[common_pb2.ToolSpec] = (),
        request_id: str = "",
        policy: str = "",
    ) -> AsyncIterator[models_pb2.CompleteChunk]:
        """Like `complete`, the answer streamed: text chunks, then a last chunk with the
        finish reason, the tool calls and the recorded usage. With a `request_id` a call
        whose outcome is unknown is tried again until its first chunk, never after."""
        request = _complete_request(prompt, model, max_output_tokens, tools, request_id, policy)
        policy_of_call = self._retry if request_id else NO_RETRY

        async def first_chunk(timeout: float | None) -> tuple[_ChunkCall, object]:
            call = self._models.StreamComplete(request, timeout=timeout, metadata=self._metadata)
            try:
                return call, await call.read()
            except BaseException:
                call.cancel()
                raise

        with _translated_errors():
            call, chunk = await retried(
                first_chunk, policy_of_call, self._call_timeout, still_wanted=self._is_open
            )
            # Once a chunk has been yielded the stream is never tried again.
            try:
                # read() gives grpc.aio.EOF, not a chunk, at the end.
                while isinstance(chunk, models_pb2.CompleteChunk):
                    yield chunk
                    chunk = await call.read()
            finally:
                call.cancel()

    async def _call(
        self,
        rpc: Callable[..., Awaitable[T]],
        request: Any,
        *,
        retry: bool = True,
        repeated: Repeated[T] | None = None,
    ) -> T:
        """The answer of a unary call, tried again as the client's RetryPolicy says while
        its outcome is unknown; `retry` False for a mutation that a repeat could apply
        twice. `repeated` reads what a retry answers when the first try was applied."""
        with _translated_errors():
            return await retried(
                lambda timeout: rpc(request, timeout=timeout, metadata=self._metadata),
                self._retry if retry else NO_RETRY,
                self._call_timeout,
                still_wanted=self._is_open,
                repeated=repeated,
            )

    async def _every_page(
        self, rpc: Callable[..., Awaitable[Any]], request: Any, field: str
    ) -> builtins.list[Any]:
        """Every item of a listing: `request`'s pages read to the end, each call retried
        as `_call` does, the items from the pages' repeated `field`."""
        items: builtins.list[Any] = []
        while True:
            page = await self._call(rpc, request)
            items += getattr(page, field)
            if not page.next_page_token:
                return items
            request.page_token = page.next_page_token

    async def _create_or_update(
        self,
        create_rpc: Callable[..., Awaitable[T]],
        create: Any | None,
        update_rpc: Callable[..., Awaitable[T]],
        update: Any,
    ) -> T:
        """The resource that `create` makes, or, when it exists already (or there is no
        `create`), the one `update` changes. Both are retried: `create` carries a
        request_id and `update` must leave the same resource when sent twice."""
        if create is not None:
            try:
                return await self._call(create_rpc, create)
            except AlreadyExistsError:
                pass
        return await self._call(update_rpc, update)

    def _may_reopen(self, error: grpc.aio.AioRpcError, failures: int) -> bool:
        """Whether an event stream broken by `error`, after `failures` reopenings in a row
        that brought nothing, is opened again."""
        return (
            error.code() in BROKEN_OFF and self._retry.may_retry(failures + 1) and self._is_open()
        )

    def _is_open(self) -> bool:
        """False once `close` has cut the calls in progress, which are not retried."""
        return self._channel is not None

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
                if not self._may_reopen(error, failures):
                    raise error_from_rpc(error) from error
            else:
                if not self._retry.may_retry(failures + 1):
                    raise UnavailableError(
                        grpc.StatusCode.UNAVAILABLE, "", "the event stream ended before the job did"
                    )
            finally:
                call.cancel()
            failures += 1
            await asyncio.sleep(self._retry.backoff(failures))


def event_position(event_id: str) -> tuple[int, int] | None:
    """Where an event id ("<job>.<sequence>" or "<job>.<sequence>.<n>") sits in its job's
    stream, comparable with another event's; None for an id of another form.

    A history event comes before the transient events that follow it."""
    parts = event_id.split(".")
    if len(parts) not in (2, 3) or not all(part.isdigit() for part in parts[1:]):
        return None
    return int(parts[1]), int(parts[2]) if len(parts) == 3 else -1


def _complete_request(
    prompt: str | Sequence[common_pb2.Message],
    model: str,
    max_output_tokens: int,
    tools: Sequence[common_pb2.ToolSpec],
    request_id: str,
    policy: str,
) -> models_pb2.CompleteRequest:
    messages = (
        [common_pb2.Message(role=common_pb2.ROLE_USER, content=prompt)]
        if isinstance(prompt, str)
        else list(prompt)
    )
    request = models_pb2.CompleteRequest(
        model=model,
        messages=messages,
        tools=tools,
        request_id=request_id,
        policy=common_pb2.PolicyRef(name=policy),
    )
    if max_output_tokens:
        request.params.max_output_tokens = max_output_tokens
    return request


@contextmanager
def _translated_errors() -> Iterator[None]:
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error) from error


async def _deleted_before(error: grpc.aio.AioRpcError) -> None:
    """A retried delete that finds nothing: the first try deleted it."""
    if error.code() != grpc.StatusCode.NOT_FOUND:
        raise error


def _duration(seconds: float) -> duration_pb2.Duration:
    if seconds < 0:
        raise ValueError(f"a timeout cannot be negative, got {seconds}")
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    if moment.tzinfo is None:
        raise ValueError(f"a time must carry its time zone, got {moment.isoformat()}")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def _new_request_id() -> str:
    return uuid.uuid4().hex
