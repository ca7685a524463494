"""Builders of workflows (operators and graphs) and of the job specs that run them.

from agentrt import workflows as wf

spec = wf.workflow_spec(
    "Compare the two designs",
    wf.parallel("pro", "con", reducer="judge"),
    agents={
        "pro": wf.agent("Argue for the design."),
        "con": wf.agent("Argue against it."),
        "judge": wf.agent("Weigh both sides and decide."),
    },
    model="gpt-4o-mini",
)
job = await client.execute_spec(spec)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2, workflow_pb2

__all__ = [
    "agent",
    "chain",
    "debate",
    "edge",
    "graph",
    "map_reduce",
    "node",
    "parallel",
    "planner_executor",
    "router",
    "workflow_spec",
]

Workflow = workflow_pb2.Workflow


def agent(
    system_prompt: str = "",
    *,
    model: str = "",
    tools: Iterable[str | common_pb2.ToolSpec] = (),
    max_turns: int = 0,
    budget: common_pb2.BudgetSpec | None = None,
    description: str = "",
) -> jobs_pb2.AgentDefinition:
    """A named agent's definition (tools by name are built-in or plugin tools)."""
    specs = [common_pb2.ToolSpec(name=t) if isinstance(t, str) else t for t in tools]
    return jobs_pb2.AgentDefinition(
        model=model,
        system_prompt=system_prompt,
        tools=specs,
        max_turns=max_turns,
        budget=budget,
        description=description,
    )


def chain(*agents: str) -> Workflow:
    """Agents one after another, each given the previous answer."""
    return Workflow(chain=workflow_pb2.Chain(agents=agents))


def parallel(*agents: str, reducer: str = "", separator: str = "") -> Workflow:
    """Agents at once on the prompt; a reducer agent, or a join, makes the answer."""
    aggregation = workflow_pb2.Aggregation(reducer=reducer, separator=separator)
    return Workflow(parallel=workflow_pb2.Parallel(agents=agents, aggregation=aggregation))


def map_reduce(
    mapper: str,
    reducer: str,
    *,
    items: Sequence[str] = (),
    splitter: str = "",
    max_items: int = 0,
) -> Workflow:
    """One mapper child per item (given, from a splitter's JSON, or the prompt's lines)."""
    return Workflow(
        map_reduce=workflow_pb2.MapReduce(
            mapper=mapper, reducer=reducer, items=items, splitter=splitter, max_items=max_items
        )
    )


def planner_executor(
    planner: str, executor: str, *, synthesizer: str = "", max_steps: int = 0
) -> Workflow:
    """A planner's JSON plan, one executor child per step, an optional synthesizer."""
    return Workflow(
        planner_executor=workflow_pb2.PlannerExecutor(
            planner=planner, executor=executor, synthesizer=synthesizer, max_steps=max_steps
        )
    )


def debate(*debaters: str, moderator: str, rounds: int = 0, agreement: str = "") -> Workflow:
    """Debaters over rounds; the moderator's verdict containing `agreement` ends it."""
    return Workflow(
        debate=workflow_pb2.Debate(
            debaters=debaters, moderator=moderator, rounds=rounds, agreement=agreement
        )
    )


def router(router_agent: str, routes: Mapping[str, str]) -> Workflow:
    """A router agent answers a route's name; that route's agent answers the prompt."""
    return Workflow(router=workflow_pb2.Router(router=router_agent, routes=routes))


def node(
    node_id: str,
    agent: str = "",
    *,
    workflow: Workflow | None = None,
    input: str = "",
    join: Literal["all", "any"] = "all",
    fan_out: int | None = None,
    exclusive: bool = False,
) -> workflow_pb2.GraphNode:
    """A graph node: an agent, a nested workflow, or neither (a pass-through). `fan_out`
    (the most items; 0 for the default) runs it once per item of its input."""
    made = workflow_pb2.GraphNode(
        id=node_id,
        input=input,
        join=workflow_pb2.GraphNode.JOIN_ANY if join == "any" else workflow_pb2.GraphNode.JOIN_ALL,
        exclusive=exclusive,
    )
    if agent:
        made.agent = agent
    elif workflow is not None:
        made.workflow.CopyFrom(workflow)
    if fan_out is not None:
        made.fan_out.max_items = fan_out
    return made


def edge(
    source: str,
    target: str,
    *,
    contains: str | None = None,
    equals: str | None = None,
    matches: str | None = None,
    negate: bool = False,
) -> workflow_pb2.GraphEdge:
    """An edge, taken when its (at most one) test holds on the source's answer."""
    made = workflow_pb2.GraphEdge(to=target)
    setattr(made, "from", source)  # "from" is a Python keyword
    tests = {"contains": contains, "equals": equals, "matches": matches}
    chosen = {name: value for name, value in tests.items() if value is not None}
    if len(chosen) > 1:
        raise ValueError("an edge has at most one of contains, equals and matches")
    for name, value in chosen.items():
        setattr(made.condition, name, value)
        made.condition.negate = negate
    return made


def graph(
    nodes: Iterable[workflow_pb2.GraphNode],
    edges: Iterable[workflow_pb2.GraphEdge] = (),
    *,
    output: str = "",
    max_iterations: int = 0,
) -> Workflow:
    """A declarative graph of nodes and edges."""
    return Workflow(
        graph=workflow_pb2.Graph(
            nodes=nodes, edges=edges, output=output, max_iterations=max_iterations
        )
    )


def workflow_spec(
    prompt: str,
    workflow: Workflow,
    *,
    agents: Mapping[str, jobs_pb2.AgentDefinition],
    model: str = "",
    orchestration: jobs_pb2.OrchestrationConfig | None = None,
    budget: common_pb2.BudgetSpec | None = None,
    labels: Mapping[str, str] | None = None,
) -> jobs_pb2.JobSpec:
    """A job spec that runs `workflow` on `prompt` with the named agents."""
    spec = jobs_pb2.JobSpec(
        prompt=prompt,
        model=model,
        workflow=workflow,
        orchestration=orchestration,
        budget=budget,
        labels=labels,
    )
    for name, definition in agents.items():
        spec.agents[name].CopyFrom(definition)
    return spec
