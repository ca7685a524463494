"""The recorder: follows the global event stream into the recording store.

Each batch is stored with the stream position it reaches, in one transaction, so a
restart (or a kill -9) resumes exactly after the last stored batch: no gap, and a
duplicate delivery is recognised by its job's sequence. Where a job's events skip a
sequence (the stream was trimmed past the recorder's position, or an in-process stream
was lost with its process), the missing events are read from the jobs service's history
first. At start, the jobs of every recording still recording are caught up the same way,
so a job that ended while the recorder was down is complete too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol, TypeVar, cast

from agentrt.common.v1.common_pb2 import RuntimeEvent
from agentrt.jobs.v1.jobs_pb2 import Job

from services.kit.events import Cursor, EventChannel, is_transient, job_id_of, retry_delay
from services.replay.recordings import root_of
from services.replay.store import RecordingStore

log = logging.getLogger(__name__)

BATCH_EVENTS = 500
"""Events stored in one transaction at most."""
_QUEUE_EVENTS = 5000
SPEC_LOOKUPS = 32
"""Specs asked of the jobs service at once."""

T = TypeVar("T")


class JobHistory(Protocol):
    """The jobs service as the recorder needs it."""

    async def events_after(self, job: str, after_sequence: int) -> list[RuntimeEvent]:
        """The job's history events after the sequence, oldest first (every tenant)."""
        ...

    async def job(self, tenant: str, job: str) -> Job:
        """The job: what it runs, and for whom."""
        ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Recorder:
    """Records every history event of the global stream.

    With `durable_position` (a Redis stream, which outlives this process) it resumes from
    the stored position; without (the in-process stream of `agentrt dev`, which starts
    empty with its process) it reads the stream from its start, and the jobs' sequences
    keep it from recording anything twice.
    """

    def __init__(
        self,
        store: RecordingStore,
        events: EventChannel,
        history: JobHistory,
        *,
        durable_position: bool,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._store = store
        self._events = events
        self._history = history
        self._durable = durable_position
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._specs: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        """(tenant, top-level job) of the recordings opened whose spec is still to keep."""

    def start(self) -> None:
        """Starts recording in the background."""
        self._tasks = [
            asyncio.create_task(self._run(), name="replay-recorder"),
            asyncio.create_task(self._keep_specs(), name="replay-recorder-specs"),
            # Beside the stream, not before it: a jobs service still starting delays only
            # the recordings it completes. Both write through the store's transactions,
            # where each job's last sequence keeps them from recording anything twice.
            asyncio.create_task(
                self._retrying("catching up unfinished recordings", self.catch_up),
                name="replay-recorder-catch-up",
            ),
        ]

    async def stop(self) -> None:
        """Stops after the batch being stored, if any."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _run(self) -> None:
        start = await self._retrying("reading the recorder's position", self._start_position)
        queue: asyncio.Queue[tuple[Cursor, RuntimeEvent]] = asyncio.Queue(_QUEUE_EVENTS)
        reader = asyncio.create_task(self._read(start, queue), name="replay-recorder-reader")
        try:
            while True:
                batch = [await queue.get()]
                while len(batch) < BATCH_EVENTS and not queue.empty():
                    batch.append(queue.get_nowait())
                await self._retrying("storing events", functools.partial(self.store_batch, batch))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _start_position(self) -> Cursor:
        return await self._store.position() if self._durable else "0"

    async def _read(self, start: Cursor, queue: asyncio.Queue[tuple[Cursor, RuntimeEvent]]) -> None:
        position = start
        failures = 0
        while True:
            try:
                # Every channel's follow_all is an async generator; the protocol promises less.
                follower = cast(
                    AsyncGenerator[tuple[Cursor, RuntimeEvent], None],
                    self._events.follow_all(position),
                )
                async with contextlib.aclosing(follower) as entries:
                    async for cursor, event in entries:
                        failures = 0
                        position = cursor
                        await queue.put((cursor, event))
                return
            except (ConnectionError, OSError, RuntimeError) as error:
                if self._stopping:
                    return
                failures += 1
                log.warning("following the event stream failed, retrying: %s", error)
                await asyncio.sleep(retry_delay(failures))

    async def store_batch(self, batch: Sequence[tuple[Cursor, RuntimeEvent]]) -> None:
        """Stores the history events of `batch`, after whatever their jobs' histories
        hold that was never recorded, with the position of the batch's last entry."""
        events = [event for _, event in batch if not is_transient(event)]
        backfill = await self._missing_before(events)
        opened = await self._store.record(
            [*backfill, *events], batch[-1][0] if batch else None, self._clock()
        )
        tenants = {root_of(event): event.tenant for event in [*backfill, *events]}
        for recording_id in opened:
            job = f"jobs/{recording_id}"
            self._specs.put_nowait((tenants.get(job, ""), job))

    async def catch_up(self) -> None:
        """Records what the jobs of unfinished recordings did since their last recorded
        event (while this recorder was down)."""
        for job in await self._store.unfinished_jobs():
            missing = await self._history.events_after(job.job, job.last_sequence)
            if missing:
                log.info("caught up %d event(s) of %s from its history", len(missing), job.job)
                await self._store.record(missing, None, self._clock())

    async def _missing_before(self, events: Sequence[RuntimeEvent]) -> list[RuntimeEvent]:
        first: dict[str, int] = {}
        for event in events:
            first.setdefault(event.job, event.sequence)
        recorded = await self._store.last_sequences(list(first))
        missing: list[RuntimeEvent] = []
        for job, sequence in first.items():
            last = recorded.get(job, 0)
            if sequence > last + 1:
                found = await self._history.events_after(job, last)
                missing += [event for event in found if event.sequence < sequence]
                log.info(
                    "%s: events %d to %d were not in the stream; read %d from its history",
                    job,
                    last + 1,
                    sequence - 1,
                    len(found),
                )
        return missing

    async def _keep_specs(self) -> None:
        """Keeps the spec of each recording opened, asked of the jobs service a few at a
        time and apart from the recording of events, which it never holds up."""
        while True:
            wanted = [await self._specs.get()]
            while len(wanted) < SPEC_LOOKUPS and not self._specs.empty():
                wanted.append(self._specs.get_nowait())
            found = await asyncio.gather(
                *(self._history.job(tenant, job) for tenant, job in wanted),
                return_exceptions=True,
            )
            for (_, job), answer in zip(wanted, found, strict=True):
                try:
                    if isinstance(answer, BaseException):
                        raise answer
                    await self._store.set_spec(job_id_of(job), answer.spec, answer.principal)
                except Exception as error:
                    # The events are stored; re-execution asks for the spec again.
                    log.warning("could not keep the spec of %s: %s", job, error)

    async def _retrying(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        """Runs the step until it succeeds: the recorder must never skip a batch."""
        failures = 0
        while True:
            try:
                return await step()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                log.warning("%s failed, retrying: %s", what, error, exc_info=failures == 1)
                await asyncio.sleep(retry_delay(failures))
