"""Workflows compiled to one graph shape, and their checks at job creation.

Every operator of `agentrt.jobs.v1.Workflow` (chain, parallel, map-reduce, planner-executor,
debate, router) is compiled here to a `Graph` of nodes and conditional edges, so that the
orchestrator runs all of them with one executor; the jobs service calls
`validate_workflow` so that a workflow that cannot compile is refused at CreateJob.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from agentrt.jobs.v1 import jobs_pb2, workflow_pb2

from services.kit.errors import FieldInvalid, FieldRequired

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""Agent names, node ids and route names."""
_PLACEHOLDER = re.compile(r"\{(input|nodes\.([A-Za-z0-9_-]{1,64}))\}")
DEFAULT_SEPARATOR = "\n\n"
DEFAULT_MAX_ITEMS = 100
DEFAULT_MAX_STEPS = 20
DEFAULT_MAX_ITERATIONS = 10
MAX_ITERATIONS = 100
DEFAULT_ROUNDS = 2
MAX_ROUNDS = 10
DEFAULT_AGREEMENT = "AGREE"
MAX_AGENTS = 100
MAX_NODES = 200
MAX_ITEMS = 1000
DEFAULT_MAX_CHILD_JOBS = 10
"""OrchestrationConfig.max_child_jobs when 0, as jobs.proto documents it."""
MAX_CHILD_JOBS = 1000
DEFAULT_MAX_DEPTH = 5
"""OrchestrationConfig.max_depth when 0, as jobs.proto documents it."""
MAX_DEPTH = 10
DEFAULT_MAX_PARALLEL = 5
"""OrchestrationConfig.max_parallel when 0, as jobs.proto documents it."""
MAX_PARALLEL = 100

Join = Literal["all", "any"]


@dataclass(frozen=True)
class Condition:
    """A test on a node's answer."""

    test: Literal["contains", "equals", "matches"]
    value: str
    negate: bool = False

    def holds(self, answer: str) -> bool:
        if self.test == "contains":
            result = self.value.casefold() in answer.casefold()
        elif self.test == "equals":
            result = pick_text(answer) == pick_text(self.value)
        else:
            result = re.search(self.value, answer) is not None
        return result != self.negate


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    condition: Condition | None = None


@dataclass(frozen=True)
class Node:
    """One node of a compiled graph."""

    id: str
    agent: str = ""
    """The agent it runs; empty with `workflow` empty means a pass-through."""
    workflow: workflow_pb2.Workflow | None = None
    """A nested workflow, run by one child job."""
    input: str = ""
    """The input template; empty means the delivered answers joined by `separator`."""
    join: Join = "all"
    fan_out: int = 0
    """0: one run; else one run per item of the input, at most this many items."""
    exclusive: bool = False
    separator: str | None = None
    """Joins delivered answers; for a fan-out node also its item answers (None: a JSON
    array, as the contract says for graphs)."""
    constant: str | None = None
    """A pass-through's answer whatever its input (the items a caller gave)."""

    @property
    def runs_child(self) -> bool:
        return bool(self.agent) or self.workflow is not None


@dataclass(frozen=True)
class Graph:
    """What the executor runs: nodes in order, edges in order, and the answer's node."""

    nodes: dict[str, Node]
    edges: tuple[Edge, ...]
    output: str = ""
    """Empty: the node that finished last."""
    max_iterations: int = DEFAULT_MAX_ITERATIONS
    incoming: dict[str, tuple[Edge, ...]] = field(default_factory=dict)
    outgoing: dict[str, tuple[Edge, ...]] = field(default_factory=dict)

    @property
    def starts(self) -> list[str]:
        """The nodes without incoming edges, which the graph starts with."""
        return [node for node in self.nodes if not self.incoming.get(node)]

    def sources(self, node: str) -> list[str]:
        """The distinct nodes with an edge into `node`, in edge order."""
        return list(dict.fromkeys(edge.source for edge in self.incoming.get(node, ())))


