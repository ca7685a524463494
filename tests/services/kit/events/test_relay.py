"""The outbox relay against every channel, fed by an in-memory outbox."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest
from agentrt.common.v1.common_pb2 import RuntimeEvent

from services.kit.events import (
    OUTBOX_TOPIC,
    EventChannel,
    InMemoryEventChannel,
    InMemoryWakeups,
    OutboxRelay,
)
from tests.services.kit.events.sample_events import history, ids, take


class Outbox:
    """An OutboxSource holding rows in memory; it can fail its next marks, and check them."""

    def __init__(self, stored: list[str] | None = None) -> None:
        self.rows: list[tuple[int, RuntimeEvent]] = []
        self.marked: list[int] = []
        self.failing_marks = 0
        self._stored = stored
        self.marked_before_stored: list[str] = []

    def add(self, events: Sequence[RuntimeEvent]) -> None:
        start = len(self.rows) + 1
        self.rows.extend(enumerate(events, start))

    async def fetch_unpublished(self, limit: int) -> list[tuple[int, RuntimeEvent]]:
        return [row for row in self.rows if row[0] not in self.marked][:limit]

    async def mark_published(self, row_ids: Sequence[int]) -> None:
        if self.failing_marks:
            self.failing_marks -= 1
            raise ConnectionError("outbox database unreachable")
        if self._stored is not None:
            events = dict(self.rows)
            missing = [events[row].id for row in row_ids if events[row].id not in self._stored]
            self.marked_before_stored.extend(missing)
        self.marked.extend(row_ids)


class FlakyChannel:
    """Passes publishes on to a real channel, after refusing the first `failures` of them."""

    def __init__(self, channel: EventChannel, failures: int) -> None:
        self._channel = channel
        self.failures = failures
        self.stored: list[str] = []

    async def publish(self, events: Sequence[RuntimeEvent]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Redis unreachable")
        await self._channel.publish(events)
        self.stored.extend(event.id for event in events)

    async def job_position(self, job: str) -> str:
        return await self._channel.job_position(job)

    async def global_position(self) -> str:
        return await self._channel.global_position()

    def follow_job(self, job: str, after: str) -> AsyncIterator[tuple[str, RuntimeEvent]]:
        return self._channel.follow_job(job, after)

    def follow_all(self, after: str) -> AsyncIterator[tuple[str, RuntimeEvent]]:
        return self._channel.follow_all(after)

    async def close(self) -> None:
        await self._channel.close()


@contextlib.asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[None]:
    task = asyncio.create_task(relay.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def interleaved_jobs(jobs: int, events: int) -> list[RuntimeEvent]:
    return [
        history(f"j{job}", sequence) for sequence in range(1, events + 1) for job in range(jobs)
    ]


async def test_drain_publishes_every_row_in_order_and_marks_it(channel: EventChannel) -> None:
    outbox = Outbox()
    outbox.add(interleaved_jobs(3, 5))
    relay = OutboxRelay(outbox, channel, None, batch_size=4)
    assert await relay.drain() == 15
    assert outbox.marked == list(range(1, 16))
    assert ids(await take(channel.follow_all("0"), 15)) == ids_of(interleaved_jobs(3, 5))
    assert ids(await take(channel.follow_job("jobs/j1", "0"), 5)) == [
        f"j1.{n}" for n in range(1, 6)
    ]
    assert await relay.drain() == 0


async def test_a_notified_relay_publishes_without_waiting_for_the_poll(
    channel: EventChannel,
) -> None:
    outbox = Outbox()
    relay = OutboxRelay(outbox, channel, None, idle_poll_seconds=60)
    follower = channel.follow_job("jobs/a", "0")
    async with running(relay):
        for sequence in range(1, 4):
            outbox.add([history("a", sequence)])
            relay.notify()
            assert ids(await take(follower, 1)) == [f"a.{sequence}"]


async def test_an_outbox_wakeup_from_another_process_starts_a_batch(
    channel: EventChannel,
) -> None:
    outbox, wakeups = Outbox(), InMemoryWakeups()
    await wakeups.listen(OUTBOX_TOPIC)
    relay = OutboxRelay(outbox, channel, wakeups, idle_poll_seconds=60)
    follower = channel.follow_job("jobs/a", "0")
    async with running(relay):
        outbox.add([history("a", 1)])
        await wakeups.notify(OUTBOX_TOPIC)
        assert ids(await take(follower, 1)) == ["a.1"]
    await wakeups.close()


async def test_a_failed_publish_is_retried_without_losing_or_skipping_events(
    channel: EventChannel,
) -> None:
    flaky = FlakyChannel(channel, failures=2)
    outbox = Outbox(stored=flaky.stored)
    outbox.add(interleaved_jobs(2, 5))
    relay = OutboxRelay(outbox, flaky, None, batch_size=3, idle_poll_seconds=60)
    with pytest.raises(ConnectionError):
        await relay.drain()
    assert outbox.marked == []
    async with running(relay):
        relay.notify()
        published = await take(channel.follow_all("0"), 10)
    assert ids(published) == ids_of(interleaved_jobs(2, 5))
    assert flaky.failures == 0
    await relay.drain()
    assert sorted(outbox.marked) == list(range(1, 11))
    assert outbox.marked_before_stored == []


async def test_a_failed_mark_publishes_the_rows_again(channel: EventChannel) -> None:
    outbox = Outbox()
    outbox.add([history("a", 1), history("a", 2)])
    outbox.failing_marks = 1
    relay = OutboxRelay(outbox, channel, None)
    with pytest.raises(ConnectionError):
        await relay.drain()
    assert await relay.drain() == 2
    assert ids(await take(channel.follow_job("jobs/a", "0"), 4)) == ["a.1", "a.2", "a.1", "a.2"]
    assert outbox.marked == [1, 2]


async def test_the_published_hook_hears_each_stored_batch_before_it_is_marked(
    channel: EventChannel,
) -> None:
    outbox = Outbox()
    outbox.add(interleaved_jobs(2, 3))
    heard: list[tuple[list[str], list[int]]] = []

    async def published(events: Sequence[RuntimeEvent]) -> None:
        heard.append((ids_of(list(events)), list(outbox.marked)))

    relay = OutboxRelay(outbox, channel, None, batch_size=4, on_published=published)
    assert await relay.drain() == 6
    everything = ids_of(interleaved_jobs(2, 3))
    assert heard == [(everything[:4], []), (everything[4:], [1, 2, 3, 4])]


async def test_a_failing_published_hook_holds_no_event_back(channel: EventChannel) -> None:
    outbox = Outbox()
    outbox.add([history("a", 1), history("a", 2)])

    async def broken(events: Sequence[RuntimeEvent]) -> None:
        raise RuntimeError("span export broke")

    relay = OutboxRelay(outbox, channel, None, on_published=broken)
    assert await relay.drain() == 2
    assert outbox.marked == [1, 2]
    assert ids(await take(channel.follow_job("jobs/a", "0"), 2)) == ["a.1", "a.2"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"batch_size": 0}, "batch_size"), ({"idle_poll_seconds": 0}, "idle_poll_seconds")],
)
def test_bad_configuration_is_refused(arguments: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OutboxRelay(Outbox(), InMemoryEventChannel(), None, **arguments)  # type: ignore[arg-type]


def ids_of(events: list[RuntimeEvent]) -> list[str]:
    return [event.id for event in events]
