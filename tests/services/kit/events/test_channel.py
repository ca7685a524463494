"""The event channel conformance suite, run against every implementation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from agentrt.common.v1.common_pb2 import EventType, RuntimeEvent

from services.kit.events import EventChannel, parse_cursor
from tests.services.kit.events.conftest import ChannelCase
from tests.services.kit.events.sample_events import closing, delta, history, ids, take


async def test_a_follower_gets_events_in_publish_order_with_increasing_cursors(
    channel: EventChannel,
) -> None:
    async with closing(channel.follow_job("jobs/a", "0")) as follower:
        await channel.publish([history("a", 1), history("a", 2)])
        await channel.publish([delta("a", 2, 1), delta("a", 2, 2)])
        await channel.publish([history("a", 3)])
        entries = await take(follower, 5)
    assert ids(entries) == ["a.1", "a.2", "a.2.1", "a.2.2", "a.3"]
    cursors = [parse_cursor(cursor) for cursor, _ in entries]
    assert cursors == sorted(set(cursors))
    assert entries[2][1].output_delta.text == "piece 1"
    assert await channel.job_position("jobs/a") == entries[-1][0]


async def test_following_from_a_cursor_taken_earlier_loses_nothing(channel: EventChannel) -> None:
    assert await channel.job_position("jobs/a") == "0"
    await channel.publish([history("a", 1), history("a", 2)])
    cursor = await channel.job_position("jobs/a")
    await channel.publish([history("a", 3), delta("a", 3, 1)])
    async with closing(channel.follow_job("jobs/a", cursor)) as follower:
        assert ids(await take(follower, 2)) == ["a.3", "a.3.1"]
        await channel.publish([history("a", 4)])
        assert ids(await take(follower, 1)) == ["a.4"]


async def test_following_the_global_stream_from_its_position_gives_only_newer_events(
    channel: EventChannel,
) -> None:
    assert await channel.global_position() == "0"
    await channel.publish([history("a", 1), history("b", 1), delta("b", 1, 1)])
    cursor = await channel.global_position()
    assert cursor != "0"
    await channel.publish([history("a", 2), delta("a", 2, 1), history("b", 2)])
    async with closing(channel.follow_all(cursor)) as follower:
        assert ids(await take(follower, 2)) == ["a.2", "b.2"]


async def test_transient_events_go_to_the_job_stream_only(channel: EventChannel) -> None:
    await channel.publish([history("a", 1), delta("a", 1, 1), delta("a", 1, 2), history("a", 2)])
    async with closing(channel.follow_job("jobs/a", "0")) as job_follower:
        assert ids(await take(job_follower, 4)) == ["a.1", "a.1.1", "a.1.2", "a.2"]
    async with closing(channel.follow_all("0")) as all_follower:
        assert ids(await take(all_follower, 2)) == ["a.1", "a.2"]
        await channel.publish([delta("a", 2, 1), history("a", 3)])
        assert ids(await take(all_follower, 1)) == ["a.3"]


async def test_follow_all_sees_every_job_in_publish_order(channel: EventChannel) -> None:
    await channel.publish([history("a", 1), history("b", 1)])
    async with closing(channel.follow_all("0")) as follower:
        assert ids(await take(follower, 2)) == ["a.1", "b.1"]
        await channel.publish([history("b", 2), history("a", 2)])
        assert ids(await take(follower, 2)) == ["b.2", "a.2"]


async def test_many_concurrent_followers_of_different_jobs_each_get_their_job(
    channel: EventChannel,
) -> None:
    jobs = [f"job{n}" for n in range(200)]
    subscribed = asyncio.Barrier(len(jobs) + 1)

    async def follow(job_id: str) -> list[str]:
        async with closing(channel.follow_job(f"jobs/{job_id}", "0")) as follower:
            first = await take(follower, 1, timeout=20)
            await subscribed.wait()
            return ids(first + await take(follower, 4, timeout=20))

    followers = [asyncio.create_task(follow(job_id)) for job_id in jobs]
    await channel.publish([history(job_id, 1) for job_id in jobs])
    await subscribed.wait()
    for sequence in range(2, 6):
        await channel.publish([history(job_id, sequence) for job_id in reversed(jobs)])
    async with asyncio.timeout(20):
        results = await asyncio.gather(*followers)
    assert results == [[f"{job_id}.{s}" for s in range(1, 6)] for job_id in jobs]


async def test_a_late_follower_catches_up_while_another_follows_live(
    channel: EventChannel,
) -> None:
    async with closing(channel.follow_job("jobs/a", "0")) as early:
        await channel.publish([history("a", n) for n in range(1, 11)])
        assert len(await take(early, 10)) == 10
        async with closing(channel.follow_job("jobs/a", "0")) as late:
            assert ids(await take(late, 10)) == [f"a.{n}" for n in range(1, 11)]
            await channel.publish([history("a", 11)])
            assert ids(await take(late, 1)) == ids(await take(early, 1)) == ["a.11"]


async def test_a_slow_follower_loses_nothing(channel: EventChannel) -> None:
    async with closing(channel.follow_job("jobs/a", "0")) as follower:
        await channel.publish([history("a", 1)])
        await take(follower, 1)
        for sequence in range(2, 602):
            await channel.publish([history("a", sequence)])
        entries = await take(follower, 600, timeout=20)
    assert ids(entries) == [f"a.{n}" for n in range(2, 602)]


async def test_a_terminal_event_bounds_the_job_stream(case: ChannelCase) -> None:
    finished = history("a", 2, EventType.EVENT_TYPE_JOB_SUCCEEDED)
    await case.channel.publish([history("a", 1), finished, history("b", 1)])
    await case.expect_job_stream_expiring("jobs/a")
    assert await case.channel.job_position("jobs/b") != "0"


async def test_close_ends_followers_and_refuses_more_work(channel: EventChannel) -> None:
    async def follow(follower: AsyncIterator[tuple[str, RuntimeEvent]]) -> list[str]:
        async with closing(follower) as entries:
            return [event.id async for _, event in entries]

    job_follower = channel.follow_job("jobs/a", "0")
    all_follower = channel.follow_all("0")
    await channel.publish([history("a", 1)])
    first_job, first_all = await take(job_follower, 1), await take(all_follower, 1)
    tasks = [asyncio.create_task(follow(job_follower)), asyncio.create_task(follow(all_follower))]
    await channel.close()
    async with asyncio.timeout(5):
        assert await asyncio.gather(*tasks) == [[], []]
    assert ids(first_job) == ids(first_all) == ["a.1"]
    with pytest.raises(RuntimeError, match="closed"):
        await channel.publish([history("a", 2)])


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (RuntimeEvent(id="a.1", job="a"), "invalid job name"),
        (RuntimeEvent(id="a.1", job="jobs/"), "invalid job name"),
        (RuntimeEvent(id="b.1", job="jobs/a"), "invalid event id"),
        (RuntimeEvent(id="a.1.2.3", job="jobs/a"), "invalid event id"),
        (RuntimeEvent(id="a.x", job="jobs/a"), "invalid event id"),
    ],
)
async def test_a_malformed_event_is_rejected_and_nothing_is_published(
    channel: EventChannel, event: RuntimeEvent, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await channel.publish([history("c", 1), event])
    assert await channel.job_position("jobs/c") == "0"


async def test_malformed_follow_arguments_are_rejected_at_once(channel: EventChannel) -> None:
    with pytest.raises(ValueError, match="invalid job name"):
        channel.follow_job("a", "0")
    with pytest.raises(ValueError, match="invalid cursor"):
        channel.follow_job("jobs/a", "latest")
    with pytest.raises(ValueError, match="invalid cursor"):
        channel.follow_all("1-")
