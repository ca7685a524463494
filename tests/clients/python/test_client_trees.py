"""Job trees in the Python client and the CLI: `Client.tree`, the parent and root filters,
`agentrt jobs tree` and `agentrt jobs list --parent/--root`, against the whole system."""

from __future__ import annotations

import io
import json

import grpc
from agentrt import Client
from agentrt.cli import build_parser, render
from agentrt.cli.console import Console
from agentrt.common.v1 import common_pb2
from agentrt.common.v1.common_pb2 import RuntimeEvent
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc

from services.dev import DEV_PRINCIPAL, DEV_TENANT, LocalSystem

TIMEOUT = 10.0
LONG_PROMPT = " ".join(f"word{n}" for n in range(400))
"""Answered by `local-slow` for about 40 s: the tree stays unfinished while it is read."""


async def cli(client: Client, *argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    code: int = await args.client_command(args, client, Console(out, err))
    return code, out.getvalue()


async def make_tree(system: LocalSystem, client: Client) -> list[jobs_pb2.Job]:
    """root > (plan > map[0]), review: made as the orchestrator makes children."""
    root = await client.execute(LONG_PROMPT, model="local-slow")
    async with grpc.aio.insecure_channel(system.endpoint) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)

        async def child(parent: jobs_pb2.Job, node: str) -> jobs_pb2.Job:
            spec = jobs_pb2.JobSpec(
                prompt=LONG_PROMPT, model="local-slow", parent=parent.name, node=node
            )
            request = jobs_pb2.CreateJobRequest(
                tenant=DEV_TENANT, principal=DEV_PRINCIPAL, spec=spec
            )
            return await jobs.CreateJob(request, timeout=TIMEOUT)

        plan = await child(root, "plan")
        mapped = await child(plan, "map[0]")
        review = await child(root, "review")
    return [root, plan, mapped, review]


async def test_tree_lists_a_job_and_its_descendants_depth_first(system: LocalSystem) -> None:
    async with Client(system.endpoint, system.api_key) as client:
        root, plan, mapped, review = await make_tree(system, client)
        try:
            whole = await client.tree(root)
            below_plan = await client.tree(plan.name)
            children, _ = await client.list(parent=root)
            members = [job.name async for job in client.iter_jobs(root=root, page_size=1)]
        finally:
            await client.cancel(root)

    assert [job.name for job in whole] == [root.name, plan.name, mapped.name, review.name]
    assert [job.depth for job in whole] == [0, 1, 2, 1]
    assert {job.root for job in whole} == {root.name}
    assert [job.name for job in below_plan] == [plan.name, mapped.name]
    assert [job.name for job in children] == [review.name, plan.name]
    assert members == [review.name, mapped.name, plan.name, root.name]


async def test_jobs_tree_indents_each_job_by_depth(system: LocalSystem) -> None:
    async with Client(system.endpoint, system.api_key) as client:
        root, plan, mapped, review = await make_tree(system, client)
        await client.cancel(root, reason="enough")
        code, shown = await cli(client, "jobs", "tree", root.name)
        json_code, as_json = await cli(
            client, "jobs", "tree", root.name.removeprefix("jobs/"), "--json"
        )
        list_code, listed = await cli(client, "jobs", "list", "--parent", plan.name, "--json")
        root_code, rooted = await cli(client, "jobs", "list", "--root", root.name)

    assert code == json_code == list_code == root_code == 0
    header, *lines = shown.splitlines()
    assert header.split()[:3] == ["JOB", "NODE", "STATE"]
    ids = [job.name.removeprefix("jobs/") for job in (root, plan, mapped, review)]
    assert [line.split()[0] for line in lines] == ids
    indents = [len(line) - len(line.lstrip()) for line in lines]
    assert indents == [0, 2, 4, 2]
    assert [line.split()[1:3] for line in lines] == [
        ["-", "CANCELLED"],
        ["plan", "CANCELLED"],
        ["map[0]", "CANCELLED"],
        ["review", "CANCELLED"],
    ]
    assert [job.get("node", "") for job in map(_spec, json.loads(as_json))] == [
        "",
        "plan",
        "map[0]",
        "review",
    ]
    assert [job["name"] for job in json.loads(listed)] == [mapped.name]
    assert len(rooted.splitlines()) == 5


def _spec(job: dict[str, object]) -> dict[str, object]:
    spec = job["spec"]
    assert isinstance(spec, dict)
    return spec


def test_jobs_list_takes_a_parent_and_a_root_by_id_or_name() -> None:
    args = build_parser().parse_args(["jobs", "list", "--parent", "a" * 26, "--root", "jobs/r"])
    assert (args.parent, args.root) == ("jobs/" + "a" * 26, "jobs/r")
    tree = build_parser().parse_args(["jobs", "tree", "b" * 26])
    assert tree.job == "jobs/" + "b" * 26


def test_child_events_name_the_child_its_node_and_how_it_ended() -> None:
    created = RuntimeEvent(
        type=common_pb2.EVENT_TYPE_CHILD_CREATED,
        child=common_pb2.ChildEvent(
            child="jobs/c", node="map[2]", state=common_pb2.JOB_STATE_QUEUED
        ),
    )
    failure = common_pb2.Failure(reason=common_pb2.ERROR_REASON_TOOL_ERROR, message="boom")
    finished = RuntimeEvent(
        type=common_pb2.EVENT_TYPE_CHILD_FINISHED,
        child=common_pb2.ChildEvent(
            child="jobs/c", node="map[2]", state=common_pb2.JOB_STATE_FAILED, failure=failure
        ),
    )

    assert render.event_line(created) == "job.child.created (jobs/c map[2] QUEUED)"
    assert render.event_line(finished) == (
        "job.child.finished (jobs/c map[2] FAILED: TOOL_ERROR: boom)"
    )
