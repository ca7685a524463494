"""What only the in-memory channel does: trimming by length, and its configuration checks."""

from __future__ import annotations

import asyncio

import pytest
from agentrt.common.v1.common_pb2 import EventType

from services.kit.events import InMemoryEventChannel
from tests.services.kit.events.sample_events import history, ids, take


async def test_the_global_stream_keeps_the_newest_entries() -> None:
    channel = InMemoryEventChannel(global_maxlen=10)
    await channel.publish([history("a", n) for n in range(1, 101)])
    follower = channel.follow_all("0")
    assert ids(await take(follower, 10)) == [f"a.{n}" for n in range(91, 101)]
    await channel.close()


async def test_a_follower_of_a_dropped_job_stream_sees_later_entries() -> None:
    channel = InMemoryEventChannel(job_retention_seconds=0)
    follower = channel.follow_job("jobs/a", "0")
    await channel.publish([history("a", 1, EventType.EVENT_TYPE_JOB_FAILED)])
    assert ids(await take(follower, 1)) == ["a.1"]
    # The drop is a timer callback, with no event to await.
    async with asyncio.timeout(5):
        while await channel.job_position("jobs/a") != "0":  # noqa: ASYNC110
            await asyncio.sleep(0.001)
    await channel.publish([history("a", 2)])
    assert ids(await take(follower, 1)) == ["a.2"]
    await channel.close()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"global_maxlen": 0}, "global_maxlen"), ({"job_retention_seconds": -1}, "retention")],
)
def test_bad_configuration_is_refused(arguments: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InMemoryEventChannel(**arguments)  # type: ignore[arg-type]
