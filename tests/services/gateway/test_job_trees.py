"""Job trees through the whole system: listing a job's children and tree, a cancel of the
root that reaches every descendant and stops their model streams, usage by tree."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import grpc
from agentrt.common.v1.common_pb2 import EventType, JobState
from agentrt.gateway.v1 import gateway_pb2
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from google.protobuf.duration_pb2 import Duration

from services.dev import DEV_PRINCIPAL, DEV_TENANT, LocalSystem
from tests.services.gateway.conftest import (
    TIMEOUT,
    Metadata,
    assert_refused_and_nothing_created,
    prompt,
    refused,
)
from tests.services.gateway.test_actions import take_over

if TYPE_CHECKING:
    from agentrt.gateway.v1.gateway_pb2_grpc import RuntimeServiceAsyncStub as RuntimeStub

CUT_SECONDS = 2.0
"""How soon after the root's cancel every descendant's model stream must stop."""

LONG_PROMPT = " ".join(f"word{n}" for n in range(400))
"""Answered by `local-slow` word by word, 0.1 s a word: a run of about 40 s."""


async def create_child(
    jobs: jobs_pb2_grpc.JobServiceAsyncStub,
    parent: jobs_pb2.Job,
    node: str,
    model: str = "local",
    prompt_text: str = LONG_PROMPT,
) -> jobs_pb2.Job:
    """A child job made as the orchestrator makes one: through the jobs service."""
    spec = jobs_pb2.JobSpec(prompt=prompt_text, model=model, parent=parent.name, node=node)
    return await jobs.CreateJob(
        jobs_pb2.CreateJobRequest(tenant=DEV_TENANT, principal=DEV_PRINCIPAL, spec=spec),
        timeout=TIMEOUT,
    )


async def test_a_caller_cannot_name_a_node(runtime: RuntimeStub, dev: Metadata) -> None:
    info = await assert_refused_and_nothing_created(
        runtime,
        dev,
        lambda: runtime.Execute(prompt("hello", node="step"), metadata=dev, timeout=TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_INVALID",
    )
    assert info.metadata["field"] == "spec.node"


async def test_list_jobs_shows_a_jobs_children_and_its_tree(
    system: LocalSystem, runtime: RuntimeStub, dev: Metadata, other: Metadata
) -> None:
    root = await runtime.Execute(prompt(LONG_PROMPT, model="local-slow"), metadata=dev)
    async with grpc.aio.insecure_channel(system.endpoint) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        child = await create_child(jobs, root, "plan")
        grandchild = await create_child(jobs, child, "map[0]")
    unrelated = await runtime.Execute(prompt("hello"), metadata=dev)

    async def names(key: Metadata = dev, **filters: Any) -> list[str]:
        request = gateway_pb2.ListJobsRequest(**filters)
        listed = await runtime.ListJobs(request, metadata=key, timeout=TIMEOUT)
        return [job.name for job in listed.jobs]

    assert await names(parent=root.name) == [child.name]
    assert await names(root=root.name) == [grandchild.name, child.name, root.name]
    assert unrelated.name in await names()
    assert await names(other, root=root.name) == []
    listed = await runtime.ListJobs(
        gateway_pb2.ListJobsRequest(root=root.name), metadata=dev, timeout=TIMEOUT
    )
    assert [(job.root, job.depth) for job in listed.jobs] == [
        (root.name, 2),
        (root.name, 1),
        (root.name, 0),
    ]
    code, info = await refused(
        runtime.ListJobs(gateway_pb2.ListJobsRequest(parent="jobs/x"), metadata=dev)
    )
    assert (code, info.reason, info.metadata["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "NAME_INVALID",
        "parent",
    )
    await runtime.CancelJob(gateway_pb2.CancelJobRequest(name=root.name), metadata=dev)


async def test_cancelling_the_root_stops_every_descendant_within_two_seconds(
    system: LocalSystem, runtime: RuntimeStub, dev: Metadata
) -> None:
    root = await runtime.Execute(prompt(LONG_PROMPT, model="local-slow"), metadata=dev)
    async with grpc.aio.insecure_channel(system.endpoint) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        child = await create_child(jobs, root, "plan", "local-slow")
        grandchildren = [
            await create_child(jobs, child, f"map[{n}]", "local-slow") for n in range(2)
        ]
    tree = [root, child, *grandchildren]
    loop = asyncio.get_running_loop()
    last_delta: dict[str, float] = {}
    streaming = {job.name: asyncio.Event() for job in tree}

    async def follow(name: str) -> None:
        follower = system.infra.events.follow_job(name, "0")
        async with contextlib.aclosing(follower) as entries:  # type: ignore[type-var]
            async for _, event in entries:
                if event.type == EventType.EVENT_TYPE_OUTPUT_DELTA:
                    assert event.root_job == root.name
                    last_delta[name] = loop.time()
                    streaming[name].set()

    followers = [asyncio.create_task(follow(job.name)) for job in tree]
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in streaming.values())), 20)
        cancelled_at = loop.time()
        cancelled = await runtime.CancelJob(
            gateway_pb2.CancelJobRequest(name=root.name, reason="enough"),
            metadata=dev,
            timeout=TIMEOUT,
        )
        await asyncio.sleep(CUT_SECONDS + 1)
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)

    assert cancelled.state == JobState.JOB_STATE_CANCELLED
    for job in tree:
        got = await runtime.GetJob(
            gateway_pb2.GetJobRequest(name=job.name), metadata=dev, timeout=TIMEOUT
        )
        assert got.state == JobState.JOB_STATE_CANCELLED
        watch = runtime.WatchJob(
            gateway_pb2.WatchJobRequest(name=job.name), metadata=dev, timeout=TIMEOUT
        )
        history = [event async for event in watch]
        assert history[-1].type == EventType.EVENT_TYPE_JOB_CANCELLED
        assert history[-1].root_job == root.name
        # Each model stream stopped within the bound: no output after it.
        assert last_delta[job.name] - cancelled_at < CUT_SECONDS, job.spec.node
    child_history = [
        event.type
        async for event in runtime.WatchJob(
            gateway_pb2.WatchJobRequest(name=child.name), metadata=dev, timeout=TIMEOUT
        )
    ]
    assert child_history.count(EventType.EVENT_TYPE_CHILD_FINISHED) == 2


async def test_usage_by_job_tree_names_the_root_at_every_depth(
    system: LocalSystem, runtime: RuntimeStub, dev: Metadata
) -> None:
    root = await runtime.Execute(prompt(LONG_PROMPT, model="local-slow"), metadata=dev)
    async with grpc.aio.insecure_channel(system.endpoint) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        child = await create_child(jobs, root, "plan", "local-slow", prompt_text="a few words")
        grandchild = await create_child(jobs, child, "map[0]", prompt_text="hello")
        for job in (grandchild, child):
            watch = runtime.WatchJob(
                gateway_pb2.WatchJobRequest(name=job.name), metadata=dev, timeout=TIMEOUT
            )
            assert [event.type async for event in watch][-1] == EventType.EVENT_TYPE_JOB_SUCCEEDED

        listed = await ledger.ListUsageRecords(
            ledger_pb2.ListUsageRecordsRequest(tenant=DEV_TENANT, root_job=root.name),
            timeout=TIMEOUT,
        )
    await runtime.CancelJob(gateway_pb2.CancelJobRequest(name=root.name), metadata=dev)

    by_job = {record.job: record for record in listed.usage_records}
    assert set(by_job) == {child.name, grandchild.name}
    assert by_job[grandchild.name].root_job == root.name
    assert by_job[grandchild.name].parent_job == child.name
    assert by_job[child.name].root_job == root.name


async def test_cancel_through_the_jobs_service_ends_a_three_level_tree(
    system: LocalSystem,
) -> None:
    async with grpc.aio.insecure_channel(system.endpoint) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        spec = jobs_pb2.JobSpec(prompt=LONG_PROMPT, model="local-slow")
        root = await jobs.CreateJob(
            jobs_pb2.CreateJobRequest(tenant=DEV_TENANT, principal=DEV_PRINCIPAL, spec=spec),
            timeout=TIMEOUT,
        )
        child = await create_child(jobs, root, "plan", "local-slow")
        grandchildren = [
            await create_child(jobs, child, f"map[{n}]", "local-slow") for n in range(2)
        ]

        await jobs.CancelJob(
            jobs_pb2.CancelJobRequest(tenant=DEV_TENANT, name=root.name, reason="stop"),
            timeout=TIMEOUT,
        )

        async def history(job: jobs_pb2.Job) -> list[EventType.ValueType]:
            listed = await jobs.ListJobEvents(
                jobs_pb2.ListJobEventsRequest(tenant=DEV_TENANT, name=job.name), timeout=TIMEOUT
            )
            assert listed.job_state == JobState.JOB_STATE_CANCELLED
            assert {event.root_job for event in listed.events} == {root.name}
            return [event.type for event in listed.events]

        for job in grandchildren:
            assert (await history(job))[-1] == EventType.EVENT_TYPE_JOB_CANCELLED
        assert (await history(child))[-3:] == [
            EventType.EVENT_TYPE_CHILD_FINISHED,
            EventType.EVENT_TYPE_CHILD_FINISHED,
            EventType.EVENT_TYPE_JOB_CANCELLED,
        ]
        assert (await history(root))[-2:] == [
            EventType.EVENT_TYPE_CHILD_FINISHED,
            EventType.EVENT_TYPE_JOB_CANCELLED,
        ]


async def test_await_children_over_grpc_parks_the_parent_until_a_child_ends(
    system: LocalSystem, runtime: RuntimeStub, dev: Metadata
) -> None:
    day = Duration(seconds=24 * 3600)
    root = await runtime.Execute(
        prompt(LONG_PROMPT, model="local-slow", timeout=day), metadata=dev, timeout=TIMEOUT
    )
    lease_id = await take_over(system, root.name)
    stranger = await runtime.Execute(prompt("hello"), metadata=dev, timeout=TIMEOUT)
    async with grpc.aio.insecure_channel(system.endpoint) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        child = await create_child(jobs, root, "review", "local-slow")

        code, info = await refused(
            jobs.AwaitChildren(
                jobs_pb2.AwaitChildrenRequest(
                    name=root.name, lease_id=lease_id, children=[stranger.name]
                ),
                timeout=TIMEOUT,
            )
        )
        assert (code, info.reason, info.metadata["field"]) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "FIELD_INVALID",
            "children[0]",
        )

        parked = await jobs.AwaitChildren(
            jobs_pb2.AwaitChildrenRequest(
                name=root.name,
                lease_id=lease_id,
                children=[child.name],
                checkpoint=jobs_pb2.Checkpoint(turn=0, state=b"waiting for review"),
            ),
            timeout=TIMEOUT,
        )
        assert parked.waiting and parked.job.state == JobState.JOB_STATE_WAITING

        await jobs.CancelJob(
            jobs_pb2.CancelJobRequest(tenant=DEV_TENANT, name=child.name), timeout=TIMEOUT
        )
        listed = await jobs.ListJobEvents(
            jobs_pb2.ListJobEventsRequest(tenant=DEV_TENANT, name=root.name), timeout=TIMEOUT
        )
    await runtime.CancelJob(gateway_pb2.CancelJobRequest(name=root.name), metadata=dev)

    waited = [event.type for event in listed.events]
    start = waited.index(EventType.EVENT_TYPE_JOB_WAITING)
    assert waited[start : start + 3] == [
        EventType.EVENT_TYPE_JOB_WAITING,
        EventType.EVENT_TYPE_CHILD_FINISHED,
        EventType.EVENT_TYPE_JOB_REQUEUED,
    ]
    finished = listed.events[start + 1].child
    assert (finished.child, finished.node, finished.state) == (
        child.name,
        "review",
        JobState.JOB_STATE_CANCELLED,
    )
