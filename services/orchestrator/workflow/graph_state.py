"""The state of one run of a workflow's graph: which nodes ran, which children run them,
what each answered; pure logic, serialized into the parent job's checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from agentrt.common.v1 import common_pb2

from services.kit.workflows import Graph, Node, items_of, render

ErrorReason = common_pb2.ErrorReason
STATE_VERSION = 1


class WorkflowFailed(Exception):
    """The workflow cannot go on; the job fails with this failure."""

    def __init__(
        self, reason: ErrorReason.ValueType, message: str, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.failure = common_pb2.Failure(reason=reason, message=message, metadata=metadata or {})


@dataclass
class Unit:
    """One child job of a node's run (one per fan-out item)."""

    input: str
    index: int | None = None
    """The fan-out item's index; None for a node without fan-out."""
    child: str = ""
    """"jobs/{job}" once created."""
    answer: str | None = None
    """Its answer once it ended (for a failed child under CONTINUE, its failure)."""


@dataclass
class Activation:
    """One run of a node."""

    node: str
    iteration: int
    units: list[Unit]

    def label(self, unit: Unit) -> str:
        """The child's JobSpec.node: "map[3]", "critic#2"."""
        label = self.node if self.iteration == 1 else f"{self.node}#{self.iteration}"
        return label if unit.index is None else f"{label}[{unit.index}]"


@dataclass(frozen=True)
class NodeChange:
    """A node that started or finished, for its workflow.node.* event."""

    kind: Literal["started", "finished"]
    node: str
    iteration: int
    children: tuple[str, ...] = ()
    answer: str = ""
    failed: bool = False


@dataclass
class GraphState:
    """Where a graph's run stands. Every change goes through the methods below; the
    checkpoint holds `encode()`."""

    answers: dict[str, str] = field(default_factory=dict)
    """Each node's last answer."""
    runs: dict[str, int] = field(default_factory=dict)
    """Times each node was started."""
    inbox: dict[str, dict[str, str]] = field(default_factory=dict)
    """Answers delivered to each node since it last ran, by source."""
    active: list[Activation] = field(default_factory=list)
    """Runs not finished, in the order they started."""
    last: str = ""
    """The node that finished last."""
    started: bool = False

    def encode(self) -> bytes:
        data = asdict(self)
        data["version"] = STATE_VERSION
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> GraphState:
        """The state in a checkpoint; a new one for b"" (a first attempt)."""
        if not raw:
            return cls()
        data = json.loads(raw)
        if data.pop("version", None) != STATE_VERSION:
            raise ValueError("the checkpoint holds no workflow state of this version")
        active = [
            Activation(a["node"], a["iteration"], [Unit(**u) for u in a["units"]])
            for a in data.pop("active")
        ]
        return cls(active=active, **data)