def pick_text(text: str) -> str:
    """A router's pick as compared with route names: trimmed of spaces, quotes and a
    final period, case-folded."""
    return text.strip().rstrip(".").strip().strip("\"'`").strip().casefold()


def items_of(text: str) -> list[str] | None:
    """An input read as a list: a JSON array, an object with an "items" or "steps" array,
    else its non-empty lines. None when it is empty."""
    value: object = None
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        try:
            value = json.loads(stripped)
        except ValueError:
            value = None
    if isinstance(value, dict):
        value = value.get("items", value.get("steps"))
    if isinstance(value, list):
        items = [item if isinstance(item, str) else json.dumps(item) for item in value]
    else:
        items = [line.strip() for line in text.splitlines() if line.strip()]
    return items or None


def render(template: str, prompt: str, answers: Mapping[str, str]) -> str:
    """A node's input from its template: {input} is the prompt, {nodes.ID} an answer."""

    def value(match: re.Match[str]) -> str:
        if match.group(1) == "input":
            return prompt
        return answers.get(match.group(2), "")

    return _PLACEHOLDER.sub(value, template)


def compile_workflow(workflow: workflow_pb2.Workflow, field_name: str = "spec.workflow") -> Graph:
    """The graph that runs `workflow`; raises FieldInvalid / FieldRequired naming the field."""
    kind = workflow.WhichOneof("kind")
    if kind is None:
        raise FieldRequired(f"{field_name}.kind")
    where = f"{field_name}.{kind}"
    if kind == "chain":
        return _chain(workflow.chain, where)
    if kind == "parallel":
        return _parallel(workflow.parallel, where)
    if kind == "map_reduce":
        return _map_reduce(workflow.map_reduce, where)
    if kind == "planner_executor":
        return _planner_executor(workflow.planner_executor, where)
    if kind == "debate":
        return _debate(workflow.debate, where)
    if kind == "router":
        return _router(workflow.router, where)
    return _graph(workflow.graph, where)


def validate_workflow(spec: jobs_pb2.JobSpec) -> None:
    """Checks a spec's agents and workflow at CreateJob: every agent a workflow names is
    defined, every graph compiles, and the child jobs and nesting the spec shows fit its
    orchestration limits. Raises InvalidArgument naming the field."""
    for name, agent in spec.agents.items():
        where = f"spec.agents[{name}]"
        if not NAME.fullmatch(name):
            raise FieldInvalid(where, "agent names are 1 to 64 letters, digits, '_' or '-'")
        if not 0 <= agent.max_turns <= 100:
            raise FieldInvalid(f"{where}.max_turns", "must be from 0 to 100")
    if not spec.HasField("workflow"):
        return
    max_depth = spec.orchestration.max_depth or DEFAULT_MAX_DEPTH
    max_children = spec.orchestration.max_child_jobs or DEFAULT_MAX_CHILD_JOBS
    _validate(spec.workflow, spec.agents, "spec.workflow", 1, max_depth, max_children)


def _validate(
    workflow: workflow_pb2.Workflow,
    agents: Mapping[str, jobs_pb2.AgentDefinition],
    where: str,
    depth: int,
    max_depth: int,
    max_children: int,
) -> None:
    if depth > max_depth:
        raise FieldInvalid(
            "spec.orchestration.max_depth",
            f"{where} nests child jobs {depth} deep, past max_depth {max_depth}",
        )
    graph = compile_workflow(workflow, where)
    for node in graph.nodes.values():
        if node.agent and node.agent not in agents:
            raise FieldInvalid(where, f"agent {node.agent!r} is not in spec.agents")
    certain = certain_children(graph)
    if certain > max_children:
        raise FieldInvalid(
            "spec.orchestration.max_child_jobs",
            f"{where} creates at least {certain} child jobs, past max_child_jobs {max_children}",
        )
    for node in graph.nodes.values():
        if node.workflow is not None:
            _validate(
                node.workflow,
                agents,
                f"{where}.nodes[{node.id}]",
                depth + 1,
                max_depth,
                max_children,
            )


