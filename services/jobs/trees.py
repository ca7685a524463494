"""Job trees, shared by every JobStore backend: children made under their root's limits,
parents waiting on children, and how a job's end reaches its parent and its descendants.

Like services.jobs.records, the functions here take rows the backend has locked and
return the changes to write in the same transaction. A child's end appends
job.child.finished to its parent's history and queues the parent again when it waits on
that child; a job's end (cancelled, finished, timed out) ends its unfinished descendants
first, deepest first, so that each parent hears of its children before its own end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from agentrt.common.v1.common_pb2 import ChildEvent, ErrorReason, EventType, JobState
from agentrt.jobs.v1.jobs_pb2 import Checkpoint, JobSpec, OrchestrationConfig

from services.jobs import records, states
from services.jobs.records import Change, JobRecord, StoredEvent
from services.jobs.store import NewJob
from services.kit.errors import FieldInvalid, IllegalTransition, JobNotFound, ResourceExhausted
from services.kit.names import job_name
from services.kit.workflows import DEFAULT_MAX_CHILD_JOBS, DEFAULT_MAX_DEPTH

End = Callable[[JobRecord], Change]
"""How one job ends; raises, changing nothing, when it may not."""


class TreeLimitExceeded(ResourceExhausted):
    """A child would pass its tree's max_depth or its parent's max_child_jobs."""

    def __init__(self, limit: str, value: int, why: str) -> None:
        super().__init__(
            f"{why}: orchestration.{limit} of the tree's root is {value}",
            ErrorReason.ERROR_REASON_TREE_LIMIT_EXCEEDED,
            {"limit": limit, "value": str(value)},
        )


@dataclass(frozen=True)
class TreeLimits:
    """A tree's limits, from its root's spec.orchestration with the defaults applied."""

    max_child_jobs: int
    """Children one job of the tree may create in all."""
    max_depth: int
    """How deep the tree may grow below its root."""
    child_timeout: timedelta | None
    """How long one child may take; None for the child's own timeout."""
    propagate_cancellation: bool
    """Whether a job's end ends its unfinished descendants."""


def tree_limits(config: OrchestrationConfig) -> TreeLimits:
    """The limits an OrchestrationConfig sets, its zero and unset fields the defaults."""
    child_timeout = config.child_timeout.ToTimedelta()
    return TreeLimits(
        max_child_jobs=config.max_child_jobs or DEFAULT_MAX_CHILD_JOBS,
        max_depth=config.max_depth or DEFAULT_MAX_DEPTH,
        child_timeout=child_timeout if child_timeout > timedelta(0) else None,
        propagate_cancellation=(
            config.propagate_cancellation if config.HasField("propagate_cancellation") else True
        ),
    )


def limits_of(root: JobRecord) -> TreeLimits:
    """The limits of the tree whose root is `root`."""
    return tree_limits(JobSpec.FromString(root.spec).orchestration)


def create_child(
    new: NewJob, job_id: str, parent: JobRecord | None, root: JobRecord | None, now: datetime
) -> tuple[Change, Change]:
    """The new child's row and job.created event, and its parent's change (children + 1,
    job.child.created). Refused: a parent that is unknown or another tenant's
    (JobNotFound), one that has finished (IllegalTransition), and a child past the root's
    limits (TreeLimitExceeded). The child's deadline is its own timeout, or the root's
    child_timeout when that is shorter or the child set none, and never past its
    parent's deadline."""
    if parent is None or root is None or parent.tenant != new.tenant:
        raise JobNotFound(new.spec.parent)
    if parent.state in states.TERMINAL:
        raise IllegalTransition(JobState.Name(parent.state), "create a child of a job")
    limits = limits_of(root)
    depth = parent.depth + 1
    if depth > limits.max_depth:
        raise TreeLimitExceeded(
            "max_depth", limits.max_depth, f"a child of {job_name(parent.id)} would be too deep"
        )
    if parent.children >= limits.max_child_jobs:
        raise TreeLimitExceeded(
            "max_child_jobs",
            limits.max_child_jobs,
            f"{job_name(parent.id)} has created {parent.children} children already",
        )
    timeout = new.spec.timeout.ToTimedelta()
    if limits.child_timeout is not None:
        timeout = min(timeout, limits.child_timeout) if new.own_timeout else limits.child_timeout
    deadline = min(now + timeout, parent.deadline)
    child = records.create(new, job_id, now, root=root.id, depth=depth, deadline=deadline)
    created = ChildEvent(
        child=job_name(job_id), node=new.spec.node, state=JobState.JOB_STATE_QUEUED
    )
    noted, event = records.child_event(
        parent,
        EventType.EVENT_TYPE_CHILD_CREATED,
        created,
        now,
        children=parent.children + 1,
    )
    return child, Change(noted, (event,))


