"""Fixtures of the jobs tests: a migrated JobStore on each backend, and job factories."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
from agentrt.jobs.v1.jobs_pb2 import Job, JobSpec

from services.jobs.states import State
from services.jobs.store import SQL_DIRECTORY, JobStore, NewJob, open_job_store
from services.jobs.validation import JobLimits, new_job
from services.kit.storage import SqliteDatabase, StorageConfig, migrate

T0 = datetime(2030, 1, 1, tzinfo=UTC)
"""The time the tests' jobs are created at, unless they say otherwise."""

SetState = Callable[[str, State], Awaitable[None]]


def seconds(n: float) -> datetime:
    """T0 plus n seconds."""
    return T0 + timedelta(seconds=n)


def make_spec(
    prompt: str = "Plan a trip", *, session: str = "", parent: str = "", timeout: float = 0
) -> JobSpec:
    """A valid spec; timeout in seconds, 0 for the default (10 minutes)."""
    spec = JobSpec(prompt=prompt, model="test-model", session=session, parent=parent)
    if timeout:
        spec.timeout.FromTimedelta(timedelta(seconds=timeout))
    return spec


def make_new_job(
    tenant: str = "acme", request_id: str = "", spec: JobSpec | None = None, trace_id: str = ""
) -> NewJob:
    """A validated job to create, as the manager would hand it to the store."""
    return new_job(tenant, "alice", spec or make_spec(), request_id, trace_id, JobLimits())


async def create(
    store: JobStore, now: datetime = T0, *, tenant: str = "acme", spec: JobSpec | None = None
) -> Job:
    """Create a job and return it."""
    job, created = await store.create_job(make_new_job(tenant, spec=spec), now)
    assert created
    return job


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def storage_config(request: pytest.FixtureRequest, sqlite_path: Path) -> StorageConfig:
    if request.param == "postgres":
        return StorageConfig("postgres", None, request.getfixturevalue("pg_dsn"), "jobs")
    return StorageConfig("sqlite", sqlite_path, None, "jobs")


@pytest.fixture
async def store(storage_config: StorageConfig) -> AsyncIterator[JobStore]:
    await migrate(storage_config, SQL_DIRECTORY)
    opened = await open_job_store(storage_config)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def set_state(storage_config: StorageConfig) -> SetState:
    """Put a job in a state directly, e.g. WAITING, which no JobStore operation reaches."""

    async def set_state(job_id: str, state: State) -> None:
        statement = "UPDATE jobs SET state = {}, lease_id = NULL WHERE id = {}"
        if storage_config.backend == "postgres":
            connection = await asyncpg.connect(
                storage_config.postgres_dsn, server_settings={"search_path": "jobs"}
            )
            try:
                await connection.execute(statement.format("$1", "$2"), state, job_id)
            finally:
                await connection.close()
        else:
            assert storage_config.sqlite_path is not None
            async with await SqliteDatabase.open(storage_config.sqlite_path) as database:
                await database.execute(statement.format("?", "?"), (state, job_id))

    return set_state
