"""The ActionStore conformance suite: every action store behaves alike.

Run against the JobStores' own actions on SQLite and PostgreSQL, and against
RedisActionStore (actions in Redis, jobs on PostgreSQL). The jobs themselves are always
driven through the JobStore (`store`); actions through the store under test (`actions`).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis.asyncio
from agentrt.common.v1.common_pb2 import ErrorReason, RuntimeEvent
from agentrt.jobs.v1.jobs_pb2 import Action, ActionKind, Checkpoint, Job
from google.protobuf.struct_pb2 import Struct

from services.jobs import states
from services.jobs.actions import (
    ActionNotFound,
    ActionNotPending,
    ResumeTokenInvalid,
    hash_resume_token,
)
from services.jobs.store import (
    ActionRef,
    ActionStore,
    JobStore,
    NewAction,
    Resolution,
    TokenRef,
)
from services.jobs.store_redis import RedisActionStore
from services.kit.errors import FieldInvalid, JobNotFound, LeaseLost, RequestIdReused
from services.kit.names import parse_action_name
from services.kit.storage import StorageConfig
from tests.services.jobs.conftest import create, seconds
from tests.services.jobs.test_store_conformance import (
    LEASE,
    checkpoint,
    history,
    id_of,
    lease_one,
    types,
)

BACKENDS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.integration),
    pytest.param("redis", marks=pytest.mark.integration),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Where the actions under test are kept."""
    return str(request.param)


@pytest.fixture
def storage_config(
    backend: str, request: pytest.FixtureRequest, sqlite_path: Path
) -> StorageConfig:
    """The jobs' database: PostgreSQL under the Redis action store, as deployed."""
    if backend == "sqlite":
        return StorageConfig("sqlite", sqlite_path, None, "jobs")
    return StorageConfig("postgres", None, request.getfixturevalue("pg_dsn"), "jobs")


@pytest.fixture
async def actions(
    backend: str, store: JobStore, request: pytest.FixtureRequest
) -> AsyncIterator[ActionStore]:
    if backend != "redis":
        yield store
        return
    # Its own prefix and clean-up: the async redis_prefix fixture cannot be requested here.
    prefix = f"agentrt-test:{secrets.token_hex(6)}"
    client = redis.asyncio.Redis.from_url(request.getfixturevalue("redis_url"))
    try:
        yield RedisActionStore(client, store, prefix)
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.unlink(*keys)
        await client.aclose()


TIMEOUT = timedelta(seconds=60)
"""How long the tests' actions stay pending: they expire at seconds(2 + 60)."""


def struct(**fields: str | bool) -> Struct:
    value = Struct()
    value.update(fields)
    return value


def approval(timeout: timedelta = TIMEOUT) -> NewAction:
    return NewAction(
        ActionKind.ACTION_KIND_APPROVAL,
        struct(tool="send_email", to="bob@example.com"),
        struct(approved=False),
        timeout,
    )


def ref(action: Action, tenant: str = "acme") -> ActionRef:
    return ActionRef(tenant, *parse_action_name(action.name))


def by_token(action: Action, tenant: str = "acme", token: str = "") -> TokenRef:
    return TokenRef(tenant, hash_resume_token(token or action.resume_token))


def approve(principal: str = "carol", request_id: str = "", approved: bool = True) -> Resolution:
    return Resolution(struct(approved=approved), principal, request_id)


async def waiting_job(
    store: JobStore, actions: ActionStore, tenant: str = "acme", timeout: timedelta = TIMEOUT
) -> tuple[Job, Action]:
    """A job leased at 1 s that required an approval at 2 s (with checkpoint(1))."""
    job = await create(store, tenant=tenant)
    lease = await lease_one(store, at=1)
    action = await actions.require_action(
        id_of(job), lease.lease_id, approval(timeout), checkpoint(1), seconds(2)
    )
    return job, action


async def snapshot(
    store: JobStore, actions: ActionStore, job: Job
) -> tuple[Job, list[RuntimeEvent], list[Action]]:
    """Everything a refused call must leave as it was."""
    listed, _ = await actions.list_actions(job.tenant, id_of(job), [], 100, "")
    return await store.get_job(None, id_of(job)), await history(store, job), listed


# RequireAction


