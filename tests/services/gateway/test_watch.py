"""Watching a job: history then live events, each sent once and in order, until the end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import pytest
from agentrt.common.v1.common_pb2 import EventType, JobState, OutputDelta, RuntimeEvent
from agentrt.jobs.v1.jobs_pb2 import ListJobEventsResponse

from services.gateway.watch import ResumePoint, parse_resume_point, watch_job
from services.kit.errors import FieldInvalid, JobNotFound
from services.kit.events import Cursor, InMemoryEventChannel
from services.kit.ids import new_id

T = EventType
TERMINAL_STATE = {
    T.EVENT_TYPE_JOB_SUCCEEDED: JobState.JOB_STATE_SUCCEEDED,
    T.EVENT_TYPE_JOB_FAILED: JobState.JOB_STATE_FAILED,
}


class Job:
    """A job's durable history, as the jobs service would serve it, and its live stream."""

    def __init__(self, channel: InMemoryEventChannel, page_cap: int = 1000) -> None:
        self.id = new_id()
        self.name = f"jobs/{self.id}"
        self.channel = channel
        self.history: list[RuntimeEvent] = []
        self.state = JobState.JOB_STATE_QUEUED
        self.page_cap = page_cap
        self.reads = 0

    def event(self, sequence: int, type_: EventType.ValueType) -> RuntimeEvent:
        return RuntimeEvent(
            id=f"{self.id}.{sequence}", type=type_, sequence=sequence, job=self.name
        )

    def delta(self, sequence: int, n: int) -> RuntimeEvent:
        return RuntimeEvent(
            id=f"{self.id}.{sequence}.{n}",
            type=T.EVENT_TYPE_OUTPUT_DELTA,
            sequence=sequence,
            job=self.name,
            output_delta=OutputDelta(turn=1, text=f"d{n}"),
        )

    def store(self, type_: EventType.ValueType) -> RuntimeEvent:
        """Commits the next history event, without relaying it yet."""
        event = self.event(len(self.history) + 1, type_)
        self.history.append(event)
        self.state = TERMINAL_STATE.get(type_, JobState.JOB_STATE_RUNNING)
        return event

    async def emit(self, type_: EventType.ValueType) -> RuntimeEvent:
        """Commits the next history event and relays it."""
        event = self.store(type_)
        await self.channel.publish([event])
        return event

    async def read_history(self, after: int, page_size: int) -> ListJobEventsResponse:
        self.reads += 1
        events = [event for event in self.history if event.sequence > after]
        return ListJobEventsResponse(
            events=events[: min(page_size, self.page_cap)], job_state=self.state
        )


class TrackedChannel(InMemoryEventChannel):
    """The in-memory channel, counting the followers that are still open."""

    def __init__(self) -> None:
        super().__init__()
        self.open_followers = 0
        self.followed = asyncio.Event()

    def follow_job(self, job: str, after: Cursor) -> AsyncIterator[tuple[Cursor, RuntimeEvent]]:
        return self._tracked(super().follow_job(job, after))

    async def _tracked(
        self, follower: AsyncIterator[tuple[Cursor, RuntimeEvent]]
    ) -> AsyncIterator[tuple[Cursor, RuntimeEvent]]:
        self.open_followers += 1
        self.followed.set()
        try:
            async with contextlib.aclosing(follower) as entries:  # type: ignore[type-var]
                async for entry in entries:
                    yield entry
        finally:
            self.open_followers -= 1


@pytest.fixture
async def channel() -> AsyncIterator[TrackedChannel]:
    channel = TrackedChannel()
    yield channel
    await channel.close()


def ids(events: Sequence[RuntimeEvent]) -> list[str]:
    return [event.id.partition(".")[2] for event in events]


def watch(
    job: Job, channel: InMemoryEventChannel, after: str = "", fresh: bool = False
) -> AsyncGenerator[RuntimeEvent, None]:
    return watch_job(
        job.name, parse_resume_point(job.id, after), job.read_history, channel, fresh=fresh
    )


async def collect(events: AsyncGenerator[RuntimeEvent, None], count: int) -> list[RuntimeEvent]:
    """The next `count` events, or fewer if the watch ends first."""
    received: list[RuntimeEvent] = []
    async for event in events:
        received.append(event)
        if len(received) == count:
            break
    return received