class GraphRun:
    """Advances a GraphState over a compiled graph."""

    def __init__(self, graph: Graph, state: GraphState, prompt: str, fail_fast: bool) -> None:
        self.graph = graph
        self.state = state
        self.prompt = prompt
        self.fail_fast = fail_fast
        self.changes: list[NodeChange] = []
        """Node starts and ends since the caller last took them."""

    def start(self) -> None:
        """Starts the graph's start nodes, once."""
        if self.state.started:
            return
        self.state.started = True
        for node in self.graph.starts:
            self._activate(self.graph.nodes[node], self.prompt)

    @property
    def done(self) -> bool:
        return self.state.started and not self.state.active

    @property
    def output(self) -> str:
        node = self.graph.output or self.state.last
        return self.state.answers.get(node, "")

    def running(self) -> list[str]:
        """The children created and not known to have ended."""
        return [u.child for a in self.state.active for u in a.units if u.child and u.answer is None]

    def to_create(self, limit: int) -> list[tuple[Activation, Unit]]:
        """Up to `limit` units that have no child yet, oldest run first."""
        found: list[tuple[Activation, Unit]] = []
        for activation in self.state.active:
            for unit in activation.units:
                if len(found) >= limit:
                    return found
                if not unit.child:
                    found.append((activation, unit))
        return found

    def child_created(self, unit: Unit, child: str) -> None:
        unit.child = child

    def child_ended(
        self, child: str, answer: str | None, failure: common_pb2.Failure | None
    ) -> None:
        """Records a child's end: its answer, or its failure (which fails the workflow
        when failing fast). Finishes the node when it was its last child."""
        for activation in list(self.state.active):
            for unit in activation.units:
                if unit.child != child or unit.answer is not None:
                    continue
                if answer is None:
                    failure = failure or common_pb2.Failure(message="the child ended")
                    if self.fail_fast:
                        raise WorkflowFailed(
                            ErrorReason.ERROR_REASON_NODE_FAILED,
                            f"node {activation.label(unit)} failed: {failure.message}",
                            {"node": activation.node, "child": child},
                        )
                    reason = ErrorReason.Name(failure.reason).removeprefix("ERROR_REASON_")
                    answer = f"[node {activation.label(unit)} failed: {reason}: {failure.message}]"
                unit.answer = answer
                if all(u.answer is not None for u in activation.units):
                    self._finish(activation)
                return

    def _activate(self, node: Node, delivered: str) -> None:
        runs = self.state.runs.get(node.id, 0) + 1
        if runs > self.graph.max_iterations:
            raise WorkflowFailed(
                ErrorReason.ERROR_REASON_ITERATIONS_EXCEEDED,
                f"node {node.id} would run more than {self.graph.max_iterations} times",
                {"node": node.id, "max_iterations": str(self.graph.max_iterations)},
            )
        self.state.runs[node.id] = runs
        text = render(node.input, self.prompt, self.state.answers) if node.input else delivered
        if node.fan_out:
            items = items_of(text)
            if items is None or len(items) > node.fan_out:
                found = "no list" if items is None else f"{len(items)} items"
                raise WorkflowFailed(
                    ErrorReason.ERROR_REASON_PLAN_INVALID,
                    f"node {node.id} fans out over at most {node.fan_out} items; its input "
                    f"has {found}",
                    {"node": node.id},
                )
            units = [Unit(input=item, index=i) for i, item in enumerate(items)]
        else:
            units = [Unit(input=text)]
        activation = Activation(node.id, runs, units)
        self.state.active.append(activation)
        self.changes.append(NodeChange("started", node.id, runs))
        if not node.runs_child:
            for unit in units:
                unit.answer = node.constant if node.constant is not None else unit.input
            self._finish(activation)

    def _finish(self, activation: Activation) -> None:
        node = self.graph.nodes[activation.node]
        self.state.active.remove(activation)
        answers = [u.answer or "" for u in activation.units]
        if not node.fan_out:
            answer = answers[0]
        elif node.separator is None:
            answer = json.dumps(answers)
        else:
            answer = node.separator.join(answers)
        self.state.answers[node.id] = answer
        self.state.last = node.id
        self.changes.append(
            NodeChange(
                "finished",
                node.id,
                activation.iteration,
                tuple(u.child for u in activation.units if u.child),
                answer,
            )
        )
        self._deliver(node, answer)

    def _deliver(self, node: Node, answer: str) -> None:
        taken = [
            e
            for e in self.graph.outgoing.get(node.id, ())
            if e.condition is None or e.condition.holds(answer)
        ]
        if node.exclusive:
            if not taken:
                raise WorkflowFailed(
                    ErrorReason.ERROR_REASON_ROUTE_UNKNOWN,
                    f"node {node.id} answered {answer.strip()[:80]!r}, which names none of "
                    "its routes",
                    {"node": node.id, "pick": answer.strip()[:80]},
                )
            taken = taken[:1]
        for edge in taken:
            target = self.graph.nodes[edge.target]
            inbox = self.state.inbox.setdefault(target.id, {})
            inbox[node.id] = answer
            sources = self.graph.sources(target.id)
            if target.join == "any" or all(s in inbox for s in sources):
                ordered = [inbox[s] for s in sources if s in inbox]
                del self.state.inbox[target.id]
                self._activate(target, (target.separator or "\n\n").join(ordered))