def certain_children(graph: Graph) -> int:
    """Child jobs the graph creates whatever its answers: those of its start nodes and of
    the nodes every path from them reaches through unconditional edges, a fan-out node
    once per item when its items are given, else once."""
    reached = set(graph.starts)
    changed = True
    while changed:
        changed = False
        for node in graph.nodes.values():
            if node.id in reached or not graph.incoming.get(node.id):
                continue
            edges = graph.incoming[node.id]
            if all(e.condition is None and e.source in reached for e in edges) and all(
                not graph.nodes[e.source].exclusive for e in edges
            ):
                reached.add(node.id)
                changed = True
    return sum(_children_of(graph, graph.nodes[node]) for node in reached)


def _children_of(graph: Graph, node: Node) -> int:
    """The children one run of a node creates, as far as the spec shows: a fan-out over
    a constant (the items a caller gave) creates one per item."""
    if not node.runs_child:
        return 0
    if not node.fan_out or node.input:
        return 1
    sources = [graph.nodes[s] for s in graph.sources(node.id)]
    if len(sources) == 1 and sources[0].constant is not None:
        return len(items_of(sources[0].constant) or ())
    return 1


def _build(
    nodes: Sequence[Node],
    edges: Sequence[Edge],
    where: str,
    output: str = "",
    max_iterations: int = 0,
) -> Graph:
    by_id: dict[str, Node] = {}
    for node in nodes:
        if node.id in by_id:
            raise FieldInvalid(f"{where}.nodes", f"node id {node.id!r} is used twice")
        by_id[node.id] = node
    incoming: dict[str, list[Edge]] = {}
    outgoing: dict[str, list[Edge]] = {}
    for index, edge in enumerate(edges):
        for end in (edge.source, edge.target):
            if end not in by_id:
                raise FieldInvalid(f"{where}.edges[{index}]", f"no node {end!r}")
        incoming.setdefault(edge.target, []).append(edge)
        outgoing.setdefault(edge.source, []).append(edge)
    if output and output not in by_id:
        raise FieldInvalid(f"{where}.output", f"no node {output!r}")
    graph = Graph(
        nodes=by_id,
        edges=tuple(edges),
        output=output,
        max_iterations=max_iterations or DEFAULT_MAX_ITERATIONS,
        incoming={k: tuple(v) for k, v in incoming.items()},
        outgoing={k: tuple(v) for k, v in outgoing.items()},
    )
    if not graph.starts:
        raise FieldInvalid(f"{where}.edges", "every node has an incoming edge: nothing starts")
    return graph


def _agent_list(names: Sequence[str], where: str, low: int, high: int) -> list[str]:
    if not low <= len(names) <= high:
        raise FieldInvalid(where, f"from {low} to {high} agents")
    for index, name in enumerate(names):
        _name(name, f"{where}[{index}]")
    return list(names)


def _name(value: str, where: str) -> str:
    if not value:
        raise FieldRequired(where)
    if not NAME.fullmatch(value):
        raise FieldInvalid(where, "1 to 64 letters, digits, '_' or '-'")
    return value


def _unique_ids(names: Sequence[str]) -> list[str]:
    """Node ids for agents: the agent's name, numbered when it occurs more than once."""
    repeated = {name for name in names if names.count(name) > 1}
    return [f"{name}-{i + 1}" if name in repeated else name for i, name in enumerate(names)]


def _chain(chain: workflow_pb2.Chain, where: str) -> Graph:
    agents = _agent_list(chain.agents, f"{where}.agents", 1, MAX_AGENTS)
    ids = _unique_ids(agents)
    nodes = [Node(id=i, agent=a) for i, a in zip(ids, agents, strict=True)]
    edges = [Edge(a, b) for a, b in itertools.pairwise(ids)]
    return _build(nodes, edges, where, output=ids[-1])