async def test_require_makes_the_job_wait_without_a_lease(
    store: JobStore, actions: ActionStore
) -> None:
    job, action = await waiting_job(store, actions)

    assert action.state == Action.State.STATE_PENDING
    assert action.kind == ActionKind.ACTION_KIND_APPROVAL
    assert action.name.startswith(f"{job.name}/actions/")
    assert action.payload == struct(tool="send_email", to="bob@example.com")
    assert action.timeout_outcome == struct(approved=False)
    assert action.create_time.ToDatetime(tzinfo=seconds(0).tzinfo) == seconds(2)
    assert action.expire_time.ToDatetime(tzinfo=seconds(0).tzinfo) == seconds(62)
    token = base64.urlsafe_b64decode(action.resume_token + "=")
    assert len(action.resume_token) == 43 and len(token) == 32

    waiting = await store.get_job("acme", id_of(job))
    assert waiting.state == states.WAITING and waiting.turns == 1
    events = await history(store, job)
    assert types(events)[-2:] == ["ACTION_REQUIRED", "JOB_WAITING"]
    assert events[-2].action.action == action.name and events[-2].action.kind == "approval"
    assert events[-1].job_state == states.WAITING
    assert (await store.lease_jobs("w2", 1, LEASE, seconds(3))).leases == []
    shown = await actions.get_action("acme", *parse_action_name(action.name))
    assert shown.resume_token == "" and shown.state == Action.State.STATE_PENDING


async def test_require_with_a_lost_lease_changes_nothing(
    store: JobStore, actions: ActionStore
) -> None:
    job = await create(store)
    lease = await lease_one(store)
    before = await snapshot(store, actions, job)

    with pytest.raises(LeaseLost):
        await actions.require_action(id_of(job), "not-the-lease", approval(), None, seconds(2))
    with pytest.raises(JobNotFound):
        await actions.require_action("0" * 26, lease.lease_id, approval(), None, seconds(2))

    assert await snapshot(store, actions, job) == before


async def test_a_waiting_job_has_released_its_lease(store: JobStore, actions: ActionStore) -> None:
    job = await create(store)
    lease = await lease_one(store)
    await actions.require_action(id_of(job), lease.lease_id, approval(), None, seconds(2))

    with pytest.raises(LeaseLost) as raised:
        await store.heartbeat(id_of(job), lease.lease_id, LEASE, seconds(3))
    assert raised.value.state == "JOB_STATE_WAITING"
    with pytest.raises(LeaseLost):
        await actions.require_action(id_of(job), lease.lease_id, approval(), None, seconds(3))


# ResolveAction


async def test_resolve_by_token_queues_the_job_to_continue_from_its_checkpoint(
    store: JobStore, actions: ActionStore
) -> None:
    job, action = await waiting_job(store, actions)

    resolved = await actions.resolve_action(by_token(action), approve(), seconds(5))

    assert resolved.name == action.name and resolved.state == Action.State.STATE_RESOLVED
    assert resolved.outcome == struct(approved=True) and resolved.resolved_by == "carol"
    assert resolved.resolve_time.ToDatetime(tzinfo=seconds(0).tzinfo) == seconds(5)
    assert resolved.resume_token == ""
    assert (await store.get_job("acme", id_of(job))).state == states.QUEUED
    events = await history(store, job)
    assert types(events)[-2:] == ["ACTION_RESOLVED", "JOB_REQUEUED"]
    assert events[-2].action.outcome == struct(approved=True)
    assert events[-1].job_state == states.QUEUED
    lease = await lease_one(store, "w2", at=6)
    assert lease.job.name == job.name and lease.checkpoint == checkpoint(1)
    assert lease.awaited_action == action.name


async def test_each_resuming_lease_names_the_action_that_woke_the_job(
    store: JobStore, actions: ActionStore
) -> None:
    job = await create(store)
    lease = await lease_one(store, at=1)
    assert lease.awaited_action == ""
    first = await actions.require_action(
        id_of(job), lease.lease_id, approval(), checkpoint(1), seconds(2)
    )
    await actions.resolve_action(ref(first), approve(), seconds(3))

    lease = await lease_one(store, at=4)
    assert lease.awaited_action == first.name
    second = await actions.require_action(
        id_of(job), lease.lease_id, approval(), checkpoint(2), seconds(5)
    )
    await actions.cancel_action(ref(second), "not needed", seconds(6))

    assert (await lease_one(store, at=7)).awaited_action == second.name


async def test_resolve_by_name(store: JobStore, actions: ActionStore) -> None:
    job, action = await waiting_job(store, actions)

    resolved = await actions.resolve_action(ref(action), approve(approved=False), seconds(5))

    assert resolved.state == Action.State.STATE_RESOLVED
    assert resolved.outcome == struct(approved=False)
    assert (await store.get_job("acme", id_of(job))).state == states.QUEUED


