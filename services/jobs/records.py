"""Job rows and the changes made to them, shared by every JobStore backend.

A backend loads rows (locked), hands them to the functions here, which check the state
machine and the lease and return the new row with the RuntimeEvents to append, and then
writes both in the same transaction. So every backend behaves the same by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from agentrt.common.v1.common_pb2 import (
    ActionEvent,
    ChildEvent,
    ErrorReason,
    EventType,
    Failure,
    JobAttempt,
    JobState,
    Message,
    RuntimeEvent,
    ToolCalled,
    Usage,
)
from agentrt.jobs.v1.jobs_pb2 import Checkpoint, Job, JobResult

from services.jobs import states
from services.jobs.states import State
from services.jobs.store import EndedJob, JobLease, LeaseBatch, NewJob
from services.kit.errors import (
    FieldInvalid,
    IllegalTransition,
    LeaseLost,
    RequestIdReused,
)
from services.kit.ids import new_id
from services.kit.names import action_name, job_name, parse_action_name, parse_job_name

FINISH_STATES: frozenset[State] = frozenset({states.SUCCEEDED, states.FAILED, states.TIMED_OUT})
"""The states a worker may finish a job in."""

_STATE_EVENTS: dict[State, EventType.ValueType] = {
    states.QUEUED: EventType.EVENT_TYPE_JOB_REQUEUED,
    states.RUNNING: EventType.EVENT_TYPE_JOB_STARTED,
    states.WAITING: EventType.EVENT_TYPE_JOB_WAITING,
    states.SUCCEEDED: EventType.EVENT_TYPE_JOB_SUCCEEDED,
    states.FAILED: EventType.EVENT_TYPE_JOB_FAILED,
    states.CANCELLED: EventType.EVENT_TYPE_JOB_CANCELLED,
    states.TIMED_OUT: EventType.EVENT_TYPE_JOB_TIMED_OUT,
}


@dataclass(frozen=True)
class JobRecord:
    """One row of the `jobs` table; field names are the column names."""

    id: str
    tenant: str
    principal: str
    session: str
    parent: str
    """The parent job's id; empty for a top-level job."""
    state: State
    request_id: str
    request_hash: bytes
    spec: bytes
    result: bytes | None
    failure: bytes | None
    usage: bytes | None
    checkpoint: bytes | None
    attempt: int
    turns: int
    lease_id: str | None
    lease_owner: str | None
    lease_expire_time: datetime | None
    deadline: datetime
    create_time: datetime
    update_time: datetime
    start_time: datetime | None
    end_time: datetime | None
    trace_id: str
    event_seq: int
    """The sequence of the job's last event."""
    root: str
    """The id of the root of the job's tree: its own for a top-level job."""
    depth: int
    """0 for a top-level job, its parent's depth + 1 for a child."""
    node: str
    """The node of its parent's workflow the job runs (spec.node)."""
    children: int
    """How many children the job has created."""
    awaiting: str
    """What the job's latest wait was on: while WAITING on children their ids,
    space-separated (cleared when they wake it); after a wait on an action that action's id,
    kept until the next wait, so that the lease that resumes the job names the action."""
    trace_parent: str
    """The W3C traceparent of the span that created the job, in the job's trace: its
    `agent.job` span's parent. Empty when the creator was outside the job's trace."""


COLUMNS = tuple(field.name for field in fields(JobRecord))
TIME_COLUMNS = (
    "lease_expire_time",
    "deadline",
    "create_time",
    "update_time",
    "start_time",
    "end_time",
)


@dataclass(frozen=True)
class StoredEvent:
    """A row of `job_events` to insert."""

    job_id: str
    sequence: int
    event: bytes


@dataclass(frozen=True)
class Change:
    """The new row of a job and the events of the change, oldest first."""

    record: JobRecord
    events: tuple[StoredEvent, ...]
    checkpoint_changed: bool = False
    """Whether the checkpoint column must be written (it can be large)."""


