"""Action rows and their changes, shared by every JobStore backend, with resume tokens.

Like services.jobs.records for jobs: a backend loads the job and the action (locked, the
job first), the functions here check the action's state and the token rules and return the
job's Change with the action's new row, and the backend writes both in one transaction.

Resume tokens: 256 bits from `secrets`, base64url without padding (43 characters). Only
their SHA-256 is stored. A token is valid while its action is PENDING and unexpired, and
only for the tenant that owns the action's job; every other token (unknown, of another
tenant, used, expired, or of an action that was cancelled) is refused alike with
RESUME_TOKEN_INVALID, so a token reveals nothing about actions it does not open. An action
named by its resource name reveals its state (ACTION_NOT_PENDING) only to its own tenant;
another tenant gets NOT_FOUND, like an unknown name.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from agentrt.common.v1.common_pb2 import ActionEvent, ErrorReason, EventType
from agentrt.jobs.v1.jobs_pb2 import Action, ActionKind, Checkpoint

from services.jobs import records, states
from services.jobs.listing import encode_position
from services.jobs.records import Change, JobRecord, Row
from services.jobs.store import ActionRef, ActionTarget, NewAction, Resolution
from services.kit.errors import FailedPrecondition, NotFound, RequestIdReused
from services.kit.ids import new_id
from services.kit.names import action_name

PENDING = Action.State.STATE_PENDING
RESOLVED = Action.State.STATE_RESOLVED
EXPIRED = Action.State.STATE_EXPIRED
CANCELLED = Action.State.STATE_CANCELLED

TOKEN_BYTES = 32
"""256 random bits a resume token."""


class ActionNotFound(NotFound):
    """The action does not exist or belongs to another tenant."""

    def __init__(self, name: str) -> None:
        super().__init__(f"action {name} not found", metadata={"name": name})


class ActionNotPending(FailedPrecondition):
    """The action was resolved, cancelled or expired; `state` is its state's name."""

    def __init__(self, name: str, state: str) -> None:
        super().__init__(
            f"action {name} is not pending; it is {state}",
            ErrorReason.ERROR_REASON_ACTION_NOT_PENDING,
            {"name": name, "state": state},
        )


class ResumeTokenInvalid(FailedPrecondition):
    """The resume token opens no pending action of the caller's tenant."""

    def __init__(self) -> None:
        super().__init__(
            "the resume token is unknown, used or expired",
            ErrorReason.ERROR_REASON_RESUME_TOKEN_INVALID,
        )


@dataclass(frozen=True)
class ActionRecord:
    """One row of the `actions` table; field names are the column names."""

    id: str
    job_id: str
    tenant: str
    kind: ActionKind.ValueType
    state: Action.State.ValueType
    payload: bytes
    timeout_outcome: bytes
    outcome: bytes | None
    token_hash: bytes
    expire_time: datetime
    create_time: datetime
    resolve_time: datetime | None
    resolved_by: str
    request_id: str
    """The idempotency key of the resolution; empty for none."""


ACTION_COLUMNS = tuple(field.name for field in fields(ActionRecord))
ACTION_TIME_COLUMNS = ("expire_time", "create_time", "resolve_time")


def action_from_row(row: Row, time: Callable[[Any], datetime | None] | None = None) -> ActionRecord:
    """An ActionRecord from a row with every column; `time` converts stored times."""
    values = {name: row[name] for name in ACTION_COLUMNS}
    if time is not None:
        for name in ACTION_TIME_COLUMNS:
            values[name] = time(values[name])
    return ActionRecord(**values)


def to_action(record: ActionRecord, resume_token: str = "") -> Action:
    """The Action message of a row; the resume token only when just created."""
    action = Action(
        name=action_name(record.job_id, record.id),
        kind=record.kind,
        state=record.state,
        resume_token=resume_token,
        resolved_by=record.resolved_by,
    )
    action.payload.ParseFromString(record.payload)
    action.timeout_outcome.ParseFromString(record.timeout_outcome)
    if record.outcome is not None:
        action.outcome.ParseFromString(record.outcome)
    action.expire_time.FromDatetime(record.expire_time)
    action.create_time.FromDatetime(record.create_time)
    if record.resolve_time is not None:
        action.resolve_time.FromDatetime(record.resolve_time)
    return action


def hash_resume_token(token: str) -> bytes:
    """What is stored of a resume token, and looked up by."""
    return hashlib.sha256(token.encode()).digest()


def new_resume_token() -> str:
    """A fresh resume token. One that would begin with '-' is drawn again, so that a command
    line takes every token as an argument, never as an option (`agentrt actions approve
    <token>`); that leaves about 255.98 of the 256 random bits."""
    while True:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        if not token.startswith("-"):
            return token


def new_record(job_id: str, tenant: str, new: NewAction, now: datetime) -> tuple[ActionRecord, str]:
    """A new PENDING action of the tenant's job and its resume token (which only the caller
    of RequireAction ever sees; the record holds its hash)."""
    token = new_resume_token()
    action = ActionRecord(
        id=new_id(),
        job_id=job_id,
        tenant=tenant,
        kind=new.kind,
        state=PENDING,
        payload=new.payload.SerializeToString(deterministic=True),
        timeout_outcome=new.timeout_outcome.SerializeToString(deterministic=True),
        outcome=None,
        token_hash=hash_resume_token(token),
        expire_time=now + new.timeout,
        create_time=now,
        resolve_time=None,
        resolved_by="",
        request_id="",
    )
    return action, token


