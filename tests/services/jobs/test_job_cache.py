"""GetJob's read-through cache on Redis: what it serves, and what makes it forget.

The jobs' database is changed behind the cache's back (`set_state`) to tell a cached
answer from a fresh one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio
from agentrt.jobs.v1.jobs_pb2 import Job
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.jobs import states
from services.jobs.job_cache import InvalidatingChannel, RedisJobCache
from services.jobs.manager import JobManager
from services.jobs.store import JobStore
from services.jobs.validation import JobLimits
from services.kit.errors import JobNotFound
from services.kit.events import InMemoryWakeups, OutboxRelay, RedisEventChannel
from services.kit.names import parse_job_name
from services.kit.storage import StorageConfig
from tests.services.jobs.conftest import SetState, make_spec

pytestmark = pytest.mark.integration


@pytest.fixture
def storage_config(sqlite_path: Path) -> StorageConfig:
    return StorageConfig("sqlite", sqlite_path, None, "jobs")


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield connection
    finally:
        await connection.aclose()


@pytest.fixture
def cache(client: redis.asyncio.Redis, redis_prefix: str) -> RedisJobCache:
    return RedisJobCache(client, redis_prefix.rstrip(":"), ttl_seconds=60)


@pytest.fixture
def manager(store: JobStore, cache: RedisJobCache) -> JobManager:
    return JobManager(store, InMemoryWakeups(), None, JobLimits(), cache=cache)


async def queued(manager: JobManager, tenant: str = "acme", parent: str = "") -> str:
    job, _ = await manager.create_job(tenant, "alice", make_spec(parent=parent), "", "")
    return parse_job_name(job.name)


async def test_a_read_is_served_from_the_cache_until_a_write_forgets_it(
    manager: JobManager, set_state: SetState
) -> None:
    job_id = await queued(manager)
    assert (await manager.get_job("acme", job_id)).state == states.QUEUED
    await set_state(job_id, states.RUNNING)  # Behind the cache's back.

    assert (await manager.get_job("acme", job_id)).state == states.QUEUED

    cancelled = await manager.cancel("acme", job_id, "stop")
    assert (await manager.get_job("acme", job_id)) == cancelled
    assert cancelled.state == states.CANCELLED


async def test_every_write_of_the_manager_is_seen_by_the_next_read(manager: JobManager) -> None:
    job_id = await queued(manager)
    assert (await manager.get_job(None, job_id)).state == states.QUEUED

    [lease] = await manager.lease_jobs("w1", 1, 30, 0)
    assert (await manager.get_job(None, job_id)).state == states.RUNNING
    await manager.release(job_id, lease.lease_id, "back")
    assert (await manager.get_job(None, job_id)).state == states.QUEUED


async def test_another_tenant_is_never_served_a_cached_job(manager: JobManager) -> None:
    job_id = await queued(manager, tenant="acme")
    await manager.get_job("acme", job_id)

    with pytest.raises(JobNotFound):
        await manager.get_job("globex", job_id)


async def test_a_read_that_raced_a_write_does_not_put_its_old_version_back(
    cache: RedisJobCache, manager: JobManager, set_state: SetState
) -> None:
    job_id = await queued(manager)
    old = await manager.get_job(None, job_id)
    await cache.forget([job_id])

    async def load_then_written() -> Job:
        # This reader loaded `old`; a writer commits and forgets before it stores it.
        await set_state(job_id, states.RUNNING)
        await cache.forget([job_id])
        return old

    assert await cache.read_through(None, job_id, load_then_written) == old
    assert (await manager.get_job(None, job_id)).state == states.RUNNING


async def test_entries_expire_after_their_ttl(
    client: redis.asyncio.Redis, redis_prefix: str, store: JobStore, set_state: SetState
) -> None:
    cache = RedisJobCache(client, redis_prefix.rstrip(":"), ttl_seconds=0.2)
    manager = JobManager(store, InMemoryWakeups(), None, JobLimits(), cache=cache)
    job_id = await queued(manager)
    await manager.get_job(None, job_id)
    await set_state(job_id, states.RUNNING)

    for _ in range(300):
        if (await manager.get_job(None, job_id)).state == states.RUNNING:
            break
        await asyncio.sleep(0.1)
    assert (await manager.get_job(None, job_id)).state == states.RUNNING


async def test_the_relay_forgets_the_jobs_it_publishes_events_of(
    manager: JobManager,
    store: JobStore,
    cache: RedisJobCache,
    client: redis.asyncio.Redis,
    redis_prefix: str,
) -> None:
    parent = await queued(manager)
    child = await queued(manager, parent=f"jobs/{parent}")
    assert (await manager.get_job(None, child)).state == states.QUEUED
    events = RedisEventChannel(client, prefix=redis_prefix.rstrip(":"))
    relay = OutboxRelay(store, InvalidatingChannel(events, cache), None)

    # The manager names only the job it cancels; its child is cancelled in the same commit.
    await manager.cancel("acme", parent, "stop")
    assert (await manager.get_job(None, child)).state == states.QUEUED
    await relay.drain()

    assert (await manager.get_job(None, child)).state == states.CANCELLED
    # The same round trip published the events.
    assert await events.job_position(f"jobs/{child}") != "0"
    await events.close()


async def test_the_relay_forgets_on_the_client_it_publishes_with(
    cache: RedisJobCache, redis_url: str
) -> None:
    other = redis.asyncio.Redis.from_url(redis_url)
    try:
        with pytest.raises(ValueError, match="share a Redis client"):
            InvalidatingChannel(RedisEventChannel(other), cache)
    finally:
        await other.aclose()


async def test_a_parent_read_from_the_cache_shows_its_childs_creation_and_end(
    manager: JobManager,
) -> None:
    parent = await queued(manager)
    before = await manager.get_job(None, parent)

    child = await queued(manager, parent=f"jobs/{parent}")
    created = await manager.get_job(None, parent)
    await manager.cancel("acme", child, "not needed")
    finished = await manager.get_job(None, parent)

    assert before.last_event_id == f"{parent}.1"
    assert created.last_event_id == f"{parent}.2"
    assert finished.last_event_id == f"{parent}.3"


async def test_without_redis_reads_go_to_the_store(store: JobStore) -> None:
    # Nothing listens on port 1; no retries, so that each call fails at once.
    down = redis.asyncio.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    cache = RedisJobCache(down, "nowhere", ttl_seconds=60)
    manager = JobManager(store, InMemoryWakeups(), None, JobLimits(), cache=cache)
    try:
        job_id = await queued(manager)
        assert (await manager.get_job("acme", job_id)).state == states.QUEUED
        await manager.cancel("acme", job_id, "stop")
        assert (await manager.get_job("acme", job_id)).state == states.CANCELLED
    finally:
        await down.aclose()
