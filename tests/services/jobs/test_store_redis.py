"""What RedisActionStore does beyond the conformance suite: hashed tokens, retention,
the repair of a settlement whose job move did not happen (the jobs' database was down),
actions of jobs that ended while waiting, and its configuration."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from agentrt.jobs.v1.jobs_pb2 import Action

from services.jobs import states
from services.jobs.server import create_unit
from services.jobs.store import SQL_DIRECTORY, JobStore, open_job_store
from services.jobs.store_redis import RedisActionStore
from services.kit.config import ConfigError, RuntimeConfig
from services.kit.events import InMemoryEventChannel, InMemoryWakeups
from services.kit.infra import Infrastructure
from services.kit.names import parse_action_name
from services.kit.storage import StorageConfig, migrate
from tests.services.jobs.conftest import seconds
from tests.services.jobs.test_action_store_conformance import approve, by_token, waiting_job
from tests.services.jobs.test_store_conformance import history, id_of, types

pytestmark = pytest.mark.integration


@pytest.fixture
def storage_config(sqlite_path: Path) -> StorageConfig:
    """SQLite jobs: a second store on the file can be closed to play a database outage."""
    return StorageConfig("sqlite", sqlite_path, None, "jobs")


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield connection
    finally:
        await connection.aclose()


@pytest.fixture
def actions(store: JobStore, client: redis.asyncio.Redis, redis_prefix: str) -> RedisActionStore:
    return RedisActionStore(client, store, redis_prefix.rstrip(":"))


async def test_tokens_are_stored_hashed(
    store: JobStore,
    actions: RedisActionStore,
    client: redis.asyncio.Redis,
    redis_prefix: str,
) -> None:
    _, action = await waiting_job(store, actions)

    stored: list[Any] = []
    async for key in client.scan_iter(match=f"{redis_prefix}*"):
        stored.append(key)
        match await client.type(key):
            case b"hash":
                stored.extend(item for pair in (await client.hgetall(key)).items() for item in pair)
            case b"string":
                stored.append(await client.get(key))
            case b"zset":
                stored.extend(await client.zrange(key, 0, -1))
    everything = b"".join(value if isinstance(value, bytes) else b"" for value in stored)
    assert everything and action.resume_token.encode() not in everything


async def test_a_resolution_whose_job_move_failed_is_finished_by_the_sweep(
    store: JobStore,
    actions: RedisActionStore,
    client: redis.asyncio.Redis,
    redis_prefix: str,
    storage_config: StorageConfig,
) -> None:
    job, action = await waiting_job(store, actions)
    # The same Redis, but a jobs database that is gone: the job cannot be queued.
    await migrate(storage_config, SQL_DIRECTORY)
    down = await open_job_store(storage_config)
    await down.close()
    cut_off = RedisActionStore(client, down, redis_prefix.rstrip(":"), attempts=1)

    resolved = await cut_off.resolve_action(by_token(action), approve(request_id="r"), seconds(5))

    # The resolution is recorded, and the job still waits.
    assert resolved.state == Action.State.STATE_RESOLVED
    assert (await store.get_job(None, id_of(job))).state == states.WAITING
    # The sweep leaves it to the resolving process for repair_seconds, then finishes it.
    assert await actions.expire_actions(seconds(5 + 29), 10) == []
    assert (await store.get_job(None, id_of(job))).state == states.WAITING
    await actions.expire_actions(seconds(5 + 31), 10)
    assert (await store.get_job(None, id_of(job))).state == states.QUEUED
    assert types(await history(store, job))[-2:] == ["ACTION_RESOLVED", "JOB_REQUEUED"]
    await actions.expire_actions(seconds(5 + 60), 10)
    assert types(await history(store, job)).count("JOB_REQUEUED") == 1


async def test_a_retried_resolution_finishes_a_job_move_that_failed(
    store: JobStore,
    actions: RedisActionStore,
    client: redis.asyncio.Redis,
    redis_prefix: str,
    storage_config: StorageConfig,
) -> None:
    job, action = await waiting_job(store, actions)
    down = await open_job_store(storage_config)
    await down.close()
    cut_off = RedisActionStore(client, down, redis_prefix.rstrip(":"), attempts=1)
    resolved = await cut_off.resolve_action(by_token(action), approve(request_id="r"), seconds(5))

    again = await actions.resolve_action(by_token(action), approve(request_id="r"), seconds(6))

    assert again == resolved
    assert (await store.get_job(None, id_of(job))).state == states.QUEUED
    await actions.resolve_action(by_token(action), approve(request_id="r"), seconds(7))
    await actions.expire_actions(seconds(5 + 60), 10)
    assert types(await history(store, job)).count("JOB_REQUEUED") == 1


async def test_settled_actions_are_kept_for_the_retention_only(
    store: JobStore, client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    retention = int(timedelta(hours=1).total_seconds())
    actions = RedisActionStore(client, store, redis_prefix.rstrip(":"), retention_seconds=retention)
    _, action = await waiting_job(store, actions)
    key = f"{redis_prefix}actions:a:{parse_action_name(action.name)[1]}"
    assert await client.ttl(key) == -1  # Pending: kept until settled.

    await actions.resolve_action(by_token(action), approve(), seconds(5))

    assert 0 < await client.ttl(key) <= retention


async def test_the_sweep_cancels_the_due_action_of_a_job_cancelled_meanwhile(
    store: JobStore, actions: RedisActionStore
) -> None:
    job, action = await waiting_job(store, actions)
    await store.cancel(None, id_of(job), "stop", seconds(5))

    assert await actions.expire_actions(seconds(62), 10) == []

    stored = await actions.get_action("acme", *parse_action_name(action.name))
    assert stored.state == Action.State.STATE_CANCELLED and not stored.HasField("outcome")
    assert (await store.get_job(None, id_of(job))).state == states.CANCELLED


@pytest.mark.parametrize(
    ("setting", "message"),
    [("memcached", "expected database or redis"), ("redis", "needs AGENTRT_REDIS_URL")],
)
async def test_a_bad_action_store_setting_stops_the_jobs_service(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, setting: str, message: str
) -> None:
    monkeypatch.setenv("AGENTRT_JOBS_ACTION_STORE", setting)
    config = replace(RuntimeConfig.from_env({}), data_dir=tmp_path, redis_url="")
    infra = Infrastructure(config, InMemoryEventChannel(), InMemoryWakeups())

    with pytest.raises(ConfigError, match=message):
        await create_unit(infra)
