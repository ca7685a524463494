"""JobManager for job trees: what it refuses, and whom it tells when a child ends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import pytest
from agentrt.jobs.v1.jobs_pb2 import Action, ActionKind, Job, JobResult, JobSpec
from google.protobuf.struct_pb2 import Struct

from services.jobs import states
from services.jobs.store import JobFilter, JobStore
from services.jobs.validation import JobLimits
from services.kit.errors import AgentrtError
from services.kit.names import parse_job_name
from tests.services.jobs.conftest import make_spec
from tests.services.jobs.test_manager import World, make_world


def spec_with(change: Callable[[JobSpec], object]) -> JobSpec:
    spec = make_spec()
    change(spec)
    return spec


INVALID_TREE_SPECS = {
    "too many children": (
        spec_with(lambda s: setattr(s.orchestration, "max_child_jobs", 1001)),
        "spec.orchestration.max_child_jobs",
    ),
    "a negative child count": (
        spec_with(lambda s: setattr(s.orchestration, "max_child_jobs", -1)),
        "spec.orchestration.max_child_jobs",
    ),
    "too deep": (
        spec_with(lambda s: setattr(s.orchestration, "max_depth", 11)),
        "spec.orchestration.max_depth",
    ),
    "too parallel": (
        spec_with(lambda s: setattr(s.orchestration, "max_parallel", 101)),
        "spec.orchestration.max_parallel",
    ),
    "a negative child timeout": (
        spec_with(lambda s: s.orchestration.child_timeout.FromSeconds(-1)),
        "spec.orchestration.child_timeout",
    ),
    "a child timeout past the longest job": (
        spec_with(lambda s: s.orchestration.child_timeout.FromTimedelta(timedelta(days=2))),
        "spec.orchestration.child_timeout",
    ),
    "an unknown child failure mode": (
        spec_with(lambda s: setattr(s.orchestration, "on_child_failure", 7)),
        "spec.orchestration.on_child_failure",
    ),
    "a node too long": (spec_with(lambda s: setattr(s, "node", "n" * 129)), "spec.node"),
    "a node with a line break": (spec_with(lambda s: setattr(s, "node", "a\nb")), "spec.node"),
}


@pytest.fixture
def world(store: JobStore) -> World:
    return make_world(store, JobLimits(poll_seconds=30))


@pytest.mark.parametrize(("spec", "field"), INVALID_TREE_SPECS.values(), ids=INVALID_TREE_SPECS)
async def test_an_invalid_tree_spec_is_refused(world: World, spec: JobSpec, field: str) -> None:
    with pytest.raises(AgentrtError) as raised:
        await world.manager.create_job("acme", "alice", spec, "", "")

    assert (raised.value.code, raised.value.reason_name) == ("INVALID_ARGUMENT", "FIELD_INVALID")
    assert raised.value.metadata["field"] == field
    assert await world.store.list_jobs("acme", JobFilter(), 10, "") == ([], "")


async def test_the_bounds_of_a_tree_spec_are_accepted(world: World) -> None:
    spec = make_spec()
    spec.node = "n" * 128
    spec.orchestration.max_child_jobs = 1000
    spec.orchestration.max_depth = 10
    spec.orchestration.max_parallel = 100
    spec.orchestration.child_timeout.FromTimedelta(timedelta(hours=24))

    job, created = await world.manager.create_job("acme", "alice", spec, "", "")

    assert created and job.spec.orchestration == spec.orchestration


async def running_parent(world: World) -> tuple[Job, str, Job]:
    """A leased top-level job with one queued child."""
    parent, _ = await world.manager.create_job("acme", "alice", make_spec(), "", "")
    [lease] = await world.manager.lease_jobs("w1", 1, 30, 0)
    child_spec = make_spec(parent=parent.name)
    child_spec.node = "step"
    child, _ = await world.manager.create_job("acme", "alice", child_spec, "", "")
    return parent, lease.lease_id, child


@pytest.mark.parametrize(
    ("children", "reason", "field"),
    [
        ([], "FIELD_REQUIRED", "children"),
        (["jobs/not-an-id"], "NAME_INVALID", "children[0]"),
        (["jobs/" + "0" * 26] * 1001, "FIELD_INVALID", "children"),
    ],
)
async def test_invalid_await_requests_are_refused(
    world: World, children: list[str], reason: str, field: str
) -> None:
    parent, lease_id, _ = await running_parent(world)

    with pytest.raises(AgentrtError) as raised:
        await world.manager.await_children(parse_job_name(parent.name), lease_id, children, None)

    assert (raised.value.code, raised.value.reason_name) == ("INVALID_ARGUMENT", reason)
    assert raised.value.metadata["field"] == field
    assert (await world.store.get_job(None, parse_job_name(parent.name))).state == states.RUNNING


async def test_a_childs_end_wakes_a_worker_waiting_for_its_parent(world: World) -> None:
    parent, lease_id, child = await running_parent(world)
    [child_lease] = await world.manager.lease_jobs("w1", 1, 30, 0)
    job, waiting = await world.manager.await_children(
        parse_job_name(parent.name), lease_id, [child.name, child.name], None
    )
    assert waiting and job.state == states.WAITING
    # The poll interval is 30 s: only the wake-up can answer this wait in time.
    polling = asyncio.create_task(world.manager.lease_jobs("w2", 1, 30, 20))
    await asyncio.sleep(0.1)

    await world.manager.finish(
        parse_job_name(child.name),
        child_lease.lease_id,
        states.SUCCEEDED,
        JobResult(output="done"),
        None,
        None,
        None,
    )

    [resumed] = await asyncio.wait_for(polling, 5)
    assert resumed.job.name == parent.name and resumed.job.attempt == 2


async def test_an_overdue_child_is_swept_when_leasing_finds_it(world: World) -> None:
    parent, lease_id, child = await running_parent(world)
    spec = make_spec(parent=parent.name, timeout=10)
    slow, _ = await world.manager.create_job("acme", "alice", spec, "", "")
    await world.manager.await_children(parse_job_name(parent.name), lease_id, [slow.name], None)
    world.clock.now += timedelta(seconds=11)

    first = await world.manager.lease_jobs("w1", 5, 30, 0)

    # The overdue child was timed out at once, which queued its parent.
    assert [lease.job.name for lease in first] == [child.name]
    assert (await world.store.get_job(None, parse_job_name(slow.name))).state == states.TIMED_OUT
    [again] = await world.manager.lease_jobs("w1", 5, 30, 0)
    assert again.job.name == parent.name


async def test_action_expiry_leaves_a_parent_waiting_on_children_alone(world: World) -> None:
    parent, lease_id, child = await running_parent(world)
    parent_id = parse_job_name(parent.name)
    approval = Action(kind=ActionKind.ACTION_KIND_APPROVAL, payload=Struct())
    action = await world.manager.require_action(parent_id, lease_id, approval, None, None)
    outcome = Struct()
    outcome.update({"approved": True})
    await world.manager.resolve_action("acme", "bob", action.resume_token, outcome, "")
    leases = await world.manager.lease_jobs("w1", 5, 30, 0)
    [again] = [lease for lease in leases if lease.job.name == parent.name]
    await world.manager.await_children(parent_id, again.lease_id, [child.name], None)
    world.clock.now += timedelta(days=30)

    assert await world.manager.expire_actions() == []
    assert (await world.store.get_job(None, parent_id)).state == states.WAITING