class Row(Protocol):
    """A database row whose values can be read by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


def record_from_row(row: Row, time: Callable[[Any], datetime | None] | None = None) -> JobRecord:
    """A JobRecord from a row with (at least) every column; `time` converts stored times."""
    values = {name: row[name] for name in COLUMNS}
    if time is not None:
        for name in TIME_COLUMNS:
            values[name] = time(values[name])
    return JobRecord(**values)


def to_job(record: JobRecord) -> Job:
    """The Job message of a row."""
    job = Job(
        name=job_name(record.id),
        tenant=record.tenant,
        principal=record.principal,
        state=record.state,
        request_id=record.request_id,
        attempt=record.attempt,
        turns=record.turns,
        last_event_id=f"{record.id}.{record.event_seq}",
        trace_id=record.trace_id,
        root=job_name(record.root or record.id),
        depth=record.depth,
    )
    job.spec.ParseFromString(record.spec)
    if record.result is not None:
        job.result.ParseFromString(record.result)
    if record.failure is not None:
        job.failure.ParseFromString(record.failure)
    if record.usage is not None:
        job.usage.ParseFromString(record.usage)
    job.create_time.FromDatetime(record.create_time)
    job.update_time.FromDatetime(record.update_time)
    job.deadline.FromDatetime(record.deadline)
    if record.start_time is not None:
        job.start_time.FromDatetime(record.start_time)
    if record.end_time is not None:
        job.end_time.FromDatetime(record.end_time)
    return job


def ended_jobs(rows: Sequence[JobRecord]) -> list[EndedJob]:
    """The rows' jobs that have ended, for their `agent.job` spans."""
    return [
        EndedJob(to_job(record), record.trace_parent)
        for record in rows
        if record.state in states.TERMINAL
    ]


def checkpoint_of(record: JobRecord) -> Checkpoint | None:
    """The job's latest checkpoint, if it has one."""
    return None if record.checkpoint is None else Checkpoint.FromString(record.checkpoint)


def create(
    new: NewJob,
    job_id: str,
    now: datetime,
    *,
    root: str = "",
    depth: int = 0,
    deadline: datetime | None = None,
) -> Change:
    """The row and job.created event of a new QUEUED job: a top-level one (the root of its
    own tree) unless `root`, `depth` and `deadline` place it in a tree
    (services.jobs.trees.create_child)."""
    parent = parse_job_name(new.spec.parent, "spec.parent") if new.spec.parent else ""
    record = JobRecord(
        id=job_id,
        tenant=new.tenant,
        principal=new.principal,
        session=new.spec.session,
        parent=parent,
        state=states.QUEUED,
        request_id=new.request_id,
        request_hash=new.request_hash,
        spec=new.spec.SerializeToString(deterministic=True),
        result=None,
        failure=None,
        usage=None,
        checkpoint=None,
        attempt=0,
        turns=0,
        lease_id=None,
        lease_owner=None,
        lease_expire_time=None,
        deadline=deadline or now + new.spec.timeout.ToTimedelta(),
        create_time=now,
        update_time=now,
        start_time=None,
        end_time=None,
        trace_id=new.trace_id,
        event_seq=1,
        root=root or job_id,
        depth=depth,
        node=new.spec.node,
        children=0,
        awaiting="",
        trace_parent=new.trace_parent,
    )
    event = _event(record, EventType.EVENT_TYPE_JOB_CREATED, now)
    return Change(record, (_stored(record, event),))


