"""Every operator and a graph, end to end on the in-process system, driven by the local
model's scripted answers: what each child ran, and what the root answered."""

from __future__ import annotations

import json

from agentrt import workflows as wf
from agentrt.client import Client
from agentrt.common.v1 import common_pb2
from agentrt.common.v1.common_pb2 import ErrorReason, EventType, JobState
from agentrt.jobs.v1 import jobs_pb2

from services.dev import LocalSystem
from tests.workflows.trees import (
    agents,
    children_of,
    history,
    most_at_once,
    run_tree,
)

SUCCEEDED = JobState.JOB_STATE_SUCCEEDED


async def test_chain_gives_each_agent_the_previous_answer(system: LocalSystem) -> None:
    spec = wf.workflow_spec(
        "topic",
        wf.chain("a", "b"),
        agents=agents(a="reply: A({input})", b="reply: B({input})"),
    )
    tree = await run_tree(system, spec)
    assert tree.root.state == SUCCEEDED, tree.root.failure
    assert tree.root.result.output == "B(A(topic))"
    assert tree.nodes == ["a", "b"]
    assert all(c.root == tree.root.name and c.depth == 1 for c in tree.children)
    events = await history(system, tree.root.name)
    created = [e.child.node for e in events if e.type == EventType.EVENT_TYPE_CHILD_CREATED]
    finished = [e.child.node for e in events if e.type == EventType.EVENT_TYPE_CHILD_FINISHED]
    assert created == finished == ["a", "b"]


async def test_parallel_joins_or_reduces_the_answers(system: LocalSystem) -> None:
    scripts = agents(x="reply: X", y="reply: Y", r="reply: R[{input}]")
    joined = await run_tree(system, wf.workflow_spec("q", wf.parallel("x", "y"), agents=scripts))
    assert joined.root.result.output == "X\n\nY"
    assert sorted(joined.nodes) == ["x", "y"]
    reduced = await run_tree(
        system,
        wf.workflow_spec("q", wf.parallel("x", "y", reducer="r", separator=" + "), agents=scripts),
    )
    assert reduced.root.result.output == "R[X + Y]"
    assert reduced.nodes[-1] == "aggregate"


async def test_map_reduce_maps_a_splitters_items_then_reduces(system: LocalSystem) -> None:
    spec = wf.workflow_spec(
        "three things",
        wf.map_reduce("m", "r", splitter="s"),
        agents=agents(s='reply: ["a", "b", "c"]', m="reply: m({input})", r="reply: r({input})"),
    )
    tree = await run_tree(system, spec)
    assert tree.root.state == SUCCEEDED, tree.root.failure
    assert tree.root.result.output == "r(m(a)\n\nm(b)\n\nm(c))"
    assert tree.nodes[0] == "split" and tree.nodes[-1] == "reduce"
    assert sorted(tree.nodes[1:4]) == ["map[0]", "map[1]", "map[2]"]
    mapped = {c.spec.node: c.spec.prompt for c in tree.children}
    assert mapped["map[1]"] == "b"


async def test_map_reduce_over_given_items_creates_no_splitter(system: LocalSystem) -> None:
    spec = wf.workflow_spec(
        "ignored",
        wf.map_reduce("m", "r", items=["1", "2"]),
        agents=agents(m="reply: <{input}>", r="reply: {input}"),
    )
    tree = await run_tree(system, spec)
    assert tree.root.result.output == "<1>\n\n<2>"
    assert sorted(tree.nodes) == ["map[0]", "map[1]", "reduce"]


async def test_planner_executor_runs_a_child_per_step_and_synthesizes(
    system: LocalSystem,
) -> None:
    spec = wf.workflow_spec(
        "ship it",
        wf.planner_executor("plan", "do", synthesizer="sum"),
        agents=agents(
            plan='reply: {"steps": ["build", "test"]}',
            do="reply: did {input}",
            sum="reply: summary of: {input}",
        ),
        orchestration=jobs_pb2.OrchestrationConfig(parallel_execution=False),
    )
    tree = await run_tree(system, spec)
    assert tree.root.state == SUCCEEDED, tree.root.failure
    assert tree.nodes == ["plan", "steps[0]", "steps[1]", "synthesis"]
    assert tree.root.result.output == (
        "summary of: ship it\n\nResults of the plan's steps:\n\ndid build\n\ndid test"
    )
    assert most_at_once(tree.children) == 1