async def test_a_used_token_is_invalid_and_changes_nothing(
    store: JobStore, actions: ActionStore
) -> None:
    job, action = await waiting_job(store, actions)
    await actions.resolve_action(by_token(action), approve(), seconds(5))
    before = await snapshot(store, actions, job)

    with pytest.raises(ResumeTokenInvalid) as raised:
        await actions.resolve_action(by_token(action), approve("dave"), seconds(6))
    assert raised.value.reason == ErrorReason.ERROR_REASON_RESUME_TOKEN_INVALID
    assert raised.value.code == "FAILED_PRECONDITION"
    with pytest.raises(ActionNotPending) as by_name:
        await actions.resolve_action(ref(action), approve("dave"), seconds(6))
    assert by_name.value.reason == ErrorReason.ERROR_REASON_ACTION_NOT_PENDING
    assert by_name.value.metadata["state"] == "STATE_RESOLVED"

    assert await snapshot(store, actions, job) == before


async def test_an_expired_token_is_invalid_and_changes_nothing(
    store: JobStore, actions: ActionStore
) -> None:
    job, action = await waiting_job(store, actions)
    before = await snapshot(store, actions, job)

    with pytest.raises(ResumeTokenInvalid):
        await actions.resolve_action(by_token(action), approve(), seconds(62))
    with pytest.raises(ActionNotPending) as by_name:
        await actions.resolve_action(ref(action), approve(), seconds(62))
    assert by_name.value.metadata["state"] == "STATE_EXPIRED"

    assert await snapshot(store, actions, job) == before


async def test_another_tenant_learns_nothing(store: JobStore, actions: ActionStore) -> None:
    job, action = await waiting_job(store, actions, tenant="acme")
    before = await snapshot(store, actions, job)

    with pytest.raises(ResumeTokenInvalid) as theirs:
        await actions.resolve_action(by_token(action, "globex"), approve(), seconds(5))
    with pytest.raises(ResumeTokenInvalid) as unknown:
        await actions.resolve_action(by_token(action, token="x" * 43), approve(), seconds(5))
    assert str(theirs.value) == str(unknown.value) and theirs.value.metadata == {}
    with pytest.raises(ActionNotFound) as by_name:
        await actions.resolve_action(ref(action, "globex"), approve(), seconds(5))
    assert by_name.value.code == "NOT_FOUND"
    with pytest.raises(ActionNotFound):
        await actions.cancel_action(ref(action, "globex"), "no", seconds(5))
    with pytest.raises(ActionNotFound):
        await actions.get_action("globex", *parse_action_name(action.name))
    with pytest.raises(JobNotFound):
        await actions.list_actions("globex", id_of(job), [], 10, "")

    assert await snapshot(store, actions, job) == before


async def test_a_retried_resolution_returns_the_same_action(
    store: JobStore, actions: ActionStore
) -> None:
    job, action = await waiting_job(store, actions)
    first = await actions.resolve_action(by_token(action), approve(request_id="r-1"), seconds(5))
    before = await snapshot(store, actions, job)

    again = await actions.resolve_action(by_token(action), approve(request_id="r-1"), seconds(7))
    by_name = await actions.resolve_action(ref(action), approve(request_id="r-1"), seconds(7))

    assert again == first and by_name == first
    with pytest.raises(RequestIdReused):
        await actions.resolve_action(
            by_token(action), approve(request_id="r-1", approved=False), seconds(7)
        )
    with pytest.raises(ResumeTokenInvalid):
        await actions.resolve_action(by_token(action), approve(request_id="r-2"), seconds(7))
    assert await snapshot(store, actions, job) == before


async def test_of_100_concurrent_resolutions_exactly_one_succeeds(
    store: JobStore, actions: ActionStore
) -> None:
    job, action = await waiting_job(store, actions)

    results = await asyncio.gather(
        *(
            actions.resolve_action(by_token(action), approve(f"p{n}"), seconds(5))
            for n in range(100)
        ),
        return_exceptions=True,
    )

    won = [result for result in results if isinstance(result, Action)]
    lost = [result for result in results if not isinstance(result, Action)]
    assert len(won) == 1 and len(lost) == 99
    assert all(isinstance(error, ResumeTokenInvalid) for error in lost)
    stored = await actions.get_action("acme", *parse_action_name(action.name))
    assert stored.resolved_by == won[0].resolved_by
    assert types(await history(store, job)).count("ACTION_RESOLVED") == 1
    assert types(await history(store, job)).count("JOB_REQUEUED") == 1


# CancelAction, GetAction, ListActions


async def test_cancel_queues_the_job_and_the_action_stays_cancelled(
    store: JobStore, actions: ActionStore
) -> None:
    job, action = await waiting_job(store, actions)

    cancelled = await actions.cancel_action(ref(action), "not needed", seconds(5))

    assert cancelled.state == Action.State.STATE_CANCELLED and not cancelled.HasField("outcome")
    assert (await store.get_job("acme", id_of(job))).state == states.QUEUED
    events = await history(store, job)
    assert types(events)[-1] == "JOB_REQUEUED"
    assert action.name in events[-1].attempt.reason and "not needed" in events[-1].attempt.reason
    before = await snapshot(store, actions, job)
    with pytest.raises(ActionNotPending):
        await actions.cancel_action(ref(action), "again", seconds(6))
    with pytest.raises(ResumeTokenInvalid):
        await actions.resolve_action(by_token(action), approve(), seconds(6))
    assert await snapshot(store, actions, job) == before