def require(
    job: JobRecord, lease_id: str, new: NewAction, checkpoint: Checkpoint | None, now: datetime
) -> tuple[Change, ActionRecord, str]:
    """A new PENDING action on the leased job, the job's change to WAITING, and the
    action's resume token."""
    action, token = new_record(job.id, job.tenant, new, now)
    change = records.await_action(job, lease_id, checkpoint, event_of(action), now)
    return change, action, token


def unknown(target: ActionTarget) -> Exception:
    """The error for a target that matches no action of its tenant."""
    if isinstance(target, ActionRef):
        return ActionNotFound(action_name(target.job_id, target.action_id))
    return ResumeTokenInvalid()


def resolve(
    job: JobRecord,
    action: ActionRecord,
    target: ActionTarget,
    resolution: Resolution,
    now: datetime,
) -> tuple[Change | None, ActionRecord]:
    """Resolve the PENDING action with the outcome and queue its job again; no Change
    when the resolution repeats (same request_id) the one that resolved it.

    Refused: by token, anything but a pending unexpired action is ResumeTokenInvalid; by
    name, ActionNotPending (an expired action the sweeper has not reached counts as
    EXPIRED). A repeated request_id with another outcome or principal is RequestIdReused.
    """
    outcome = resolution.outcome.SerializeToString(deterministic=True)
    repeated = resolution.request_id and action.request_id == resolution.request_id
    if repeated and action.state == RESOLVED:
        if (action.outcome, action.resolved_by) != (outcome, resolution.principal):
            raise RequestIdReused(resolution.request_id)
        return None, action
    check_pending(action, target, now)
    resolved = replace(
        action,
        state=RESOLVED,
        outcome=outcome,
        resolve_time=now,
        resolved_by=resolution.principal,
        request_id=resolution.request_id,
    )
    return records.resume(job, *resumption(resolved), now), resolved


def cancel(
    job: JobRecord, action: ActionRecord, reason: str, now: datetime
) -> tuple[Change, ActionRecord]:
    """Cancel the PENDING action and queue its job again, so that the agent learns it."""
    check_pending(action, ActionRef(action.tenant, action.job_id, action.id), now)
    cancelled = replace(action, state=CANCELLED, resolve_time=now)
    return records.resume(job, *resumption(cancelled, reason), now), cancelled


def expire(job: JobRecord, action: ActionRecord, now: datetime) -> tuple[Change, ActionRecord]:
    """Apply the expired action's timeout outcome and queue its job again."""
    expired = replace(action, state=EXPIRED, outcome=action.timeout_outcome, resolve_time=now)
    return records.resume(job, *resumption(expired), now), expired


def resumption(
    action: ActionRecord, cancel_reason: str = ""
) -> tuple[EventType.ValueType | None, ActionEvent, str]:
    """How the job of an action that just ended is queued again: the action's event type
    (none for a cancelled action), its event, and the job.requeued reason."""
    name = _name(action)
    if action.state == RESOLVED:
        reason = f"action {name} was resolved by {action.resolved_by}"
        return EventType.EVENT_TYPE_ACTION_RESOLVED, event_of(action), reason
    if action.state == EXPIRED:
        return EventType.EVENT_TYPE_ACTION_EXPIRED, event_of(action), f"action {name} expired"
    because = f"action {name} was cancelled" + (f": {cancel_reason}" if cancel_reason else "")
    return None, event_of(action), because


def check_pending(action: ActionRecord, target: ActionTarget, now: datetime) -> None:
    """Refuse to settle an action that is not pending and unexpired: by token alike for
    every reason (ResumeTokenInvalid), by name with its state (ActionNotPending)."""
    if action.state == PENDING and action.expire_time > now:
        return
    if not isinstance(target, ActionRef):
        raise ResumeTokenInvalid()
    state = action.state if action.state != PENDING else EXPIRED
    raise ActionNotPending(_name(action), Action.State.Name(state))


def _name(action: ActionRecord) -> str:
    return action_name(action.job_id, action.id)


def event_of(action: ActionRecord) -> ActionEvent:
    """The ActionEvent of the action's events (action.required, .resolved, .expired)."""
    event = ActionEvent(
        action=_name(action),
        kind=ActionKind.Name(action.kind).removeprefix("ACTION_KIND_").lower(),
    )
    if action.outcome is not None:
        event.outcome.ParseFromString(action.outcome)
    return event


def page_of_actions(rows: list[ActionRecord], page_size: int) -> tuple[list[Action], str]:
    """The actions of a page and the next page's token, from up to page_size + 1 rows."""
    page = rows[:page_size]
    more = len(rows) > page_size
    return [to_action(row) for row in page], (
        encode_position(page[-1].create_time, page[-1].id) if more else ""
    )


def resume_waiting(
    job: JobRecord,
    wait_time: datetime,
    resumption: tuple[EventType.ValueType | None, ActionEvent, str],
    now: datetime,
) -> Change | None:
    """The job queued again after an action kept outside its database ended, or None when
    the job no longer waits on that action's wait (which began at `wait_time`, when its
    update_time was set): it was resumed already, cancelled or timed out since."""
    if job.state != states.WAITING or job.update_time != wait_time:
        return None
    return records.resume(job, *resumption, now)
