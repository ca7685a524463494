"""RuntimeEvents for the event tests, and a helper to read a follower."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

from agentrt.common.v1.common_pb2 import EventType, OutputDelta, RuntimeEvent


def history(
    job_id: str, sequence: int, kind: EventType.ValueType = EventType.EVENT_TYPE_TURN_COMPLETED
) -> RuntimeEvent:
    """A history event of job `job_id`."""
    return RuntimeEvent(
        id=f"{job_id}.{sequence}",
        type=kind,
        sequence=sequence,
        job=f"jobs/{job_id}",
        tenant="tenant-a",
    )


def delta(job_id: str, sequence: int, n: int) -> RuntimeEvent:
    """A transient job.output.delta that follows history event `sequence`."""
    return RuntimeEvent(
        id=f"{job_id}.{sequence}.{n}",
        type=EventType.EVENT_TYPE_OUTPUT_DELTA,
        sequence=sequence,
        job=f"jobs/{job_id}",
        output_delta=OutputDelta(turn=1, text=f"piece {n}"),
    )


async def take(
    follower: AsyncIterator[tuple[str, RuntimeEvent]], count: int, timeout: float = 5.0
) -> list[tuple[str, RuntimeEvent]]:
    """The follower's next `count` entries; fails when they do not come within `timeout`."""
    async with asyncio.timeout(timeout):
        return [await anext(follower) for _ in range(count)]


Follower = AsyncGenerator[tuple[str, RuntimeEvent], None]


def closing(follower: AsyncIterator[tuple[str, RuntimeEvent]]) -> contextlib.aclosing[Follower]:
    """Closes the follower after the block."""
    # Both implementations return async generators; the protocol only promises an iterator.
    return contextlib.aclosing(cast(Follower, follower))


def stored_events(entries: Any) -> list[RuntimeEvent]:
    """The events of stream entries as redis-py returns them (XRANGE)."""
    return [RuntimeEvent.FromString(fields[b"e"]) for _, fields in entries]


def ids(entries: list[tuple[str, RuntimeEvent]]) -> list[str]:
    """The event ids of followed entries."""
    return [event.id for _, event in entries]
