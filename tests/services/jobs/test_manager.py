"""JobManager: request validation, long-polling leases, and its signals to workers and relay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from agentrt.common.v1.common_pb2 import (
    ErrorReason,
    JobState,
    Message,
    Role,
    ToolKind,
    ToolSpec,
)
from agentrt.jobs.v1.jobs_pb2 import JobResult, JobSpec

from services.jobs import states
from services.jobs.manager import JOBS_TOPIC, JobManager
from services.jobs.store import SQL_DIRECTORY, JobFilter, JobStore, LeaseBatch
from services.jobs.store_sqlite import SqliteJobStore
from services.jobs.validation import JobLimits
from services.kit.errors import AgentrtError
from services.kit.events.memory import InMemoryWakeups
from services.kit.names import parse_job_name
from services.kit.storage import SqliteDatabase, StorageConfig, migrate
from tests.services.jobs.conftest import T0, make_new_job, make_spec


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    manager: JobManager
    store: JobStore
    wakeups: InMemoryWakeups
    clock: Clock
    nudges: list[None]


@pytest.fixture
async def store(sqlite_path: Path) -> AsyncIterator[JobStore]:
    config = StorageConfig("sqlite", sqlite_path, None, "jobs")
    await migrate(config, SQL_DIRECTORY)
    opened = await SqliteJobStore.open(sqlite_path)
    try:
        yield opened
    finally:
        await opened.close()


def make_world(store: JobStore, limits: JobLimits | None = None) -> World:
    wakeups = InMemoryWakeups()
    clock = Clock()
    nudges: list[None] = []
    manager = JobManager(
        store, wakeups, lambda: nudges.append(None), limits or JobLimits(), clock=clock
    )
    return World(manager, store, wakeups, clock, nudges)


@pytest.fixture
def world(store: JobStore) -> World:
    return make_world(store)


def spec_with(change: Callable[[JobSpec], object]) -> JobSpec:
    spec = make_spec()
    change(spec)
    return spec


def client_tool(schema: dict[str, Any]) -> ToolSpec:
    tool = ToolSpec(name="t", kind=ToolKind.TOOL_KIND_CLIENT)
    tool.parameters.update(schema)
    return tool


BIG = "x" * (256 * 1024 + 1)
MESSAGE = Message(role=Role.ROLE_USER, content="hello")

INVALID_SPECS = {
    "no prompt": (JobSpec(model="m"), "FIELD_REQUIRED", "spec.prompt"),
    "no model": (JobSpec(prompt="hi"), "FIELD_REQUIRED", "spec.model"),
    "too many turns": (
        spec_with(lambda s: setattr(s, "max_turns", 101)),
        "FIELD_INVALID",
        "spec.max_turns",
    ),
    "negative turns": (
        spec_with(lambda s: setattr(s, "max_turns", -1)),
        "FIELD_INVALID",
        "spec.max_turns",
    ),
    "too long": (make_spec(timeout=24 * 3600 + 1), "FIELD_INVALID", "spec.timeout"),
    "negative timeout": (make_spec(timeout=-5), "FIELD_INVALID", "spec.timeout"),
    "big prompt": (make_spec(BIG), "MESSAGE_TOO_LARGE", "spec.prompt"),
    "big message": (
        JobSpec(model="m", messages=[MESSAGE, Message(role=Role.ROLE_USER, content=BIG)]),
        "MESSAGE_TOO_LARGE",
        "spec.messages[1].content",
    ),
    "no role": (
        JobSpec(model="m", messages=[Message(content="hi")]),
        "FIELD_INVALID",
        "spec.messages[0].role",
    ),
    "tool answer without call id": (
        JobSpec(model="m", messages=[MESSAGE, Message(role=Role.ROLE_TOOL, content="42")]),
        "FIELD_REQUIRED",
        "spec.messages[1].tool_call_id",
    ),
    "bad tool name": (
        spec_with(lambda s: s.tools.append(ToolSpec(name="no spaces"))),
        "FIELD_INVALID",
        "spec.tools[0].name",
    ),
    "too many labels": (
        spec_with(lambda s: s.labels.update({f"k{n}": "v" for n in range(65)})),
        "FIELD_INVALID",
        "spec.labels",
    ),
    "long label": (
        spec_with(lambda s: s.labels.update({"k": "v" * 64})),
        "FIELD_INVALID",
        "spec.labels['k']",
    ),
    "bad parent": (make_spec(parent="jobs/nope"), "NAME_INVALID", "spec.parent"),
    "unknown tool kind": (
        spec_with(lambda s: s.tools.append(ToolSpec(name="t", kind=9))),  # type: ignore[arg-type]
        "FIELD_INVALID",
        "spec.tools[0].kind",
    ),
    "client tool with a broken schema": (
        spec_with(lambda s: s.tools.append(client_tool({"type": "object", "required": "x"}))),
        "FIELD_INVALID",
        "spec.tools[0].parameters",
    ),
    "client tool whose arguments are not an object": (
        spec_with(lambda s: s.tools.append(client_tool({"type": "string"}))),
        "FIELD_INVALID",
        "spec.tools[0].parameters",
    ),
    "long tool call timeout": (
        spec_with(lambda s: s.tool_options.call_timeout.FromSeconds(601)),
        "FIELD_INVALID",
        "spec.tool_options.call_timeout",
    ),
    "negative tool call timeout": (
        spec_with(lambda s: s.tool_options.call_timeout.FromSeconds(-1)),
        "FIELD_INVALID",
        "spec.tool_options.call_timeout",
    ),
    "too many tool attempts": (
        spec_with(lambda s: setattr(s.tool_options, "max_attempts", 11)),
        "FIELD_INVALID",
        "spec.tool_options.max_attempts",
    ),
    "negative tool attempts": (
        spec_with(lambda s: setattr(s.tool_options, "max_attempts", -1)),
        "FIELD_INVALID",
        "spec.tool_options.max_attempts",
    ),
    "negative tool call limit": (
        spec_with(lambda s: setattr(s.tool_options, "max_tool_calls", -1)),
        "FIELD_INVALID",
        "spec.tool_options.max_tool_calls",
    ),
    "a cost limit that is not an amount": (
        spec_with(lambda s: setattr(s.budget, "max_cost", "$5")),
        "FIELD_INVALID",
        "spec.budget.max_cost",
    ),
    "a cost limit in exponent form": (
        spec_with(lambda s: setattr(s.budget, "max_cost", "1e2")),
        "FIELD_INVALID",
        "spec.budget.max_cost",
    ),
    "a negative cost limit": (
        spec_with(lambda s: setattr(s.budget, "max_cost", "-1")),
        "FIELD_INVALID",
        "spec.budget.max_cost",
    ),
    "a negative token limit": (
        spec_with(lambda s: setattr(s.budget, "max_tokens", -1)),
        "FIELD_INVALID",
        "spec.budget.max_tokens",
    ),
    "a negative runtime limit": (
        spec_with(lambda s: s.budget.max_runtime.FromSeconds(-1)),
        "FIELD_INVALID",
        "spec.budget.max_runtime",
    ),
}


@pytest.mark.parametrize(("spec", "reason", "field"), INVALID_SPECS.values(), ids=INVALID_SPECS)
async def test_an_invalid_spec_is_refused_and_nothing_is_created(
    world: World, spec: JobSpec, reason: str, field: str
) -> None:
    with pytest.raises(AgentrtError) as raised:
        await world.manager.create_job("acme", "alice", spec, "req-1", "")

    assert raised.value.code == "INVALID_ARGUMENT"
    assert raised.value.reason_name == reason
    assert raised.value.metadata["field"] == field
    assert await world.store.list_jobs("acme", JobFilter(), 10, "") == ([], "")
    assert world.nudges == []


@pytest.mark.parametrize(
    ("tenant", "principal", "request_id", "trace_id", "field"),
    [
        ("", "alice", "", "", "tenant"),
        ("acme", "", "", "", "principal"),
        ("acme", "alice", "r" * 129, "", "request_id"),
        ("acme", "alice", "line\nbreak", "", "request_id"),
        ("acme", "alice", "", "not-hex", "trace_id"),
    ],
)
async def test_invalid_request_fields_are_refused(
    world: World, tenant: str, principal: str, request_id: str, trace_id: str, field: str
) -> None:
    with pytest.raises(AgentrtError) as raised:
        await world.manager.create_job(tenant, principal, make_spec(), request_id, trace_id)

    assert raised.value.metadata["field"] == field
    assert await world.store.list_jobs("acme", JobFilter(), 10, "") == ([], "")


async def test_tool_options_within_bounds_and_client_tool_schemas_are_accepted(
    world: World,
) -> None:
    spec = make_spec()
    spec.tool_options.call_timeout.FromSeconds(600)
    spec.tool_options.max_attempts = 10
    spec.tool_options.max_tool_calls = 0
    spec.tools.append(client_tool({"type": "object", "properties": {"q": {"type": "string"}}}))
    spec.tools.append(ToolSpec(name="any_object", kind=ToolKind.TOOL_KIND_CLIENT))

    job, created = await world.manager.create_job("acme", "alice", spec, "req-1", "")

    assert created and job.spec.tool_options == spec.tool_options
    assert job.spec.tool_options.HasField("max_tool_calls")


async def test_defaults_are_applied_before_the_request_is_hashed(world: World) -> None:
    job, created = await world.manager.create_job("acme", "alice", make_spec(), "req-1", "")
    explicit = make_spec(timeout=600)
    explicit.max_turns = 8
    again, created_again = await world.manager.create_job("acme", "alice", explicit, "req-1", "")

    assert created and not created_again and again == job
    assert job.spec.max_turns == 8 and job.spec.timeout.ToTimedelta() == timedelta(minutes=10)
    assert job.deadline.ToDatetime(tzinfo=T0.tzinfo) == T0 + timedelta(minutes=10)
    assert len(world.nudges) == 1


async def test_a_waiting_lease_is_woken_by_a_create(store: JobStore, sqlite_path: Path) -> None:
    watched = _Watched(await SqliteDatabase.open(sqlite_path), owns_database=True)
    world = make_world(watched, JobLimits(poll_seconds=30))
    try:
        waiting = asyncio.create_task(world.manager.lease_jobs("w1", 1, 30, 20))
        await watched.found_nothing.wait()

        job, _ = await world.manager.create_job("acme", "alice", make_spec(), "", "")

        leases = await asyncio.wait_for(waiting, 5)
        assert [lease.job.name for lease in leases] == [job.name]
    finally:
        await watched.close()


async def test_a_lease_wait_runs_out_empty(world: World) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()

    assert await world.manager.lease_jobs("w1", 1, 30, 0.2) == []
    assert 0.2 <= loop.time() - started < 2


async def test_a_lost_wake_up_only_delays_the_lease_by_the_poll_interval(
    store: JobStore,
) -> None:
    world = make_world(store, JobLimits(poll_seconds=0.05))
    waiting = asyncio.create_task(world.manager.lease_jobs("w1", 1, 30, 20))
    # Created behind the manager's back, so that no wake-up is sent at all.
    job, _ = await store.create_job(make_new_job(), T0)

    leases = await asyncio.wait_for(waiting, 5)
    assert [lease.job.name for lease in leases] == [job.name]


@pytest.mark.parametrize(
    ("worker", "max_jobs", "lease_seconds", "wait_seconds", "field"),
    [
        ("", 1, 30, 0, "worker"),
        ("w1", 101, 30, 0, "max_jobs"),
        ("w1", -1, 30, 0, "max_jobs"),
        ("w1", 1, 0.5, 0, "lease_duration"),
        ("w1", 1, 601, 0, "lease_duration"),
        ("w1", 1, 30, 61, "wait_timeout"),
    ],
)
async def test_invalid_lease_requests_are_refused(
    world: World, worker: str, max_jobs: int, lease_seconds: float, wait_seconds: float, field: str
) -> None:
    await world.manager.create_job("acme", "alice", make_spec(), "", "")

    with pytest.raises(AgentrtError) as raised:
        await world.manager.lease_jobs(worker, max_jobs, lease_seconds, wait_seconds)

    assert raised.value.metadata["field"] == field
    assert (await world.store.list_jobs("acme", JobFilter(), 10, ""))[0][0].state == states.QUEUED


async def test_worker_calls_use_the_managers_clock_and_nudge_the_relay(world: World) -> None:
    job, _ = await world.manager.create_job("acme", "alice", make_spec(), "", "")
    job_id = parse_job_name(job.name)
    [lease] = await world.manager.lease_jobs("w1", 0, 0, 0)
    assert lease.expire_time == T0 + timedelta(seconds=30)

    world.clock.now = T0 + timedelta(seconds=20)
    assert await world.manager.heartbeat(job_id, lease.lease_id, 0) == world.clock.now + timedelta(
        seconds=30
    )
    with pytest.raises(AgentrtError) as raised:
        await world.manager.finish(job_id, lease.lease_id, states.SUCCEEDED, None, None, None, None)
    assert raised.value.reason == ErrorReason.ERROR_REASON_FIELD_REQUIRED
    done = await world.manager.finish(
        job_id, lease.lease_id, states.SUCCEEDED, JobResult(output="ok"), None, None, None
    )

    assert done.end_time.ToDatetime(tzinfo=T0.tzinfo) == world.clock.now
    assert len(world.nudges) == 3


async def test_deadlines_expire_by_the_managers_clock(world: World) -> None:
    job, _ = await world.manager.create_job("acme", "alice", make_spec(timeout=60), "", "")
    assert await world.manager.expire_deadlines() == []

    world.clock.now = T0 + timedelta(seconds=61)
    [expired] = await world.manager.expire_deadlines()

    assert expired.name == job.name and expired.state == states.TIMED_OUT
    assert len(world.nudges) == 2


async def test_a_release_wakes_waiting_workers(world: World) -> None:
    await world.manager.create_job("acme", "alice", make_spec(), "", "")
    [lease] = await world.manager.lease_jobs("w1", 1, 30, 0)
    await world.wakeups.listen(JOBS_TOPIC)

    await world.manager.release(parse_job_name(lease.job.name), lease.lease_id, "draining")

    assert await world.wakeups.wait(JOBS_TOPIC, 0)


@pytest.mark.parametrize(
    ("page_size", "job_filter", "field"),
    [
        (-1, JobFilter(), "page_size"),
        (10, JobFilter([JobState.JOB_STATE_UNSPECIFIED]), "states"),
    ],
)
async def test_invalid_list_requests_are_refused(
    world: World, page_size: int, job_filter: JobFilter, field: str
) -> None:
    with pytest.raises(AgentrtError) as raised:
        await world.manager.list_jobs("acme", job_filter, page_size, "")
    assert raised.value.metadata["field"] == field


class _Watched(SqliteJobStore):
    """A store that announces the first lease_jobs call that found nothing."""

    found_nothing = asyncio.Event()

    async def lease_jobs(
        self,
        worker: str,
        limit: int,
        lease_seconds: float,
        now: datetime,
        *,
        runtime_version: str = "",
    ) -> LeaseBatch:
        batch = await super().lease_jobs(
            worker, limit, lease_seconds, now, runtime_version=runtime_version
        )
        if not batch.leases:
            self.found_nothing.set()
        return batch


async def test_page_sizes_default_and_are_capped(store: JobStore) -> None:
    world = make_world(store, JobLimits(default_page_size=2, max_page_size=3))
    for _ in range(4):
        await world.manager.create_job("acme", "alice", make_spec(), "", "")

    assert len((await world.manager.list_jobs("acme", JobFilter(), 0, ""))[0]) == 2
    assert len((await world.manager.list_jobs("acme", JobFilter(), 100, ""))[0]) == 3
