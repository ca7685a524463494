"""In-process event channel and wake-ups, for `agentrt dev` where all services share one process."""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator, Sequence

from agentrt.common.v1.common_pb2 import RuntimeEvent

from services.kit.events.base import (
    Cursor,
    is_terminal,
    is_transient,
    job_id_of,
    parse_cursor,
)


class _Stream:
    """One bounded list of serialized events, numbered by the channel's counter."""

    def __init__(self) -> None:
        self.numbers: list[int] = []
        self.payloads: list[bytes] = []
        self.changed = asyncio.Event()
        self.followers = 0
        self.expiry: asyncio.TimerHandle | None = None

    def append(self, number: int, payload: bytes) -> None:
        self.numbers.append(number)
        self.payloads.append(payload)

    def wake_followers(self) -> None:
        # A fresh event per change: followers wait on the one they saw, so none is missed.
        self.changed.set()
        self.changed = asyncio.Event()

    def after(self, number: int) -> list[tuple[int, bytes]]:
        start = bisect.bisect_right(self.numbers, number)
        return list(zip(self.numbers[start:], self.payloads[start:], strict=True))

    def trim(self, maxlen: int) -> None:
        # Trim in chunks of a tenth, like Redis's approximate MAXLEN, to keep appends cheap.
        excess = len(self.numbers) - maxlen
        if excess > maxlen // 10:
            del self.numbers[:excess]
            del self.payloads[:excess]


class InMemoryEventChannel:
    """An `EventChannel` held in this process's memory.

    Cursors are "<n>-0" where n counts entries across the channel, so they increase
    within every stream, also across a job stream's drop and re-creation.
    """

    def __init__(self, global_maxlen: int = 100_000, job_retention_seconds: float = 3600) -> None:
        if global_maxlen < 1:
            raise ValueError(f"global_maxlen must be at least 1, got {global_maxlen}")
        if job_retention_seconds < 0:
            raise ValueError(f"job_retention_seconds must be >= 0, got {job_retention_seconds}")
        self._global_maxlen = global_maxlen
        self._retention = job_retention_seconds
        self._jobs: dict[str, _Stream] = {}
        self._global = _Stream()
        self._counter = 0
        self._closed = False

    async def publish(self, events: Sequence[RuntimeEvent]) -> None:
        self._check_open()
        routed = [(job_id_of(event.job), is_transient(event), event) for event in events]
        for job_id, transient, event in routed:
            payload = event.SerializeToString()
            stream = self._jobs.setdefault(job_id, _Stream())
            self._counter += 1
            stream.append(self._counter, payload)
            stream.wake_followers()
            if is_terminal(event.type):
                self._schedule_drop(job_id, stream)
            if not transient:
                self._counter += 1
                self._global.append(self._counter, payload)
        self._global.trim(self._global_maxlen)
        self._global.wake_followers()

    async def job_position(self, job: str) -> Cursor:
        stream = self._jobs.get(job_id_of(job))
        if stream is None or not stream.numbers:
            return "0"
        return f"{stream.numbers[-1]}-0"

    async def global_position(self) -> Cursor:
        return f"{self._global.numbers[-1]}-0" if self._global.numbers else "0"

    def follow_job(self, job: str, after: Cursor) -> AsyncIterator[tuple[Cursor, RuntimeEvent]]:
        self._check_open()
        job_id = job_id_of(job)
        return self._follow(job_id, parse_cursor(after)[0])

    def follow_all(self, after: Cursor) -> AsyncIterator[tuple[Cursor, RuntimeEvent]]:
        self._check_open()
        return self._follow(None, parse_cursor(after)[0])

    async def close(self) -> None:
        self._closed = True
        for stream in (*self._jobs.values(), self._global):
            if stream.expiry is not None:
                stream.expiry.cancel()
            stream.wake_followers()

    async def _follow(
        self, job_id: str | None, last: int
    ) -> AsyncIterator[tuple[Cursor, RuntimeEvent]]:
        stream = self._global if job_id is None else self._jobs.setdefault(job_id, _Stream())
        stream.followers += 1
        try:
            while not self._closed:
                changed = stream.changed
                for number, payload in stream.after(last):
                    yield f"{number}-0", RuntimeEvent.FromString(payload)
                    last = number
                    if self._closed:
                        return
                await changed.wait()
        finally:
            stream.followers -= 1
            if job_id is not None:
                self._forget_if_unused(job_id, stream)

    def _schedule_drop(self, job_id: str, stream: _Stream) -> None:
        if stream.expiry is not None:
            stream.expiry.cancel()
        loop = asyncio.get_running_loop()
        stream.expiry = loop.call_later(self._retention, self._drop, job_id, stream)

    def _drop(self, job_id: str, stream: _Stream) -> None:
        stream.numbers.clear()
        stream.payloads.clear()
        stream.expiry = None
        self._forget_if_unused(job_id, stream)

    def _forget_if_unused(self, job_id: str, stream: _Stream) -> None:
        # A stream stays registered while someone follows it, so that a follower of a
        # dropped stream still sees entries published to the job afterwards.
        if not stream.numbers and not stream.followers and self._jobs.get(job_id) is stream:
            del self._jobs[job_id]

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the event channel is closed")


class LocalWaiters:
    """The wake-up waiters of one process, by topic, with one kept notification per topic.

    Notifications are kept only for topics listened to (waited on at least once), as
    with Redis, where a process receives only the topics it subscribed to.
    `InMemoryWakeups` is this alone; `RedisWakeups` feeds it from Redis pub/sub.
    """

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._pending: set[str] = set()
        self.listened: set[str] = set()
        """The topics whose notifications are kept while nobody waits."""

    def wake(self, topic: str) -> None:
        """Wakes the topic's waiters, or keeps the notification for the next wait."""
        waiters = self._waiters.pop(topic, set())
        woken = [future for future in waiters if not future.done()]
        for future in woken:
            future.set_result(None)
        if not woken and topic in self.listened:
            self._pending.add(topic)

    def wake_all(self) -> None:
        """Wakes every waiter of every topic (used when closing)."""
        for topic in list(self._waiters):
            for future in self._waiters.pop(topic):
                if not future.done():
                    future.set_result(None)

    async def wait(self, topic: str, timeout: float) -> bool:
        """Waits for the topic's next (or kept) notification; False after `timeout`."""
        self.listened.add(topic)
        if topic in self._pending:
            self._pending.discard(topic)
            return True
        future = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(topic, set())
        waiters.add(future)
        try:
            await asyncio.wait_for(future, max(timeout, 0))
        except TimeoutError:
            return False
        finally:
            waiters.discard(future)
            if not waiters and self._waiters.get(topic) is waiters:
                del self._waiters[topic]
        return True


class InMemoryWakeups:
    """`Wakeups` between the tasks of this process."""

    def __init__(self) -> None:
        self._local = LocalWaiters()
        self._closed = False

    async def notify(self, topic: str) -> None:
        self._check_open()
        self._local.wake(topic)

    async def listen(self, topic: str, timeout: float = 5.0) -> bool:
        """Keeps the topic's notifications from now on, before the first wait.

        Always True at once; the timeout is there to match `RedisWakeups.listen`.
        """
        self._check_open()
        self._local.listened.add(topic)
        return True

    async def wait(self, topic: str, timeout: float) -> bool:
        self._check_open()
        return await self._local.wait(topic, timeout)

    async def close(self) -> None:
        self._closed = True
        self._local.wake_all()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the wake-ups are closed")
