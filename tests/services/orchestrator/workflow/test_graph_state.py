"""The graph executor's state machine, without any service: joins, conditions, fan-out,
cycles, failures, and a state that survives its checkpoint."""

from __future__ import annotations

import pytest
from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import workflow_pb2 as W

from services.kit.workflows import compile_workflow
from services.orchestrator.workflow.graph_state import GraphRun, GraphState, WorkflowFailed


def _edge(source: str, target: str, **condition: str) -> W.GraphEdge:
    edge = W.GraphEdge(to=target)
    setattr(edge, "from", source)
    if condition:
        ((test, value),) = condition.items()
        setattr(edge.condition, test, value)
    return edge


def _drive(run: GraphRun, answer: object) -> list[str]:
    """Runs the graph to its end, answering every child with answer(label, input);
    returns the labels in the order their children were created. The state goes through
    encode/decode after every step, as it does through the checkpoint."""
    created: list[str] = []
    run.start()
    n = 0
    while not run.done:
        for activation, unit in run.to_create(100):
            n += 1
            created.append(activation.label(unit))
            run.child_created(unit, f"jobs/c{n}:{activation.label(unit)}:{unit.input}")
        for child in run.running():
            _, label, text = child.split(":", 2)
            run.child_ended(child, answer(label, text), None)  # type: ignore[operator]
        run.state = GraphState.decode(run.state.encode())
    return created


def test_a_condition_and_a_fan_out_and_a_join() -> None:
    graph = compile_workflow(
        W.Workflow(
            graph=W.Graph(
                nodes=[
                    W.GraphNode(id="plan", agent="p"),
                    W.GraphNode(id="work", agent="w", fan_out=W.FanOut()),
                    W.GraphNode(id="skip", agent="s"),
                    W.GraphNode(id="end", input="{input}|{nodes.work}", join=W.GraphNode.JOIN_ANY),
                ],
                edges=[
                    _edge("plan", "work", contains="["),
                    _edge("plan", "skip", contains="nothing"),
                    _edge("work", "end"),
                    _edge("skip", "end"),
                ],
            )
        )
    )
    run = GraphRun(graph, GraphState(), "goal", fail_fast=True)
    answers = {"plan": '["a","b","c"]'}
    created = _drive(run, lambda label, text: answers.get(label, text.upper()))
    assert created == ["plan", "work[0]", "work[1]", "work[2]"]
    assert run.output == 'goal|["A", "B", "C"]'


def test_a_bounded_cycle_runs_until_its_condition_fails_or_it_is_cut() -> None:
    def graph(max_iterations: int) -> W.Workflow:
        return W.Workflow(
            graph=W.Graph(
                nodes=[
                    W.GraphNode(id="brief"),
                    W.GraphNode(id="draft", agent="d", join=W.GraphNode.JOIN_ANY),
                    W.GraphNode(id="review", agent="r"),
                ],
                edges=[
                    _edge("brief", "draft"),
                    _edge("draft", "review"),
                    _edge("review", "draft", contains="again"),
                ],
                max_iterations=max_iterations,
            )
        )

    reviews = iter(["again", "again", "good"])
    run = GraphRun(compile_workflow(graph(5)), GraphState(), "x", fail_fast=True)
    created = _drive(run, lambda label, text: next(reviews) if label.startswith("review") else "d")
    assert created == ["draft", "review", "draft#2", "review#2", "draft#3", "review#3"]
    assert run.output == "good"
    run = GraphRun(compile_workflow(graph(2)), GraphState(), "x", fail_fast=True)
    with pytest.raises(WorkflowFailed) as error:
        _drive(run, lambda label, text: "again")
    assert error.value.failure.reason == common_pb2.ERROR_REASON_ITERATIONS_EXCEEDED


def test_a_router_pick_that_names_no_route_fails_clearly() -> None:
    graph = compile_workflow(W.Workflow(router=W.Router(router="r", routes={"a": "x", "b": "y"})))
    run = GraphRun(graph, GraphState(), "q", fail_fast=True)
    assert _drive(run, lambda label, text: "B." if label == "route" else f"{label} did it") == [
        "route",
        "route-b",
    ]
    assert run.output == "route-b did it"
    run = GraphRun(graph, GraphState(), "q", fail_fast=True)
    with pytest.raises(WorkflowFailed) as error:
        _drive(run, lambda label, text: "c")
    assert error.value.failure.reason == common_pb2.ERROR_REASON_ROUTE_UNKNOWN
    assert error.value.failure.metadata["pick"] == "c"


def test_a_failed_child_fails_fast_or_becomes_the_nodes_answer() -> None:
    graph = compile_workflow(W.Workflow(parallel=W.Parallel(agents=["a", "b"])))
    failure = common_pb2.Failure(reason=common_pb2.ERROR_REASON_TOOL_ERROR, message="boom")
    for fail_fast in (True, False):
        run = GraphRun(graph, GraphState(), "q", fail_fast=fail_fast)
        run.start()
        for _, unit in run.to_create(10):
            run.child_created(unit, f"jobs/{unit.input}{len(run.running())}")
        first, second = run.running()
        if fail_fast:
            with pytest.raises(WorkflowFailed) as error:
                run.child_ended(first, None, failure)
            assert error.value.failure.reason == common_pb2.ERROR_REASON_NODE_FAILED
            continue
        run.child_ended(first, None, failure)
        run.child_ended(second, "fine", None)
        assert run.done
        assert run.output == "[node a failed: TOOL_ERROR: boom]\n\nfine"


def test_to_create_gives_at_most_the_limit_oldest_first() -> None:
    mr = W.MapReduce(mapper="m", reducer="r", items=[str(i) for i in range(7)])
    run = GraphRun(compile_workflow(W.Workflow(map_reduce=mr)), GraphState(), "", True)
    run.start()
    batch = run.to_create(3)
    assert [a.label(u) for a, u in batch] == ["map[0]", "map[1]", "map[2]"]
    for _, unit in batch:
        run.child_created(unit, f"jobs/{unit.input}")
    assert [a.label(u) for a, u in run.to_create(2)] == ["map[3]", "map[4]"]
    assert len(run.running()) == 3
