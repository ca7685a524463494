"""The jobs domain: validates requests, drives the JobStore, and signals who must know.

After a commit that makes a job runnable it wakes the workers waiting in LeaseJobs (topic
"jobs"); after every commit that appends events it nudges the outbox relay. Both signals
are best effort: waiters poll the store anyway, and the relay polls the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from agentrt.common.v1.common_pb2 import (
    Failure,
    JobState,
    Message,
    RuntimeEvent,
    ToolCalled,
    Usage,
)
from agentrt.jobs.v1.jobs_pb2 import Action, Checkpoint, Job, JobResult, JobSpec
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct

from services.jobs.actions import hash_resume_token
from services.jobs.job_cache import RedisJobCache
from services.jobs.metrics import LEASE_TAKEOVERS
from services.jobs.records import FINISH_STATES
from services.jobs.states import SUCCEEDED, State
from services.jobs.store import (
    ActionRef,
    ActionStore,
    ActionTarget,
    JobFilter,
    JobLease,
    JobStore,
    LeaseBatch,
    Resolution,
    TokenRef,
)
from services.jobs.tracing import (
    creator_trace_parent,
    record_action_ended,
    record_action_resolved,
)
from services.jobs.validation import (
    JobLimits,
    bounded,
    check_request_id,
    check_struct,
    new_action,
    new_job,
    required,
)
from services.kit import paging
from services.kit.errors import AgentrtError, FieldInvalid, FieldRequired
from services.kit.events.base import Wakeups
from services.kit.names import parse_action_name, parse_job_name
from services.kit.telemetry import spans_exported
from services.kit.workflows import MAX_CHILD_JOBS

JOBS_TOPIC = "jobs"
"""The wake-up topic of workers waiting for runnable jobs."""

_LOG = logging.getLogger(__name__)
_STATES = frozenset(JobState.values()) - {JobState.JOB_STATE_UNSPECIFIED}
_ACTION_STATES = frozenset(Action.State.values()) - {Action.State.STATE_UNSPECIFIED}


def _parents(job: Job) -> list[str]:
    """The id of the job's parent, in a list, or an empty list for a top-level job."""
    return [parse_job_name(job.spec.parent)] if job.spec.parent else []


def utc_now() -> datetime:
    """The current time, in UTC."""
    return datetime.now(UTC)


