"""The job store contract: what the jobs domain needs from a database, on any backend.

Every mutating operation is one transaction that changes the job row(s) and appends the
RuntimeEvents of the change to the job's history, which is also the outbox the relay
publishes from. Times are passed in (`now`, UTC) so that one clock decides everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from agentrt.common.v1.common_pb2 import (
    ActionEvent,
    EventType,
    Failure,
    Message,
    RuntimeEvent,
    ToolCalled,
    Usage,
)
from agentrt.jobs.v1.jobs_pb2 import Action, ActionKind, Checkpoint, Job, JobResult, JobSpec
from google.protobuf.struct_pb2 import Struct

from services.jobs import states
from services.jobs.states import State
from services.kit.storage import StorageConfig, open_store

SQL_DIRECTORY = Path(__file__).resolve().parent / "sql"
"""The jobs service's `sql/` folder: migrations and named queries per backend."""


@dataclass(frozen=True)
class NewJob:
    """A validated job to create."""

    tenant: str
    principal: str
    spec: JobSpec
    """Normalized: defaults applied (max_turns, timeout)."""
    request_id: str
    """Idempotency key, unique per tenant; empty for none."""
    request_hash: bytes
    """Hash of the normalized spec; a reused request_id must come with the same hash."""
    trace_id: str
    own_timeout: bool = False
    """Whether the caller set spec.timeout (a child's is bounded by its root's
    orchestration.child_timeout, which replaces the default)."""
    trace_parent: str = ""
    """The W3C traceparent of the creating call's span when it is in the job's trace
    (services.jobs.tracing.creator_trace_parent); empty otherwise."""


@dataclass(frozen=True)
class JobLease:
    """A job leased to a worker."""

    job: Job
    lease_id: str
    expire_time: datetime
    checkpoint: Checkpoint | None
    """The latest checkpoint to resume from; None when the job has none yet."""
    awaited_action: str = ""
    """The name of the action the job waited on last, if its latest wait was on one."""


@dataclass(frozen=True)
class LeaseBatch:
    """What one lease_jobs call did."""

    leases: list[JobLease]
    timed_out: list[Job]
    """Runnable jobs found past their deadline, made TIMED_OUT instead of leased."""
    overdue: int = 0
    """Runnable jobs of trees found past their deadline, neither leased nor timed out:
    their end changes their parents and descendants too, which the deadline sweep does."""
    takeovers: int = 0
    """Of the leases, how many took over a RUNNING job whose lease had expired."""


@dataclass(frozen=True)
class JobFilter:
    """Which of a tenant's jobs list_jobs returns; empty fields do not filter."""

    states: Sequence[State] = ()
    session: str = ""
    created_after: datetime | None = None
    """Inclusive."""
    created_before: datetime | None = None
    """Exclusive."""
    parent: str = ""
    """Only the children of this job (an id)."""
    root: str = ""
    """Only the jobs of the tree of this root (an id), the root included."""


@dataclass(frozen=True)
class NewAction:
    """A validated action to require of a leased job."""

    kind: ActionKind.ValueType
    payload: Struct
    timeout_outcome: Struct
    """The outcome applied when the action expires."""
    timeout: timedelta
    """How long the action may stay pending."""


@dataclass(frozen=True)
class ActionRef:
    """An action named by its resource name, as seen by `tenant`."""

    tenant: str
    job_id: str
    action_id: str


@dataclass(frozen=True)
class TokenRef:
    """An action found by its resume token's hash, as seen by `tenant`."""

    tenant: str
    token_hash: bytes


ActionTarget = ActionRef | TokenRef
"""How a resolution names its action."""


@dataclass(frozen=True)
class Resolution:
    """What a person or client decided about an action."""

    outcome: Struct
    principal: str
    request_id: str
    """Idempotency key: a resolution retried with it returns the resolved action."""


