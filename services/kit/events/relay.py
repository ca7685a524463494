"""The outbox relay: publishes the events a service committed to its outbox table."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from agentrt.common.v1.common_pb2 import RuntimeEvent

from services.kit.events.base import EventChannel, Wakeups, retry_delay

_log = logging.getLogger(__name__)

OUTBOX_TOPIC = "outbox"
"""The wake-up topic that announces new outbox rows to the relays of every process."""


class OutboxSource(Protocol):
    """A service's outbox: events committed in the same transaction as their state change."""

    async def fetch_unpublished(self, limit: int) -> list[tuple[int, RuntimeEvent]]:
        """Up to `limit` unpublished rows as (row id, event), each job's sequence increasing."""
        ...

    async def mark_published(self, row_ids: Sequence[int]) -> None:
        """Marks the rows published, so that they are not fetched again."""
        ...


class OutboxRelay:
    """Moves outbox rows to the event channel, at least once and in each job's order.

    Rows are marked published only after the channel stored their events; a failure in
    between means they are published again (consumers deduplicate by event id).
    `notify` lets the service that committed a row have it published at once; other
    processes can announce rows on the wake-up topic "outbox"; without either, the relay
    looks again every `idle_poll_seconds`.
    """

    def __init__(
        self,
        source: OutboxSource,
        channel: EventChannel,
        wakeups: Wakeups | None,
        batch_size: int = 500,
        idle_poll_seconds: float = 0.5,
        on_published: Callable[[Sequence[RuntimeEvent]], Awaitable[None]] | None = None,
    ) -> None:
        """`on_published` is told of each batch the channel stored, before the batch is
        marked published (so a batch published again is told again); its failures are
        logged, and never hold the events back."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if idle_poll_seconds <= 0:
            raise ValueError(f"idle_poll_seconds must be > 0, got {idle_poll_seconds}")
        self._source = source
        self._channel = channel
        self._wakeups = wakeups
        self._batch_size = batch_size
        self._idle_poll_seconds = idle_poll_seconds
        self._on_published = on_published
        self._nudged = asyncio.Event()
        self._batch_lock = asyncio.Lock()

    def notify(self) -> None:
        """Announces a committed outbox row: the running relay publishes it at once."""
        self._nudged.set()

    async def run(self) -> None:
        """Relays until cancelled; a failing batch is logged and retried with backoff."""
        failures = 0
        while True:
            # Cleared before fetching, so a row committed during the fetch is not left waiting.
            self._nudged.clear()
            try:
                relayed = await self._relay_batch()
            except Exception as error:
                failures += 1
                delay = retry_delay(failures)
                _log.warning(
                    "relaying outbox events failed (attempt %d), retrying in %.2f s: %s",
                    failures,
                    delay,
                    error,
                    exc_info=failures == 1,
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            if relayed < self._batch_size:
                await self._wait_for_rows()

    async def drain(self) -> int:
        """Publishes every pending row once and returns how many; errors propagate."""
        total = 0
        while True:
            relayed = await self._relay_batch()
            total += relayed
            if relayed < self._batch_size:
                return total

    async def _relay_batch(self) -> int:
        # One batch at a time, so that `drain` and `run` never publish out of order.
        async with self._batch_lock:
            rows = await self._source.fetch_unpublished(self._batch_size)
            if rows:
                events = [event for _, event in rows]
                await self._channel.publish(events)
                await self._tell_published(events)
                await self._source.mark_published([row_id for row_id, _ in rows])
            return len(rows)

    async def _tell_published(self, events: Sequence[RuntimeEvent]) -> None:
        if self._on_published is None:
            return
        try:
            await self._on_published(events)
        except Exception:
            _log.warning("handling %d published events failed", len(events), exc_info=True)

    async def _wait_for_rows(self) -> None:
        if self._nudged.is_set():
            return
        waits: set[asyncio.Future[object]] = {asyncio.ensure_future(self._nudged.wait())}
        if self._wakeups is not None:
            waits.add(asyncio.ensure_future(self._announced(self._wakeups)))
        try:
            await asyncio.wait(
                waits, timeout=self._idle_poll_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for wait in waits:
                wait.cancel()

    async def _announced(self, wakeups: Wakeups) -> bool:
        try:
            return await wakeups.wait(OUTBOX_TOPIC, self._idle_poll_seconds)
        except Exception as error:
            # Wake-ups only shorten the wait; the poll interval still bounds it.
            _log.warning("waiting for outbox wake-ups failed: %s", error)
            await asyncio.sleep(self._idle_poll_seconds)
            return False
