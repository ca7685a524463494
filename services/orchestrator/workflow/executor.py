"""The graph executor: one worker's run of a leased job that holds a workflow.

Each node is a child job created with a request_id derived from (parent, node, iteration,
item), so a retried, taken-over or resumed parent finds the child it created before
instead of creating another. Between steps the parent parks WAITING on its unfinished
children (AwaitChildren) holding no worker; a child's end queues it again, and the run
resumes from the graph's state in the checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Protocol

import grpc
from agentrt.client import TERMINAL_STATES
from agentrt.common.v1 import common_pb2
from agentrt.errors import error_from_rpc
from agentrt.jobs.v1 import jobs_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.kit.events import EventChannel
from services.kit.telemetry import current_trace_id
from services.kit.workflows import DEFAULT_MAX_PARALLEL, Graph, compile_workflow
from services.orchestrator.agent import (
    RunEnd,
    history_sequence,
    job_id,
)
from services.orchestrator.guards import BudgetExceeded, NoBudgets, SpendGuard
from services.orchestrator.ports import FinalTurn, JobsPort, JobsUnavailable, LeaseLost, TreePort
from services.orchestrator.workflow.graph_state import (
    Activation,
    GraphRun,
    GraphState,
    NodeChange,
    Unit,
    WorkflowFailed,
)
from services.orchestrator.workflow.sub_agents import agent_spec

log = logging.getLogger(__name__)

JobState = common_pb2.JobState
ErrorReason = common_pb2.ErrorReason
_PREVIEW_CHARS = 200


class WorkflowJobs(JobsPort, TreePort, Protocol):
    """What the executor needs from the jobs service."""


def child_request_id(parent: str, label: str) -> str:
    """The CreateJob request_id of a parent's child for a node label: the same for every
    attempt of the parent, so the child is created once. Long labels are hashed to fit
    the 128 characters a request_id may have."""
    key = f"{job_id(parent)}/{label}"
    if len(key) <= 128:
        return key
    return f"{job_id(parent)}/{hashlib.sha256(label.encode()).hexdigest()[:64]}"


def max_parallel(config: jobs_pb2.OrchestrationConfig) -> int:
    """Children of one job RUNNING at once."""
    if config.HasField("parallel_execution") and not config.parallel_execution:
        return 1
    return config.max_parallel or DEFAULT_MAX_PARALLEL


def child_spec(
    parent: jobs_pb2.Job, graph: Graph, activation: Activation, unit: Unit
) -> jobs_pb2.JobSpec:
    """What a node's child runs: its agent (or its nested workflow), the unit's input as
    the prompt."""
    node = graph.nodes[activation.node]
    label = activation.label(unit)
    if node.workflow is None:
        return agent_spec(parent, node.agent, unit.input, label)
    spec = parent.spec
    child = jobs_pb2.JobSpec(
        prompt=unit.input or "(empty input)",
        parent=parent.name,
        node=label,
        orchestration=spec.orchestration,
        model=spec.model,
        workflow=node.workflow,
        policy=spec.policy,
        tool_options=spec.tool_options,
    )
    child.labels.update(spec.labels)
    if spec.orchestration.HasField("child_timeout"):
        child.timeout.CopyFrom(spec.orchestration.child_timeout)
    for name, agent in spec.agents.items():
        child.agents[name].CopyFrom(agent)
    return child


class WorkflowRun:
    """Runs one leased workflow job from its checkpoint to FinishJob, or to a wait on its
    children. Raises LeaseLost and JobsUnavailable as the agent loop does."""

    def __init__(
        self,
        lease: jobs_pb2.JobLease,
        jobs: WorkflowJobs,
        events: EventChannel,
        spend: SpendGuard | None = None,
    ) -> None:
        """`spend` opens the tree's account before the first child (default: none)."""
        self._job = lease.job
        self._spend: SpendGuard = spend or NoBudgets()
        self._lease_id = lease.lease_id
        self._jobs = jobs
        self._events = events
        self._checkpoint = lease.checkpoint
        self._sequence = history_sequence(lease.job.last_event_id)
        self._published = 0
        config = lease.job.spec.orchestration
        self._max_parallel = max_parallel(config)
        self._fail_fast = (
            config.on_child_failure != jobs_pb2.OrchestrationConfig.CHILD_FAILURE_CONTINUE
        )

    @property
    def name(self) -> str:
        return self._job.name

    @property
    def lease_id(self) -> str:
        return self._lease_id

    async def run(self) -> RunEnd:
        graph = compile_workflow(self._job.spec.workflow)
        state = GraphState.decode(self._checkpoint.state)
        run = GraphRun(graph, state, self._job.spec.prompt, self._fail_fast)
        try:
            end = await self._advance(run)
        except (LeaseLost, JobsUnavailable):
            raise
        except BudgetExceeded as exceeded:
            await self._cancel_unfinished(run)
            await self._finish_failed(exceeded.failure)
            return RunEnd.FINISHED
        except WorkflowFailed as failed:
            await self._publish(run.changes)
            await self._cancel_unfinished(run)
            await self._finish_failed(failed.failure)
            return RunEnd.FINISHED
        except Exception:
            log.exception("job %s: the workflow failed", self.name)
            trace_id = current_trace_id()
            message = f"internal error; trace id {trace_id}" if trace_id else "internal error"
            await self._cancel_unfinished(run)
            await self._finish_failed(
                common_pb2.Failure(reason=ErrorReason.ERROR_REASON_INTERNAL, message=message)
            )
            return RunEnd.FINISHED
        return end

    async def _advance(self, run: GraphRun) -> RunEnd:
        if not run.state.started:
            await self._spend.open_tree(self._job)
        run.start()
        while True:
            for child in run.running():
                job = await self._jobs.get_job(self._job.tenant, child)
                if job.state in TERMINAL_STATES:
                    answer = (
                        job.result.output if job.state == JobState.JOB_STATE_SUCCEEDED else None
                    )
                    run.child_ended(child, answer, job.failure)
            await self._publish(run.changes)
            if run.done:
                await self._finish_succeeded(run)
                return RunEnd.FINISHED
            free = self._max_parallel - len(run.running())
            for activation, unit in run.to_create(max(free, 0)):
                spec = child_spec(self._job, run.graph, activation, unit)
                request_id = child_request_id(self.name, activation.label(unit))
                created = await self._create(spec, request_id)
                run.child_created(unit, created.name)
            waiting_on = run.running()
            if not waiting_on:
                continue
            checkpoint = self._next_checkpoint(run.state)
            if await self._jobs.await_children(self.name, self._lease_id, waiting_on, checkpoint):
                return RunEnd.WAITING

    async def _create(self, spec: jobs_pb2.JobSpec, request_id: str) -> jobs_pb2.Job:
        try:
            return await self._jobs.create_child(self._job, spec, request_id)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise WorkflowFailed(
                    _reason_of(error, ErrorReason.ERROR_REASON_BUDGET_EXCEEDED),
                    f"node {spec.node}: {error.details()}",
                    {"node": spec.node},
                ) from error
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise WorkflowFailed(
                    ErrorReason.ERROR_REASON_FIELD_INVALID,
                    f"node {spec.node}: its child job was refused: {error.details()}",
                    {"node": spec.node},
                ) from error
            raise

    def _next_checkpoint(self, state: GraphState) -> jobs_pb2.Checkpoint:
        self._checkpoint = jobs_pb2.Checkpoint(turn=self._checkpoint.turn, state=state.encode())
        return self._checkpoint

    async def _finish_succeeded(self, run: GraphRun) -> None:
        output = run.output
        answer = common_pb2.Message(role=common_pb2.ROLE_ASSISTANT, content=output)
        result = jobs_pb2.JobResult(output=output, messages=[answer])
        checkpoint = jobs_pb2.Checkpoint(turn=self._checkpoint.turn + 1, state=run.state.encode())
        await self._jobs.finish(
            self.name,
            self._lease_id,
            JobState.JOB_STATE_SUCCEEDED,
            common_pb2.Usage(),
            result=result,
            final_turn=FinalTurn(checkpoint, answer, common_pb2.Usage()),
        )

    async def _finish_failed(self, failure: common_pb2.Failure) -> None:
        await self._jobs.finish(
            self.name,
            self._lease_id,
            JobState.JOB_STATE_FAILED,
            common_pb2.Usage(),
            failure=failure,
        )

    async def _cancel_unfinished(self, run: GraphRun) -> None:
        for child in run.running():
            await self._jobs.cancel_job(self._job.tenant, child, f"{self.name} failed")

    async def _publish(self, changes: list[NodeChange]) -> None:
        """Publishes workflow.node.* events live; a failure to publish is logged, as the
        children's durable job.child.* events carry the same facts."""
        events = [self._node_event(change) for change in changes]
        changes.clear()
        if not events:
            return
        try:
            await self._events.publish(events)
        except Exception:
            log.warning("job %s: could not publish node events", self.name, exc_info=True)

    def _node_event(self, change: NodeChange) -> common_pb2.RuntimeEvent:
        self._published += 1
        now = Timestamp()
        now.GetCurrentTime()
        finished = change.kind == "finished"
        return common_pb2.RuntimeEvent(
            id=f"{job_id(self.name)}.{self._sequence}.{self._published}",
            type=common_pb2.EVENT_TYPE_NODE_FINISHED
            if finished
            else common_pb2.EVENT_TYPE_NODE_STARTED,
            sequence=self._sequence,
            time=now,
            tenant=self._job.tenant,
            job=self.name,
            parent_job=self._job.spec.parent,
            trace_id=self._job.trace_id,
            root_job=self._job.root or self.name,
            node=self._job.spec.node,
            job_state=JobState.JOB_STATE_RUNNING,
            node_event=common_pb2.NodeEvent(
                node=change.node,
                iteration=change.iteration,
                children=change.children,
                state=JobState.JOB_STATE_SUCCEEDED if finished else JobState.JOB_STATE_RUNNING,
                output_preview=change.answer[:_PREVIEW_CHARS],
            ),
        )


def _reason_of(
    error: grpc.aio.AioRpcError, default: ErrorReason.ValueType
) -> ErrorReason.ValueType:
    """The ErrorInfo reason a status carries, or `default`."""
    name = f"ERROR_REASON_{error_from_rpc(error).reason}"
    known: list[str] = list(ErrorReason.keys())
    return ErrorReason.Value(name) if name in known else default


def is_workflow(job: jobs_pb2.Job) -> bool:
    """Whether the job runs a workflow rather than a single agent."""
    return job.spec.HasField("workflow")