class ActionStore(Protocol):
    """Actions of waiting jobs: where they are kept, with their resume tokens (hashed).

    Implemented by every JobStore (the `actions` table, in the jobs' own transactions) and
    by services.jobs.store_redis.RedisActionStore (actions in Redis, job states through
    the JobStore's ActionJobs methods). Every implementation passes
    tests/services/jobs/test_action_store_conformance.py. Refusals change nothing; their
    errors are those of services.jobs.actions. "In the same transaction" below is exact
    for a JobStore; RedisActionStore makes the action's and the job's changes in two
    writes that it reconciles (docs/actions-redis.md).
    """

    async def require_action(
        self,
        job_id: str,
        lease_id: str,
        new: NewAction,
        checkpoint: Checkpoint | None,
        now: datetime,
    ) -> Action:
        """Create a PENDING action on the leased job and, in the same transaction, make the
        job WAITING (lease released, checkpoint stored; events action.required and
        job.waiting). Returns the action with its resume token, which is stored hashed."""
        ...

    async def get_action(self, tenant: str, job_id: str, action_id: str) -> Action:
        """The action; ActionNotFound also for another tenant's."""
        ...

    async def list_actions(
        self,
        tenant: str,
        job_id: str,
        states: Sequence[Action.State.ValueType],
        page_size: int,
        page_token: str,
    ) -> tuple[list[Action], str]:
        """A page of the job's actions, oldest first (all states when `states` is empty),
        and the next page's token; JobNotFound for another tenant's job."""
        ...

    async def resolve_action(
        self, target: ActionTarget, resolution: Resolution, now: datetime
    ) -> Action:
        """Atomically make the PENDING action RESOLVED and queue its WAITING job again
        (events action.resolved, job.requeued). Refusals change nothing: see
        services.jobs.actions.resolve."""
        ...

    async def cancel_action(self, ref: ActionRef, reason: str, now: datetime) -> Action:
        """Atomically make the PENDING action CANCELLED and queue its job again (event
        job.requeued); ActionNotPending otherwise."""
        ...

    async def expire_actions(self, now: datetime, limit: int) -> list[Action]:
        """Expire up to `limit` PENDING actions past their expire time: each takes its
        timeout outcome (state EXPIRED, event action.expired) and its job is queued again
        (job.requeued). Returns them."""
        ...


class ActionJobs(Protocol):
    """The job-state side of actions kept outside the jobs' database: the two moves of a
    job around an action, each one transaction of the JobStore."""

    async def wait_for_action(
        self,
        job_id: str,
        lease_id: str,
        checkpoint: Checkpoint | None,
        action: ActionEvent,
        now: datetime,
    ) -> Job:
        """Make the leased job WAITING on the action (lease released, checkpoint stored;
        events action.required and job.waiting), its update_time `now`."""
        ...

    async def resume_from_action(
        self,
        job_id: str,
        wait_time: datetime,
        resumption: tuple[EventType.ValueType | None, ActionEvent, str],
        now: datetime,
    ) -> bool:
        """Queue the job again if it is still WAITING on the wait that began at
        `wait_time` (its update_time), with the events of services.jobs.actions.resumption;
        False, changing nothing, when it is not (already resumed, cancelled, timed out).
        Idempotent: a repeated call after success returns False."""
        ...

    async def get_job(self, tenant: str | None, job_id: str) -> Job:
        """The job."""
        ...


@dataclass(frozen=True)
class EndedJob:
    """A job that has ended, with the creator's span context its `agent.job` span needs."""

    job: Job
    trace_parent: str
    """JobRecord.trace_parent: the W3C traceparent of the span that created the job, or
    empty when that was outside the job's trace."""


@dataclass(frozen=True)
class LiveJobs:
    """The jobs that have not ended, for the service's metrics."""

    counts: dict[State, int]
    """Jobs QUEUED, RUNNING and WAITING (every one of the three present, 0 for none)."""
    oldest_queued: datetime | None
    """When the oldest QUEUED job was created; None when none is queued."""

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[State, int, datetime | None]]) -> LiveJobs:
        """From the (state, jobs, oldest creation) rows of the `live_jobs` query."""
        counts: dict[State, int] = {states.QUEUED: 0, states.RUNNING: 0, states.WAITING: 0}
        oldest_queued = None
        for state, jobs, oldest in rows:
            counts[state] = jobs
            if state == states.QUEUED:
                oldest_queued = oldest
        return cls(counts, oldest_queued)