class JobManager:
    """Everything the JobService handlers do about jobs, free of gRPC."""

    def __init__(
        self,
        store: JobStore,
        wakeups: Wakeups,
        relay_nudge: Callable[[], None] | None,
        limits: JobLimits,
        *,
        clock: Callable[[], datetime] = utc_now,
        actions: ActionStore | None = None,
        cache: RedisJobCache | None = None,
    ) -> None:
        self._store = store
        self._actions: ActionStore = actions or store
        """Where actions are kept: the job store itself unless another is configured."""
        self._cache = cache
        """GetJob's read-through cache; every commit here forgets the jobs it changed."""
        self._wakeups = wakeups
        self._relay_nudge = relay_nudge
        self._limits = limits
        self._clock = clock
        self._stopping = False

    async def create_job(
        self, tenant: str, principal: str, spec: JobSpec, request_id: str, trace_id: str
    ) -> tuple[Job, bool]:
        """Create a QUEUED job, or return the one created before with this request_id and
        spec (created=False). Raises InvalidArgument (RequestIdReused among them)."""
        new = new_job(tenant, principal, spec, request_id, trace_id, self._limits)
        new = replace(new, trace_parent=creator_trace_parent(trace_id))
        job, created = await self._store.create_job(new, self._clock())
        if created:
            # A child's creation is in its parent's history too.
            await self._forget(*_parents(job))
            self._nudge_relay()
            await self._wake_workers()
        return job, created

    async def get_job(self, tenant: str | None, job_id: str) -> Job:
        """The job; JobNotFound also for another tenant's job."""
        if self._cache is None:
            return await self._store.get_job(tenant, job_id)
        return await self._cache.read_through(
            tenant, job_id, lambda: self._store.get_job(None, job_id)
        )

    async def list_jobs(
        self,
        tenant: str,
        job_filter: JobFilter,
        page_size: int,
        page_token: str,
    ) -> tuple[list[Job], str]:
        """A page of the tenant's jobs, newest first, and the next page's token; a page
        size of 0 means the default, and one above the maximum is capped (AIP-158)."""
        required(tenant, "tenant")
        if any(state not in _STATES for state in job_filter.states):
            raise FieldInvalid("states", "unknown or unspecified job state")
        job_filter = replace(
            job_filter,
            parent=parse_job_name(job_filter.parent, "parent") if job_filter.parent else "",
            root=parse_job_name(job_filter.root, "root") if job_filter.root else "",
        )
        size = paging.page_size(
            page_size, self._limits.default_page_size, self._limits.max_page_size
        )
        return await self._store.list_jobs(tenant, job_filter, size, page_token)

    async def lease_jobs(
        self,
        worker: str,
        max_jobs: int,
        lease_seconds: float,
        wait_seconds: float,
        *,
        runtime_version: str = "",
    ) -> list[JobLease]:
        """Lease up to max_jobs jobs to the worker, waiting up to wait_seconds for one.

        0 for max_jobs means 1, and for lease_seconds the default lease."""
        limits = self._limits
        required(worker, "worker")
        bounded(max_jobs, "max_jobs", 0, limits.max_lease_jobs)
        lease_seconds = self._lease_seconds(lease_seconds)
        bounded(wait_seconds, "wait_timeout", 0, limits.max_wait_seconds)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_seconds
        while True:
            batch = await self._lease_batch(worker, max_jobs or 1, lease_seconds, runtime_version)
            if batch.takeovers:
                LEASE_TAKEOVERS.add(batch.takeovers)
            if batch.leases or batch.timed_out:
                changed = [lease.job for lease in batch.leases] + batch.timed_out
                await self._forget(*(parse_job_name(job.name) for job in changed))
                self._nudge_relay()
            # Jobs of trees past their deadline are left to the sweep, which is run now
            # rather than at its next round, so that they stop standing in the queue.
            swept = bool(batch.overdue) and bool(await self.expire_deadlines())
            if batch.leases:
                return batch.leases
            if swept:
                continue
            remaining = give_up - loop.time()
            if remaining <= 0 or self._stopping:
                return []
            # A wake-up may be lost, so the store is asked again at least every
            # poll_seconds whatever happens.
            await self._wait_for_work(min(remaining, limits.poll_seconds))

    async def heartbeat(self, job_id: str, lease_id: str, lease_seconds: float) -> datetime:
        """Extend the lease; returns its new expire time. Raises LeaseLost."""
        required(lease_id, "lease_id")
        lease_seconds = self._lease_seconds(lease_seconds)
        return await self._store.heartbeat(job_id, lease_id, lease_seconds, self._clock())

    async def checkpoint(
        self,
        job_id: str,
        lease_id: str,
        checkpoint: Checkpoint | None,
        message: Message | None,
        turn_usage: Usage | None,
        tool_calls: Sequence[ToolCalled] = (),
        within_turn: bool = False,
        model: str = "",
    ) -> Job:
        """Record a turn's progress, or tool calls within the turn; emits
        job.turn.completed and tool.called. Raises LeaseLost."""
        required(lease_id, "lease_id")
        if checkpoint is None:
            raise FieldRequired("checkpoint")
        job = await self._store.checkpoint(
            job_id,
            lease_id,
            checkpoint,
            message,
            turn_usage,
            self._clock(),
            tool_calls,
            within_turn,
            model,
        )
        await self._forget(job_id)
        self._nudge_relay()
        return job

    async def finish(
        self,
        job_id: str,
        lease_id: str,
        state: State,
        result: JobResult | None,
        failure: Failure | None,
        usage: Usage | None,
        checkpoint: Checkpoint | None,
        message: Message | None = None,
        turn_usage: Usage | None = None,
        model: str = "",
    ) -> Job:
        """End a leased job: SUCCEEDED needs a result, FAILED and TIMED_OUT a failure; a
        final checkpoint with its turn's message and usage records that turn too."""
        required(lease_id, "lease_id")
        if state not in FINISH_STATES:
            raise FieldInvalid("state", "must be SUCCEEDED, FAILED or TIMED_OUT")
        outcome: JobResult | Failure | None = result if state == SUCCEEDED else failure
        if outcome is None:
            raise FieldRequired("result" if state == SUCCEEDED else "failure")
        job = await self._store.finish(
            job_id,
            lease_id,
            state,
            outcome,
            usage,
            checkpoint,
            self._clock(),
            message,
            turn_usage,
            model,
        )
        await self._ended(job)
        return job

    async def await_children(
        self,
        job_id: str,
        lease_id: str,
        children: Sequence[str],
        checkpoint: Checkpoint | None,
    ) -> tuple[Job, bool]:
        """Park the leased parent until one of its children ends (job, True), or keep its
        lease when one has ended already (job, False); see JobStore.await_children."""
        required(lease_id, "lease_id")
        if not children:
            raise FieldRequired("children")
        bounded(len(children), "children", 1, MAX_CHILD_JOBS)
        ids = list(
            dict.fromkeys(
                parse_job_name(child, f"children[{index}]") for index, child in enumerate(children)
            )
        )
        job, waiting = await self._store.await_children(
            job_id, lease_id, ids, checkpoint, self._clock()
        )
        await self._forget(job_id)
        self._nudge_relay()
        return job, waiting

    async def release(self, job_id: str, lease_id: str, reason: str) -> Job:
        """Give a leased job back to the queue. Raises LeaseLost."""
        required(lease_id, "lease_id")
        job = await self._store.release(job_id, lease_id, reason, self._clock())
        await self._forget(job_id)
        self._nudge_relay()
        await self._wake_workers()
        return job

    async def cancel(self, tenant: str | None, job_id: str, reason: str) -> Job:
        """Cancel an unfinished job and its unfinished descendants; IllegalTransition if
        it has finished. Their workers learn it at their next heartbeat, which cuts
        their model calls."""
        job = await self._store.cancel(tenant, job_id, reason, self._clock())
        # Its cancelled descendants are forgotten by the relay, which publishes theirs.
        await self._ended(job)
        return job

    async def expire_deadlines(self) -> list[Job]:
        """Time out one batch of jobs past their deadline; the server calls this
        periodically, and again at once while a batch comes back full."""
        jobs = await self._store.expire_deadlines(self._clock(), self._limits.deadline_batch)
        if jobs:
            await self._ended(*jobs)
        return jobs

    async def list_events(
        self, tenant: str | None, job_id: str, after_sequence: int, page_size: int
    ) -> tuple[list[RuntimeEvent], State]:
        """The job's history after after_sequence, oldest first, and its current state."""
        if after_sequence < 0:
            raise FieldInvalid("after_sequence", "must not be negative")
        limits = self._limits
        size = paging.page_size(
            page_size, limits.default_events_page_size, limits.max_events_page_size
        )
        return await self._store.list_events(tenant, job_id, after_sequence, size)

    async def require_action(
        self,
        job_id: str,
        lease_id: str,
        action: Action | None,
        timeout: Duration | None,
        checkpoint: Checkpoint | None,
    ) -> Action:
        """Create a pending action on the leased job, which becomes WAITING and gives up
        its lease; the returned action carries its resume token. Raises LeaseLost."""
        required(lease_id, "lease_id")
        if action is None:
            raise FieldRequired("action")
        new = new_action(action, timeout, self._limits)
        created = await self._actions.require_action(
            job_id, lease_id, new, checkpoint, self._clock()
        )
        await self._forget(job_id)
        self._nudge_relay()
        return created

    async def get_action(self, tenant: str, job_id: str, action_id: str) -> Action:
        """The action; ActionNotFound also for another tenant's."""
        required(tenant, "tenant")
        return await self._actions.get_action(tenant, job_id, action_id)

    async def list_actions(
        self,
        tenant: str,
        job_id: str,
        states: list[Action.State.ValueType],
        page_size: int,
        page_token: str,
    ) -> tuple[list[Action], str]:
        """A page of the job's actions, oldest first, and the next page's token."""
        required(tenant, "tenant")
        if any(state not in _ACTION_STATES for state in states):
            raise FieldInvalid("states", "unknown or unspecified action state")
        limits = self._limits
        size = paging.page_size(page_size, limits.default_page_size, limits.max_page_size)
        return await self._actions.list_actions(tenant, job_id, states, size, page_token)

    async def resolve_action(
        self,
        tenant: str,
        principal: str,
        target: str | tuple[str, str],
        outcome: Struct | None,
        request_id: str,
    ) -> Action:
        """Resolve a pending action, named by resume token or by (job id, action id), and
        queue its job again; see services.jobs.actions for what is refused and how."""
        required(tenant, "tenant")
        required(principal, "principal")
        if outcome is None:
            raise FieldRequired("outcome")
        check_struct(outcome, "outcome", self._limits)
        check_request_id(request_id, self._limits)
        resolution = Resolution(outcome, principal, request_id)
        action = await self._actions.resolve_action(
            self._action_target(tenant, target), resolution, self._clock()
        )
        await self._action_ended(action)
        await self._trace_action(action, resolved=True)
        return action

    async def cancel_action(self, tenant: str, job_id: str, action_id: str, reason: str) -> Action:
        """Cancel a pending action; its job is queued again so that the agent learns it."""
        required(tenant, "tenant")
        ref = ActionRef(tenant, job_id, action_id)
        action = await self._actions.cancel_action(ref, reason, self._clock())
        await self._action_ended(action)
        await self._trace_action(action)
        return action

    async def expire_actions(self) -> list[Action]:
        """Expire one batch of pending actions past their expire time, applying their
        timeout outcomes; the server calls this periodically with the deadline sweep."""
        expired = await self._actions.expire_actions(self._clock(), self._limits.action_batch)
        if expired:
            await self._action_ended(*expired)
        for action in expired:
            await self._trace_action(action)
        return expired

    async def _trace_action(self, action: Action, resolved: bool = False) -> None:
        """Emits the ended action's span in its job's trace (and, when resolved, the
        resolver's span). The action has ended whatever happens here: a job that cannot
        be read costs the spans, never the caller's answer. Without an exporter it reads
        nothing."""
        if not spans_exported():
            return
        try:
            job = await self.get_job(None, parse_action_name(action.name)[0])
        except Exception:
            _LOG.warning("no span for action %s: its job is unreadable", action.name, exc_info=True)
            return
        if resolved:
            record_action_resolved(action, job)
        else:
            record_action_ended(action, job)

    def _action_target(self, tenant: str, target: str | tuple[str, str]) -> ActionTarget:
        if isinstance(target, tuple):
            return ActionRef(tenant, *target)
        required(target, "resume_token")
        if len(target) > self._limits.max_resume_token_chars:
            raise FieldInvalid("resume_token", "not a token returned by RequireAction")
        return TokenRef(tenant, hash_resume_token(target))

    async def _ended(self, *jobs: Job) -> None:
        """Jobs ended: forget them and their parents, whose histories changed too, nudge
        the relay, and wake the workers when a parent may have been queued again."""
        parents = [parent for job in jobs for parent in _parents(job)]
        await self._forget(*(parse_job_name(job.name) for job in jobs), *parents)
        self._nudge_relay()
        if parents:
            await self._wake_workers()

    async def _action_ended(self, *ended: Action) -> None:
        """Actions ended and their jobs are queued again: tell the cache, the relay and
        the workers."""
        await self._forget(*(parse_action_name(action.name)[0] for action in ended))
        self._nudge_relay()
        await self._wake_workers()

    async def _lease_batch(
        self, worker: str, limit: int, lease_seconds: float, runtime_version: str
    ) -> LeaseBatch:
        """One store lease; if the caller goes away while it commits, the jobs it leased
        are released at once rather than left to expire with nobody running them."""
        leasing = asyncio.ensure_future(
            self._store.lease_jobs(
                worker, limit, lease_seconds, self._clock(), runtime_version=runtime_version
            )
        )
        try:
            return await asyncio.shield(leasing)
        except asyncio.CancelledError:
            batch = await leasing
            for lease in batch.leases:
                with contextlib.suppress(AgentrtError):
                    await self.release(
                        parse_job_name(lease.job.name),
                        lease.lease_id,
                        "the worker went away before it received the lease",
                    )
            raise

    async def stop_leasing(self) -> None:
        """Answers the waiting and future LeaseJobs calls at once with no jobs, so that a
        draining server does not hold its workers' long polls open."""
        self._stopping = True
        await self._wake_workers()

    def _lease_seconds(self, lease_seconds: float) -> float:
        limits = self._limits
        if lease_seconds == 0:
            return limits.default_lease_seconds
        bounded(lease_seconds, "lease_duration", limits.min_lease_seconds, limits.max_lease_seconds)
        return lease_seconds

    async def _forget(self, *job_ids: str) -> None:
        """Drop the changed jobs from the cache before the change is reported, so that a
        GetJob after this call returned sees it. If Redis fails here, the relay forgets
        them again before publishing their events, and the cache's TTL bounds the rest."""
        if self._cache is None:
            return
        try:
            await self._cache.forget(job_ids)
        except Exception:
            _LOG.warning("could not drop changed jobs from the job cache", exc_info=True)

    def _nudge_relay(self) -> None:
        if self._relay_nudge is not None:
            self._relay_nudge()

    async def _wake_workers(self) -> None:
        # The job is committed whatever happens here: waiters also poll the store.
        try:
            await self._wakeups.notify(JOBS_TOPIC)
        except Exception:
            _LOG.warning("could not wake the workers waiting for jobs", exc_info=True)

    async def _wait_for_work(self, timeout: float) -> None:
        try:
            await self._wakeups.wait(JOBS_TOPIC, timeout)
        except Exception:
            _LOG.warning("could not wait for wake-ups; polling instead", exc_info=True)
            await asyncio.sleep(timeout)
