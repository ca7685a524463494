"""Wait and resume across processes: a resolution wakes a LeaseJobs long poll of another
jobs replica through Redis at once, and a lost wake-up only delays the job until the
replica's next look at the store.

Each "replica" is a JobManager with its own Redis client and RedisWakeups, as in its own
process, on one shared jobs database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import redis.asyncio
from agentrt.jobs.v1.jobs_pb2 import Action, ActionKind
from google.protobuf.struct_pb2 import Struct

from services.jobs.manager import JOBS_TOPIC, JobManager
from services.jobs.store import SQL_DIRECTORY, JobStore, open_job_store
from services.jobs.store_redis import RedisActionStore
from services.jobs.validation import JobLimits
from services.kit.events import RedisWakeups
from services.kit.names import parse_job_name
from services.kit.storage import StorageConfig, migrate
from tests.services.jobs.conftest import make_spec

pytestmark = pytest.mark.integration

WAIT = 25.0
"""How long the waiting replica's long poll lasts: far longer than any wake-up takes."""


class Replicas:
    """Jobs replicas on one database and one Redis, each with its own connections."""

    def __init__(self, stack: AsyncExitStack, store: JobStore, redis_url: str) -> None:
        self._stack = stack
        self._store = store
        self._redis_url = redis_url

    async def start(
        self, prefix: str, poll_seconds: float, wake_prefix: str = ""
    ) -> tuple[JobManager, RedisWakeups]:
        """A replica with its actions in Redis under `prefix`, its wake-ups under
        wake_prefix (default: the same), looking at the store every poll_seconds while
        nothing wakes it."""
        client = redis.asyncio.Redis.from_url(self._redis_url)
        self._stack.push_async_callback(client.aclose)
        wakeups = RedisWakeups(client, wake_prefix or prefix)
        self._stack.push_async_callback(wakeups.close)
        actions = RedisActionStore(client, self._store, prefix)
        limits = JobLimits(poll_seconds=poll_seconds)
        return JobManager(self._store, wakeups, None, limits, actions=actions), wakeups


@pytest.fixture
async def replicas(sqlite_path: Path, redis_url: str) -> AsyncIterator[Replicas]:
    config = StorageConfig("sqlite", sqlite_path, None, "jobs")
    await migrate(config, SQL_DIRECTORY)
    store = await open_job_store(config)
    try:
        async with AsyncExitStack() as stack:
            yield Replicas(stack, store, redis_url)
    finally:
        await store.close()


def outcome() -> Struct:
    value = Struct()
    value.update({"approved": True})
    return value


async def waiting_action(manager: JobManager) -> tuple[str, Action]:
    """A job, leased and parked on an approval by a worker of `manager`."""
    job, _ = await manager.create_job("acme", "alice", make_spec(), "", "")
    [lease] = await manager.lease_jobs("w1", 1, 30, 0)
    action = Action(kind=ActionKind.ACTION_KIND_APPROVAL)
    job_id = parse_job_name(job.name)
    required = await manager.require_action(job_id, lease.lease_id, action, None, None)
    return job.name, required


async def test_a_resolution_wakes_a_long_poll_of_another_replica_at_once(
    replicas: Replicas, redis_prefix: str
) -> None:
    prefix = redis_prefix.rstrip(":")
    resolver, _ = await replicas.start(prefix, poll_seconds=60)
    # Looks at the store once, then only when woken: within WAIT only a wake-up helps.
    waiter, wakeups = await replicas.start(prefix, poll_seconds=60)
    job, action = await waiting_action(resolver)
    assert await wakeups.listen(JOBS_TOPIC)
    polling = asyncio.create_task(waiter.lease_jobs("w2", 1, 30, WAIT))
    await asyncio.sleep(0)

    await resolver.resolve_action("acme", "carol", action.resume_token, outcome(), "")

    [lease] = await polling
    assert lease.job.name == job


async def test_a_lost_wake_up_only_delays_the_job_to_the_next_poll(
    replicas: Replicas, redis_prefix: str
) -> None:
    # The resolver's wake-ups go to channels nobody listens on: every notice is lost.
    prefix = redis_prefix.rstrip(":")
    resolver, _ = await replicas.start(prefix, poll_seconds=60, wake_prefix=prefix + "-lost")
    waiter, wakeups = await replicas.start(prefix, poll_seconds=0.2)
    job, action = await waiting_action(waiter)
    assert await wakeups.listen(JOBS_TOPIC)
    polling = asyncio.create_task(waiter.lease_jobs("w2", 1, 30, WAIT))
    await asyncio.sleep(0)

    await resolver.resolve_action("acme", "carol", action.resume_token, outcome(), "")

    [lease] = await polling
    assert lease.job.name == job
    assert not await wakeups.wait(JOBS_TOPIC, 0)  # It was the poll, not a wake-up.
