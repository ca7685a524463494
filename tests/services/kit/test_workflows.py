"""Workflows compile to graphs, and bad ones are refused naming the field."""

from __future__ import annotations

import pytest
from agentrt.jobs.v1 import jobs_pb2, workflow_pb2

from services.kit.errors import FieldInvalid, FieldRequired, InvalidArgument
from services.kit.workflows import (
    Condition,
    certain_children,
    compile_workflow,
    items_of,
    pick_text,
    render,
    validate_workflow,
)

W = workflow_pb2


def _spec(
    workflow: workflow_pb2.Workflow, *agents: str, max_child_jobs: int = 0, max_depth: int = 0
) -> jobs_pb2.JobSpec:
    spec = jobs_pb2.JobSpec(prompt="p", model="local", workflow=workflow)
    for name in agents:
        spec.agents[name].system_prompt = name
    spec.orchestration.max_child_jobs = max_child_jobs
    spec.orchestration.max_depth = max_depth
    return spec


def _edge(source: str, target: str, condition: W.Condition | None = None) -> W.GraphEdge:
    edge = W.GraphEdge(to=target, condition=condition)
    setattr(edge, "from", source)
    return edge


def test_chain_is_a_line_ending_with_the_last_agent() -> None:
    graph = compile_workflow(W.Workflow(chain=W.Chain(agents=["a", "b", "a"])))
    assert list(graph.nodes) == ["a-1", "b", "a-3"]
    assert [(e.source, e.target) for e in graph.edges] == [("a-1", "b"), ("b", "a-3")]
    assert graph.starts == ["a-1"] and graph.output == "a-3"


def test_parallel_without_reducer_ends_in_a_pass_through_join() -> None:
    graph = compile_workflow(W.Workflow(parallel=W.Parallel(agents=["x", "y"])))
    assert graph.starts == ["x", "y"]
    join = graph.nodes["aggregate"]
    assert not join.runs_child and graph.sources("aggregate") == ["x", "y"]


def test_map_reduce_with_items_fans_out_over_them() -> None:
    mr = W.MapReduce(mapper="m", reducer="r", items=["1", "2"])
    graph = compile_workflow(W.Workflow(map_reduce=mr))
    assert graph.nodes["split"].constant == '["1", "2"]'
    assert graph.nodes["map"].fan_out == 100
    assert certain_children(graph) == 3  # map over the two given items, then reduce
    split = compile_workflow(
        W.Workflow(map_reduce=W.MapReduce(mapper="m", reducer="r", splitter="s"))
    )
    assert certain_children(split) == 3  # split, map (its items unknown: once), reduce


def test_router_is_exclusive_with_one_edge_a_route() -> None:
    graph = compile_workflow(W.Workflow(router=W.Router(router="r", routes={"b": "x", "a": "y"})))
    assert graph.nodes["route"].exclusive
    assert [e.target for e in graph.edges] == ["route-a", "route-b"]
    assert certain_children(graph) == 1


def test_debate_rounds_go_on_only_without_agreement() -> None:
    graph = compile_workflow(W.Workflow(debate=W.Debate(debaters=["p", "c"], moderator="m")))
    assert graph.starts == ["round1-p", "round1-c"]
    edge = graph.incoming["round2-p"][0]
    assert edge.source == "round1-moderator"
    assert edge.condition is not None
    assert not edge.condition.holds("We agree.") and edge.condition.holds("no")
    assert edge.condition.holds("DISAGREE")
    assert certain_children(graph) == 3


def test_graph_with_bad_parts_is_refused_naming_them() -> None:
    with pytest.raises(FieldInvalid) as error:
        compile_workflow(
            W.Workflow(
                graph=W.Graph(
                    nodes=[W.GraphNode(id="a", agent="x")],
                    edges=[_edge("a", "zz")],
                )
            )
        )
    assert error.value.field == "spec.workflow.graph.edges[0]"
    with pytest.raises(FieldInvalid) as error:
        compile_workflow(
            W.Workflow(
                graph=W.Graph(
                    nodes=[W.GraphNode(id="a", agent="x"), W.GraphNode(id="b", agent="x")],
                    edges=[
                        _edge("a", "b"),
                        _edge("b", "a"),
                    ],
                )
            )
        )
    assert "nothing starts" in error.value.message
    with pytest.raises(FieldInvalid) as error:
        compile_workflow(
            W.Workflow(
                graph=W.Graph(
                    nodes=[W.GraphNode(id="a", agent="x"), W.GraphNode(id="b", agent="x")],
                    edges=[_edge("a", "b", W.Condition(matches="("))],
                )
            )
        )
    assert error.value.field == "spec.workflow.graph.edges[0].condition.matches"
    with pytest.raises(FieldRequired):
        compile_workflow(W.Workflow())


def test_validation_wants_every_agent_defined() -> None:
    with pytest.raises(FieldInvalid) as error:
        validate_workflow(_spec(W.Workflow(chain=W.Chain(agents=["a", "b"])), "a"))
    assert "'b'" in error.value.message
    validate_workflow(_spec(W.Workflow(chain=W.Chain(agents=["a", "b"])), "a", "b"))


def test_validation_refuses_child_counts_and_depth_the_spec_shows() -> None:
    chain = W.Workflow(chain=W.Chain(agents=["a"] * 11))
    with pytest.raises(FieldInvalid) as error:
        validate_workflow(_spec(chain, "a"))
    assert error.value.field == "spec.orchestration.max_child_jobs"
    validate_workflow(_spec(chain, "a", max_child_jobs=11))
    many = W.Workflow(map_reduce=W.MapReduce(mapper="a", reducer="a", items=["x"] * 10))
    with pytest.raises(FieldInvalid) as error:
        validate_workflow(_spec(many, "a"))
    assert "at least 11 child jobs" in error.value.message
    nested = W.Workflow(chain=W.Chain(agents=["a"]))
    for _ in range(3):
        nested = W.Workflow(graph=W.Graph(nodes=[W.GraphNode(id="n", workflow=nested)]))
    with pytest.raises(InvalidArgument) as depth:
        validate_workflow(_spec(nested, "a", max_depth=3))
    assert depth.value.metadata["field"] == "spec.orchestration.max_depth"
    validate_workflow(_spec(nested, "a", max_depth=4))


def test_lists_templates_and_picks() -> None:
    assert items_of('["a", 2]') == ["a", "2"]
    assert items_of('{"steps": ["s1", "s2"]}') == ["s1", "s2"]
    assert items_of("one\n\n two \n") == ["one", "two"]
    assert items_of("  ") is None
    assert render("{input} / {nodes.a} / {nodes.b} / {x}", "P", {"a": "A"}) == "P / A /  / {x}"
    assert pick_text(' "Billing". ') == "billing"
    assert Condition("equals", "billing").holds("Billing.")
    assert Condition("matches", r"^\d+$").holds("42")
