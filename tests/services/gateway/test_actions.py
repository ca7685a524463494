"""Actions through the gateway: a tenant lists and resolves its jobs' actions, no other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import pytest
from agentrt.common.v1.common_pb2 import JobState
from agentrt.gateway.v1 import gateway_pb2
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct

from services.dev import DEV_PRINCIPAL, LocalSystem
from services.jobs.store import open_job_store
from tests.services.gateway.conftest import TIMEOUT, Metadata, prompt, refused

if TYPE_CHECKING:
    from agentrt.gateway.v1.gateway_pb2_grpc import RuntimeServiceAsyncStub as RuntimeStub

Action = jobs_pb2.Action

# The local-slow model repeats the prompt a word every 0.1 s: long enough that the job is
# still running when the test takes it over.
LONG_PROMPT = " ".join(["word"] * 300)


def approved(value: bool = True) -> Struct:
    outcome = Struct()
    outcome.update({"approved": value})
    return outcome


async def take_over(system: LocalSystem, job_name: str) -> str:
    """Lease the job as a worker would after the orchestrator's lease ran out: through the
    job store, an hour ahead, so that the orchestrator running it loses its lease."""
    store = await open_job_store(system.infra.storage("jobs"))
    try:
        # On PostgreSQL a lease skips a row the orchestrator has locked for a moment (a
        # heartbeat, its own lease), so ask again until the row is free.
        for _ in range(100):
            later = datetime.now(UTC) + timedelta(hours=1)
            batch = await store.lease_jobs("test-worker", 1, 30, later)
            if batch.leases:
                break
            await asyncio.sleep(0.02)
    finally:
        await store.close()
    assert [lease.job.name for lease in batch.leases] == [job_name]
    return batch.leases[0].lease_id


@pytest.fixture
async def waiting(
    system: LocalSystem, runtime: RuntimeStub, dev: Metadata
) -> AsyncIterator[tuple[jobs_pb2.Job, Action]]:
    """A job of the dev tenant waiting on an approval, and the action with its token."""
    request = prompt(LONG_PROMPT, model="local-slow", timeout=Duration(seconds=24 * 3600))
    job = await runtime.Execute(request, metadata=dev, timeout=TIMEOUT)
    lease_id = await take_over(system, job.name)
    async with grpc.aio.insecure_channel(system.endpoint) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        required = jobs_pb2.RequireActionRequest(
            parent=job.name,
            lease_id=lease_id,
            action=Action(kind=jobs_pb2.ACTION_KIND_APPROVAL, timeout_outcome=approved(False)),
        )
        required.action.payload.update({"tool": "send_email"})
        action = await jobs.RequireAction(required, timeout=TIMEOUT)
    yield job, action
    # Ends the job, which the orchestrator may be running again after the resolution.
    await runtime.CancelJob(
        gateway_pb2.CancelJobRequest(name=job.name), metadata=dev, timeout=TIMEOUT
    )


async def list_actions(
    runtime: RuntimeStub, key: Metadata, job: jobs_pb2.Job, *states: Action.State.ValueType
) -> list[Action]:
    listed = await runtime.ListActions(
        gateway_pb2.ListActionsRequest(parent=job.name, states=states),
        metadata=key,
        timeout=TIMEOUT,
    )
    return list(listed.actions)


async def test_a_tenant_lists_and_resolves_its_action_by_token(
    runtime: RuntimeStub, dev: Metadata, waiting: tuple[jobs_pb2.Job, Action]
) -> None:
    job, action = waiting
    [pending] = await list_actions(runtime, dev, job)
    assert pending.name == action.name and pending.state == Action.State.STATE_PENDING
    assert pending.resume_token == "" and action.resume_token

    resolve = gateway_pb2.ResolveActionRequest(
        resume_token=action.resume_token, outcome=approved(), request_id="approve-1"
    )
    resolved = await runtime.ResolveAction(resolve, metadata=dev, timeout=TIMEOUT)
    again = await runtime.ResolveAction(resolve, metadata=dev, timeout=TIMEOUT)

    assert resolved.state == Action.State.STATE_RESOLVED and again == resolved
    assert resolved.resolved_by == DEV_PRINCIPAL and resolved.outcome == approved()
    got = await runtime.GetJob(gateway_pb2.GetJobRequest(name=job.name), metadata=dev)
    assert got.state != JobState.JOB_STATE_WAITING
    assert [a.name for a in await list_actions(runtime, dev, job, resolved.state)] == [action.name]
    code, info = await refused(
        runtime.ResolveAction(
            gateway_pb2.ResolveActionRequest(resume_token=action.resume_token, outcome=approved()),
            metadata=dev,
            timeout=TIMEOUT,
        )
    )
    assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RESUME_TOKEN_INVALID")


async def test_a_tenant_resolves_by_name(
    runtime: RuntimeStub, dev: Metadata, waiting: tuple[jobs_pb2.Job, Action]
) -> None:
    _, action = waiting

    resolved = await runtime.ResolveAction(
        gateway_pb2.ResolveActionRequest(name=action.name, outcome=approved(False)),
        metadata=dev,
        timeout=TIMEOUT,
    )

    assert resolved.state == Action.State.STATE_RESOLVED
    code, info = await refused(
        runtime.ResolveAction(
            gateway_pb2.ResolveActionRequest(name=action.name, outcome=approved()),
            metadata=dev,
            timeout=TIMEOUT,
        )
    )
    assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ACTION_NOT_PENDING")


async def test_another_tenant_can_neither_see_nor_resolve_the_action(
    runtime: RuntimeStub,
    dev: Metadata,
    other: Metadata,
    waiting: tuple[jobs_pb2.Job, Action],
) -> None:
    job, action = waiting

    listing = await refused(
        runtime.ListActions(
            gateway_pb2.ListActionsRequest(parent=job.name), metadata=other, timeout=TIMEOUT
        )
    )
    by_token = await refused(
        runtime.ResolveAction(
            gateway_pb2.ResolveActionRequest(resume_token=action.resume_token, outcome=approved()),
            metadata=other,
            timeout=TIMEOUT,
        )
    )
    unknown_token = await refused(
        runtime.ResolveAction(
            gateway_pb2.ResolveActionRequest(resume_token="x" * 43, outcome=approved()),
            metadata=other,
            timeout=TIMEOUT,
        )
    )
    by_name = await refused(
        runtime.ResolveAction(
            gateway_pb2.ResolveActionRequest(name=action.name, outcome=approved()),
            metadata=other,
            timeout=TIMEOUT,
        )
    )

    assert (listing[0], listing[1].reason) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
    assert by_token == unknown_token
    assert by_token[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert by_token[1].reason == "RESUME_TOKEN_INVALID"
    assert (by_name[0], by_name[1].reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    [still] = await list_actions(runtime, dev, job)
    assert still.state == Action.State.STATE_PENDING
    got = await runtime.GetJob(gateway_pb2.GetJobRequest(name=job.name), metadata=dev)
    assert got.state == JobState.JOB_STATE_WAITING


async def test_a_resolution_without_a_target_is_refused(
    runtime: RuntimeStub, dev: Metadata, waiting: tuple[jobs_pb2.Job, Action]
) -> None:
    job, _ = waiting

    code, info = await refused(
        runtime.ResolveAction(
            gateway_pb2.ResolveActionRequest(outcome=approved()), metadata=dev, timeout=TIMEOUT
        )
    )

    assert (code, info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_REQUIRED")
    [still] = await list_actions(runtime, dev, job)
    assert still.state == Action.State.STATE_PENDING


async def test_the_job_service_gets_and_cancels_actions(
    system: LocalSystem, waiting: tuple[jobs_pb2.Job, Action]
) -> None:
    job, action = waiting
    async with grpc.aio.insecure_channel(system.endpoint) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        got = await jobs.GetAction(
            jobs_pb2.GetActionRequest(tenant="dev", name=action.name), timeout=TIMEOUT
        )
        theirs = await refused(
            jobs.GetAction(
                jobs_pb2.GetActionRequest(tenant="globex", name=action.name), timeout=TIMEOUT
            )
        )
        cancel = jobs_pb2.CancelActionRequest(tenant="dev", name=action.name, reason="no need")
        cancelled = await jobs.CancelAction(cancel, timeout=TIMEOUT)
        again = await refused(jobs.CancelAction(cancel, timeout=TIMEOUT))
        job_now = await jobs.GetJob(
            jobs_pb2.GetJobRequest(tenant="dev", name=job.name), timeout=TIMEOUT
        )

    assert got.state == Action.State.STATE_PENDING and got.resume_token == ""
    assert got.payload == action.payload and got.expire_time == action.expire_time
    assert (theirs[0], theirs[1].reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert cancelled.state == Action.State.STATE_CANCELLED
    assert (again[0], again[1].reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ACTION_NOT_PENDING",
    )
    assert again[1].metadata["state"] == "STATE_CANCELLED"
    assert job_now.state != JobState.JOB_STATE_WAITING