async def test_list_pages_oldest_first_and_filters_by_state(
    store: JobStore, actions: ActionStore
) -> None:
    job = await create(store)
    made = []
    for n in range(3):
        lease = await lease_one(store, at=10 * n + 1)
        made.append(
            await actions.require_action(
                id_of(job), lease.lease_id, approval(), None, seconds(10 * n + 2)
            )
        )
        if n < 2:
            await actions.resolve_action(ref(made[-1]), approve(), seconds(10 * n + 3))

    first, token = await actions.list_actions("acme", id_of(job), [], 2, "")
    second, last = await actions.list_actions("acme", id_of(job), [], 2, token)
    pending, _ = await actions.list_actions(
        "acme", id_of(job), [Action.State.STATE_PENDING], 10, ""
    )

    assert [a.name for a in first + second] == [a.name for a in made]
    assert token and last == ""
    assert [a.name for a in pending] == [made[2].name]
    assert all(a.resume_token == "" for a in first + second)


# Expiry, and jobs that end while waiting


async def test_expiry_applies_the_timeout_outcome_and_queues_the_job(
    store: JobStore, actions: ActionStore
) -> None:
    job, action = await waiting_job(store, actions)
    assert await actions.expire_actions(seconds(61), 10) == []

    [expired] = await actions.expire_actions(seconds(62), 10)

    assert expired.name == action.name and expired.state == Action.State.STATE_EXPIRED
    assert expired.outcome == struct(approved=False)
    assert (await store.get_job("acme", id_of(job))).state == states.QUEUED
    events = await history(store, job)
    assert types(events)[-2:] == ["ACTION_EXPIRED", "JOB_REQUEUED"]
    assert events[-2].action.outcome == struct(approved=False)
    assert await actions.expire_actions(seconds(63), 10) == []


async def test_settling_an_expired_action_is_an_error_and_changes_nothing(
    store: JobStore, actions: ActionStore
) -> None:
    job, action = await waiting_job(store, actions)
    await actions.expire_actions(seconds(62), 10)
    before = await snapshot(store, actions, job)

    with pytest.raises(ActionNotPending) as by_name:
        await actions.resolve_action(ref(action), approve(), seconds(63))
    assert by_name.value.metadata["state"] == "STATE_EXPIRED"
    with pytest.raises(ResumeTokenInvalid):
        await actions.resolve_action(by_token(action), approve(), seconds(63))
    with pytest.raises(ActionNotPending):
        await actions.cancel_action(ref(action), "late", seconds(63))

    assert await snapshot(store, actions, job) == before


async def test_cancelling_a_waiting_job_cancels_its_pending_action(
    store: JobStore, actions: ActionStore
) -> None:
    job, action = await waiting_job(store, actions)

    await store.cancel(None, id_of(job), "stop", seconds(5))

    stored = await actions.get_action("acme", *parse_action_name(action.name))
    assert stored.state == Action.State.STATE_CANCELLED
    with pytest.raises(ResumeTokenInvalid):
        await actions.resolve_action(by_token(action), approve(), seconds(6))
    assert await actions.expire_actions(seconds(100), 10) == []
    assert (await store.get_job("acme", id_of(job))).state == states.CANCELLED


async def test_a_waiting_job_past_its_deadline_times_out_with_its_action(
    store: JobStore, actions: ActionStore
) -> None:
    job, action = await waiting_job(store, actions, timeout=timedelta(hours=2))

    [timed_out] = await store.expire_deadlines(seconds(601), 10)

    assert timed_out.name == job.name and timed_out.state == states.TIMED_OUT
    stored = await actions.get_action("acme", *parse_action_name(action.name))
    assert stored.state == Action.State.STATE_CANCELLED


async def test_a_checkpoint_behind_the_job_is_refused(
    store: JobStore, actions: ActionStore
) -> None:
    job = await create(store)
    lease = await lease_one(store)
    await store.checkpoint(id_of(job), lease.lease_id, checkpoint(2), None, None, seconds(2))
    before = await snapshot(store, actions, job)

    with pytest.raises(FieldInvalid) as raised:
        await actions.require_action(
            id_of(job), lease.lease_id, approval(), Checkpoint(turn=1), seconds(3)
        )
    assert raised.value.field == "checkpoint.turn"
    assert await snapshot(store, actions, job) == before
