"""The event channel and wake-up contracts that every service codes against."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from agentrt.common.v1.common_pb2 import EventType, RuntimeEvent
from agentrt.retries import backoff_delay

Cursor = str
"""A position in one stream, in the form of a Redis stream entry id: "<int>-<int>".

Cursors of the same stream are ordered by the pair of integers (see `parse_cursor`);
"0" is before the first entry. Cursors of different streams are not comparable.
"""

JOB_NAME_PREFIX = "jobs/"

_CURSOR = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_EVENT_ID_SUFFIX = re.compile(r"([0-9]+)(?:\.([0-9]+))?")

_TYPE_NAMES: dict[EventType.ValueType, str] = {
    EventType.EVENT_TYPE_JOB_CREATED: "job.created",
    EventType.EVENT_TYPE_JOB_STARTED: "job.started",
    EventType.EVENT_TYPE_OUTPUT_DELTA: "job.output.delta",
    EventType.EVENT_TYPE_TURN_COMPLETED: "job.turn.completed",
    EventType.EVENT_TYPE_JOB_WAITING: "job.waiting",
    EventType.EVENT_TYPE_JOB_REQUEUED: "job.requeued",
    EventType.EVENT_TYPE_JOB_SUCCEEDED: "job.succeeded",
    EventType.EVENT_TYPE_JOB_FAILED: "job.failed",
    EventType.EVENT_TYPE_JOB_CANCELLED: "job.cancelled",
    EventType.EVENT_TYPE_JOB_TIMED_OUT: "job.timed_out",
    EventType.EVENT_TYPE_ACTION_REQUIRED: "action.required",
    EventType.EVENT_TYPE_ACTION_RESOLVED: "action.resolved",
    EventType.EVENT_TYPE_ACTION_EXPIRED: "action.expired",
    EventType.EVENT_TYPE_TOOL_CALLED: "tool.called",
    EventType.EVENT_TYPE_USAGE_RECORDED: "usage.recorded",
    EventType.EVENT_TYPE_CHILD_CREATED: "job.child.created",
    EventType.EVENT_TYPE_CHILD_FINISHED: "job.child.finished",
    EventType.EVENT_TYPE_NODE_STARTED: "workflow.node.started",
    EventType.EVENT_TYPE_NODE_FINISHED: "workflow.node.finished",
    EventType.EVENT_TYPE_MODEL_CALL_STARTED: "model.call.started",
    EventType.EVENT_TYPE_MODEL_CALL_REPLAYED: "model.call.replayed",
    EventType.EVENT_TYPE_MODEL_CALL_CONFLICT: "model.call.conflict",
    EventType.EVENT_TYPE_MODEL_CALL_COMPLETED: "model.call.completed",
    EventType.EVENT_TYPE_MODEL_CALL_FAILED: "model.call.failed",
}

_TERMINAL_TYPES = frozenset(
    {
        EventType.EVENT_TYPE_JOB_SUCCEEDED,
        EventType.EVENT_TYPE_JOB_FAILED,
        EventType.EVENT_TYPE_JOB_CANCELLED,
        EventType.EVENT_TYPE_JOB_TIMED_OUT,
    }
)


class EventChannel(Protocol):
    """Carries runtime events: one stream per job for watchers, one global stream.

    Delivery is at least once: consumers deduplicate by event id. History events
    (ids "<job id>.<seq>") go to the job's stream and to the global stream; transient
    events (ids "<job id>.<seq>.<n>", e.g. output deltas) go to the job's stream only.
    A job's stream is dropped a retention period after its terminal event; the global
    stream is trimmed by length. Jobs are named by resource name, "jobs/{job id}".
    """

    async def publish(self, events: Sequence[RuntimeEvent]) -> None:
        """Appends the events, in order; returns once they are stored in the channel.

        Raises ValueError, publishing none of them, when an event's job is not a job
        resource name or its id is not of the documented form for that job.
        """
        ...

    async def job_position(self, job: str) -> Cursor:
        """The cursor of the newest entry of the job's stream ("0" when empty)."""
        ...

    async def global_position(self) -> Cursor:
        """The cursor of the newest entry of the global stream ("0" when empty)."""
        ...

    def follow_job(self, job: str, after: Cursor) -> AsyncIterator[tuple[Cursor, RuntimeEvent]]:
        """The job's entries after `after`, then new ones as they come, until closed.

        Raises ValueError at once for a malformed job name or cursor. Close the iterator
        (`contextlib.aclosing`) when done with it, so that its resources are released.
        """
        ...

    def follow_all(self, after: Cursor) -> AsyncIterator[tuple[Cursor, RuntimeEvent]]:
        """The global stream's entries after `after`, then new ones, until closed."""
        ...

    async def close(self) -> None:
        """Releases connections; followers end."""
        ...


class Wakeups(Protocol):
    """Best-effort notifications between replicas ("there is work on topic T").

    Never the only carrier of a signal: a waiter always has a timeout and then
    looks at the durable store itself, so a lost notification only delays work.
    Once a process waits on a topic, a notification of it that arrives while no
    waiter is present is kept (one per topic) for the next wait, so "check the
    store, then wait" does not miss a notification sent in between. Topics are
    meant to be few and fixed ("outbox", "jobs.queued"), not one per job.
    """

    async def notify(self, topic: str) -> None:
        """Wakes the waiters of the topic in every process."""
        ...

    async def wait(self, topic: str, timeout: float) -> bool:
        """Waits for a notification of the topic; False when the timeout ran out."""
        ...

    async def close(self) -> None:
        """Releases connections; current waiters return at once."""
        ...


def parse_cursor(cursor: Cursor) -> tuple[int, int]:
    """The cursor as the pair of integers that orders it; ValueError when malformed."""
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise ValueError(f"invalid cursor {cursor!r}: expected '<int>-<int>' or '0'")
    return int(match[1]), int(match[2] or 0)


def job_id_of(job: str) -> str:
    """The id part of a job resource name "jobs/{id}"; ValueError when malformed."""
    job_id = job.removeprefix(JOB_NAME_PREFIX)
    if job_id == job or not job_id or "/" in job_id:
        raise ValueError(f"invalid job name {job!r}: expected 'jobs/{{job id}}'")
    return job_id


def is_transient(event: RuntimeEvent) -> bool:
    """Whether the event is transient ("<job id>.<seq>.<n>") rather than history.

    Raises ValueError when the event's job or id does not have the documented form.
    """
    job_id = job_id_of(event.job)
    rest = event.id.removeprefix(f"{job_id}.")
    match = _EVENT_ID_SUFFIX.fullmatch(rest)
    if rest == event.id or match is None:
        raise ValueError(
            f"invalid event id {event.id!r} for job {event.job!r}: "
            f"expected '{job_id}.<sequence>' or '{job_id}.<sequence>.<n>'"
        )
    return match[2] is not None


def event_type_name(t: EventType.ValueType) -> str:
    """The dotted type string of an event type, e.g. "job.output.delta"."""
    try:
        return _TYPE_NAMES[t]
    except KeyError:
        raise ValueError(f"event type {t} has no name") from None


def is_terminal(t: EventType.ValueType) -> bool:
    """Whether an event of this type ends its job (succeeded, failed, cancelled, timed out)."""
    return t in _TERMINAL_TYPES


def retry_delay(failures: int) -> float:
    """Seconds to wait after `failures` consecutive failures to reach Redis or a store.

    0.1 s, doubling up to 5 s: quick to recover from a blip, gentle on a server that is down.
    """
    return backoff_delay(failures, base=0.1, cap=5.0, jitter=False)