async def test_a_plan_that_is_no_list_fails_clearly(system: LocalSystem) -> None:
    spec = wf.workflow_spec(
        "x",
        wf.planner_executor("plan", "do", max_steps=2),
        agents=agents(plan='reply: ["a", "b", "c"]', do="reply: ok"),
    )
    tree = await run_tree(system, spec)
    assert tree.root.state == JobState.JOB_STATE_FAILED
    assert tree.root.failure.reason == ErrorReason.ERROR_REASON_PLAN_INVALID
    assert tree.nodes == ["plan"]


async def test_debate_stops_early_when_the_moderator_agrees(system: LocalSystem) -> None:
    spec = wf.workflow_spec(
        "tabs or spaces?",
        wf.debate("pro", "con", moderator="mod", rounds=4),
        agents=agents(
            pro="reply: tabs",
            con="reply: spaces",
            mod='if "Round 2 answers" reply: AGREE on spaces\nreply: DISAGREE',
        ),
        orchestration=jobs_pb2.OrchestrationConfig(max_child_jobs=20),
    )
    tree = await run_tree(system, spec)
    assert tree.root.state == SUCCEEDED, tree.root.failure
    assert tree.root.result.output == "AGREE on spaces"
    rounds = [f"round{r}-{who}" for r in (1, 2) for who in ("pro", "con", "moderator")]
    assert sorted(tree.nodes) == sorted(rounds)
    second = next(c for c in tree.children if c.spec.node == "round2-con")
    assert "pro: tabs" in second.spec.prompt and "Moderator: DISAGREE" in second.spec.prompt


async def test_router_runs_the_picked_route_and_fails_an_unknown_pick(
    system: LocalSystem,
) -> None:
    routes = {"billing": "bill", "tech": "tech"}
    scripts = agents(
        pick='if "invoice" reply: Billing.\nif "wifi" reply: tech\nreply: sales',
        bill="reply: billing desk: {input}",
        tech="reply: tech desk",
    )
    tree = await run_tree(
        system, wf.workflow_spec("my invoice", wf.router("pick", routes), agents=scripts)
    )
    assert tree.root.result.output == "billing desk: my invoice"
    assert tree.nodes == ["route", "route-billing"]
    lost = await run_tree(
        system, wf.workflow_spec("a sale", wf.router("pick", routes), agents=scripts)
    )
    assert lost.root.state == JobState.JOB_STATE_FAILED
    assert lost.root.failure.reason == ErrorReason.ERROR_REASON_ROUTE_UNKNOWN
    assert lost.root.failure.metadata["pick"] == "sales"
    assert lost.nodes == ["route"]


async def test_a_graph_with_a_condition_and_a_fan_out(system: LocalSystem) -> None:
    graph = wf.graph(
        [
            wf.node("plan", "planner"),
            wf.node("work", "worker", fan_out=5),
            wf.node("skip", "worker"),
            wf.node("end", input="{input}: {nodes.work}", join="any"),
        ],
        [
            wf.edge("plan", "work", contains="["),
            wf.edge("plan", "skip", contains="nothing to do"),
            wf.edge("work", "end"),
            wf.edge("skip", "end"),
        ],
    )
    spec = wf.workflow_spec(
        "goal",
        graph,
        agents=agents(planner='reply: ["x", "y"]', worker="reply: done {input}"),
    )
    tree = await run_tree(system, spec)
    assert tree.root.state == SUCCEEDED, tree.root.failure
    assert json.loads(tree.root.result.output.removeprefix("goal: ")) == ["done x", "done y"]
    assert sorted(tree.nodes) == ["plan", "work[0]", "work[1]"]


async def test_a_nested_workflow_is_one_child_that_runs_its_own_children(
    system: LocalSystem,
) -> None:
    inner = wf.chain("a", "b")
    graph = wf.graph(
        [wf.node("first", "a"), wf.node("inner", workflow=inner)], [wf.edge("first", "inner")]
    )
    spec = wf.workflow_spec("t", graph, agents=agents(a="reply: a{input}", b="reply: b{input}"))
    tree = await run_tree(system, spec)
    assert tree.root.state == SUCCEEDED, tree.root.failure
    assert tree.root.result.output == "baat"
    inner_job = next(c for c in tree.children if c.spec.node == "inner")
    assert inner_job.spec.HasField("workflow")
    grandchildren = await children_of(system, inner_job.name)
    assert [g.spec.node for g in grandchildren] == ["a", "b"]
    assert all(g.root == tree.root.name and g.depth == 2 for g in grandchildren)