def lease(
    record: JobRecord,
    worker: str,
    lease_id: str,
    expire: datetime,
    now: datetime,
    runtime_version: str = "",
) -> Change:
    """Start the job under a new lease; a RUNNING job (its lease expired) is taken over."""
    stored = []
    if record.state == states.RUNNING:
        attempt = JobAttempt(
            attempt=record.attempt,
            worker=record.lease_owner or "",
            reason=f"the lease of worker {record.lease_owner} expired",
        )
        record, event = _move(record, states.QUEUED, now, **_NO_LEASE)
        event.attempt.CopyFrom(attempt)
        stored.append(_stored(record, event))
    record, event = _move(
        record,
        states.RUNNING,
        now,
        attempt=record.attempt + 1,
        lease_id=lease_id,
        lease_owner=worker,
        lease_expire_time=expire,
        start_time=record.start_time or now,
    )
    event.attempt.CopyFrom(
        JobAttempt(attempt=record.attempt, worker=worker, runtime_version=runtime_version)
    )
    stored.append(_stored(record, event))
    return Change(record, tuple(stored))


def time_out(record: JobRecord, now: datetime) -> Change:
    """End the job TIMED_OUT because its deadline passed."""
    failure = Failure(
        reason=ErrorReason.ERROR_REASON_DEADLINE_EXCEEDED,
        message="the job ran past its deadline",
        metadata={"deadline": record.deadline.isoformat()},
    )
    return _end(record, states.TIMED_OUT, failure, now)


def cancel(record: JobRecord, message: str, now: datetime) -> Change:
    """End the job CANCELLED; its lease, if any, is revoked."""
    if record.state in states.TERMINAL:
        raise IllegalTransition(JobState.Name(record.state), "cancel a job")
    failure = Failure(reason=ErrorReason.ERROR_REASON_CANCELLED, message=message)
    return _end(record, states.CANCELLED, failure, now)


def deduplicate(existing: JobRecord, new: NewJob) -> Job:
    """The job a repeated create returns; RequestIdReused when the spec differs."""
    if existing.request_hash != new.request_hash:
        raise RequestIdReused(new.request_id)
    return to_job(existing)


def lease_or_time_out(
    candidates: list[JobRecord],
    worker: str,
    lease_seconds: float,
    now: datetime,
    runtime_version: str = "",
) -> tuple[list[Change], LeaseBatch]:
    """Lease each runnable job to `worker`, or time it out if its deadline has passed."""
    expire = now + timedelta(seconds=lease_seconds)
    changes = []
    leases = []
    timed_out = []
    overdue = 0
    takeovers = 0
    for record in candidates:
        if record.deadline <= now and in_tree(record):
            # Its end must reach its parent and descendants, which only the deadline
            # sweep locks; it is neither leased nor timed out here.
            overdue += 1
            continue
        if record.deadline <= now:
            change = time_out(record, now)
            timed_out.append(to_job(change.record))
        else:
            lease_id = new_id()
            takeovers += record.state == states.RUNNING
            change = lease(record, worker, lease_id, expire, now, runtime_version)
            leases.append(
                JobLease(
                    to_job(change.record),
                    lease_id,
                    expire,
                    checkpoint_of(record),
                    awaited_action(record),
                )
            )
        changes.append(change)
    return changes, LeaseBatch(leases, timed_out, overdue, takeovers)


def overdue(record: JobRecord, now: datetime) -> bool:
    """Whether the deadline sweep times the job out at `now`: unfinished and past its
    deadline, and, when RUNNING, no longer held by a live lease (whose worker times the
    job out itself)."""
    if record.state not in states.ACTIVE or record.deadline > now:
        return False
    expire = record.lease_expire_time
    return record.state != states.RUNNING or expire is None or expire <= now


def in_tree(record: JobRecord) -> bool:
    """Whether the job has a parent or children, whose rows its end changes too."""
    return bool(record.parent) or record.children > 0


def awaited_action(record: JobRecord) -> str:
    """The name of the action the job waited on last, for the lease that resumes it; empty
    when its latest wait was on children (they clear `awaiting` when they wake it, before it
    can be leased) or it never waited."""
    return action_name(record.id, record.awaiting) if record.awaiting else ""


def check_lease(record: JobRecord, lease_id: str) -> None:
    """Raise LeaseLost unless `lease_id` is the running job's current lease."""
    if record.state != states.RUNNING or record.lease_id != lease_id:
        raise LeaseLost(JobState.Name(record.state))


