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

from services.jobs import records
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


def require(
    job: JobRecord, lease_id: str, new: NewAction, checkpoint: Checkpoint | None, now: datetime
) -> tuple[Change, ActionRecord, str]:
    """A new PENDING action on the leased job, the job's change to WAITING, and the
    action's resume token (which only the caller of RequireAction ever sees)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    action = ActionRecord(
        id=new_id(),
        job_id=job.id,
        tenant=job.tenant,
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
    change = records.await_action(job, lease_id, checkpoint, _event(action), now)
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
    _check_pending(action, target, now)
    resolved = replace(
        action,
        state=RESOLVED,
        outcome=outcome,
        resolve_time=now,
        resolved_by=resolution.principal,
        request_id=resolution.request_id,
    )
    change = records.resume(
        job,
        EventType.EVENT_TYPE_ACTION_RESOLVED,
        _event(resolved),
        f"action {_name(action)} was resolved by {resolution.principal}",
        now,
    )
    return change, resolved


def cancel(
    job: JobRecord, action: ActionRecord, reason: str, now: datetime
) -> tuple[Change, ActionRecord]:
    """Cancel the PENDING action and queue its job again, so that the agent learns it."""
    _check_pending(action, ActionRef(action.tenant, action.job_id, action.id), now)
    cancelled = replace(action, state=CANCELLED, resolve_time=now)
    because = f"action {_name(action)} was cancelled" + (f": {reason}" if reason else "")
    return records.resume(job, None, _event(cancelled), because, now), cancelled


def expire(job: JobRecord, action: ActionRecord, now: datetime) -> tuple[Change, ActionRecord]:
    """Apply the expired action's timeout outcome and queue its job again."""
    expired = replace(action, state=EXPIRED, outcome=action.timeout_outcome, resolve_time=now)
    change = records.resume(
        job,
        EventType.EVENT_TYPE_ACTION_EXPIRED,
        _event(expired),
        f"action {_name(action)} expired",
        now,
    )
    return change, expired


def _check_pending(action: ActionRecord, target: ActionTarget, now: datetime) -> None:
    if action.state == PENDING and action.expire_time > now:
        return
    if not isinstance(target, ActionRef):
        raise ResumeTokenInvalid()
    state = action.state if action.state != PENDING else EXPIRED
    raise ActionNotPending(_name(action), Action.State.Name(state))


def _name(action: ActionRecord) -> str:
    return action_name(action.job_id, action.id)


def _event(action: ActionRecord) -> ActionEvent:
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
