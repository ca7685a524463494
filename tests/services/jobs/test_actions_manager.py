"""JobManager's actions: request checks, the expiry sweep by its clock, and wake-ups."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from agentrt.jobs.v1.jobs_pb2 import Action, ActionKind, Job
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct

from services.jobs import states
from services.jobs.manager import JOBS_TOPIC
from services.jobs.store import SQL_DIRECTORY
from services.jobs.store_sqlite import SqliteJobStore
from services.kit.errors import AgentrtError
from services.kit.names import parse_action_name, parse_job_name
from services.kit.storage import StorageConfig, migrate
from tests.services.jobs.conftest import make_spec
from tests.services.jobs.test_manager import World, make_world


@pytest.fixture
async def world(sqlite_path: Path) -> AsyncIterator[World]:
    await migrate(StorageConfig("sqlite", sqlite_path, None, "jobs"), SQL_DIRECTORY)
    store = await SqliteJobStore.open(sqlite_path)
    try:
        yield make_world(store)
    finally:
        await store.close()


def approval(**payload: str) -> Action:
    action = Action(kind=ActionKind.ACTION_KIND_APPROVAL)
    action.payload.update(payload or {"tool": "send_email"})
    action.timeout_outcome.update({"approved": False})
    return action


def seconds(n: float) -> Duration:
    duration = Duration()
    duration.FromTimedelta(timedelta(seconds=n))
    return duration


def outcome(approved: bool = True) -> Struct:
    value = Struct()
    value.update({"approved": approved})
    return value


async def running(world: World) -> tuple[Job, str]:
    job, _ = await world.manager.create_job("acme", "alice", make_spec(), "", "")
    [lease] = await world.manager.lease_jobs("w1", 1, 30, 0)
    return job, lease.lease_id


async def test_require_defaults_the_timeout_and_nudges_the_relay(world: World) -> None:
    job, lease_id = await running(world)
    nudges = len(world.nudges)

    action = await world.manager.require_action(
        parse_job_name(job.name), lease_id, approval(), None, None
    )

    created = action.create_time.ToDatetime()
    assert action.expire_time.ToDatetime() - created == timedelta(hours=1)
    assert len(world.nudges) == nudges + 1


@pytest.mark.parametrize(
    ("action", "timeout", "field"),
    [
        (None, None, "action"),
        (Action(), None, "action.kind"),
        (Action(kind=9), None, "action.kind"),  # type: ignore[arg-type]
        (approval(big="x" * 300_000), None, "action.payload"),
        (approval(), seconds(-1), "timeout"),
        (approval(), seconds(8 * 24 * 3600), "timeout"),
    ],
)
async def test_invalid_actions_are_refused_and_the_job_keeps_running(
    world: World, action: Action | None, timeout: Duration | None, field: str
) -> None:
    job, lease_id = await running(world)

    with pytest.raises(AgentrtError) as raised:
        await world.manager.require_action(
            parse_job_name(job.name), lease_id, action, timeout, None
        )

    assert raised.value.code == "INVALID_ARGUMENT" and raised.value.metadata["field"] == field
    assert (await world.manager.get_job("acme", parse_job_name(job.name))).state == states.RUNNING


@pytest.mark.parametrize(
    ("principal", "target", "resolution", "request_id", "field"),
    [
        ("", "token", outcome(), "", "principal"),
        ("carol", "", outcome(), "", "resume_token"),
        ("carol", "t" * 257, outcome(), "", "resume_token"),
        ("carol", "token", None, "", "outcome"),
        ("carol", "token", outcome(), "r" * 129, "request_id"),
    ],
)
async def test_invalid_resolutions_are_refused(
    world: World,
    principal: str,
    target: str,
    resolution: Struct | None,
    request_id: str,
    field: str,
) -> None:
    with pytest.raises(AgentrtError) as raised:
        await world.manager.resolve_action("acme", principal, target, resolution, request_id)

    assert raised.value.code == "INVALID_ARGUMENT" and raised.value.metadata["field"] == field


async def test_a_resolution_wakes_waiting_workers(world: World) -> None:
    job, lease_id = await running(world)
    action = await world.manager.require_action(
        parse_job_name(job.name), lease_id, approval(), None, None
    )
    await world.wakeups.listen(JOBS_TOPIC)

    await world.manager.resolve_action("acme", "carol", action.resume_token, outcome(), "")

    assert await world.wakeups.wait(JOBS_TOPIC, 0)
    [lease] = await world.manager.lease_jobs("w2", 1, 30, 0)
    assert lease.job.name == job.name


async def test_actions_expire_by_the_managers_clock_and_wake_workers(world: World) -> None:
    job, lease_id = await running(world)
    action = await world.manager.require_action(
        parse_job_name(job.name), lease_id, approval(), seconds(60), None
    )
    world.clock.now += timedelta(seconds=59)
    assert await world.manager.expire_actions() == []
    await world.wakeups.listen(JOBS_TOPIC)

    world.clock.now += timedelta(seconds=1)
    [expired] = await world.manager.expire_actions()

    assert expired.name == action.name and expired.state == Action.State.STATE_EXPIRED
    assert await world.wakeups.wait(JOBS_TOPIC, 0)


async def test_cancel_and_list_by_name(world: World) -> None:
    job, lease_id = await running(world)
    action = await world.manager.require_action(
        parse_job_name(job.name), lease_id, approval(), None, None
    )

    cancelled = await world.manager.cancel_action("acme", *parse_action_name(action.name), "")
    [listed], token = await world.manager.list_actions("acme", parse_job_name(job.name), [], 0, "")

    assert cancelled.state == listed.state == Action.State.STATE_CANCELLED and token == ""
    with pytest.raises(AgentrtError) as raised:
        await world.manager.list_actions(
            "acme", parse_job_name(job.name), [Action.State.STATE_UNSPECIFIED], 0, ""
        )
    assert raised.value.metadata["field"] == "states"
