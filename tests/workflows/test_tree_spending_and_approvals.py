"""A tree spends from one account, and an approval inside a tree parks only its child:
end to end on the in-process system (and on PostgreSQL and Redis)."""

from __future__ import annotations

import asyncio

import pytest
from agentrt import workflows as wf
from agentrt.client import Client
from agentrt.common.v1 import common_pb2 as E
from agentrt.jobs.v1 import jobs_pb2
from agentrt.policy.v1 import policy_pb2

from services.dev import LocalSystem
from tests.workflows.trees import agents, children_of, history, run_tree

WAIT = 20.0
CALCULATE = 'call calculator {"expression": "6 * 7"}'


async def test_twenty_children_sharing_a_budget_that_fits_five_never_overspend(
    system: LocalSystem,
) -> None:
    mapper = wf.agent("reply: mapped {input} with some words of answer")
    mapper.params.max_output_tokens = 40
    spec = wf.workflow_spec(
        "x",
        wf.map_reduce("m", "r", items=[f"item {i}" for i in range(20)]),
        agents={"m": mapper, "r": wf.agent("reply: reduced")},
        orchestration=jobs_pb2.OrchestrationConfig(
            max_parallel=20,
            max_child_jobs=25,
            on_child_failure=jobs_pb2.OrchestrationConfig.CHILD_FAILURE_CONTINUE,
        ),
    )
    # One mapper call holds its worst case (its prompt's tokens + 40) and spends about
    # half of that: 5 worst cases fit the tree's account at once, about 10 calls in all.
    limit = 300
    spec.budget.max_tokens = limit
    tree = await run_tree(system, spec)
    mappers = [c for c in tree.children if c.spec.node.startswith("map[")]
    assert len(mappers) == 20
    spent = sum(job.usage.total_tokens for job in tree.children)
    assert 0 < spent <= limit
    refused = [c for c in mappers if c.failure.reason == E.ERROR_REASON_BUDGET_EXCEEDED]
    succeeded = [c for c in mappers if c.state == E.JOB_STATE_SUCCEEDED]
    assert refused and succeeded, "the account must have run out part way"
    assert any(r.failure.metadata.get("budget", "").startswith("budgets/tree-") for r in refused)
    assert len(succeeded) + len(refused) == 20


async def test_a_tree_that_does_not_inherit_budgets_is_not_held_to_the_roots(
    system: LocalSystem,
) -> None:
    spec = wf.workflow_spec(
        "x",
        wf.map_reduce("m", "r", items=[f"item {i}" for i in range(4)]),
        agents=agents(m="reply: mapped {input}", r="reply: reduced"),
        orchestration=jobs_pb2.OrchestrationConfig(inherit_budgets=False),
    )
    spec.budget.max_tokens = 1
    tree = await run_tree(system, spec)
    assert tree.root.state == E.JOB_STATE_SUCCEEDED, tree.root.failure
    assert sum(job.usage.total_tokens for job in tree.children) > 1


async def approval_in_a_parallel_step(system: LocalSystem) -> None:
    """A parallel of three agents where only `calc` calls a tool that needs approval:
    that child alone waits; approving it finishes the tree, and nothing ran twice."""
    async with Client(system.endpoint, system.api_key) as client:
        rule = policy_pb2.Rule(
            id="calc-approval",
            description="a person checks every calculation",
            tool=policy_pb2.ToolRule(
                patterns=["calculator"], verdict=policy_pb2.VERDICT_REQUIRE_APPROVAL
            ),
        )
        await client.create_policy_set("approvals", policy_pb2.PolicySet(rules=[rule]))
        calc = wf.agent(tools=["calculator"])
        calc.policy.name = "approvals"
        spec = wf.workflow_spec(
            CALCULATE,
            wf.parallel("calc", "one", "two"),
            agents={"calc": calc, "one": wf.agent("reply: one"), "two": wf.agent("reply: two")},
            model="local",
        )
        root = await client.execute_spec(spec)
        async with asyncio.timeout(WAIT):
            while True:
                children = {c.spec.node: c for c in await children_of(system, root.name)}
                states = {node: c.state for node, c in children.items()}
                if (
                    states
                    == {
                        "calc": E.JOB_STATE_WAITING,
                        "one": E.JOB_STATE_SUCCEEDED,
                        "two": E.JOB_STATE_SUCCEEDED,
                    }
                    and (await client.get(root.name)).state == E.JOB_STATE_WAITING
                ):
                    break  # the root, requeued by each sibling's end, waits again
                await asyncio.sleep(0.05)
        actions, _ = await client.list_actions(
            children["calc"].name, states=[jobs_pb2.Action.State.STATE_PENDING]
        )
        [action] = actions
        await client.resolve_action({"approved": True}, name=action.name)
        done = await client.result(root.name)

    assert done.state == E.JOB_STATE_SUCCEEDED, done.failure
    assert "calculator returned: 42" in done.result.output
    finished = {c.spec.node: c for c in await children_of(system, root.name)}
    assert sorted(finished) == ["calc", "one", "two"]
    for node in ("one", "two"):
        assert finished[node].attempt == 1 and finished[node].usage.model_calls == 1
    calc_events = await history(system, finished["calc"].name)
    ran = [e for e in calc_events if e.type == E.EVENT_TYPE_TOOL_CALLED]
    assert [(e.tool_called.ok, e.tool_called.output) for e in ran] == [(True, "42")]
    root_events = await history(system, root.name)
    created = [e.child.node for e in root_events if e.type == E.EVENT_TYPE_CHILD_CREATED]
    assert sorted(created) == ["calc", "one", "two"]


async def test_an_approval_in_a_parallel_step_parks_only_its_child(system: LocalSystem) -> None:
    await approval_in_a_parallel_step(system)


@pytest.mark.integration
async def test_an_approval_in_a_parallel_step_on_postgres_and_redis(
    pg_system: LocalSystem,
) -> None:
    await approval_in_a_parallel_step(pg_system)


@pytest.mark.integration
async def test_map_reduce_on_postgres_and_redis(pg_system: LocalSystem) -> None:
    spec = wf.workflow_spec(
        "a\nb\nc",
        wf.map_reduce("m", "r"),
        agents=agents(m="reply: m({input})", r="reply: r({input})"),
    )
    tree = await run_tree(pg_system, spec)
    assert tree.root.state == E.JOB_STATE_SUCCEEDED, tree.root.failure
    assert tree.root.result.output == "r(m(a)\n\nm(b)\n\nm(c))"
    assert sorted(tree.nodes) == ["map[0]", "map[1]", "map[2]", "reduce"]