def _parallel(parallel: workflow_pb2.Parallel, where: str) -> Graph:
    agents = _agent_list(parallel.agents, f"{where}.agents", 1, MAX_AGENTS)
    ids = _unique_ids(agents)
    separator = parallel.aggregation.separator or DEFAULT_SEPARATOR
    nodes = [Node(id=i, agent=a) for i, a in zip(ids, agents, strict=True)]
    reducer = parallel.aggregation.reducer
    if reducer:
        _name(reducer, f"{where}.aggregation.reducer")
    end = "aggregate" if "aggregate" not in ids else "aggregate-0"
    nodes.append(Node(id=end, agent=reducer, separator=separator))
    return _build(nodes, [Edge(i, end) for i in ids], where, output=end)


def _map_reduce(spec: workflow_pb2.MapReduce, where: str) -> Graph:
    mapper = _name(spec.mapper, f"{where}.mapper")
    reducer = _name(spec.reducer, f"{where}.reducer")
    max_items = spec.max_items or DEFAULT_MAX_ITEMS
    if not 1 <= max_items <= MAX_ITEMS:
        raise FieldInvalid(f"{where}.max_items", f"must be from 0 to {MAX_ITEMS}")
    if len(spec.items) > max_items:
        raise FieldInvalid(f"{where}.items", f"more than max_items ({max_items})")
    if spec.splitter:
        split = Node(id="split", agent=_name(spec.splitter, f"{where}.splitter"))
    elif spec.items:
        split = Node(id="split", constant=json.dumps(list(spec.items)))
    else:
        split = Node(id="split")
    separator = spec.separator or DEFAULT_SEPARATOR
    nodes = [
        split,
        Node(id="map", agent=mapper, fan_out=max_items, separator=separator),
        Node(id="reduce", agent=reducer),
    ]
    return _build(nodes, [Edge("split", "map"), Edge("map", "reduce")], where, output="reduce")


def _planner_executor(spec: workflow_pb2.PlannerExecutor, where: str) -> Graph:
    planner = _name(spec.planner, f"{where}.planner")
    executor = _name(spec.executor, f"{where}.executor")
    max_steps = spec.max_steps or DEFAULT_MAX_STEPS
    if not 1 <= max_steps <= MAX_ITEMS:
        raise FieldInvalid(f"{where}.max_steps", f"must be from 0 to {MAX_ITEMS}")
    synthesizer = spec.synthesizer
    if synthesizer:
        _name(synthesizer, f"{where}.synthesizer")
    nodes = [
        Node(id="plan", agent=planner),
        Node(id="steps", agent=executor, fan_out=max_steps, separator=DEFAULT_SEPARATOR),
        Node(
            id="synthesis",
            agent=synthesizer,
            input="{input}\n\nResults of the plan's steps:\n\n{nodes.steps}" if synthesizer else "",
        ),
    ]
    return _build(nodes, [Edge("plan", "steps"), Edge("steps", "synthesis")], where, "synthesis")


def _debate(spec: workflow_pb2.Debate, where: str) -> Graph:
    debaters = _agent_list(spec.debaters, f"{where}.debaters", 2, 10)
    moderator = _name(spec.moderator, f"{where}.moderator")
    rounds = spec.rounds or DEFAULT_ROUNDS
    if not 1 <= rounds <= MAX_ROUNDS:
        raise FieldInvalid(f"{where}.rounds", f"must be from 0 to {MAX_ROUNDS}")
    # A word, so that "DISAGREE" is no agreement.
    marker = re.escape(spec.agreement or DEFAULT_AGREEMENT)
    go_on = Condition("matches", rf"(?i)(?<!\w){marker}(?!\w)", negate=True)
    nodes: list[Node] = []
    edges: list[Edge] = []
    for r in range(1, rounds + 1):
        ids = [f"round{r}-{d}" for d in _unique_ids(debaters)]
        if r == 1:
            question = "{input}"
        else:
            before = "\n\n".join(f"{d}: {{nodes.round{r - 1}-{d}}}" for d in _unique_ids(debaters))
            question = (
                f"{{input}}\n\nRound {r - 1} answers:\n\n{before}\n\n"
                f"Moderator: {{nodes.round{r - 1}-moderator}}"
            )
        for node_id, agent in zip(ids, debaters, strict=True):
            nodes.append(Node(id=node_id, agent=agent, input=question))
            if r > 1:
                edges.append(Edge(f"round{r - 1}-moderator", node_id, go_on))
        answers = "\n\n".join(
            f"{d}: {{nodes.{i}}}" for d, i in zip(_unique_ids(debaters), ids, strict=True)
        )
        verdict = f"round{r}-moderator"
        nodes.append(
            Node(id=verdict, agent=moderator, input=f"{{input}}\n\nRound {r} answers:\n\n{answers}")
        )
        edges.extend(Edge(i, verdict) for i in ids)
    return _build(nodes, edges, where)