def await_children(
    parent: JobRecord,
    lease_id: str,
    checkpoint: Checkpoint | None,
    children: Sequence[tuple[str, JobRecord | None]],
    now: datetime,
) -> tuple[Change, bool]:
    """Park the leased parent WAITING on `children` (id, row or None when unknown), or,
    when one of them has ended already, only store the checkpoint and keep the lease;
    returns the change and whether the parent waits. A job that is not a child of the
    parent is FieldInvalid("children")."""
    for index, (child_id, row) in enumerate(children):
        if row is None or row.parent != parent.id:
            raise FieldInvalid(
                f"children[{index}]",
                f"{job_name(child_id)} is not a child of {job_name(parent.id)}",
            )
    park = all(row is not None and row.state in states.ACTIVE for _, row in children)
    ids = [child_id for child_id, _ in children]
    return records.await_children(parent, lease_id, checkpoint, ids, park, now), park


class TreeBatch:
    """The rows one transaction locked, and their changes merged per job in order."""

    def __init__(self, rows: Iterable[JobRecord]) -> None:
        self._rows = {row.id: row for row in rows}
        self._unfinished = {row.id for row in self._rows.values() if row.state in states.ACTIVE}
        self._events: dict[str, list[StoredEvent]] = {}
        self._checkpoints: set[str] = set()

    def row(self, job_id: str) -> JobRecord | None:
        """The job as changed so far; None when it was not locked."""
        return self._rows.get(job_id)

    def apply(self, change: Change) -> None:
        """Take a change of one of the rows."""
        job_id = change.record.id
        self._rows[job_id] = change.record
        self._events.setdefault(job_id, []).extend(change.events)
        if change.checkpoint_changed:
            self._checkpoints.add(job_id)

    def ended(self) -> list[JobRecord]:
        """The jobs this batch ended."""
        rows = (self._rows[job_id] for job_id in self._events)
        return [row for row in rows if row.id in self._unfinished and row.state in states.TERMINAL]

    def changes(self) -> list[Change]:
        """One Change a changed job, to write."""
        return [
            Change(self._rows[job_id], tuple(events), job_id in self._checkpoints)
            for job_id, events in self._events.items()
        ]


def end_job(
    batch: TreeBatch,
    job_id: str,
    end: End,
    descendants: Iterable[str],
    limits: Callable[[], TreeLimits],
    because: str,
    now: datetime,
) -> JobRecord:
    """End the job with `end` and, unless its tree's limits say not to propagate, its
    unfinished `descendants` (ids of locked rows), deepest first: past their deadline they
    time out, otherwise they are cancelled `because`. Each end is told to the parent.
    `limits` is asked only when there are descendants. Returns the job's new row."""
    target = batch.row(job_id)
    if target is None:
        raise JobNotFound(job_name(job_id))
    end(target)  # refusals first, so that nothing below is changed for nothing
    unfinished = [
        row
        for row in (batch.row(descendant) for descendant in descendants)
        if row is not None and row.id != job_id and row.state in states.ACTIVE
    ]
    if not unfinished or not limits().propagate_cancellation:
        unfinished = []
    # A parent that ends in this change too is not queued again first.
    ending = frozenset([job_id, *(row.id for row in unfinished)])
    for row in sorted(unfinished, key=lambda row: -row.depth):
        current = batch.row(row.id)
        assert current is not None
        if current.state in states.ACTIVE:
            _end(batch, _end_descendant(current, because, now), ending, now)
    current = batch.row(job_id)
    assert current is not None
    return _end(batch, end(current), ending, now)


def cancelled_because(job_id: str) -> str:
    """Why a descendant of a cancelled job was cancelled."""
    return f"cancelled with its ancestor {job_name(job_id)}"


def ended_because(job_id: str, state: states.State) -> str:
    """Why a descendant of a job that ended otherwise was cancelled."""
    ended = JobState.Name(state).removeprefix("JOB_STATE_")
    return f"cancelled because its ancestor {job_name(job_id)} ended {ended}"


def _end_descendant(record: JobRecord, because: str, now: datetime) -> Change:
    if record.deadline <= now:
        return records.time_out(record, now)
    return records.cancel(record, because, now)


def _end(batch: TreeBatch, change: Change, ending: frozenset[str], now: datetime) -> JobRecord:
    """Apply a job's end and tell its parent, which it queues again when it waits on it
    (unless the parent is `ending` too)."""
    batch.apply(change)
    child = change.record
    parent = batch.row(child.parent) if child.parent else None
    if parent is None or parent.state in states.TERMINAL:
        return child
    finished = ChildEvent(child=job_name(child.id), node=child.node, state=child.state)
    if child.failure is not None:
        finished.failure.ParseFromString(child.failure)
    parent, event = records.child_event(parent, EventType.EVENT_TYPE_CHILD_FINISHED, finished, now)
    batch.apply(Change(parent, (event,)))
    awaited = child.id in parent.awaiting.split()
    if parent.state == states.WAITING and awaited and parent.id not in ending:
        ended = JobState.Name(child.state).removeprefix("JOB_STATE_")
        reason = f"child {job_name(child.id)} finished {ended}"
        batch.apply(records.wake_parent(parent, reason, now))
    return child