def save_checkpoint(
    record: JobRecord,
    lease_id: str,
    checkpoint: Checkpoint,
    message: Message | None,
    turn_usage: Usage | None,
    now: datetime,
    tool_calls: Sequence[ToolCalled] = (),
    within_turn: bool = False,
    model: str = "",
) -> Change:
    """Record a turn's checkpoint, which must advance the job's turns, or, with tool
    calls or `within_turn`, progress within the current turn: job.turn.completed, then
    usage.recorded when the turn's usage is given; each tool call becomes a tool.called
    event. `model` is the model that answered the turn, as reported. A repeat of the
    checkpoint the job holds (a retry whose first try was saved, its answer lost) changes
    nothing, so that its turn and tool calls are not recorded twice."""
    check_lease(record, lease_id)
    if checkpoint.turn == record.turns and record.checkpoint == checkpoint.SerializeToString(
        deterministic=True
    ):
        return Change(record, ())
    if within_turn and checkpoint.turn != record.turns:
        raise FieldInvalid(
            "checkpoint.turn", f"must be the turns completed ({record.turns}) within a turn"
        )
    within_turn = (within_turn or bool(tool_calls)) and checkpoint.turn == record.turns
    if checkpoint.turn <= record.turns and not within_turn:
        raise FieldInvalid(
            "checkpoint.turn", f"must be greater than the turns completed ({record.turns})"
        )
    record = _with_checkpoint(record, checkpoint, now)
    stored = []
    if not within_turn:
        record = replace(record, event_seq=record.event_seq + 1)
        event = _event(record, EventType.EVENT_TYPE_TURN_COMPLETED, now)
        event.turn_completed.turn = checkpoint.turn
        if message is not None:
            event.turn_completed.message.CopyFrom(message)
        if turn_usage is not None:
            event.turn_completed.usage.CopyFrom(turn_usage)
        event.turn_completed.model = model
        stored.append(_stored(record, event))
        if turn_usage is not None:
            record, recorded = _usage_recorded(record, checkpoint.turn, turn_usage, model, now)
            stored.append(recorded)
    for called in tool_calls:
        record = replace(record, event_seq=record.event_seq + 1)
        event = _event(record, EventType.EVENT_TYPE_TOOL_CALLED, now)
        event.tool_called.CopyFrom(called)
        stored.append(_stored(record, event))
    return Change(record, tuple(stored), checkpoint_changed=True)


def _usage_recorded(
    record: JobRecord, turn: int, usage: Usage, model: str, now: datetime
) -> tuple[JobRecord, StoredEvent]:
    """usage.recorded for the turn's usage: what billing and metering consumers read,
    without having to pick it out of job.turn.completed."""
    record = replace(record, event_seq=record.event_seq + 1)
    event = _event(record, EventType.EVENT_TYPE_USAGE_RECORDED, now)
    event.usage_recorded.turn = turn
    event.usage_recorded.usage.CopyFrom(usage)
    event.usage_recorded.model = model
    return record, _stored(record, event)


def check_outcome(state: State, outcome: JobResult | Failure) -> None:
    """Raise FieldInvalid unless `outcome` suits a job finishing in `state`."""
    if state not in FINISH_STATES:
        raise FieldInvalid("state", "must be SUCCEEDED, FAILED or TIMED_OUT")
    if state == states.SUCCEEDED and not isinstance(outcome, JobResult):
        raise FieldInvalid("result", "a SUCCEEDED job needs a result")
    if state != states.SUCCEEDED and not isinstance(outcome, Failure):
        raise FieldInvalid("failure", "a FAILED or TIMED_OUT job needs a failure")


