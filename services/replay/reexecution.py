"""Re-executing a recorded job against its recorded model and tool outputs.

The orchestrator's agent loop runs as it does on a worker, with its policy checks made
anew, but its ports answer from the recording: the model port replays the recorded
assistant messages turn by turn, the tool port the recorded outputs by call id, and the
jobs port keeps the events the loop produces instead of writing them, resolving each
action as the recorded one was. Nothing is called, charged or run for real. The run stops
at its first divergence: the recorded outputs after it answered another conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from agentrt.common.v1 import common_pb2
from agentrt.common.v1.common_pb2 import EventType, JobState, RuntimeEvent
from agentrt.engine.v1 import engine_pb2
from agentrt.jobs.v1 import jobs_pb2
from agentrt.replay.v1.replay_pb2 import Divergence
from google.protobuf.struct_pb2 import Struct

from services.kit.events import InMemoryEventChannel
from services.orchestrator.agent import AgentRun, RunEnd
from services.orchestrator.guards import NoBudgets, PolicyGuard
from services.orchestrator.ports import (
    DeltaSink,
    FinalTurn,
    HookSink,
    LeaseLost,
    ModelCallFailed,
)
from services.orchestrator.tools.base import ToolOutput
from services.replay.diff import divergence, is_compared

Action = jobs_pb2.Action
LEASE_ID = "reexecution"


class Diverged(LeaseLost):
    """The re-executed job departed from its recording; the run stops there. A LeaseLost,
    because that is how a port tells the agent loop to stop at once and write nothing
    more (any other error would be reported as the job's failure)."""


@dataclass
class JobReexecution:
    """One job's recorded events to compare against, and what its re-execution did."""

    recorded: list[tuple[int, RuntimeEvent]]
    """The job's compared events with their positions in the recording."""
    compared: int = 0
    divergences: list[Divergence] = field(default_factory=list)
    state: JobState.ValueType = JobState.JOB_STATE_UNSPECIFIED
    output: str = ""

    def take(self, event: RuntimeEvent) -> None:
        """Compares the next event of the re-execution; raises Diverged when it departs."""
        if not is_compared(event):
            return
        if self.compared < len(self.recorded):
            position, recorded = self.recorded[self.compared]
            self.compared += 1
            found = divergence(position, recorded, event)
        else:
            last = self.recorded[-1][0] if self.recorded else 0
            found = divergence(last, None, event)
        if found is not None:
            self.divergences.append(found)
            raise Diverged(found.description)

    def finish(self) -> None:
        """After a run that ended without diverging: recorded events it never reached."""
        if not self.divergences and self.compared < len(self.recorded):
            position, recorded = self.recorded[self.compared]
            found = divergence(position, recorded, None)
            assert found is not None
            self.divergences.append(found)


class RecordedModel:
    """A ModelPort that answers each turn with the recorded assistant message."""

    def __init__(self, answers: Sequence[common_pb2.Message]) -> None:
        self._answers = list(answers)
        self._next = 0

    async def stream(
        self,
        request: engine_pb2.CompleteRequest,
        time_left: float | None,
        on_delta: DeltaSink,
        on_hooks: HookSink,
    ) -> engine_pb2.CompleteChunk:
        """The next recorded answer; no engine is called, so no idempotency hook fires."""
        if self._next >= len(self._answers):
            raise ModelCallFailed(
                common_pb2.ERROR_REASON_PROVIDER_ERROR,
                "the recording has no further model answer",
                retryable=False,
            )
        answer = self._answers[self._next]
        self._next += 1
        if answer.content:
            await on_delta(answer.content)
        return engine_pb2.CompleteChunk(
            tool_calls=answer.tool_calls,
            finish_reason=(
                engine_pb2.FINISH_REASON_TOOL_CALLS
                if answer.tool_calls
                else engine_pb2.FINISH_REASON_STOP
            ),
            model=request.model,
        )


class RecordedTools:
    """A ToolsPort that offers the job's tools and answers each call with its recorded
    output (matched by call id: the recorded model answers carry the same ids)."""

    def __init__(self, outputs: dict[str, common_pb2.ToolCalled]) -> None:
        self._outputs = outputs

    async def offer(self, job: jobs_pb2.Job) -> list[common_pb2.ToolSpec]:
        # Idempotent, so the loop records no "running" mark: nothing runs for real.
        offered = []
        for tool in job.spec.tools:
            spec = common_pb2.ToolSpec()
            spec.CopyFrom(tool)
            spec.idempotent = True
            offered.append(spec)
        return offered

    def validate(self, spec: common_pb2.ToolSpec, call: common_pb2.ToolCall) -> ToolOutput | None:
        # The recorded outputs include the errors given for invalid arguments.
        return None

    async def run(
        self,
        job: jobs_pb2.Job,
        call: common_pb2.ToolCall,
        calls_so_far: int,
        offered: common_pb2.ToolSpec | None = None,
    ) -> ToolOutput:
        recorded = self._outputs.get(call.id)
        if recorded is None:
            return ToolOutput(f"Error: the recording has no output of call {call.id}", True)
        return ToolOutput(recorded.output, not recorded.ok)


class RecordingJobsPort:
    """A JobsPort that writes nothing: it turns what the loop records into the events
    the jobs service would emit, hands each to the comparison, and resolves actions as
    the recording did."""

    def __init__(
        self,
        job: jobs_pb2.Job,
        reexecution: JobReexecution,
        resolutions: Sequence[RuntimeEvent],
    ) -> None:
        self._job = job
        self._reexecution = reexecution
        self._resolutions = list(resolutions)
        self._actions: list[Action] = []
        self.waiting_on: Action | None = None
        self.resume_from: jobs_pb2.Checkpoint | None = None

    async def heartbeat(self, job: str, lease_id: str) -> None:
        """No lease to keep."""

    async def checkpoint(
        self,
        job: str,
        lease_id: str,
        checkpoint: jobs_pb2.Checkpoint,
        message: common_pb2.Message | None,
        turn_usage: common_pb2.Usage | None,
        tool_calls: Sequence[common_pb2.ToolCalled] = (),
        within_turn: bool = False,
        model: str = "",
    ) -> jobs_pb2.Job:
        if message is not None:
            self._emit(
                EventType.EVENT_TYPE_TURN_COMPLETED,
                turn_completed=common_pb2.TurnCompleted(
                    turn=checkpoint.turn, message=message, model=model
                ),
            )
        for called in tool_calls:
            self._emit(EventType.EVENT_TYPE_TOOL_CALLED, tool_called=called)
        return self._job

    async def require_action(
        self,
        job: str,
        lease_id: str,
        action: Action,
        timeout: float | None,
        checkpoint: jobs_pb2.Checkpoint,
    ) -> Action:
        created = Action()
        created.CopyFrom(action)
        created.name = f"{job}/actions/reexecution-{len(self._actions) + 1}"
        created.state = Action.State.STATE_PENDING
        kind = jobs_pb2.ActionKind.Name(action.kind).removeprefix("ACTION_KIND_").lower()
        self._emit(
            EventType.EVENT_TYPE_ACTION_REQUIRED,
            action=common_pb2.ActionEvent(action=created.name, kind=kind),
        )
        self.waiting_on = created
        self.resume_from = checkpoint
        return created

    def resolve_as_recorded(self) -> bool:
        """Ends the action waited on as the recorded one ended; False when the recording
        has no ending for it (the recorded job was still waiting)."""
        waited = self.waiting_on
        index = len(self._actions)
        if waited is None or index >= len(self._resolutions):
            return False
        recorded = self._resolutions[index]
        waited.state = (
            Action.State.STATE_EXPIRED
            if recorded.type == EventType.EVENT_TYPE_ACTION_EXPIRED
            else Action.State.STATE_RESOLVED
        )
        waited.outcome.CopyFrom(recorded.action.outcome if recorded.action.outcome else Struct())
        self._actions.append(waited)
        self.waiting_on = None
        return True

    @property
    def awaited_action(self) -> str:
        """The name of the action resolved last, which the resuming lease names (as the
        jobs service's does)."""
        return self._actions[-1].name if self._actions else ""

    async def get_action(self, tenant: str, name: str) -> Action:
        found = next((action for action in self._actions if action.name == name), None)
        if found is None:
            raise LeaseLost(f"no action {name} in the re-execution")
        return found

    async def list_actions(self, tenant: str, job: str) -> list[Action]:
        return list(self._actions)

    async def finish(
        self,
        job: str,
        lease_id: str,
        state: JobState.ValueType,
        usage: common_pb2.Usage,
        result: jobs_pb2.JobResult | None = None,
        failure: common_pb2.Failure | None = None,
        final_turn: FinalTurn | None = None,
    ) -> jobs_pb2.Job:
        if final_turn is not None:
            await self.checkpoint(
                job,
                lease_id,
                final_turn.checkpoint,
                final_turn.message,
                None,
                model=final_turn.model,
            )
        self._reexecution.state = state
        if state == JobState.JOB_STATE_SUCCEEDED:
            output = result.output if result is not None else ""
            self._reexecution.output = output
            self._emit(
                EventType.EVENT_TYPE_JOB_SUCCEEDED,
                job_succeeded=common_pb2.JobSucceeded(output=output),
            )
        else:
            self._emit(
                _TERMINAL_EVENTS.get(state, EventType.EVENT_TYPE_JOB_FAILED), failure=failure
            )
        return self._job

    async def release(self, job: str, lease_id: str, reason: str) -> None:
        """Nothing to give back."""

    def _emit(self, event_type: EventType.ValueType, **payload: object) -> None:
        event = RuntimeEvent(type=event_type, job=self._job.name, tenant=self._job.tenant)
        for name, value in payload.items():
            if value is not None:
                getattr(event, name).CopyFrom(value)
        self._reexecution.take(event)


_TERMINAL_EVENTS = {
    JobState.JOB_STATE_FAILED: EventType.EVENT_TYPE_JOB_FAILED,
    JobState.JOB_STATE_TIMED_OUT: EventType.EVENT_TYPE_JOB_TIMED_OUT,
    JobState.JOB_STATE_CANCELLED: EventType.EVENT_TYPE_JOB_CANCELLED,
}


async def reexecute_job(
    job: jobs_pb2.Job, events: Sequence[tuple[int, RuntimeEvent]], policy: PolicyGuard
) -> JobReexecution:
    """Runs `job` (its recorded spec) again against its recorded events, with `policy`."""
    mine = [(position, event) for position, event in events if event.job == job.name]
    reexecution = JobReexecution([(p, e) for p, e in mine if is_compared(e)])
    answers = [
        e.turn_completed.message for _, e in mine if e.type == EventType.EVENT_TYPE_TURN_COMPLETED
    ]
    outputs = {
        e.tool_called.call.id: e.tool_called
        for _, e in mine
        if e.type == EventType.EVENT_TYPE_TOOL_CALLED
    }
    resolutions = [
        e
        for _, e in mine
        if e.type in (EventType.EVENT_TYPE_ACTION_RESOLVED, EventType.EVENT_TYPE_ACTION_EXPIRED)
    ]
    jobs = RecordingJobsPort(job, reexecution, resolutions)
    model = RecordedModel(answers)
    tools = RecordedTools(outputs)
    channel = InMemoryEventChannel(job_retention_seconds=0)
    checkpoint = jobs_pb2.Checkpoint()
    try:
        while True:
            lease = jobs_pb2.JobLease(
                job=job,
                lease_id=LEASE_ID,
                checkpoint=checkpoint,
                awaited_action=jobs.awaited_action,
            )
            run = AgentRun(
                lease, jobs, model, channel, tools=tools, policy=policy, spend=NoBudgets()
            )
            end = await run.run()
            if end == RunEnd.FINISHED:
                break
            if not jobs.resolve_as_recorded():
                reexecution.state = JobState.JOB_STATE_WAITING
                break
            assert jobs.resume_from is not None
            checkpoint = jobs.resume_from
        reexecution.finish()
    except Diverged:
        pass
    finally:
        await channel.close()
    return reexecution