async def test_history_then_live_events_until_the_terminal_one(channel: TrackedChannel) -> None:
    job = Job(channel)
    await job.emit(T.EVENT_TYPE_JOB_CREATED)
    events = watch(job, channel)

    first = await collect(events, 1)
    await job.emit(T.EVENT_TYPE_JOB_STARTED)
    await channel.publish([job.delta(2, 0), job.delta(2, 1)])
    await job.emit(T.EVENT_TYPE_JOB_SUCCEEDED)
    await job.emit(T.EVENT_TYPE_USAGE_RECORDED)
    rest = [event async for event in events]

    assert ids(first + rest) == ["1", "2", "2.0", "2.1", "3"]
    assert channel.open_followers == 0


async def test_a_finished_job_is_sent_from_its_history_alone(channel: TrackedChannel) -> None:
    job = Job(channel)
    for type_ in (T.EVENT_TYPE_JOB_CREATED, T.EVENT_TYPE_JOB_STARTED, T.EVENT_TYPE_JOB_FAILED):
        job.store(type_)

    assert ids([event async for event in watch(job, channel)]) == ["1", "2", "3"]
    assert channel.open_followers == 0


async def test_resuming_after_the_terminal_event_ends_at_once(channel: TrackedChannel) -> None:
    job = Job(channel)
    job.store(T.EVENT_TYPE_JOB_CREATED)
    job.store(T.EVENT_TYPE_JOB_SUCCEEDED)

    assert [event async for event in watch(job, channel, after=f"{job.id}.2")] == []


async def test_resuming_from_past_the_jobs_end_ends_when_the_job_does(
    channel: TrackedChannel,
) -> None:
    job = Job(channel)
    await job.emit(T.EVENT_TYPE_JOB_CREATED)
    events = watch(job, channel, after=f"{job.id}.99")
    consumer = asyncio.create_task(collect(events, 10))
    await channel.followed.wait()

    await job.emit(T.EVENT_TYPE_JOB_STARTED)
    await job.emit(T.EVENT_TYPE_JOB_SUCCEEDED)

    assert await consumer == []
    assert channel.open_followers == 0


async def test_resuming_sends_only_what_follows_the_event_seen(channel: TrackedChannel) -> None:
    job = Job(channel)
    await job.emit(T.EVENT_TYPE_JOB_CREATED)
    await job.emit(T.EVENT_TYPE_JOB_STARTED)
    await channel.publish([job.delta(2, 0), job.delta(2, 1), job.delta(2, 2)])

    from_history = watch(job, channel, after=f"{job.id}.1")
    from_delta = watch(job, channel, after=f"{job.id}.2.1")
    seen_history = await collect(from_history, 1)
    seen_delta: list[RuntimeEvent] = []
    # The delta watcher sees nothing until something new comes.
    consumer = asyncio.create_task(collect(from_delta, 2))
    await asyncio.sleep(0)
    await channel.publish([job.delta(2, 3)])
    await job.emit(T.EVENT_TYPE_JOB_SUCCEEDED)
    seen_delta = await consumer
    seen_history += [event async for event in from_history]
    await from_delta.aclose()

    # Deltas published before the watch began are gone from the live view of a
    # watcher resuming from history; those after it are sent.
    assert ids(seen_history) == ["2", "2.3", "3"]
    assert ids(seen_delta) == ["2.3", "3"]


async def test_an_event_in_both_history_and_live_stream_is_sent_once(
    channel: TrackedChannel,
) -> None:
    job = Job(channel)
    await job.emit(T.EVENT_TYPE_JOB_CREATED)
    read_history = job.read_history

    async def read_while_the_job_advances(after: int, page_size: int) -> ListJobEventsResponse:
        # Committed and relayed after the live cursor was taken, before the read.
        if not job.reads:
            await job.emit(T.EVENT_TYPE_JOB_STARTED)
        return await read_history(after, page_size)

    job.read_history = read_while_the_job_advances  # type: ignore[method-assign]
    events = watch(job, channel)
    first = await collect(events, 2)
    await job.emit(T.EVENT_TYPE_JOB_SUCCEEDED)
    rest = [event async for event in events]

    assert ids(first + rest) == ["1", "2", "3"]


async def test_history_events_the_live_stream_skips_are_read_from_the_history(
    channel: TrackedChannel,
) -> None:
    job = Job(channel)
    await job.emit(T.EVENT_TYPE_JOB_CREATED)
    events = watch(job, channel)
    first = await collect(events, 1)

    job.store(T.EVENT_TYPE_JOB_STARTED)
    job.store(T.EVENT_TYPE_TURN_COMPLETED)
    await job.emit(T.EVENT_TYPE_TOOL_CALLED)
    await job.emit(T.EVENT_TYPE_JOB_SUCCEEDED)
    rest = [event async for event in events]

    assert ids(first + rest) == ["1", "2", "3", "4", "5"]