def finish(
    record: JobRecord,
    lease_id: str,
    state: State,
    outcome: JobResult | Failure,
    usage: Usage | None,
    checkpoint: Checkpoint | None,
    now: datetime,
    message: Message | None = None,
    turn_usage: Usage | None = None,
    model: str = "",
) -> Change:
    """End the leased job with its outcome, and its final usage and checkpoint if given;
    a checkpoint that advances the turns also records its turn (job.turn.completed)."""
    check_outcome(state, outcome)
    check_lease(record, lease_id)
    turn_events: tuple[StoredEvent, ...] = ()
    if checkpoint is not None:
        if checkpoint.turn < record.turns:
            raise FieldInvalid(
                "checkpoint.turn", f"must not be less than the turns completed ({record.turns})"
            )
        if checkpoint.turn > record.turns:
            turn = save_checkpoint(
                record, lease_id, checkpoint, message, turn_usage, now, model=model
            )
            record, turn_events = turn.record, turn.events
        else:
            record = _with_checkpoint(record, checkpoint, now)
    if usage is not None:
        record = replace(record, usage=usage.SerializeToString(deterministic=True))
    change = _end(record, state, outcome, now)
    return replace(
        change, events=turn_events + change.events, checkpoint_changed=checkpoint is not None
    )


def release(record: JobRecord, lease_id: str, reason: str, now: datetime) -> Change:
    """Give the leased job back to the queue."""
    check_lease(record, lease_id)
    attempt = JobAttempt(attempt=record.attempt, worker=record.lease_owner or "", reason=reason)
    record, event = _move(record, states.QUEUED, now, **_NO_LEASE)
    event.attempt.CopyFrom(attempt)
    return Change(record, (_stored(record, event),))


def await_action(
    record: JobRecord,
    lease_id: str,
    checkpoint: Checkpoint | None,
    action: ActionEvent,
    now: datetime,
) -> Change:
    """Park the leased job WAITING on a new action: its lease is released and the
    checkpoint, if given, stored; events action.required and job.waiting."""
    check_lease(record, lease_id)
    if checkpoint is not None:
        if checkpoint.turn < record.turns:
            raise FieldInvalid(
                "checkpoint.turn", f"must not be less than the turns completed ({record.turns})"
            )
        record = _with_checkpoint(record, checkpoint, now)
    record, required = _action_event(record, EventType.EVENT_TYPE_ACTION_REQUIRED, action, now)
    _, action_id = parse_action_name(action.action)
    record, waiting = _move(record, states.WAITING, now, awaiting=action_id, **_NO_LEASE)
    events = (_stored(record, required), _stored(record, waiting))
    return Change(record, events, checkpoint_changed=checkpoint is not None)


def await_children(
    record: JobRecord,
    lease_id: str,
    checkpoint: Checkpoint | None,
    children: Sequence[str],
    park: bool,
    now: datetime,
) -> Change:
    """Park the leased job WAITING on its unfinished `children` (ids): lease released,
    checkpoint stored, event job.waiting; with `park` False (a child has ended already)
    only the checkpoint is stored and the job keeps its lease."""
    check_lease(record, lease_id)
    if checkpoint is not None:
        if checkpoint.turn < record.turns:
            raise FieldInvalid(
                "checkpoint.turn", f"must not be less than the turns completed ({record.turns})"
            )
        record = _with_checkpoint(record, checkpoint, now)
    if not park:
        return Change(record, (), checkpoint_changed=checkpoint is not None)
    record, waiting = _move(record, states.WAITING, now, awaiting=" ".join(children), **_NO_LEASE)
    return Change(record, (_stored(record, waiting),), checkpoint_changed=checkpoint is not None)


def wake_parent(record: JobRecord, reason: str, now: datetime) -> Change:
    """Queue the job WAITING on its children again (job.requeued) because one ended."""
    record, requeued = _move(record, states.QUEUED, now, awaiting="")
    requeued.attempt.CopyFrom(JobAttempt(attempt=record.attempt, reason=reason))
    return Change(record, (_stored(record, requeued),))


