"""A job's events for one watcher: the durable history after a resume point, then live ones.

The live cursor is taken before the history is read, so an event stored after the read
is also in the live stream after the cursor: nothing falls between the two. Whatever
both deliver is sent once, by sequence. A history event that the live stream skips
(e.g. the stream was trimmed) is read from the history before going on, so the watcher
sees every history event, in order. A transient event is sent only after the history
event it follows: one that comes first (the orchestrator publishes output directly,
history events come through the jobs outbox relay) waits for it, without a history read.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from agentrt.common.v1.common_pb2 import JobState, RuntimeEvent
from agentrt.jobs.v1.jobs_pb2 import ListJobEventsResponse

from services.kit.errors import FieldInvalid
from services.kit.events import EventChannel, is_terminal, is_transient

HISTORY_PAGE_SIZE = 1000
"""Events read from the history per call: the most ListJobEvents returns."""

ReadHistory = Callable[[int, int], Awaitable[ListJobEventsResponse]]
"""Reads the job's history events after a sequence, at most a page size of them."""

_TERMINAL_STATES = frozenset(
    {
        JobState.JOB_STATE_SUCCEEDED,
        JobState.JOB_STATE_FAILED,
        JobState.JOB_STATE_CANCELLED,
        JobState.JOB_STATE_TIMED_OUT,
    }
)
_MAX_EARLY = 10_000
"""Transient events kept at most while their history event lags; later ones are dropped."""
_EVENT_ID_SUFFIX = re.compile(r"(?P<sequence>[0-9]{1,18})(?:\.(?P<n>[0-9]{1,18}))?")


@dataclass(frozen=True)
class ResumePoint:
    """The last event a watcher saw."""

    sequence: int = 0
    """The last history event's sequence; 0 for none."""
    delta: int = -1
    """The last transient event's n after that history event; -1 for none."""


def parse_resume_point(job_id: str, after_event_id: str) -> ResumePoint:
    """The resume point an event id names; FieldInvalid("after_event_id") when the id is
    malformed or belongs to another job. Empty means from the start."""
    if not after_event_id:
        return ResumePoint()
    suffix = after_event_id.removeprefix(f"{job_id}.")
    match = _EVENT_ID_SUFFIX.fullmatch(suffix)
    if suffix == after_event_id or match is None:
        raise FieldInvalid(
            "after_event_id",
            f"{after_event_id[:120]!r} is not an event id of this job "
            f"('{job_id}.<sequence>' or '{job_id}.<sequence>.<n>')",
        )
    n = match["n"]
    return ResumePoint(int(match["sequence"]), -1 if n is None else int(n))


async def watch_job(
    job: str,
    after: ResumePoint,
    read_history: ReadHistory,
    events: EventChannel,
    *,
    fresh: bool = False,
) -> AsyncGenerator[RuntimeEvent, None]:
    """The job's events after `after` until its terminal event (or at once, when the job
    had already ended before `after`).

    `fresh` says that the job was just created, so that its whole history is still in
    the live stream: the history read is skipped, saving a round trip. Reading the
    history fails (NOT_FOUND) for a job the reader may not see, before anything is sent.
    Close the iterator (`contextlib.aclosing`) when done, to stop following the job.
    """
    watch = _Watch(after, read_history)
    cursor = "0" if fresh else await events.job_position(job)
    if not fresh:
        async for event in watch.history():
            yield event
        if watch.ended:
            return
    # Every channel's follow_job is an async generator; the protocol only promises less.
    follower = cast(AsyncGenerator[tuple[str, RuntimeEvent], None], events.follow_job(job, cursor))
    async with contextlib.aclosing(follower) as live:
        async for _, event in live:
            if watch.misses_history_before(event):
                async for earlier in watch.history():
                    yield earlier
                if watch.ended:
                    return
            for ready in watch.admit(event):
                yield ready
            if watch.ended:
                return


class _Watch:
    """What one watcher has been sent so far, and what waits to be sent."""

    def __init__(self, after: ResumePoint, read_history: ReadHistory) -> None:
        self._sequence = after.sequence
        self._delta = after.delta
        self._read_history = read_history
        self._history_read_through = after.sequence
        """The sequence up to which the history was read for a live event, so that a
        live event the history does not have yet costs one read, not one per event."""
        self._early: list[RuntimeEvent] = []
        """Transient events that came before the history event they follow."""
        self.ended = False

    async def history(self) -> AsyncIterator[RuntimeEvent]:
        """The history after the last event sent; sets `ended` when the job has ended."""
        while True:
            page = await self._read_history(self._sequence, HISTORY_PAGE_SIZE)
            for event in page.events:
                for ready in self.admit(event):
                    yield ready
                if self.ended:
                    return
            if page.job_state in _TERMINAL_STATES:
                # Its terminal event was sent before (a resume past it), or is still
                # ahead on a later page.
                if not page.events:
                    self.ended = True
                    return
            elif len(page.events) < HISTORY_PAGE_SIZE:
                return

    def misses_history_before(self, event: RuntimeEvent) -> bool:
        """Whether this live history event skips history events not sent yet."""
        if is_transient(event):
            return False
        follows = event.sequence - 1
        if follows <= max(self._sequence, self._history_read_through):
            return False
        self._history_read_through = follows
        return True

    def admit(self, event: RuntimeEvent) -> list[RuntimeEvent]:
        """What to send now that the event came: nothing (a duplicate, or a transient
        event ahead of its history event, kept until that one comes), the event, or
        a history event followed by the transient events that were waiting for it."""
        if is_transient(event):
            if event.sequence > self._sequence:
                # The orchestrator publishes output as it comes, while history events
                # reach the stream through the jobs outbox relay, usually a little later.
                if len(self._early) < _MAX_EARLY:
                    self._early.append(event)
                return []
            return [event] if self._admit_transient(event) else []
        if event.sequence <= self._sequence:
            # Sent already, or the watcher resumed from past it: a terminal event ends
            # the watch either way, rather than leave it open after the job's end.
            self.ended = is_terminal(event.type)
            return []
        self._sequence = event.sequence
        self._delta = -1
        self.ended = is_terminal(event.type)
        if self.ended or not self._early:
            return [event]
        released = [waiting for waiting in self._early if self._admit_transient(waiting)]
        self._early = [waiting for waiting in self._early if waiting.sequence > self._sequence]
        return [event, *released]

    def _admit_transient(self, event: RuntimeEvent) -> bool:
        n = _transient_index(event)
        if event.sequence != self._sequence or n <= self._delta:
            return False
        self._delta = n
        return True


def _transient_index(event: RuntimeEvent) -> int:
    return int(event.id.rpartition(".")[2])