async def test_a_delta_ahead_of_its_history_event_is_sent_after_it(
    channel: TrackedChannel,
) -> None:
    job = Job(channel)
    await job.emit(T.EVENT_TYPE_JOB_CREATED)
    events = watch(job, channel)
    first = await collect(events, 1)

    started = job.store(T.EVENT_TYPE_JOB_STARTED)
    await channel.publish([job.delta(2, 0), job.delta(2, 1)])
    await channel.publish([started])
    turn = await collect(events, 3)
    await job.emit(T.EVENT_TYPE_JOB_SUCCEEDED)
    rest = [event async for event in events]

    assert ids(first + turn + rest) == ["1", "2", "2.0", "2.1", "3"]
    assert job.reads == 1, "no history read for a lagging history event"


async def test_deltas_waiting_for_a_history_event_the_stream_skips_follow_it_from_history(
    channel: TrackedChannel,
) -> None:
    job = Job(channel)
    await job.emit(T.EVENT_TYPE_JOB_CREATED)
    events = watch(job, channel)
    first = await collect(events, 1)

    job.store(T.EVENT_TYPE_JOB_STARTED)
    await channel.publish([job.delta(2, 0), job.delta(2, 1)])
    await job.emit(T.EVENT_TYPE_TURN_COMPLETED)
    turn = await collect(events, 4)
    await job.emit(T.EVENT_TYPE_JOB_SUCCEEDED)
    rest = [event async for event in events]

    assert ids(first + turn + rest) == ["1", "2", "2.0", "2.1", "3", "4"]
    assert job.reads == 2


async def test_a_fresh_job_is_followed_without_reading_its_history(
    channel: TrackedChannel,
) -> None:
    job = Job(channel)
    await job.emit(T.EVENT_TYPE_JOB_CREATED)
    events = watch(job, channel, fresh=True)
    first = await collect(events, 1)
    await job.emit(T.EVENT_TYPE_JOB_SUCCEEDED)
    rest = [event async for event in events]

    assert ids(first + rest) == ["1", "2"]
    assert job.reads == 0


async def test_a_long_history_is_read_page_by_page(channel: TrackedChannel) -> None:
    job = Job(channel, page_cap=2)
    job.store(T.EVENT_TYPE_JOB_CREATED)
    for _ in range(3):
        job.store(T.EVENT_TYPE_TURN_COMPLETED)
    job.store(T.EVENT_TYPE_JOB_SUCCEEDED)

    assert ids([event async for event in watch(job, channel)]) == ["1", "2", "3", "4", "5"]


async def test_a_job_the_reader_may_not_see_fails_before_anything_is_sent(
    channel: TrackedChannel,
) -> None:
    job = Job(channel)

    async def not_found(after: int, page_size: int) -> ListJobEventsResponse:
        raise JobNotFound(job.name)

    events = watch_job(job.name, ResumePoint(), not_found, channel)
    with pytest.raises(JobNotFound):
        await anext(events)
    assert channel.open_followers == 0


async def test_a_watcher_that_goes_away_stops_following(channel: TrackedChannel) -> None:
    job = Job(channel)
    await job.emit(T.EVENT_TYPE_JOB_CREATED)
    events = watch(job, channel)
    consumer = asyncio.create_task(collect(events, 10))
    await job.emit(T.EVENT_TYPE_JOB_STARTED)
    await channel.followed.wait()

    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer

    assert channel.open_followers == 0


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [
        ("", ResumePoint()),
        ("7", ResumePoint(7)),
        ("7.0", ResumePoint(7, 0)),
        ("7.12", ResumePoint(7, 12)),
    ],
)
def test_event_ids_name_resume_points(suffix: str, expected: ResumePoint) -> None:
    job_id = new_id()
    assert parse_resume_point(job_id, f"{job_id}.{suffix}" if suffix else "") == expected


@pytest.mark.parametrize(
    "after", ["x", "{other}.1", "{job}", "{job}.", "{job}.a", "{job}.1.2.3", "{job}.-1"]
)
def test_malformed_event_ids_are_refused(after: str) -> None:
    job_id = new_id()
    with pytest.raises(FieldInvalid) as error:
        parse_resume_point(job_id, after.format(job=job_id, other=new_id()))
    assert error.value.metadata == {"field": "after_event_id"}