def child_event(
    record: JobRecord,
    event_type: EventType.ValueType,
    child: ChildEvent,
    now: datetime,
    **columns: Any,
) -> tuple[JobRecord, StoredEvent]:
    """Append job.child.created or job.child.finished to the job's history, with column
    changes. No state change: update_time stays that of the job's last one, which a wait
    on an action is bound to (services.jobs.actions.resume_waiting)."""
    record = replace(record, event_seq=record.event_seq + 1, **columns)
    event = _event(record, event_type, now)
    event.child.CopyFrom(child)
    return record, _stored(record, event)


def resume(
    record: JobRecord,
    event_type: EventType.ValueType | None,
    action: ActionEvent,
    reason: str,
    now: datetime,
) -> Change:
    """Queue the WAITING job again because its action ended: the action's event of
    `event_type` (none for a cancelled action), then job.requeued; the next lease resumes
    from the job's checkpoint."""
    if record.state != states.WAITING:
        raise IllegalTransition(JobState.Name(record.state), "resume a job from an action")
    stored = []
    if event_type is not None:
        record, ended = _action_event(record, event_type, action, now)
        stored.append(_stored(record, ended))
    # The lease that resumes the job names the action that woke it.
    _, action_id = parse_action_name(action.action)
    record, requeued = _move(record, states.QUEUED, now, awaiting=action_id)
    requeued.attempt.CopyFrom(JobAttempt(attempt=record.attempt, reason=reason))
    stored.append(_stored(record, requeued))
    return Change(record, tuple(stored))


def _action_event(
    record: JobRecord, event_type: EventType.ValueType, action: ActionEvent, now: datetime
) -> tuple[JobRecord, RuntimeEvent]:
    record = replace(record, update_time=now, event_seq=record.event_seq + 1)
    event = _event(record, event_type, now)
    event.action.CopyFrom(action)
    return record, event


_NO_LEASE: dict[str, Any] = {"lease_id": None, "lease_owner": None, "lease_expire_time": None}


def _with_checkpoint(record: JobRecord, checkpoint: Checkpoint, now: datetime) -> JobRecord:
    return replace(
        record,
        checkpoint=checkpoint.SerializeToString(deterministic=True),
        turns=checkpoint.turn,
        usage=checkpoint.usage.SerializeToString(deterministic=True),
        update_time=now,
    )


def _end(record: JobRecord, state: State, outcome: JobResult | Failure, now: datetime) -> Change:
    data = outcome.SerializeToString(deterministic=True)
    if isinstance(outcome, JobResult):
        record, event = _move(record, state, now, result=data, end_time=now, **_NO_LEASE)
        event.job_succeeded.output = outcome.output
        if record.usage is not None:
            event.job_succeeded.usage.ParseFromString(record.usage)
    else:
        record, event = _move(record, state, now, failure=data, end_time=now, **_NO_LEASE)
        event.failure.CopyFrom(outcome)
    return Change(record, (_stored(record, event),))


def _move(
    record: JobRecord, target: State, now: datetime, **columns: Any
) -> tuple[JobRecord, RuntimeEvent]:
    states.check_transition(record.state, target)
    moved = replace(
        record, state=target, update_time=now, event_seq=record.event_seq + 1, **columns
    )
    return moved, _event(moved, _STATE_EVENTS[target], now)


def _event(record: JobRecord, event_type: EventType.ValueType, now: datetime) -> RuntimeEvent:
    event = RuntimeEvent(
        id=f"{record.id}.{record.event_seq}",
        type=event_type,
        sequence=record.event_seq,
        tenant=record.tenant,
        job=job_name(record.id),
        parent_job=job_name(record.parent) if record.parent else "",
        trace_id=record.trace_id,
        job_state=record.state,
        root_job=job_name(record.root or record.id),
        node=record.node,
    )
    event.time.FromDatetime(now)
    return event


def _stored(record: JobRecord, event: RuntimeEvent) -> StoredEvent:
    return StoredEvent(record.id, event.sequence, event.SerializeToString(deterministic=True))
