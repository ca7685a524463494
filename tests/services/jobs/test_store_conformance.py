"""The JobStore conformance suite, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from agentrt.common.v1.common_pb2 import (
    ChildEvent,
    ErrorReason,
    EventType,
    Failure,
    JobState,
    Message,
    Role,
    RuntimeEvent,
    ToolCall,
    ToolCalled,
    Usage,
    UsageRecorded,
)
from agentrt.jobs.v1.jobs_pb2 import Checkpoint, Job, JobResult, JobSpec, OrchestrationConfig

from services.jobs import states
from services.jobs.store import JobFilter, JobLease, JobStore
from services.jobs.trees import TreeLimitExceeded
from services.kit.errors import (
    FieldInvalid,
    IllegalTransition,
    JobNotFound,
    LeaseLost,
    RequestIdReused,
)
from services.kit.names import job_name, parse_job_name
from tests.services.jobs.conftest import (
    T0,
    SetState,
    create,
    make_new_job,
    make_spec,
    seconds,
)

LEASE = 30.0
"""Seconds a lease lasts in these tests."""


def id_of(job: Job) -> str:
    return parse_job_name(job.name)


async def history(store: JobStore, job: Job) -> list[RuntimeEvent]:
    events, _ = await store.list_events(None, id_of(job), 0, 1000)
    return events


def types(events: list[RuntimeEvent]) -> list[str]:
    return [EventType.Name(event.type).removeprefix("EVENT_TYPE_") for event in events]


async def lease_one(store: JobStore, worker: str = "w1", at: float = 1) -> JobLease:
    batch = await store.lease_jobs(worker, 1, LEASE, seconds(at))
    assert len(batch.leases) == 1
    return batch.leases[0]


def checkpoint(turn: int, text: str = "") -> Checkpoint:
    return Checkpoint(
        turn=turn,
        messages=[Message(role=Role.ROLE_ASSISTANT, content=text or f"turn {turn}")],
        usage=Usage(input_tokens=10 * turn, output_tokens=turn, total_tokens=11 * turn),
        state=b"operator-state",
    )


# Creation and idempotency


async def test_create_makes_a_queued_job_and_its_created_event(store: JobStore) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    new = make_new_job(request_id="req-1", trace_id=trace_id)
    job, created = await store.create_job(new, T0)

    assert created
    assert job.state == states.QUEUED and job.tenant == "acme" and job.principal == "alice"
    assert job.spec == new.spec and job.request_id == "req-1" and job.trace_id == trace_id
    assert job.create_time.ToDatetime(tzinfo=T0.tzinfo) == T0
    assert job.deadline.ToDatetime(tzinfo=T0.tzinfo) == T0 + timedelta(minutes=10)
    assert job.attempt == 0 and not job.HasField("start_time")
    assert job.last_event_id == f"{id_of(job)}.1"
    assert await store.get_job("acme", id_of(job)) == job
    [event] = await history(store, job)
    assert event.id == f"{id_of(job)}.1" and event.sequence == 1
    assert types([event]) == ["JOB_CREATED"]
    assert (event.tenant, event.job, event.trace_id) == ("acme", job.name, trace_id)
    assert event.job_state == states.QUEUED and event.time == job.create_time


async def test_a_repeated_create_returns_the_first_job(store: JobStore) -> None:
    first, _ = await store.create_job(make_new_job(request_id="req-1"), T0)
    again, created = await store.create_job(make_new_job(request_id="req-1"), seconds(5))

    assert not created
    assert again == first
    assert len(await history(store, first)) == 1


async def test_a_request_id_reused_with_another_spec_is_refused(store: JobStore) -> None:
    await store.create_job(make_new_job(request_id="req-1"), T0)
    other = make_new_job(request_id="req-1", spec=make_spec("Something else"))

    with pytest.raises(RequestIdReused) as raised:
        await store.create_job(other, T0)

    assert raised.value.reason == ErrorReason.ERROR_REASON_REQUEST_ID_REUSED
    jobs, _ = await store.list_jobs("acme", JobFilter(), 10, "")
    assert len(jobs) == 1


async def test_request_ids_are_per_tenant_and_empty_ones_never_dedupe(store: JobStore) -> None:
    acme, _ = await store.create_job(make_new_job("acme", "req-1"), T0)
    globex, created = await store.create_job(make_new_job("globex", "req-1"), T0)
    assert created and globex.name != acme.name

    first, _ = await store.create_job(make_new_job("acme", ""), T0)
    second, created = await store.create_job(make_new_job("acme", ""), T0)
    assert created and second.name != first.name


async def test_concurrent_creates_with_one_request_id_make_one_job(store: JobStore) -> None:
    results = await asyncio.gather(
        *(store.create_job(make_new_job(request_id="req-1"), T0) for _ in range(20))
    )

    assert sum(created for _, created in results) == 1
    assert len({job.name for job, _ in results}) == 1
    jobs, _ = await store.list_jobs("acme", JobFilter(), 50, "")
    assert len(jobs) == 1
    assert len(await history(store, jobs[0])) == 1


async def test_another_tenants_job_is_not_found(store: JobStore) -> None:
    job = await create(store, tenant="acme")

    with pytest.raises(JobNotFound):
        await store.get_job("globex", id_of(job))
    with pytest.raises(JobNotFound):
        await store.list_events("globex", id_of(job), 0, 10)
    with pytest.raises(JobNotFound):
        await store.cancel("globex", id_of(job), "", T0)
    with pytest.raises(JobNotFound):
        await store.get_job(None, "01arz3ndektsv4rrffq69g5fav")
    assert (await store.get_job(None, id_of(job))).name == job.name
    assert (await store.get_job("acme", id_of(job))).state == states.QUEUED


# Leases


async def test_lease_starts_queued_jobs_oldest_first(store: JobStore) -> None:
    jobs = [await create(store, seconds(n)) for n in (2, 0, 1)]

    batch = await store.lease_jobs("w1", 2, LEASE, seconds(10))

    assert [lease.job.name for lease in batch.leases] == [jobs[1].name, jobs[2].name]
    for lease in batch.leases:
        assert lease.job.state == states.RUNNING and lease.job.attempt == 1
        assert lease.expire_time == seconds(10 + LEASE) and lease.checkpoint is None
        assert lease.job.start_time.ToDatetime(tzinfo=T0.tzinfo) == seconds(10)
        started = (await history(store, lease.job))[-1]
        assert types([started]) == ["JOB_STARTED"] and started.sequence == 2
        assert (started.attempt.attempt, started.attempt.worker) == (1, "w1")
    assert [lease.job.name for lease in (await store.lease_jobs("w2", 5, LEASE, T0)).leases] == [
        jobs[0].name
    ]
    assert (await store.lease_jobs("w3", 5, LEASE, seconds(11))).leases == []


async def test_live_jobs_counts_unfinished_jobs_and_the_oldest_queued(store: JobStore) -> None:
    empty = await store.live_jobs()
    assert empty.counts == {states.QUEUED: 0, states.RUNNING: 0, states.WAITING: 0}
    assert empty.oldest_queued is None
    for n in (2, 0, 1, 3):
        await create(store, seconds(n))
    lease = await lease_one(store, at=5)
    await store.finish(
        id_of(lease.job), lease.lease_id, states.SUCCEEDED, JobResult(), None, None, seconds(6)
    )
    await lease_one(store, at=7)

    live = await store.live_jobs()
    assert live.counts == {states.QUEUED: 2, states.RUNNING: 1, states.WAITING: 0}
    assert live.oldest_queued == seconds(2)
    assert await store.pending_actions() == 0


async def test_a_job_waiting_on_an_action_is_counted_with_its_pending_action(
    store: JobStore,
) -> None:
    # Imported here: that suite imports this module's helpers.

    # Imported here: that suite imports this module's helpers.
    from tests.services.jobs.test_action_store_conformance import waiting_job

    await waiting_job(store, store)
    live = await store.live_jobs()
    assert live.counts == {states.QUEUED: 0, states.RUNNING: 0, states.WAITING: 1}
    assert await store.pending_actions() == 1


async def test_concurrent_workers_never_get_the_same_job(store: JobStore) -> None:
    for n in range(20):
        await create(store, seconds(n))

    batches = await asyncio.gather(
        *(store.lease_jobs(f"w{n}", 3, LEASE, seconds(30)) for n in range(8))
    )
    leased = [lease.job.name for batch in batches for lease in batch.leases]
    while rest := (await store.lease_jobs("late", 3, LEASE, seconds(31))).leases:
        leased += [lease.job.name for lease in rest]

    assert len(leased) == 20 and len(set(leased)) == 20


async def test_an_expired_lease_is_taken_over_from_the_last_checkpoint(store: JobStore) -> None:
    job = await create(store)
    first = await lease_one(store, "w1", at=1)
    await store.checkpoint(id_of(job), first.lease_id, checkpoint(1), None, None, seconds(2))

    assert (await store.lease_jobs("w2", 1, LEASE, seconds(1 + LEASE - 1))).leases == []
    second = await lease_one(store, "w2", at=1 + LEASE)

    assert second.job.attempt == 2 and second.lease_id != first.lease_id
    assert second.checkpoint == checkpoint(1)
    requeued, started = (await history(store, job))[-2:]
    assert types([requeued, started]) == ["JOB_REQUEUED", "JOB_STARTED"]
    assert (requeued.attempt.attempt, requeued.attempt.worker) == (1, "w1")
    assert requeued.job_state == states.QUEUED
    assert (started.attempt.attempt, started.attempt.worker) == (2, "w2")
    assert started.job_state == states.RUNNING


async def test_a_lease_batch_counts_its_takeovers(store: JobStore) -> None:
    crashed = await create(store)
    await lease_one(store, "w1", at=1)
    queued = await create(store, seconds(2))

    batch = await store.lease_jobs("w2", 5, LEASE, seconds(1 + LEASE))

    assert [lease.job.name for lease in batch.leases] == [crashed.name, queued.name]
    assert batch.takeovers == 1


async def test_ended_jobs_come_with_the_trace_parent_of_their_creator(store: JobStore) -> None:
    trace_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    new = replace(
        make_new_job(trace_id="4bf92f3577b34da6a3ce929d0e0e4736"), trace_parent=trace_parent
    )
    traced, _ = await store.create_job(new, T0)
    running = await create(store, seconds(1))
    lease = await lease_one(store, at=2)
    await store.finish(
        id_of(traced), lease.lease_id, states.SUCCEEDED, JobResult(), None, None, seconds(9)
    )
    cancelled = await create(store, seconds(3))
    await store.cancel(None, id_of(cancelled), "", seconds(4))

    ended = await store.ended_jobs(
        [id_of(traced), id_of(running), id_of(cancelled), "01arz3ndektsv4rrffq69g5fav"]
    )

    by_name = {e.job.name: e for e in ended}
    assert set(by_name) == {traced.name, cancelled.name}, "unfinished and unknown jobs left out"
    assert by_name[traced.name].trace_parent == trace_parent
    assert by_name[traced.name].job == await store.get_job(None, id_of(traced))
    assert by_name[cancelled.name].trace_parent == ""


async def test_the_old_worker_loses_its_lease_after_a_takeover(store: JobStore) -> None:
    job = await create(store)
    old = await lease_one(store, "w1", at=1)
    await lease_one(store, "w2", at=1 + LEASE)
    before = await store.get_job(None, id_of(job))
    events_before = await history(store, job)

    with pytest.raises(LeaseLost) as raised:
        await store.heartbeat(id_of(job), old.lease_id, LEASE, seconds(40))
    assert raised.value.metadata == {"state": "JOB_STATE_RUNNING"}
    with pytest.raises(LeaseLost):
        await store.finish(
            id_of(job), old.lease_id, states.SUCCEEDED, JobResult(), None, None, seconds(41)
        )
    with pytest.raises(LeaseLost):
        await store.checkpoint(id_of(job), old.lease_id, checkpoint(1), None, None, seconds(42))
    with pytest.raises(LeaseLost):
        await store.release(id_of(job), old.lease_id, "drain", seconds(43))

    assert await store.get_job(None, id_of(job)) == before
    assert await history(store, job) == events_before


async def test_a_heartbeat_extends_the_lease(store: JobStore) -> None:
    job = await create(store)
    lease = await lease_one(store, at=1)

    expire = await store.heartbeat(id_of(job), lease.lease_id, LEASE, seconds(25))

    assert expire == seconds(25 + LEASE)
    assert (await store.lease_jobs("w2", 1, LEASE, seconds(1 + LEASE + 1))).leases == []
    assert len(await history(store, job)) == 2
    with pytest.raises(JobNotFound):
        await store.heartbeat("01arz3ndektsv4rrffq69g5fav", lease.lease_id, LEASE, seconds(26))


# Checkpoints, finishing, releasing


async def test_a_checkpoint_records_the_turn_and_must_advance(store: JobStore) -> None:
    job = await create(store)
    lease = await lease_one(store)
    message = Message(role=Role.ROLE_ASSISTANT, content="turn 1")
    turn_usage = Usage(input_tokens=10, output_tokens=1, total_tokens=11)

    saved = await store.checkpoint(
        id_of(job),
        lease.lease_id,
        checkpoint(1),
        message,
        turn_usage,
        seconds(2),
        model="local-2026-01",
    )

    assert saved.turns == 1 and saved.usage == checkpoint(1).usage
    event, recorded = (await history(store, job))[-2:]
    assert types([event, recorded]) == ["TURN_COMPLETED", "USAGE_RECORDED"]
    assert event.job_state == states.RUNNING
    assert event.turn_completed.turn == 1
    assert event.turn_completed.message == message and event.turn_completed.usage == turn_usage
    assert event.turn_completed.model == "local-2026-01"
    # The turn's usage, charged in the same transaction, for billing consumers.
    assert recorded.usage_recorded == UsageRecorded(turn=1, usage=turn_usage, model="local-2026-01")
    assert recorded.sequence == event.sequence + 1 and saved.last_event_id == recorded.id
    for stale in (checkpoint(0), checkpoint(1, "another turn 1")):
        with pytest.raises(FieldInvalid) as raised:
            await store.checkpoint(id_of(job), lease.lease_id, stale, None, None, seconds(3))
        assert raised.value.metadata["field"] == "checkpoint.turn"
    assert await store.get_job(None, id_of(job)) == saved


async def test_a_repeated_checkpoint_changes_nothing(store: JobStore) -> None:
    job = await create(store)
    lease = await lease_one(store)
    called = ToolCalled(call=ToolCall(id="c1", name="calculator"), ok=True, output="42")
    saved = await store.checkpoint(
        id_of(job), lease.lease_id, checkpoint(1), None, Usage(total_tokens=3), seconds(2)
    )
    within = checkpoint(1, "after c1")
    for _ in range(2):  # a retry whose first try was saved
        again = await store.checkpoint(
            id_of(job), lease.lease_id, checkpoint(1), None, Usage(total_tokens=3), seconds(3)
        )
        assert again == saved
    for _ in range(2):
        progressed = await store.checkpoint(
            id_of(job), lease.lease_id, within, None, None, seconds(4), [called]
        )
    assert types(await history(store, job)) == [
        "JOB_CREATED",
        "JOB_STARTED",
        "TURN_COMPLETED",
        "USAGE_RECORDED",
        "TOOL_CALLED",
    ]
    assert progressed.last_event_id == (await history(store, job))[-1].id
    # A repeat needs the lease as any checkpoint does.
    with pytest.raises(LeaseLost):
        await store.checkpoint(id_of(job), "stale-lease", within, None, None, seconds(5))


async def test_tool_calls_are_checkpointed_within_a_turn_with_their_events(
    store: JobStore,
) -> None:
    job = await create(store)
    lease = await lease_one(store)
    calls = [ToolCall(id="c1", name="calculator"), ToolCall(id="c2", name="lookup")]
    message = Message(role=Role.ROLE_ASSISTANT, tool_calls=calls)
    first = ToolCalled(call=calls[0], ok=True, output="42")
    await store.checkpoint(
        id_of(job), lease.lease_id, checkpoint(1), message, None, seconds(2), [first]
    )
    within = checkpoint(1, "after c2")
    second = ToolCalled(call=calls[1], ok=False, output="denied by policy")

    saved = await store.checkpoint(
        id_of(job), lease.lease_id, within, None, None, seconds(3), [second]
    )

    assert saved.turns == 1
    events = (await history(store, job))[-3:]
    assert types(events) == ["TURN_COMPLETED", "TOOL_CALLED", "TOOL_CALLED"]
    assert [e.tool_called for e in events[1:]] == [first, second]
    with pytest.raises(FieldInvalid):
        await store.checkpoint(
            id_of(job), lease.lease_id, checkpoint(0), None, None, seconds(4), [second]
        )
    assert (await lease_after_expiry(store, job)).checkpoint == within


async def lease_after_expiry(store: JobStore, job: Job) -> JobLease:
    """The job leased again once its lease has long expired: with its latest checkpoint."""
    batch = await store.lease_jobs("w2", 1, LEASE, seconds(100))
    [lease] = batch.leases
    assert lease.job.name == job.name
    return lease


async def test_finish_succeeded_keeps_the_result_and_usage(store: JobStore) -> None:
    job = await create(store)
    lease = await lease_one(store)
    result = JobResult(output="Lisbon", messages=[Message(role=Role.ROLE_ASSISTANT)])
    usage = Usage(input_tokens=50, output_tokens=5, total_tokens=55, cost="0.001250")

    done = await store.finish(
        id_of(job), lease.lease_id, states.SUCCEEDED, result, usage, checkpoint(2), seconds(9)
    )

    assert done.state == states.SUCCEEDED and done.result == result and done.usage == usage
    assert done.turns == 2 and done.end_time.ToDatetime(tzinfo=T0.tzinfo) == seconds(9)
    event = (await history(store, job))[-1]
    assert types([event]) == ["JOB_SUCCEEDED"] and event.job_state == states.SUCCEEDED
    assert event.job_succeeded.output == "Lisbon" and event.job_succeeded.usage == usage
    with pytest.raises(LeaseLost) as raised:
        await store.heartbeat(id_of(job), lease.lease_id, LEASE, seconds(10))
    assert raised.value.state == "JOB_STATE_SUCCEEDED"


async def test_finish_with_the_final_turn_records_turn_and_end_together(
    store: JobStore,
) -> None:
    job = await create(store)
    lease = await lease_one(store)
    answer = Message(role=Role.ROLE_ASSISTANT, content="Lisbon")
    turn_usage = Usage(input_tokens=40, output_tokens=4, total_tokens=44)
    final = checkpoint(1, "Lisbon")

    done = await store.finish(
        id_of(job),
        lease.lease_id,
        states.SUCCEEDED,
        JobResult(output="Lisbon"),
        turn_usage,
        final,
        seconds(3),
        answer,
        turn_usage,
        "local-2026-01",
    )

    assert done.turns == 1 and done.state == states.SUCCEEDED
    events = await history(store, job)
    assert types(events)[-3:] == ["TURN_COMPLETED", "USAGE_RECORDED", "JOB_SUCCEEDED"]
    turn = events[-3].turn_completed
    assert (turn.turn, turn.message, turn.usage) == (1, answer, turn_usage)
    assert turn.model == "local-2026-01"
    assert events[-2].usage_recorded == UsageRecorded(
        turn=1, usage=turn_usage, model="local-2026-01"
    )
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert done.last_event_id == events[-1].id


@pytest.mark.parametrize(
    ("state", "event_type"),
    [(states.FAILED, "JOB_FAILED"), (states.TIMED_OUT, "JOB_TIMED_OUT")],
)
async def test_finish_failed_or_timed_out_keeps_the_failure(
    store: JobStore, state: states.State, event_type: str
) -> None:
    job = await create(store)
    lease = await lease_one(store)
    failure = Failure(
        reason=ErrorReason.ERROR_REASON_BUDGET_EXCEEDED, message="over", metadata={"b": "1"}
    )

    done = await store.finish(id_of(job), lease.lease_id, state, failure, None, None, seconds(5))

    assert done.state == state and done.failure == failure
    event = (await history(store, job))[-1]
    assert types([event]) == [event_type] and event.failure == failure


async def test_finish_refuses_a_wrong_state_or_outcome_and_changes_nothing(
    store: JobStore,
) -> None:
    job = await create(store)
    lease = await lease_one(store)
    before = await store.get_job(None, id_of(job))
    attempts: list[tuple[states.State, JobResult | Failure, str]] = [
        (states.QUEUED, JobResult(), "state"),
        (states.CANCELLED, Failure(), "state"),
        (states.SUCCEEDED, Failure(), "result"),
        (states.FAILED, JobResult(), "failure"),
    ]
    for state, outcome, field in attempts:
        with pytest.raises(FieldInvalid) as raised:
            await store.finish(id_of(job), lease.lease_id, state, outcome, None, None, seconds(2))
        assert raised.value.metadata["field"] == field
    assert await store.get_job(None, id_of(job)) == before


async def test_release_requeues_the_job_for_another_attempt(store: JobStore) -> None:
    job = await create(store)
    lease = await lease_one(store, "w1")

    released = await store.release(id_of(job), lease.lease_id, "draining", seconds(3))

    assert released.state == states.QUEUED
    event = (await history(store, job))[-1]
    assert types([event]) == ["JOB_REQUEUED"] and event.attempt.reason == "draining"
    assert event.attempt.worker == "w1"
    again = await lease_one(store, "w2", at=4)
    assert again.job.attempt == 2
    with pytest.raises(LeaseLost):
        await store.heartbeat(id_of(job), lease.lease_id, LEASE, seconds(5))


# Cancellation


async def test_cancel_of_a_running_job_revokes_its_lease(store: JobStore) -> None:
    job = await create(store)
    lease = await lease_one(store)

    cancelled = await store.cancel("acme", id_of(job), "user asked", seconds(4))

    assert cancelled.state == states.CANCELLED
    assert cancelled.failure.reason == ErrorReason.ERROR_REASON_CANCELLED
    assert cancelled.failure.message == "user asked"
    event = (await history(store, job))[-1]
    assert types([event]) == ["JOB_CANCELLED"] and event.failure == cancelled.failure
    with pytest.raises(LeaseLost) as raised:
        await store.heartbeat(id_of(job), lease.lease_id, LEASE, seconds(5))
    assert raised.value.metadata == {"state": "JOB_STATE_CANCELLED"}
    with pytest.raises(LeaseLost):
        await store.checkpoint(id_of(job), lease.lease_id, checkpoint(1), None, None, seconds(5))
    assert (await store.lease_jobs("w2", 5, LEASE, seconds(100))).leases == []


async def test_cancel_reaches_every_unfinished_descendant(store: JobStore) -> None:
    parent = await create(store)
    child = await create(store, spec=make_spec(parent=parent.name))
    grandchild = await create(store, spec=make_spec(parent=child.name))
    finished = await create(store, spec=make_spec(parent=parent.name))
    await store.cancel(None, id_of(finished), "", seconds(1))
    unrelated = await create(store)

    await store.cancel("acme", id_of(parent), "", seconds(2))

    for descendant in (child, grandchild):
        cancelled = await store.get_job(None, id_of(descendant))
        assert cancelled.state == states.CANCELLED
        assert parent.name in cancelled.failure.message
        event = (await history(store, descendant))[-1]
        assert types([event]) == ["JOB_CANCELLED"] and event.parent_job != ""
    assert len(await history(store, finished)) == 2
    assert (await store.get_job(None, id_of(unrelated))).state == states.QUEUED


async def test_a_waiting_job_can_be_cancelled(store: JobStore, set_state: SetState) -> None:
    job = await create(store)
    await set_state(id_of(job), states.WAITING)

    assert (await store.cancel("acme", id_of(job), "", seconds(1))).state == states.CANCELLED


# Illegal transitions


async def _finish_as(store: JobStore, job: Job, state: states.State) -> None:
    if state == states.CANCELLED:
        await store.cancel(None, id_of(job), "", seconds(2))
        return
    if state == states.TIMED_OUT:
        await store.expire_deadlines(seconds(10 * 60 + 1), 10)
        return
    lease = await lease_one(store)
    outcome: JobResult | Failure = JobResult() if state == states.SUCCEEDED else Failure()
    await store.finish(id_of(job), lease.lease_id, state, outcome, None, None, seconds(2))


@pytest.mark.parametrize("state", sorted(states.TERMINAL))
async def test_a_finished_job_never_changes_again(store: JobStore, state: states.State) -> None:
    job = await create(store)
    await _finish_as(store, job, state)
    finished = await store.get_job(None, id_of(job))
    assert finished.state == state
    events = await history(store, job)
    now = seconds(20 * 60)

    with pytest.raises(IllegalTransition) as raised:
        await store.cancel(None, id_of(job), "", now)
    assert raised.value.metadata == {"state": JobState.Name(state)}
    for lease_id in ("", "01arz3ndektsv4rrffq69g5fav"):
        with pytest.raises(LeaseLost):
            await store.heartbeat(id_of(job), lease_id, LEASE, now)
        with pytest.raises(LeaseLost):
            await store.release(id_of(job), lease_id, "", now)
        with pytest.raises(LeaseLost):
            await store.checkpoint(id_of(job), lease_id, checkpoint(9), None, None, now)
        with pytest.raises(LeaseLost):
            await store.finish(id_of(job), lease_id, states.FAILED, Failure(), None, None, now)
    assert (await store.lease_jobs("w9", 5, LEASE, now)).leases == []
    assert await store.expire_deadlines(now, 10) == []
    assert await store.get_job(None, id_of(job)) == finished
    assert await history(store, job) == events


async def test_a_finish_racing_a_cancel_or_a_checkpoint_ends_the_job_once(
    store: JobStore,
) -> None:
    jobs = [await create(store, seconds(n)) for n in range(10)]
    leases = await lease_all(store)

    async def finish(job: Job) -> None:
        lease_id = leases[job.name].lease_id
        result = JobResult(output="ok")
        await store.finish(id_of(job), lease_id, states.SUCCEEDED, result, None, None, seconds(2))

    async def other(n: int, job: Job) -> None:
        if n % 2:
            await store.cancel(None, id_of(job), "stop", seconds(2))
        else:
            lease_id = leases[job.name].lease_id
            await store.checkpoint(id_of(job), lease_id, checkpoint(1), None, None, seconds(2))

    for n, job in enumerate(jobs):
        outcomes = await asyncio.gather(finish(job), other(n, job), return_exceptions=True)

        refused = [error for error in outcomes if error is not None]
        assert all(isinstance(error, LeaseLost | IllegalTransition) for error in refused)
        ended = types(await history(store, job))
        assert sum(kind in ("JOB_SUCCEEDED", "JOB_CANCELLED") for kind in ended) == 1
        state = (await store.get_job(None, id_of(job))).state
        assert ended[-1] == "JOB_" + JobState.Name(state).removeprefix("JOB_STATE_")
        if n % 2:
            assert len(refused) == 1  # the finish or the cancel, whichever came second
        else:
            # A checkpoint lands before the finish, or is refused after it.
            assert state == states.SUCCEEDED and len(refused) <= 1


async def test_a_queued_job_accepts_no_worker_calls(store: JobStore) -> None:
    job = await create(store)

    with pytest.raises(LeaseLost) as raised:
        await store.heartbeat(id_of(job), "01arz3ndektsv4rrffq69g5fav", LEASE, seconds(1))
    assert raised.value.state == "JOB_STATE_QUEUED"
    with pytest.raises(LeaseLost):
        await store.release(id_of(job), "01arz3ndektsv4rrffq69g5fav", "", seconds(1))
    assert len(await history(store, job)) == 1


# Deadlines


async def test_a_job_past_its_deadline_times_out_instead_of_being_leased(
    store: JobStore,
) -> None:
    late = await create(store, spec=make_spec(timeout=60))
    on_time = await create(store, seconds(1))

    batch = await store.lease_jobs("w1", 5, LEASE, seconds(61))

    assert [lease.job.name for lease in batch.leases] == [on_time.name]
    assert [job.name for job in batch.timed_out] == [late.name]
    timed_out = await store.get_job(None, id_of(late))
    assert timed_out.state == states.TIMED_OUT
    assert timed_out.failure.reason == ErrorReason.ERROR_REASON_DEADLINE_EXCEEDED
    event = (await history(store, late))[-1]
    assert types([event]) == ["JOB_TIMED_OUT"] and event.failure == timed_out.failure


async def test_expire_deadlines_spares_running_jobs_with_a_live_lease(
    store: JobStore, set_state: SetState
) -> None:
    queued = await create(store, spec=make_spec(timeout=60))
    running = await create(store, spec=make_spec(timeout=60))
    waiting = await create(store, spec=make_spec(timeout=60))
    roomy = await create(store, spec=make_spec(timeout=600))
    await store.lease_jobs("w1", 1, 100, seconds(0.5))  # leases `queued`, the oldest
    running, queued = queued, running
    await set_state(id_of(waiting), states.WAITING)

    expired = await store.expire_deadlines(seconds(61), 10)

    assert sorted(job.name for job in expired) == sorted([queued.name, waiting.name])
    assert all(job.state == states.TIMED_OUT for job in expired)
    assert (await store.get_job(None, id_of(running))).state == states.RUNNING
    assert [job.name for job in await store.expire_deadlines(seconds(101), 10)] == [running.name]
    assert (await store.get_job(None, id_of(roomy))).state == states.QUEUED


# Listing


async def test_list_pages_through_the_tenants_jobs_newest_first(store: JobStore) -> None:
    created = [await create(store, seconds(n)) for n in range(5)]
    await create(store, tenant="globex")

    names, token = [], ""
    for _ in range(3):
        page, token = await store.list_jobs("acme", JobFilter(), 2, token)
        names += [job.name for job in page]
        if not token:
            break

    assert names == [job.name for job in reversed(created)]
    assert token == ""


async def test_list_pages_neither_skip_nor_repeat_when_jobs_are_added(store: JobStore) -> None:
    created = [await create(store, seconds(n)) for n in range(4)]
    first, token = await store.list_jobs("acme", JobFilter(), 2, "")
    await create(store, seconds(10))

    second, token = await store.list_jobs("acme", JobFilter(), 2, token)

    assert [job.name for job in first + second] == [job.name for job in reversed(created)]


async def test_list_filters_by_state_session_and_creation_time(store: JobStore) -> None:
    morning = await create(store, seconds(0), spec=make_spec(session="s1"))
    noon = await create(store, seconds(10), spec=make_spec(session="s2"))
    evening = await create(store, seconds(20), spec=make_spec(session="s1"))
    await store.cancel(None, id_of(noon), "", seconds(30))

    async def names(job_filter: JobFilter) -> list[str]:
        return [job.name for job in (await store.list_jobs("acme", job_filter, 50, ""))[0]]

    assert await names(JobFilter(states=[states.CANCELLED])) == [noon.name]
    assert await names(JobFilter(states=[states.QUEUED, states.CANCELLED])) == [
        evening.name,
        noon.name,
        morning.name,
    ]
    assert await names(JobFilter(session="s1")) == [evening.name, morning.name]
    assert await names(JobFilter(created_after=seconds(10))) == [evening.name, noon.name]
    assert await names(JobFilter(created_before=seconds(10))) == [morning.name]
    both = JobFilter(session="s1", created_after=seconds(5), created_before=seconds(25))
    assert await names(both) == [evening.name]


@pytest.mark.parametrize("token", ["garbage!", "bm90LWEtdG9rZW4", "MjAzMC0wMS0wMXxub3QtYW4taWQ"])
async def test_a_malformed_page_token_is_refused(store: JobStore, token: str) -> None:
    with pytest.raises(FieldInvalid) as raised:
        await store.list_jobs("acme", JobFilter(), 10, token)
    assert raised.value.metadata == {"field": "page_token"}


# History and outbox


async def test_history_is_complete_with_contiguous_sequences(store: JobStore) -> None:
    job = await create(store)
    other = await create(store, seconds(0.5))  # created later, so leased after `job`
    lease = await lease_one(store)
    await store.checkpoint(id_of(job), lease.lease_id, checkpoint(1), None, None, seconds(2))
    await store.release(id_of(job), lease.lease_id, "drain", seconds(3))
    lease = await lease_one(store, at=4)
    await store.checkpoint(id_of(job), lease.lease_id, checkpoint(2), None, None, seconds(5))
    await store.finish(
        id_of(job), lease.lease_id, states.SUCCEEDED, JobResult(output="x"), None, None, seconds(6)
    )

    events, state = await store.list_events("acme", id_of(job), 0, 100)

    assert state == states.SUCCEEDED
    assert types(events) == [
        "JOB_CREATED",
        "JOB_STARTED",
        "TURN_COMPLETED",
        "JOB_REQUEUED",
        "JOB_STARTED",
        "TURN_COMPLETED",
        "JOB_SUCCEEDED",
    ]
    assert [event.sequence for event in events] == list(range(1, 8))
    assert [event.id for event in events] == [f"{id_of(job)}.{n}" for n in range(1, 8)]
    assert {event.job for event in events} == {job_name(id_of(job))}
    assert (await store.get_job(None, id_of(job))).last_event_id == f"{id_of(job)}.7"
    page, _ = await store.list_events(None, id_of(job), 2, 3)
    assert [event.sequence for event in page] == [3, 4, 5]
    assert await store.list_events(None, id_of(other), 1, 10) == ([], states.QUEUED)


async def test_the_outbox_yields_every_event_once_in_each_jobs_order(store: JobStore) -> None:
    jobs = [await create(store, seconds(n)) for n in range(3)]
    for lease in (await store.lease_jobs("w1", 3, LEASE, seconds(5))).leases:
        await store.release(id_of(lease.job), lease.lease_id, "", seconds(6))
    assert await store.try_lock_relay()

    first = await store.fetch_unpublished(4)
    await store.mark_published([row_id for row_id, _ in first])
    rest = await store.fetch_unpublished(100)
    await store.mark_published([row_id for row_id, _ in rest])

    rows = first + rest
    assert len(first) == 4 and len(rows) == 9
    assert [row_id for row_id, _ in rows] == sorted(row_id for row_id, _ in rows)
    for job in jobs:
        sequences = [event.sequence for _, event in rows if event.job == job.name]
        assert sequences == [1, 2, 3]
    assert await store.fetch_unpublished(100) == []
    assert len(await history(store, jobs[0])) == 3


async def test_a_within_turn_checkpoint_keeps_the_turn_and_emits_nothing(
    store: JobStore,
) -> None:
    job = await create(store)
    lease = await lease_one(store)
    await store.checkpoint(id_of(job), lease.lease_id, checkpoint(1), None, None, seconds(2))
    before = await history(store, job)
    marked = checkpoint(1, "a tool is about to run")

    saved = await store.checkpoint(
        id_of(job), lease.lease_id, marked, None, None, seconds(3), within_turn=True
    )

    assert saved.turns == 1
    assert await history(store, job) == before
    with pytest.raises(FieldInvalid):
        await store.checkpoint(
            id_of(job), lease.lease_id, checkpoint(2), None, None, seconds(4), within_turn=True
        )
    assert (await lease_after_expiry(store, job)).checkpoint == marked


# Job trees


def tree_spec(
    parent: Job | None = None,
    node: str = "",
    *,
    timeout: float = 0,
    orchestration: OrchestrationConfig | None = None,
) -> JobSpec:
    spec = make_spec(parent=parent.name if parent else "", timeout=timeout)
    spec.node = node
    if orchestration is not None:
        spec.orchestration.CopyFrom(orchestration)
    return spec


async def child_of(
    store: JobStore, parent: Job, node: str = "step", now: datetime = T0, request_id: str = ""
) -> Job:
    job, created = await store.create_job(
        make_new_job(request_id=request_id, spec=tree_spec(parent, node)), now
    )
    assert created
    return job


async def lease_all(store: JobStore, at: float = 1) -> dict[str, JobLease]:
    batch = await store.lease_jobs("w1", 100, LEASE, seconds(at))
    return {lease.job.name: lease for lease in batch.leases}


async def test_a_top_level_job_is_the_root_of_its_own_tree(store: JobStore) -> None:
    job = await create(store)

    assert (job.root, job.depth) == (job.name, 0)
    [event] = await history(store, job)
    assert (event.root_job, event.node, event.parent_job) == (job.name, "", "")


async def test_a_child_joins_its_parents_tree_and_its_parent_hears_of_it(
    store: JobStore,
) -> None:
    root = await create(store)
    child = await child_of(store, root, "plan", seconds(1))
    grandchild = await child_of(store, child, "map[3]", seconds(2))

    assert (child.root, child.depth, child.spec.node) == (root.name, 1, "plan")
    assert (grandchild.root, grandchild.depth) == (root.name, 2)
    [created] = await history(store, grandchild)
    assert (created.root_job, created.node, created.parent_job) == (
        root.name,
        "map[3]",
        child.name,
    )
    events = await history(store, root)
    assert types(events) == ["JOB_CREATED", "CHILD_CREATED"]
    assert events[1].child == ChildEvent(child=child.name, node="plan", state=states.QUEUED)
    assert events[1].job_state == states.QUEUED and events[1].root_job == root.name
    parent = await store.get_job(None, id_of(root))
    assert parent.last_event_id == f"{id_of(root)}.2" and parent.update_time == root.update_time
    assert types(await history(store, child)) == ["JOB_CREATED", "CHILD_CREATED"]


async def test_a_child_needs_a_live_parent_of_its_own_tenant(store: JobStore) -> None:
    parent = await create(store)
    finished = await create(store)
    await store.cancel(None, id_of(finished), "", seconds(1))

    with pytest.raises(JobNotFound):
        await store.create_job(make_new_job("globex", spec=tree_spec(parent)), seconds(2))
    with pytest.raises(JobNotFound):
        await store.create_job(make_new_job(spec=make_spec(parent=job_name("0" * 26))), seconds(2))
    with pytest.raises(IllegalTransition):
        await store.create_job(make_new_job(spec=tree_spec(finished)), seconds(2))

    assert len(await history(store, parent)) == 1
    jobs, _ = await store.list_jobs("acme", JobFilter(), 10, "")
    assert len(jobs) == 2


async def test_the_roots_max_depth_bounds_the_tree(store: JobStore) -> None:
    root = await create(store, spec=tree_spec(orchestration=OrchestrationConfig(max_depth=2)))
    child = await child_of(store, root)
    grandchild = await child_of(store, child)

    with pytest.raises(TreeLimitExceeded) as raised:
        await store.create_job(make_new_job(spec=tree_spec(grandchild)), seconds(1))

    assert raised.value.code == "RESOURCE_EXHAUSTED"
    assert raised.value.reason == ErrorReason.ERROR_REASON_TREE_LIMIT_EXCEEDED
    assert raised.value.metadata == {"limit": "max_depth", "value": "2"}
    assert types(await history(store, grandchild)) == ["JOB_CREATED"]


async def test_max_child_jobs_holds_but_a_retried_create_gets_its_child(
    store: JobStore,
) -> None:
    limit = OrchestrationConfig(max_child_jobs=2)
    root = await create(store, spec=tree_spec(orchestration=limit))
    first = await child_of(store, root, "a", request_id="root/a/0")
    await child_of(store, root, "b", request_id="root/b/0")

    with pytest.raises(TreeLimitExceeded) as raised:
        await store.create_job(make_new_job(request_id="root/c/0", spec=tree_spec(root, "c")), T0)
    again, created = await store.create_job(
        make_new_job(request_id="root/a/0", spec=tree_spec(root, "a")), seconds(5)
    )

    assert raised.value.metadata == {"limit": "max_child_jobs", "value": "2"}
    assert not created and again == first
    assert types(await history(store, root)) == ["JOB_CREATED", "CHILD_CREATED", "CHILD_CREATED"]


async def test_the_child_limit_holds_under_concurrent_creates(store: JobStore) -> None:
    root = await create(store, spec=tree_spec(orchestration=OrchestrationConfig(max_child_jobs=3)))

    async def attempt(n: int) -> bool:
        try:
            await store.create_job(make_new_job(spec=tree_spec(root, f"map[{n}]")), T0)
        except TreeLimitExceeded:
            return False
        return True

    created = await asyncio.gather(*(attempt(n) for n in range(10)))

    assert sum(created) == 3
    children, _ = await store.list_jobs("acme", JobFilter(parent=id_of(root)), 50, "")
    assert len(children) == 3
    assert types(await history(store, root)).count("CHILD_CREATED") == 3


async def test_a_childs_deadline_is_bounded_by_child_timeout_and_its_parents(
    store: JobStore,
) -> None:
    config = OrchestrationConfig()
    config.child_timeout.FromTimedelta(timedelta(seconds=60))
    root = await create(store, spec=tree_spec(timeout=300, orchestration=config))

    async def deadline_of(parent: Job, timeout: float, now: float = 0) -> timedelta:
        spec = tree_spec(parent, timeout=timeout)
        job, _ = await store.create_job(make_new_job(spec=spec), seconds(now))
        return job.deadline.ToDatetime(tzinfo=T0.tzinfo) - T0

    assert await deadline_of(root, 0) == timedelta(seconds=60)
    assert await deadline_of(root, 30) == timedelta(seconds=30)
    assert await deadline_of(root, 120) == timedelta(seconds=60)
    assert await deadline_of(root, 0, now=280) == timedelta(seconds=300)


async def test_a_childs_end_is_told_to_its_parent(store: JobStore) -> None:
    root = await create(store)
    await lease_all(store)
    child = await child_of(store, root, "review", seconds(2))
    lease = (await lease_all(store, 3))[child.name]
    failure = Failure(reason=ErrorReason.ERROR_REASON_TOOL_ERROR, message="boom")

    await store.finish(id_of(child), lease.lease_id, states.FAILED, failure, None, None, seconds(4))

    events = await history(store, root)
    assert types(events)[-1] == "CHILD_FINISHED"
    assert events[-1].child == ChildEvent(
        child=child.name, node="review", state=states.FAILED, failure=failure
    )
    assert events[-1].job_state == states.RUNNING
    assert (await store.get_job(None, id_of(root))).state == states.RUNNING


async def test_await_children_parks_the_parent_until_a_child_ends(store: JobStore) -> None:
    root = await create(store)
    parent_lease = (await lease_all(store))[root.name]
    children = [await child_of(store, root, f"map[{n}]", seconds(2)) for n in range(2)]
    saved = checkpoint(1, "waiting for the map")

    job, waiting = await store.await_children(
        id_of(root), parent_lease.lease_id, [id_of(c) for c in children], saved, seconds(3)
    )

    assert waiting and job.state == states.WAITING and job.turns == 1
    assert types(await history(store, root))[-1] == "JOB_WAITING"
    with pytest.raises(LeaseLost):
        await store.heartbeat(id_of(root), parent_lease.lease_id, LEASE, seconds(4))
    leases = await lease_all(store, 5)
    assert set(leases) == {child.name for child in children}

    first = leases[children[0].name]
    result = JobResult(output="part one")
    await store.finish(
        id_of(children[0]), first.lease_id, states.SUCCEEDED, result, None, None, seconds(6)
    )

    events = await history(store, root)
    assert types(events)[-2:] == ["CHILD_FINISHED", "JOB_REQUEUED"]
    assert children[0].name in events[-1].attempt.reason
    assert "finished" in events[-1].attempt.reason
    resumed = (await lease_all(store, 7))[root.name]
    assert resumed.checkpoint == saved
    await store.finish(
        id_of(children[1]),
        leases[children[1].name].lease_id,
        states.SUCCEEDED,
        result,
        None,
        None,
        seconds(8),
    )
    assert types(await history(store, root))[-1] == "CHILD_FINISHED"
    assert (await store.get_job(None, id_of(root))).state == states.RUNNING


async def test_await_children_keeps_the_lease_when_a_child_has_ended(store: JobStore) -> None:
    root = await create(store)
    parent_lease = (await lease_all(store))[root.name]
    done = await child_of(store, root, "a", seconds(2))
    running = await child_of(store, root, "b", seconds(2))
    await store.cancel(None, id_of(done), "", seconds(3))
    before = types(await history(store, root))

    job, waiting = await store.await_children(
        id_of(root), parent_lease.lease_id, [id_of(running), id_of(done)], checkpoint(1), seconds(4)
    )

    assert not waiting and job.state == states.RUNNING and job.turns == 1
    assert types(await history(store, root)) == before
    await store.heartbeat(id_of(root), parent_lease.lease_id, LEASE, seconds(5))
    assert (await lease_after_expiry(store, root)).checkpoint == checkpoint(1)


async def test_await_children_refuses_jobs_that_are_not_its_children(store: JobStore) -> None:
    root = await create(store)
    parent_lease = (await lease_all(store))[root.name]
    child = await child_of(store, root)
    stranger = await create(store)
    grandchild = await child_of(store, child)

    for wrong in (id_of(stranger), id_of(grandchild), "0" * 26):
        with pytest.raises(FieldInvalid) as raised:
            await store.await_children(
                id_of(root), parent_lease.lease_id, [id_of(child), wrong], None, seconds(2)
            )
        assert raised.value.field == "children[1]"
    with pytest.raises(LeaseLost):
        await store.await_children(id_of(root), "not-the-lease", [id_of(child)], None, seconds(2))
    assert (await store.get_job(None, id_of(root))).state == states.RUNNING


async def test_cancelling_a_root_cancels_its_tree_deepest_first(store: JobStore) -> None:
    root = await create(store)
    parent_lease = (await lease_all(store))[root.name]
    child = await child_of(store, root, "plan", seconds(1))
    grandchildren = [await child_of(store, child, f"map[{n}]", seconds(1)) for n in range(2)]
    great = await child_of(store, grandchildren[0], "deep", seconds(1))
    leases = await lease_all(store, 2)
    await store.await_children(id_of(root), parent_lease.lease_id, [id_of(child)], None, seconds(2))

    cancelled = await store.cancel("acme", id_of(root), "user asked", seconds(3))

    assert cancelled.state == states.CANCELLED
    for job in [child, *grandchildren, great]:
        ended = await store.get_job(None, id_of(job))
        assert ended.state == states.CANCELLED
        assert root.name in ended.failure.message
        assert types(await history(store, job))[-1] == "JOB_CANCELLED"
        if job.name in leases:
            with pytest.raises(LeaseLost):
                await store.heartbeat(id_of(job), leases[job.name].lease_id, LEASE, seconds(4))
    # Every parent hears of each child's end before its own.
    assert types(await history(store, child))[-3:] == [
        "CHILD_FINISHED",
        "CHILD_FINISHED",
        "JOB_CANCELLED",
    ]
    root_events = await history(store, root)
    assert types(root_events)[-2:] == ["CHILD_FINISHED", "JOB_CANCELLED"]
    assert root_events[-2].child.state == states.CANCELLED
    assert root_events[-1].failure.message == "user asked"


async def test_a_root_that_does_not_propagate_cancels_itself_alone(store: JobStore) -> None:
    config = OrchestrationConfig(propagate_cancellation=False)
    root = await create(store, spec=tree_spec(orchestration=config))
    child = await child_of(store, root)

    await store.cancel(None, id_of(root), "", seconds(1))

    assert (await store.get_job(None, id_of(child))).state == states.QUEUED
    await store.cancel(None, id_of(child), "", seconds(2))
    # The parent has ended: its history is closed.
    assert types(await history(store, root))[-1] == "JOB_CANCELLED"


async def test_a_parent_that_finishes_cancels_its_unfinished_children(store: JobStore) -> None:
    root = await create(store)
    lease = (await lease_all(store))[root.name]
    child = await child_of(store, root, "forgotten", seconds(1))

    result = JobResult(output="ok")
    await store.finish(
        id_of(root), lease.lease_id, states.SUCCEEDED, result, None, None, seconds(2)
    )

    ended = await store.get_job(None, id_of(child))
    assert ended.state == states.CANCELLED and "SUCCEEDED" in ended.failure.message
    assert types(await history(store, root))[-2:] == ["CHILD_FINISHED", "JOB_SUCCEEDED"]


async def test_a_child_timed_out_by_the_sweep_wakes_its_waiting_parent(store: JobStore) -> None:
    root = await create(store)
    parent_lease = (await lease_all(store))[root.name]
    spec = tree_spec(root, "slow", timeout=10)
    child, _ = await store.create_job(make_new_job(spec=spec), seconds(1))
    await store.await_children(id_of(root), parent_lease.lease_id, [id_of(child)], None, seconds(2))

    # Leasing leaves an overdue job of a tree to the sweep, which tells its parent.
    batch = await store.lease_jobs("w1", 5, LEASE, seconds(20))
    assert batch.leases == [] and batch.timed_out == [] and batch.overdue == 1
    expired = await store.expire_deadlines(seconds(20), 10)

    assert [job.name for job in expired] == [child.name]
    assert expired[0].state == states.TIMED_OUT
    assert types(await history(store, root))[-2:] == ["CHILD_FINISHED", "JOB_REQUEUED"]
    assert (await store.get_job(None, id_of(root))).state == states.QUEUED


async def test_a_parent_timed_out_ends_its_tree(store: JobStore) -> None:
    root = await create(store, spec=tree_spec(timeout=10))
    child = await child_of(store, root)
    grandchild = await child_of(store, child)

    expired = await store.expire_deadlines(seconds(11), 10)

    # The children's deadlines are their parent's: each is timed out once.
    assert sorted(job.name for job in expired) == sorted(
        job.name for job in (root, child, grandchild)
    )
    for job in (root, child, grandchild):
        assert (await store.get_job(None, id_of(job))).state == states.TIMED_OUT
        assert types(await history(store, job)).count("JOB_TIMED_OUT") == 1
    assert types(await history(store, root))[-2:] == ["CHILD_FINISHED", "JOB_TIMED_OUT"]


async def test_list_jobs_filters_a_jobs_children_and_its_tree(store: JobStore) -> None:
    root = await create(store)
    child = await child_of(store, root, now=seconds(1))
    grandchild = await child_of(store, child, now=seconds(2))
    sibling = await child_of(store, root, now=seconds(3))
    other = await create(store, seconds(4))
    await child_of(store, other, now=seconds(5))

    async def names(job_filter: JobFilter) -> list[str]:
        jobs, _ = await store.list_jobs("acme", job_filter, 10, "")
        return [job.name for job in jobs]

    assert await names(JobFilter(parent=id_of(root))) == [sibling.name, child.name]
    assert await names(JobFilter(root=id_of(root))) == [
        sibling.name,
        grandchild.name,
        child.name,
        root.name,
    ]
    assert await names(JobFilter(parent=id_of(child), root=id_of(root))) == [grandchild.name]
    assert await names(JobFilter(parent=id_of(child), root=id_of(other))) == []
    page, token = await store.list_jobs("acme", JobFilter(root=id_of(root)), 2, "")
    rest, _ = await store.list_jobs("acme", JobFilter(root=id_of(root)), 2, token)
    assert [job.name for job in page + rest] == await names(JobFilter(root=id_of(root)))
    assert await store.list_jobs("globex", JobFilter(root=id_of(root)), 10, "") == ([], "")


async def test_no_child_outlives_a_cancel_that_races_its_creation(store: JobStore) -> None:
    config = OrchestrationConfig(max_child_jobs=100)
    root = await create(store, spec=tree_spec(orchestration=config))
    plan = await child_of(store, root, "plan")

    async def attempt(n: int) -> Job | None:
        try:
            job, _ = await store.create_job(make_new_job(spec=tree_spec(plan, f"map[{n}]")), T0)
        except IllegalTransition:
            return None
        return job

    async def cancel() -> None:
        await asyncio.sleep(0)
        await store.cancel(None, id_of(root), "", seconds(1))

    results = await asyncio.gather(*(attempt(n) for n in range(30)), cancel())

    made = [job for job in results if isinstance(job, Job)]
    children, _ = await store.list_jobs("acme", JobFilter(parent=id_of(plan)), 100, "")
    assert {job.name for job in children} == {job.name for job in made}
    assert {job.state for job in children} <= {states.CANCELLED}
    plan_events = await history(store, plan)
    assert types(plan_events)[-1] == "JOB_CANCELLED"
    assert types(plan_events).count("CHILD_FINISHED") == len(made)


async def test_no_child_outlives_a_finish_that_races_its_creation(store: JobStore) -> None:
    # A job with no children yet ends by its own row alone, unless a child made first.
    config = OrchestrationConfig(max_child_jobs=100)
    root = await create(store, spec=tree_spec(orchestration=config))
    lease = (await lease_all(store))[root.name]

    async def attempt(n: int) -> Job | None:
        try:
            job, _ = await store.create_job(make_new_job(spec=tree_spec(root, f"map[{n}]")), T0)
        except IllegalTransition:
            return None
        return job

    async def finish() -> None:
        await asyncio.sleep(0)
        result = JobResult(output="done")
        await store.finish(
            id_of(root), lease.lease_id, states.SUCCEEDED, result, None, None, seconds(1)
        )

    results = await asyncio.gather(*(attempt(n) for n in range(30)), finish())

    made = [job for job in results if isinstance(job, Job)]
    children, _ = await store.list_jobs("acme", JobFilter(parent=id_of(root)), 100, "")
    assert {job.name for job in children} == {job.name for job in made}
    assert {job.state for job in children} <= {states.CANCELLED}
    root_events = await history(store, root)
    assert types(root_events)[-1] == "JOB_SUCCEEDED"
    assert types(root_events).count("CHILD_FINISHED") == len(made)


async def test_children_ending_while_their_root_is_cancelled_are_each_told_once(
    store: JobStore,
) -> None:
    root = await create(store)
    root_lease = (await lease_all(store))[root.name]
    children = [await child_of(store, root, f"map[{n}]", seconds(1)) for n in range(10)]
    leases = await lease_all(store, 2)
    await store.await_children(
        id_of(root), root_lease.lease_id, [id_of(c) for c in children], None, seconds(3)
    )

    async def finish(child: Job) -> bool:
        try:
            await store.finish(
                id_of(child),
                leases[child.name].lease_id,
                states.SUCCEEDED,
                JobResult(output=child.spec.node),
                None,
                None,
                seconds(4),
            )
        except LeaseLost:
            return False
        return True

    async def cancel() -> None:
        await asyncio.sleep(0)
        await store.cancel(None, id_of(root), "", seconds(4))

    *finished, _ = await asyncio.gather(*(finish(child) for child in children), cancel())

    ended = [await store.get_job(None, id_of(child)) for child in children]
    for child, done, job in zip(children, finished, ended, strict=True):
        assert job.state == (states.SUCCEEDED if done else states.CANCELLED), child.name
    events = await history(store, root)
    told = [event.child.child for event in events if event.child.child]
    assert sorted(told[len(children) :]) == sorted(child.name for child in children)
    assert types(events)[-1] == "JOB_CANCELLED"
    # The first child to end queued the root again at most once before its cancel.
    assert types(events).count("JOB_REQUEUED") <= 1