async def test_max_parallel_bounds_the_children_running_at_once(system: LocalSystem) -> None:
    spec = wf.workflow_spec(
        "x",
        wf.map_reduce("m", "r", items=[str(i) for i in range(6)]),
        agents={
            "m": wf.agent("reply: {input}", model="local-slow"),
            "r": wf.agent("reply: ok"),
        },
        orchestration=jobs_pb2.OrchestrationConfig(max_parallel=2, max_child_jobs=10),
    )
    tree = await run_tree(system, spec)
    assert tree.root.state == SUCCEEDED, tree.root.failure
    mappers = [c for c in tree.children if c.spec.node.startswith("map[")]
    assert len(mappers) == 6
    assert most_at_once(mappers) == 2


async def test_run_agent_starts_a_sub_agent_and_answers_with_its_result(
    system: LocalSystem,
) -> None:
    spec = jobs_pb2.JobSpec(
        prompt='call run_agent {"agent": "helper", "prompt": "fix the bug"}',
        model="local",
        tools=[common_pb2.ToolSpec(name="run_agent")],
    )
    spec.agents["helper"].CopyFrom(wf.agent("reply: helped with {input}"))
    tree = await run_tree(system, spec)
    assert tree.root.state == SUCCEEDED, tree.root.failure
    assert "Tool run_agent returned: helped with fix the bug" in tree.root.result.output
    [child] = tree.children
    assert child.spec.node.startswith("run_agent.1.") and child.depth == 1
    events = await history(system, tree.root.name)
    [called] = [e.tool_called for e in events if e.type == EventType.EVENT_TYPE_TOOL_CALLED]
    assert called.ok and called.output == "helped with fix the bug"
    assert any(e.type == EventType.EVENT_TYPE_JOB_WAITING for e in events)


async def test_run_agent_with_an_unknown_agent_tells_the_model(system: LocalSystem) -> None:
    spec = jobs_pb2.JobSpec(
        prompt='call run_agent {"agent": "nobody", "prompt": "x"}',
        model="local",
        tools=[common_pb2.ToolSpec(name="run_agent")],
    )
    spec.agents["helper"].CopyFrom(wf.agent("reply: hi"))
    tree = await run_tree(system, spec)
    assert tree.root.state == SUCCEEDED
    assert "there is no agent 'nobody'; the agents are: helper" in tree.root.result.output
    assert tree.children == []


async def test_node_events_are_streamed_live_with_the_nodes_children(
    system: LocalSystem,
) -> None:
    spec = wf.workflow_spec(
        "t", wf.chain("a", "b"), agents=agents(a="reply: A", b="reply: B"), model="local"
    )
    async with Client(system.endpoint, system.api_key) as client:
        events = [event async for event in client.execute_stream_spec(spec)]
    nodes = [
        (EventType.Name(e.type), e.node_event.node, e.node_event.output_preview)
        for e in events
        if e.type in (EventType.EVENT_TYPE_NODE_STARTED, EventType.EVENT_TYPE_NODE_FINISHED)
    ]
    assert nodes == [
        ("EVENT_TYPE_NODE_STARTED", "a", ""),
        ("EVENT_TYPE_NODE_FINISHED", "a", "A"),
        ("EVENT_TYPE_NODE_STARTED", "b", ""),
        ("EVENT_TYPE_NODE_FINISHED", "b", "B"),
    ]
    finished = [e for e in events if e.type == EventType.EVENT_TYPE_NODE_FINISHED]
    assert all(len(e.node_event.children) == 1 for e in finished)
    assert events[-1].type == EventType.EVENT_TYPE_JOB_SUCCEEDED


async def test_children_past_max_child_jobs_at_run_time_fail_the_root_clearly(
    system: LocalSystem,
) -> None:
    items = json.dumps([str(i) for i in range(6)])
    spec = wf.workflow_spec(
        "x",
        wf.map_reduce("m", "r", splitter="s"),
        agents=agents(s=f"reply: {items}", m="reply: ok", r="reply: done"),
        orchestration=jobs_pb2.OrchestrationConfig(max_child_jobs=4, max_parallel=10),
    )
    tree = await run_tree(system, spec)
    assert tree.root.state == JobState.JOB_STATE_FAILED
    assert tree.root.failure.reason == ErrorReason.ERROR_REASON_TREE_LIMIT_EXCEEDED
    assert tree.root.failure.metadata["node"] == "map[3]"
    assert len(tree.children) == 4
    assert all(c.state in (SUCCEEDED, JobState.JOB_STATE_CANCELLED) for c in tree.children)
