"""The job state machine: which state may follow which."""

from __future__ import annotations

from typing import TypeAlias

from agentrt.common.v1.common_pb2 import JobState

from services.kit.errors import IllegalTransition

State: TypeAlias = JobState.ValueType

QUEUED = JobState.JOB_STATE_QUEUED
RUNNING = JobState.JOB_STATE_RUNNING
WAITING = JobState.JOB_STATE_WAITING
SUCCEEDED = JobState.JOB_STATE_SUCCEEDED
FAILED = JobState.JOB_STATE_FAILED
CANCELLED = JobState.JOB_STATE_CANCELLED
TIMED_OUT = JobState.JOB_STATE_TIMED_OUT

TERMINAL: frozenset[State] = frozenset({SUCCEEDED, FAILED, CANCELLED, TIMED_OUT})
"""States a job never leaves."""

ACTIVE: frozenset[State] = frozenset({QUEUED, RUNNING, WAITING})
"""States of a job that has not finished."""

_NEXT: dict[State, frozenset[State]] = {
    QUEUED: frozenset({RUNNING, CANCELLED, TIMED_OUT}),
    # Back to QUEUED when the lease expires or the worker releases the job.
    RUNNING: frozenset({QUEUED, WAITING, SUCCEEDED, FAILED, CANCELLED, TIMED_OUT}),
    # FAILED when the awaited action expires with a failing outcome.
    WAITING: frozenset({QUEUED, CANCELLED, TIMED_OUT, FAILED}),
}


def can_transition(current: State, target: State) -> bool:
    """Whether a job in `current` may move to `target`."""
    return target in _NEXT.get(current, frozenset())


def check_transition(current: State, target: State) -> None:
    """Raise IllegalTransition unless a job in `current` may move to `target`."""
    if not can_transition(current, target):
        raise IllegalTransition(JobState.Name(current), f"move a job to {JobState.Name(target)}")