def _router(spec: workflow_pb2.Router, where: str) -> Graph:
    router = _name(spec.router, f"{where}.router")
    if not 1 <= len(spec.routes) <= MAX_AGENTS:
        raise FieldInvalid(f"{where}.routes", f"from 1 to {MAX_AGENTS} routes")
    nodes = [Node(id="route", agent=router, exclusive=True)]
    edges: list[Edge] = []
    for name in sorted(spec.routes):
        _name(name, f"{where}.routes")
        agent = _name(spec.routes[name], f"{where}.routes[{name}]")
        node_id = f"route-{name}"
        nodes.append(Node(id=node_id, agent=agent, input="{input}"))
        edges.append(Edge("route", node_id, Condition("equals", name)))
    return _build(nodes, edges, where)


def _graph(graph: workflow_pb2.Graph, where: str) -> Graph:
    if not 1 <= len(graph.nodes) <= MAX_NODES:
        raise FieldInvalid(f"{where}.nodes", f"from 1 to {MAX_NODES} nodes")
    if not 0 <= graph.max_iterations <= MAX_ITERATIONS:
        raise FieldInvalid(f"{where}.max_iterations", f"must be from 0 to {MAX_ITERATIONS}")
    nodes: list[Node] = []
    for index, node in enumerate(graph.nodes):
        at = f"{where}.nodes[{index}]"
        _name(node.id, f"{at}.id")
        run = node.WhichOneof("run")
        nested: workflow_pb2.Workflow | None = None
        if run == "agent":
            _name(node.agent, f"{at}.agent")
        elif run == "workflow":
            nested = node.workflow
        fan_out = 0
        if node.HasField("fan_out"):
            fan_out = node.fan_out.max_items or DEFAULT_MAX_ITEMS
            if not 1 <= fan_out <= MAX_ITEMS:
                raise FieldInvalid(f"{at}.fan_out.max_items", f"must be from 0 to {MAX_ITEMS}")
        join: Join = "any" if node.join == workflow_pb2.GraphNode.JOIN_ANY else "all"
        for match in _PLACEHOLDER.finditer(node.input):
            ref = match.group(2)
            if ref and ref not in {n.id for n in graph.nodes}:
                raise FieldInvalid(f"{at}.input", f"no node {ref!r}")
        nodes.append(
            Node(
                id=node.id,
                agent=node.agent if run == "agent" else "",
                workflow=nested,
                input=node.input,
                join=join,
                fan_out=fan_out,
                exclusive=node.exclusive,
            )
        )
    edges = [
        # "from" is a Python keyword, so the generated field is read by name.
        Edge(getattr(edge, "from"), edge.to, _condition(edge, f"{where}.edges[{index}]"))
        for index, edge in enumerate(graph.edges)
    ]
    return _build(nodes, edges, where, output=graph.output, max_iterations=graph.max_iterations)


def _condition(edge: workflow_pb2.GraphEdge, where: str) -> Condition | None:
    if not edge.HasField("condition"):
        return None
    condition = edge.condition
    test = condition.WhichOneof("test")
    if test is None:
        raise FieldRequired(f"{where}.condition.test")
    if test == "contains":
        return Condition("contains", condition.contains, condition.negate)
    if test == "equals":
        return Condition("equals", condition.equals, condition.negate)
    try:
        re.compile(condition.matches)
    except re.error as error:
        raise FieldInvalid(f"{where}.condition.matches", str(error)) from error
    return Condition("matches", condition.matches, condition.negate)