class JobStore(ActionStore, ActionJobs, Protocol):
    """Job records, leases, checkpoints and event history, on one backend.

    Errors: JobNotFound for an unknown job or one of another tenant (a `tenant` of None
    means an internal caller that sees every tenant); IllegalTransition when the job's
    state does not allow the change; LeaseLost when the lease presented is not the job's
    current one or the job is no longer RUNNING.
    """

    async def create_job(self, new: NewJob, now: datetime) -> tuple[Job, bool]:
        """Create the job QUEUED (event job.created), or return the tenant's existing job
        with the same request_id and hash with created=False; RequestIdReused when the
        hash differs. Race-free: concurrent creates with one request_id make one job.

        With spec.parent, the child joins its parent's tree under the root's limits, and
        job.child.created is appended to the parent's history, in one transaction with
        the parent locked (services.jobs.trees.create_child says what is refused). The
        request_id is looked up first, so a retried create returns its child even when
        the limits are reached since."""
        ...

    async def get_job(self, tenant: str | None, job_id: str) -> Job:
        """The job."""
        ...

    async def list_jobs(
        self, tenant: str, job_filter: JobFilter, page_size: int, page_token: str
    ) -> tuple[list[Job], str]:
        """A page of the tenant's jobs, newest first, and the next page's token ("" on
        the last page); FieldInvalid("page_token") for a token this store did not make."""
        ...

    async def lease_jobs(
        self,
        worker: str,
        limit: int,
        lease_seconds: float,
        now: datetime,
        *,
        runtime_version: str = "",
    ) -> LeaseBatch:
        """Lease up to `limit` jobs: RUNNING ones whose lease expired (a takeover: events
        job.requeued and job.started, attempt + 1), then QUEUED ones oldest first (event
        job.started, saying the worker's `runtime_version`). Runnable jobs past their
        deadline become TIMED_OUT instead.
        Concurrent callers never get the same job."""
        ...

    async def heartbeat(
        self, job_id: str, lease_id: str, lease_seconds: float, now: datetime
    ) -> datetime:
        """Extend the lease to now + lease_seconds; returns the new expire time."""
        ...

    async def checkpoint(
        self,
        job_id: str,
        lease_id: str,
        checkpoint: Checkpoint,
        message: Message | None,
        turn_usage: Usage | None,
        now: datetime,
        tool_calls: Sequence[ToolCalled] = (),
        within_turn: bool = False,
        model: str = "",
    ) -> Job:
        """Save the checkpoint (its turn must be greater than the job's turns, else
        FieldInvalid("checkpoint.turn")) and emit job.turn.completed; with tool calls the
        turn may also equal the job's turns (progress within it), and `within_turn` says
        it must. Each tool call is a tool.called event, after the turn's."""
        ...

    async def finish(
        self,
        job_id: str,
        lease_id: str,
        state: State,
        outcome: JobResult | Failure,
        usage: Usage | None,
        checkpoint: Checkpoint | None,
        now: datetime,
        message: Message | None = None,
        turn_usage: Usage | None = None,
        model: str = "",
    ) -> Job:
        """End the leased job: SUCCEEDED with a JobResult, FAILED or TIMED_OUT with a
        Failure (FieldInvalid otherwise); emits job.succeeded / job.failed / job.timed_out,
        preceded by job.turn.completed when the checkpoint advances the turns. In the
        same transaction its unfinished descendants are cancelled (unless its root's
        orchestration.propagate_cancellation is false) and, for a child, its parent gets
        job.child.finished and is queued again if it waits on it."""
        ...

    async def release(self, job_id: str, lease_id: str, reason: str, now: datetime) -> Job:
        """Give the leased job back to the queue; emits job.requeued."""
        ...

    async def await_children(
        self,
        job_id: str,
        lease_id: str,
        children: Sequence[str],
        checkpoint: Checkpoint | None,
        now: datetime,
    ) -> tuple[Job, bool]:
        """Park the leased job WAITING on its `children` (ids; lease released, checkpoint
        stored, event job.waiting) and return (job, True); when one of them has ended
        already, store the checkpoint only and return (job, False), the lease kept. The
        end of any awaited child queues the job again. FieldInvalid("children[i]") for
        a job that is not its child."""
        ...

    async def cancel(self, tenant: str | None, job_id: str, reason: str, now: datetime) -> Job:
        """Cancel the job and, unless its root's orchestration.propagate_cancellation is
        false, its unfinished descendants at once (leases revoked, pending actions
        cancelled; events job.cancelled, job.child.finished in each parent);
        IllegalTransition when it has finished."""
        ...

    async def expire_deadlines(self, now: datetime, limit: int) -> list[Job]:
        """Make TIMED_OUT up to `limit` jobs past their deadline: QUEUED and WAITING ones
        (whose pending actions are cancelled), and RUNNING ones whose lease expired too,
        with what their ends do to their trees (see `finish`). Returns them."""
        ...

    async def list_events(
        self, tenant: str | None, job_id: str, after_sequence: int, limit: int
    ) -> tuple[list[RuntimeEvent], State]:
        """The job's history events after `after_sequence`, oldest first, and its state."""
        ...

    async def ended_jobs(self, job_ids: Sequence[str]) -> list[EndedJob]:
        """Those of the jobs (ids) that have ended, in no particular order; unknown and
        unfinished ones are left out."""
        ...

    async def live_jobs(self) -> LiveJobs:
        """Counts the jobs that have not ended, from the index of runnable jobs, without
        reading the finished ones."""
        ...

    async def pending_actions(self) -> int:
        """How many actions of this store are PENDING (from the index of their expiry)."""
        ...

    async def fetch_unpublished(self, limit: int) -> list[tuple[int, RuntimeEvent]]:
        """The oldest events not yet published, as (row id, event), in row-id order, which
        is sequence order within each job. Empty while another relay holds the relay lock."""
        ...

    async def mark_published(self, row_ids: Sequence[int]) -> None:
        """Mark events published; they stay in the job's history."""
        ...

    async def try_lock_relay(self) -> bool:
        """Become (or stay) the only relay publishing this store's events; False when
        another process is."""
        ...

    async def close(self) -> None:
        """Release the relay lock, and the database if the store opened it."""
        ...


async def open_job_store(config: StorageConfig) -> JobStore:
    """The configured backend's store; UnmigratedDatabaseError unless `agentrt migrate` ran."""
    store: JobStore = await open_store(
        config,
        SQL_DIRECTORY,
        "services.jobs.store_postgres:PostgresJobStore",
        "services.jobs.store_sqlite:SqliteJobStore",
    )
    return store
