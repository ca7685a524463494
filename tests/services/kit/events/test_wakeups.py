"""The wake-ups conformance suite, and what only Redis pub/sub wake-ups do (other processes)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio

from services.kit.events import InMemoryWakeups, RedisWakeups

AnyWakeups = InMemoryWakeups | RedisWakeups


@dataclass(frozen=True)
class Replicas:
    """Wake-ups as seen from a notifying and a waiting replica (one process in memory)."""

    notifier: AnyWakeups
    waiter: AnyWakeups


@pytest.fixture
async def redis_replicas(
    redis_url: str, redis_prefix: str
) -> AsyncIterator[Callable[[], RedisWakeups]]:
    """Makes RedisWakeups on one prefix, each with its own client, as separate processes have."""
    made: list[tuple[RedisWakeups, redis.asyncio.Redis]] = []

    def make() -> RedisWakeups:
        client = redis.asyncio.Redis.from_url(redis_url)
        wakeups = RedisWakeups(client, prefix=redis_prefix.rstrip(":"))
        made.append((wakeups, client))
        return wakeups

    yield make
    for wakeups, client in made:
        await wakeups.close()
        await client.aclose()


@pytest.fixture
async def memory_pair() -> AsyncIterator[Replicas]:
    wakeups = InMemoryWakeups()
    yield Replicas(wakeups, wakeups)
    await wakeups.close()


@pytest.fixture
def redis_pair(redis_replicas: Callable[[], RedisWakeups]) -> Replicas:
    return Replicas(redis_replicas(), redis_replicas())


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def replicas(request: pytest.FixtureRequest) -> Replicas:
    """Each wake-ups implementation in turn."""
    pair: Replicas = request.getfixturevalue(f"{request.param}_pair")
    return pair


async def test_a_notification_reaches_a_waiter(replicas: Replicas) -> None:
    assert await replicas.waiter.listen("outbox")
    waiting = asyncio.create_task(replicas.waiter.wait("outbox", timeout=5))
    await replicas.notifier.notify("outbox")
    assert await waiting


async def test_a_notification_while_nobody_waits_is_kept_once(replicas: Replicas) -> None:
    assert await replicas.waiter.listen("outbox")
    assert await replicas.waiter.listen("marker")
    await replicas.notifier.notify("outbox")
    await replicas.notifier.notify("outbox")
    # Redis delivers in publish order: once the marker is in, both outbox notifications are.
    await replicas.notifier.notify("marker")
    assert await replicas.waiter.wait("marker", timeout=5)
    assert await replicas.waiter.wait("outbox", timeout=5)
    assert not await replicas.waiter.wait("outbox", timeout=0.05)


async def test_wait_returns_false_when_the_timeout_runs_out(replicas: Replicas) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await replicas.waiter.wait("outbox", timeout=0.05)
    assert loop.time() - started >= 0.05


async def test_a_notification_wakes_only_its_topic(replicas: Replicas) -> None:
    assert await replicas.waiter.listen("outbox")
    assert await replicas.waiter.listen("jobs")
    await replicas.notifier.notify("jobs")
    assert not await replicas.waiter.wait("outbox", timeout=0.05)
    assert await replicas.waiter.wait("jobs", timeout=5)


async def test_closed_wakeups_refuse_work(replicas: Replicas) -> None:
    await replicas.waiter.close()
    with pytest.raises(RuntimeError, match="closed"):
        await replicas.waiter.wait("outbox", timeout=1)


@pytest.mark.integration
async def test_a_notification_reaches_every_process(
    redis_replicas: Callable[[], RedisWakeups],
) -> None:
    notifier, first, second = redis_replicas(), redis_replicas(), redis_replicas()
    assert await first.listen("outbox")
    assert await second.listen("outbox")
    await notifier.notify("outbox")
    woken = await asyncio.gather(first.wait("outbox", 5), second.wait("outbox", 5))
    assert list(woken) == [True, True]


@pytest.mark.integration
async def test_a_process_wakes_its_own_waiters_once_without_the_round_trip(
    redis_url: str, redis_prefix: str, redis_replicas: Callable[[], RedisWakeups]
) -> None:
    wakeups, other = redis_replicas(), redis_replicas()
    assert await wakeups.listen("outbox")
    assert await wakeups.listen("marker")
    assert await other.listen("outbox")
    waiting = asyncio.create_task(wakeups.wait("outbox", timeout=5))
    await asyncio.sleep(0)
    # Redis is unreachable to this notify: the local waiter is woken all the same.
    unreachable = RedisWakeups(
        redis.asyncio.Redis.from_url("redis://127.0.0.1:1/0"), prefix=redis_prefix.rstrip(":")
    )
    unreachable._local, unreachable._token = wakeups._local, wakeups._token
    with pytest.raises(redis.exceptions.ConnectionError):
        await unreachable.notify("outbox")
    assert await asyncio.wait_for(waiting, 0.05)

    await wakeups.notify("outbox")
    assert await other.wait("outbox", timeout=5)
    # Its own echo is ignored: once the marker is in, so is the echo, and only the local
    # wake-up (kept, since nobody waited) is there.
    await wakeups.notify("marker")
    assert await wakeups.wait("marker", timeout=5)
    assert await wakeups.wait("outbox", timeout=0)
    assert not await wakeups.wait("outbox", timeout=0.1)


@pytest.mark.integration
async def test_the_listener_resubscribes_after_its_connection_is_killed(
    redis_url: str, redis_prefix: str, redis_replicas: Callable[[], RedisWakeups]
) -> None:
    name = f"wakeups-{secrets.token_hex(4)}"
    client = redis.asyncio.Redis.from_url(redis_url, client_name=name)
    waiter = RedisWakeups(client, prefix=redis_prefix.rstrip(":"))
    notifier = redis_replicas()
    assert await waiter.listen("outbox")
    admin = redis.asyncio.Redis.from_url(redis_url)
    killed = 0
    for connection in await admin.client_list():
        if connection["name"] == name:
            killed += await admin.client_kill_filter(_id=connection["id"])
    assert killed >= 1
    # Notifications sent before the listener is back are lost (best effort): keep sending.
    async with asyncio.timeout(10):
        while True:
            await notifier.notify("outbox")
            if await waiter.wait("outbox", timeout=0.1):
                break
    await waiter.close()
    await client.aclose()
    await admin.aclose()
