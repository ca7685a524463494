"""The single-agent loop: one worker's run of one leased job, turn by turn, to its end or
to an action it waits on. Tools, approvals, client tools and the exactly-once rules of
tool calls are described in docs/actions.md."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2
from agentrt.jobs.v1 import jobs_pb2
from agentrt.policy.v1 import policy_pb2
from agentrt.retries import backoff_delay
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace

from services.kit.events import EventChannel
from services.kit.telemetry import (
    capture,
    current_trace_id,
)
from services.kit.tool_schema import parse_arguments
from services.kit.usage_attributes import usage_attributes
from services.orchestrator.guards import (
    AllowAll,
    BudgetExceeded,
    NoBudgets,
    PolicyGuard,
    SpendGuard,
)
from services.orchestrator.policy import PolicyCheckFailed, policy_denied
from services.orchestrator.ports import (
    FinalTurn,
    JobsPort,
    JobsUnavailable,
    LeaseLost,
    ModelCallFailed,
    ModelPort,
    ToolsPort,
    TreePort,
)
from services.orchestrator.tools.runner import UnknownTool
from services.orchestrator.waits import (
    APPROVAL,
    CLIENT_TOOL,
    MODEL_APPROVAL,
    Awaiting,
    LoopState,
    approval_refusal,
    awaited_action,
    client_answer,
    model_action,
    tool_action,
    unanswered_calls,
)
from services.orchestrator.workflow.sub_agents import RUN_AGENT, answer_run_agent

log = logging.getLogger(__name__)
tracer = trace.get_tracer("agentrt.orchestrator")

DEFAULT_MAX_TURNS = 8
"""Turns a job may take when its spec says 0 (as the jobs service documents)."""

OUTAGE_PAUSE_SECONDS = 1.0
"""How long a run whose dependency is down holds its lease before giving it back."""

JobState = common_pb2.JobState
ErrorReason = common_pb2.ErrorReason


@dataclass(frozen=True)
class RetryPolicy:
    """How a model call that failed for a passing reason is tried again."""

    attempts: int = 4
    """Tries in all, the first included."""
    backoff: float = 0.5
    """Try `i` (from 1) is followed by a pause of about `backoff * 2**(i-1)` seconds."""


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class Outcome:
    """How a run ends: what FinishJob is told."""

    state: JobState.ValueType
    result: jobs_pb2.JobResult | None = None
    failure: common_pb2.Failure | None = None
    final_turn: FinalTurn | None = None
    """The turn that gave the final answer, when it is not checkpointed yet."""


WAITING = Outcome(JobState.JOB_STATE_WAITING)
"""The run stops because the job waits on an action (its lease is given up)."""


@dataclass(frozen=True)
class ToolReply:
    """The answer to one tool call, as the model reads it."""

    text: str
    ok: bool
    seconds: float = 0.0
    """How long the tool ran (0 when it did not run here)."""


class RunEnd(enum.Enum):
    """Why a worker stopped running a job."""

    FINISHED = "finished"
    """FinishJob was accepted."""
    WAITING = "waiting"
    """The job waits on an action; RequireAction gave up its lease."""
    LEASE_LOST = "lease lost"
    """The job was cancelled, finished or taken over; nothing more was written."""
    ABANDONED = "abandoned"
    """The jobs service was unreachable; the lease will expire and another worker
    resumes the job from its last checkpoint."""
    RELEASED = "released"
    """The ledger, the policy service or the engine was unreachable: the lease was given
    back and the job resumes later from its last checkpoint."""


def conversation_from_spec(spec: jobs_pb2.JobSpec) -> list[common_pb2.Message]:
    """The conversation a first attempt starts from: system prompt, messages, prompt."""
    messages: list[common_pb2.Message] = []
    if spec.system_prompt:
        messages.append(common_pb2.Message(role=common_pb2.ROLE_SYSTEM, content=spec.system_prompt))
    messages.extend(spec.messages)
    if spec.prompt:
        messages.append(common_pb2.Message(role=common_pb2.ROLE_USER, content=spec.prompt))
    return messages


def resume_point(
    lease: jobs_pb2.JobLease,
) -> tuple[int, list[common_pb2.Message], common_pb2.Usage]:
    """Turns done, the conversation and the usage a run starts from: the checkpoint's
    after a takeover or a resumed action, the spec's on a first attempt. (A checkpoint of
    turn 0 exists when the first model call waited on an approval.)"""
    checkpoint = lease.checkpoint
    if checkpoint.turn > 0 or checkpoint.messages:
        return checkpoint.turn, list(checkpoint.messages), _copy(checkpoint.usage)
    return 0, conversation_from_spec(lease.job.spec), common_pb2.Usage()


def final_answer(turn: int, messages: Sequence[common_pb2.Message]) -> common_pb2.Message | None:
    """The checkpointed final answer, when a previous worker got one but could not
    finish the job: resuming must not ask the model again."""
    if turn == 0 or not messages:
        return None
    last = messages[-1]
    if last.role == common_pb2.ROLE_ASSISTANT and not last.tool_calls:
        return last
    return None


def call_usage(reported: common_pb2.Usage) -> common_pb2.Usage:
    """The usage of one model call as the engine reported it, counted as one call."""
    usage = _copy(reported)
    usage.model_calls = 1
    usage.total_tokens = usage.total_tokens or usage.input_tokens + usage.output_tokens
    return usage


def add_usage(total: common_pb2.Usage, part: common_pb2.Usage) -> common_pb2.Usage:
    """The sum of two usages. The cost is summed exactly and stays empty while no part
    of it is known. It is written in fixed-point notation, as the contract wants
    ("0.00000032", never str()'s "3.2E-7"), since the budget checks parse it back."""
    cost = ""
    if total.cost or part.cost:
        cost = format(Decimal(total.cost or "0") + Decimal(part.cost or "0"), "f")
    return common_pb2.Usage(
        input_tokens=total.input_tokens + part.input_tokens,
        output_tokens=total.output_tokens + part.output_tokens,
        cached_input_tokens=total.cached_input_tokens + part.cached_input_tokens,
        cache_write_input_tokens=total.cache_write_input_tokens + part.cache_write_input_tokens,
        total_tokens=total.total_tokens + part.total_tokens,
        cost=cost,
        model_calls=total.model_calls + part.model_calls,
        tool_calls=total.tool_calls + part.tool_calls,
    )


def job_id(job_name: str) -> str:
    """The {job} part of "jobs/{job}"."""
    return job_name.removeprefix("jobs/")


def history_sequence(last_event_id: str) -> int:
    """The sequence in a history event id "<job id>.<sequence>" (0 before any event)."""
    if not last_event_id:
        return 0
    return int(last_event_id.rsplit(".", 1)[1])


def transient_event_id(job_name: str, sequence: int, n: int) -> str:
    """The id of the n-th transient event that follows history event `sequence`."""
    return f"{job_id(job_name)}.{sequence}.{n}"


def model_call_key(job_name: str, turn: int) -> str:
    """The engine idempotency key of a turn's model call: a retry of the turn after a
    takeover is answered from the engine's record instead of calling the provider again."""
    return f"{job_id(job_name)}:{turn}:0"


def model_record_id(job_name: str, turn: int) -> str:
    """The ledger record of a turn's model call: the same after a takeover that repeats
    the call, so that it is counted once."""
    return f"{job_id(job_name)}.{turn}.model"


def tool_record_id(job_name: str, turn: int, call_id: str) -> str:
    """The ledger record of one tool call of a job. Call ids are unique only within a turn
    (a provider that sends none gets `call_0` in every turn), so the turn is part of it. A
    call id that is not a safe record id part (the model chose it) is replaced by its hash."""
    if not _SAFE_ID.fullmatch(call_id):
        call_id = hashlib.sha256(call_id.encode()).hexdigest()[:32]
    return f"{job_id(job_name)}.{turn}.tool.{call_id}"


_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


_HOOK_EVENTS = {
    engine_pb2.IDEMPOTENCY_HOOK_START: common_pb2.EVENT_TYPE_MODEL_CALL_STARTED,
    engine_pb2.IDEMPOTENCY_HOOK_HIT: common_pb2.EVENT_TYPE_MODEL_CALL_REPLAYED,
    engine_pb2.IDEMPOTENCY_HOOK_CONFLICT: common_pb2.EVENT_TYPE_MODEL_CALL_CONFLICT,
    engine_pb2.IDEMPOTENCY_HOOK_COMPLETE: common_pb2.EVENT_TYPE_MODEL_CALL_COMPLETED,
    engine_pb2.IDEMPOTENCY_HOOK_FAIL: common_pb2.EVENT_TYPE_MODEL_CALL_FAILED,
}
"""The model.call.* event of each idempotency hook the engine reports."""


class TransientEvents:
    """Publishes a run's transient events, numbered after the job's latest history event:
    the text of streamed answers (job.output.delta) and what the engine's idempotency
    tracker did with each model call (model.call.*).

    A retried model call streams its answer again; text the watchers already have is not
    sent twice. Both are a live view: job.turn.completed carries the real message, so a
    failure to publish one is logged and the run goes on.
    """

    def __init__(self, events: EventChannel) -> None:
        self._events = events
        self._sequence = -1
        self._n = 0
        self._sent = ""
        self._text = ""

    @property
    def text(self) -> str:
        """The text of the current attempt so far."""
        return self._text

    def start_turn(self) -> None:
        self._sent = self._text = ""

    def restart_attempt(self) -> None:
        self._text = ""

    async def publish(self, job: jobs_pb2.Job, turn: int, piece: str) -> None:
        """A piece of the turn's streamed answer, unless the watchers have it already."""
        self._text += piece
        if len(self._text) <= len(self._sent):
            return
        fresh = self._text[len(self._sent) :]
        self._sent = self._text
        await self._send(
            job,
            common_pb2.EVENT_TYPE_OUTPUT_DELTA,
            output_delta=common_pb2.OutputDelta(turn=turn, text=fresh),
        )

    async def model_call(
        self,
        job: jobs_pb2.Job,
        turn: int,
        request: engine_pb2.CompleteRequest,
        hooks: Sequence[engine_pb2.IdempotencyHook.ValueType],
        error: str,
    ) -> None:
        """One model.call.* event for each hook the engine reported, in order; `error` is
        the engine's, for a call that failed."""
        for hook in hooks:
            event_type = _HOOK_EVENTS.get(hook)
            if event_type is None:
                continue  # a hook a newer engine reports that this worker cannot name
            failed = event_type in (
                common_pb2.EVENT_TYPE_MODEL_CALL_FAILED,
                common_pb2.EVENT_TYPE_MODEL_CALL_CONFLICT,
            )
            call = common_pb2.ModelCallEvent(
                turn=turn,
                idempotency_key=request.idempotency_key,
                model=request.model,
                error=error if failed else "",
            )
            await self._send(job, event_type, model_call=call)

    async def _send(
        self, job: jobs_pb2.Job, event_type: common_pb2.EventType.ValueType, **payload: Any
    ) -> None:
        sequence = history_sequence(job.last_event_id)
        if sequence != self._sequence:
            self._sequence, self._n = sequence, 0
        self._n += 1
        event = transient_event(job, sequence, self._n, event_type, **payload)
        try:
            await self._events.publish([event])
        except Exception:
            log.warning("job %s: could not publish a transient event", job.name, exc_info=True)


def transient_event(
    job: jobs_pb2.Job,
    sequence: int,
    n: int,
    event_type: common_pb2.EventType.ValueType,
    **payload: Any,
) -> common_pb2.RuntimeEvent:
    """The n-th transient event after history event `sequence`, with its payload field."""
    now = Timestamp()
    now.GetCurrentTime()
    return common_pb2.RuntimeEvent(
        id=transient_event_id(job.name, sequence, n),
        type=event_type,
        sequence=sequence,
        time=now,
        tenant=job.tenant,
        job=job.name,
        parent_job=job.spec.parent,
        trace_id=job.trace_id,
        job_state=JobState.JOB_STATE_RUNNING,
        root_job=job.root or job.name,
        node=job.spec.node,
        **payload,
    )


class AgentRun:
    """Runs one leased job from where it stands to FinishJob, or to an action it waits on.

    Each turn asks the policy, reserves the worst case of the model call against the
    budgets, calls the model, settles what it used and checkpoints the answer with its
    tool calls before any of them runs. Each tool call is then checked (arguments, policy,
    budget), run or handed to a person or the client as an action, and its result
    checkpointed (with its tool.called event) as soon as it is known: a takeover resumes
    with the next unanswered call and never runs an answered one again.

    Raises LeaseLost when the jobs service refuses the lease, and JobsUnavailable when it
    cannot be reached; in both cases nothing more is written for the job.
    """

    def __init__(
        self,
        lease: jobs_pb2.JobLease,
        jobs: JobsPort,
        model: ModelPort,
        events: EventChannel,
        retry: RetryPolicy = DEFAULT_RETRY,
        *,
        tools: ToolsPort,
        policy: PolicyGuard | None = None,
        spend: SpendGuard | None = None,
        tree: TreePort | None = None,
    ) -> None:
        """`tree` creates and awaits the sub-agents of run_agent calls (without one,
        such a call is answered with an error)."""
        self._job = lease.job
        self._tree = tree
        self._lease_id = lease.lease_id
        self._awaited_action = lease.awaited_action
        self._jobs = jobs
        self._model = model
        self._retry = retry
        self._tools = tools
        self._policy: PolicyGuard = policy or AllowAll()
        self._spend: SpendGuard = spend or NoBudgets()
        self._transient = TransientEvents(events)
        self._turn, self._messages, self._usage = resume_point(lease)
        self._state = LoopState.decode(lease.checkpoint.state)
        self._offered: dict[str, common_pb2.ToolSpec] = {}
        self._max_turns = lease.job.spec.max_turns or DEFAULT_MAX_TURNS
        self._deadline = _monotonic_deadline(lease.job)

    @property
    def name(self) -> str:
        return self._job.name

    @property
    def lease_id(self) -> str:
        return self._lease_id

    async def run(self) -> RunEnd:
        """FINISHED once FinishJob was accepted, WAITING once the job waits on an action
        (RequireAction gave up the lease)."""
        try:
            outcome = await self._outcome()
        except (LeaseLost, JobsUnavailable):
            raise
        except Exception:
            log.exception("job %s: the agent loop failed", self.name)
            trace_id = current_trace_id()
            outcome = _failed(
                ErrorReason.ERROR_REASON_INTERNAL,
                f"internal error; trace id {trace_id}" if trace_id else "internal error",
            )
        if outcome.state == JobState.JOB_STATE_WAITING:
            return RunEnd.WAITING
        if outcome.state == JobState.JOB_STATE_QUEUED:
            await self._give_back(outcome)
            return RunEnd.RELEASED
        await self._jobs.finish(
            self.name,
            self._lease_id,
            outcome.state,
            self._usage,
            result=outcome.result,
            failure=outcome.failure,
            final_turn=outcome.final_turn,
        )
        return RunEnd.FINISHED

    async def _outcome(self) -> Outcome:
        answer = final_answer(self._turn, self._messages)
        if answer is not None:
            return self._succeeded(answer)
        cut = asyncio.timeout(self._time_left())
        try:
            async with cut:
                self._offered = {spec.name: spec for spec in await self._tools.offer(self._job)}
                return await self._turns()
        except TimeoutError:
            if cut.expired():
                return _timed_out()
            raise
        except ModelCallFailed as error:
            if self._deadline_passed():
                return _timed_out()
            if error.retryable:
                return _ride_out(f"the engine: {error.message}")
            return _failed(error.reason, error.message)
        except (BudgetExceeded, PolicyCheckFailed, UnknownTool) as error:
            if error.failure.reason == ErrorReason.ERROR_REASON_DEPENDENCY_UNAVAILABLE:
                if self._deadline_passed():
                    return _timed_out()
                return _ride_out(error.failure.message)
            return Outcome(JobState.JOB_STATE_FAILED, failure=error.failure)

    async def _give_back(self, outcome: Outcome) -> None:
        """Releases the lease of a job whose dependency is down, after a pause (holding
        the lease) so that the queue does not hand the job straight back into the outage.
        The job fails for the outage only once its deadline has passed."""
        why = outcome.failure.message if outcome.failure else "a dependency is unavailable"
        log.warning("job %s: %s; giving its lease back", self.name, why)
        left = self._time_left()
        await asyncio.sleep(
            OUTAGE_PAUSE_SECONDS if left is None else min(OUTAGE_PAUSE_SECONDS, left)
        )
        await self._jobs.release(self.name, self._lease_id, f"unavailable: {why}"[:1000])

    async def _turns(self) -> Outcome:
        while True:
            pending = unanswered_calls(self._messages) if self._turn > 0 else []
            if pending:
                if not await self._answer_calls(pending):
                    return WAITING
                continue
            if self._turn >= self._max_turns:
                return _failed(
                    ErrorReason.ERROR_REASON_MAX_TURNS_EXCEEDED,
                    f"no final answer after {self._max_turns} turns",
                    {"max_turns": str(self._max_turns)},
                )
            outcome = await self._model_step(self._turn + 1)
            if outcome is not None:
                return outcome

    async def _model_step(self, turn: int) -> Outcome | None:
        """One model call and its checkpoint; an Outcome when the job ends or waits."""
        refused = await self._model_allowed(turn)
        if refused is not None:
            return refused
        spec = self._job.spec
        request = engine_pb2.CompleteRequest(
            model=spec.model,
            messages=self._messages,
            tools=list(self._offered.values()),
            params=spec.params,
            idempotency_key=model_call_key(self.name, turn),
            tenant=self._job.tenant,
            job=self.name,
            cache=spec.cache,
        )
        hold = await self._spend.reserve_model_call(self._job, self._usage, request)
        try:
            answer, usage, answered_by = await self._model_turn(turn, request)
        except BaseException:
            await self._spend.release(hold, "the model call failed")
            raise
        usage = await self._spend.settle_model_call(
            self._job, hold, usage, model_record_id(self.name, turn)
        )
        self._messages.append(answer)
        self._usage = add_usage(self._usage, usage)
        self._state.awaiting = None
        checkpoint = self._checkpoint(turn)
        if not answer.tool_calls:
            return self._succeeded(answer, FinalTurn(checkpoint, answer, usage, answered_by))
        # The calls are recorded before any runs: a takeover finds them and answers each
        # one that has no result yet, instead of asking the model again.
        self._job = await self._jobs.checkpoint(
            self.name, self._lease_id, checkpoint, answer, usage, model=answered_by
        )
        self._turn = turn
        return None

    async def _model_allowed(self, turn: int) -> Outcome | None:
        """None when the policy lets the job call its model now (or a person approved
        it); otherwise the job's end (DENY, or a rejected approval) or WAITING."""
        model = self._job.spec.model
        awaiting = self._state.awaiting
        if awaiting is not None and awaiting.kind == MODEL_APPROVAL and awaiting.turn == turn:
            action = await self._awaited(awaiting)
            refusal = approval_refusal(action)
            if refusal is None:
                return None
            return _failed(
                ErrorReason.ERROR_REASON_POLICY_DENIED,
                f"the call of model {model} needed approval and was {refusal}",
                {"model": model, "action": action.name},
            )
        decision = await self._decide(
            lambda: self._policy.check_model(self._job, model, self._counts())
        )
        if decision.verdict == policy_pb2.VERDICT_ALLOW:
            return None
        if decision.verdict == policy_pb2.VERDICT_REQUIRE_APPROVAL:
            wait = Awaiting(MODEL_APPROVAL, turn=turn)
            await self._require(wait, model_action(wait, model, decision), decision)
            return WAITING
        failure = policy_denied(decision)
        failure.message = f"the call of model {model} was {failure.message}"
        failure.metadata["model"] = model
        return Outcome(JobState.JOB_STATE_FAILED, failure=failure)

    async def _answer_calls(self, pending: Sequence[common_pb2.ToolCall]) -> bool:
        """Answers the calls one by one, checkpointing each answer; False as soon as one
        waits on an action."""
        for call in pending:
            reply = await self._answer(call)
            if reply is None:
                return False
            await self._record(call, reply)
        return True

    async def _answer(self, call: common_pb2.ToolCall) -> ToolReply | None:
        """The answer to one call, or None when the job now waits on an action for it."""
        if self._state.running == call.id:
            return await self._interrupted(call)
        spec = self._offered.get(call.name)
        if spec is None:
            return ToolReply(
                f"Error: there is no tool {call.name!r}; use one of the tools offered.", False
            )
        invalid = self._tools.validate(spec, call)
        if invalid is not None:
            return ToolReply(invalid.text, False)
        arguments = parse_arguments(call.arguments)
        awaiting = self._state.awaiting
        if awaiting is not None and awaiting.kind != MODEL_APPROVAL and awaiting.call_id == call.id:
            if awaiting.kind == CLIENT_TOOL:
                return await self._client_reply(call, awaiting)
            refusal = approval_refusal(await self._awaited(awaiting))
            if refusal is not None:
                return ToolReply(
                    f"Error: the call was not run: it needed approval and was {refusal}.", False
                )
        else:
            counts = self._counts()
            decision = await self._decide(lambda: self._policy.check_tool(self._job, call, counts))
            if decision.verdict == policy_pb2.VERDICT_DENY:
                return ToolReply(f"Error: denied by policy: {decision.reason}", False)
            if decision.verdict == policy_pb2.VERDICT_REQUIRE_APPROVAL:
                await self._spend.check_tool_call(self._job, self._usage, hold=False)
                wait = Awaiting(APPROVAL, call.id, self._turn)
                await self._require(wait, tool_action(wait, call, arguments, decision), decision)
                return None
        await self._spend.check_tool_call(self._job, self._usage)
        if spec.kind == common_pb2.TOOL_KIND_BUILTIN and call.name == RUN_AGENT:
            return await self._sub_agent(call, arguments)
        if spec.kind == common_pb2.TOOL_KIND_CLIENT:
            wait = Awaiting(CLIENT_TOOL, call.id, self._turn)
            await self._require(wait, tool_action(wait, call, arguments), None)
            return None
        return await self._run_tool(call, spec)

    async def _run_tool(self, call: common_pb2.ToolCall, spec: common_pb2.ToolSpec) -> ToolReply:
        """Runs a built-in or plugin tool call and records it in the ledger. A tool that
        is not idempotent is first checkpointed as running: if this worker dies before its
        answer is checkpointed, the next one does not run it again."""
        if not spec.idempotent:
            self._state.running = call.id
            self._job = await self._jobs.checkpoint(
                self.name,
                self._lease_id,
                self._checkpoint(self._turn),
                None,
                None,
                within_turn=True,
            )
        started = time.monotonic()
        output = await self._tools.run(self._job, call, self._usage.tool_calls, spec)
        await self._spend.record_tool_call(
            self._job, call, tool_record_id(self.name, self._turn, call.id)
        )
        self._count_tool_call(call)
        return ToolReply(output.text, not output.is_error, time.monotonic() - started)

    async def _sub_agent(self, call: common_pb2.ToolCall, arguments: Any) -> ToolReply | None:
        """A run_agent call: its child's answer, or None while the job waits on the child."""
        if self._tree is None:
            return ToolReply("Error: sub-agents cannot be started here.", False)
        await self._spend.open_tree(self._job)
        started = time.monotonic()
        reply = await answer_run_agent(
            self._tree,
            self._job,
            self._lease_id,
            call,
            arguments,
            self._turn,
            self._checkpoint(self._turn),
        )
        if reply is None:
            return None
        await self._spend.record_tool_call(
            self._job, call, tool_record_id(self.name, self._turn, call.id)
        )
        self._count_tool_call(call)
        return ToolReply(reply.text, reply.ok, time.monotonic() - started)

    async def _interrupted(self, call: common_pb2.ToolCall) -> ToolReply:
        """The answer to a call of a non-idempotent tool that started on a worker that
        died before its answer was recorded: it is not run again (at most once), and the
        model is told that its effect is unknown. It counts as a tool call."""
        await self._spend.record_tool_call(
            self._job, call, tool_record_id(self.name, self._turn, call.id)
        )
        self._count_tool_call(call)
        return ToolReply(
            f"Error: the call of {call.name!r} was interrupted (the worker running it "
            "stopped) and is not run again, as the tool is not idempotent: it may or may "
            "not have taken effect. Check before calling it again.",
            False,
        )

    async def _client_reply(self, call: common_pb2.ToolCall, awaiting: Awaiting) -> ToolReply:
        """The client's answer to a client tool call, from its resolved action."""
        answer = client_answer(await self._awaited(awaiting))
        if answer.answered:
            await self._spend.record_tool_call(
                self._job, call, tool_record_id(self.name, self._turn, call.id)
            )
            self._count_tool_call(call)
        return ToolReply(answer.text, answer.ok)

    def _count_tool_call(self, call: common_pb2.ToolCall) -> None:
        self._usage.tool_calls += 1
        counts = self._state.tool_counts
        counts[call.name] = counts.get(call.name, 0) + 1

    async def _record(self, call: common_pb2.ToolCall, reply: ToolReply) -> None:
        """Adds the tool message and checkpoints it with the call's tool.called event."""
        self._messages.append(
            common_pb2.Message(
                role=common_pb2.ROLE_TOOL, content=reply.text, tool_call_id=call.id, name=call.name
            )
        )
        self._state.awaiting = None
        self._state.running = ""
        called = common_pb2.ToolCalled(call=call, ok=reply.ok, output=reply.text)
        called.duration.FromNanoseconds(round(reply.seconds * 1e9))
        self._job = await self._jobs.checkpoint(
            self.name, self._lease_id, self._checkpoint(self._turn), None, None, [called]
        )

    async def _require(
        self, awaiting: Awaiting, action: jobs_pb2.Action, decision: policy_pb2.Decision | None
    ) -> None:
        """Creates the action with the checkpoint to resume from; the job waits on it."""
        self._state.awaiting = awaiting
        timeout = None
        if decision is not None and decision.approval_timeout.ToNanoseconds() > 0:
            timeout = decision.approval_timeout.ToNanoseconds() / 1e9
        created = await self._jobs.require_action(
            self.name, self._lease_id, action, timeout, self._checkpoint(self._turn)
        )
        log.info("job %s: waiting on %s", self.name, created.name if created else "its action")

    async def _awaited(self, awaiting: Awaiting) -> jobs_pb2.Action:
        """The ended action the job waited on: the one its lease names, read alone; the
        actions of the job are listed only for a job whose lease names none (parked by an
        older jobs service) or another (a stale name, which must not be trusted)."""
        action = None
        if self._awaited_action:
            named = await self._jobs.get_action(self._job.tenant, self._awaited_action)
            action = awaited_action([named], awaiting)
        if action is None:
            actions = await self._jobs.list_actions(self._job.tenant, self.name)
            action = awaited_action(actions, awaiting)
        if action is None:
            raise RuntimeError(f"job {self.name}: the action it waited on ({awaiting}) is gone")
        return action

    async def _decide(
        self, check: Callable[[], Awaitable[policy_pb2.Decision]]
    ) -> policy_pb2.Decision:
        """The policy's decision, asked again after a pause while the policy service is
        unavailable (within the job's deadline); raises PolicyCheckFailed once it gives up,
        and never decides in its place (fail closed)."""
        attempt = 1
        while True:
            try:
                return await check()
            except PolicyCheckFailed as error:
                if not error.retryable or attempt >= self._retry.attempts:
                    raise
                log.info("job %s: policy check failed (%s); retrying", self.name, error)
            await asyncio.sleep(backoff_delay(attempt, base=self._retry.backoff))
            attempt += 1

    def _counts(self) -> policy_pb2.JobCounts:
        return policy_pb2.JobCounts(
            turns=self._turn,
            tool_calls=self._usage.tool_calls,
            tool_calls_per_tool=self._state.tool_counts,
        )

    def _checkpoint(self, turn: int) -> jobs_pb2.Checkpoint:
        return jobs_pb2.Checkpoint(
            turn=turn, messages=self._messages, usage=self._usage, state=self._state.encode()
        )

    async def _model_turn(
        self, turn: int, request: engine_pb2.CompleteRequest
    ) -> tuple[common_pb2.Message, common_pb2.Usage, str]:
        """The turn's answer, its usage and the model that answered, as the engine
        reported it (a provider's version of the model asked for)."""
        self._transient.start_turn()
        attempt = 1
        while True:
            try:
                final = await self._model_call(request, turn)
                break
            except ModelCallFailed as error:
                if not error.retryable or attempt >= self._retry.attempts:
                    raise
                if self._deadline_passed():
                    raise
                log.info("job %s turn %d: model call failed (%s); retrying", self.name, turn, error)
            await asyncio.sleep(backoff_delay(attempt, base=self._retry.backoff))
            self._transient.restart_attempt()
            attempt += 1
        answer = common_pb2.Message(
            role=common_pb2.ROLE_ASSISTANT,
            content=self._transient.text,
            tool_calls=final.tool_calls,
        )
        return answer, call_usage(final.usage), final.model

    async def _model_call(
        self, request: engine_pb2.CompleteRequest, turn: int
    ) -> engine_pb2.CompleteChunk:
        """One call to the engine, in its own `agent.run` span."""
        with tracer.start_as_current_span("agent.run") as span:
            span.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": request.model,
                    "agentrt.job": self.name,
                    "agentrt.turn": turn,
                }
            )
            if capture().input:
                span.set_attribute("gen_ai.input.messages", _messages_json(request.messages))

            async def publish(piece: str) -> None:
                await self._transient.publish(self._job, turn, piece)

            async def hooks(
                fired: Sequence[engine_pb2.IdempotencyHook.ValueType], error: str
            ) -> None:
                await self._transient.model_call(self._job, turn, request, fired, error)

            try:
                final = await self._model.stream(request, self._time_left(), publish, hooks)
            except ModelCallFailed as error:
                span.set_status(trace.StatusCode.ERROR, error.message)
                raise
            _record_answer(span, final)
            if capture().output:
                answer = common_pb2.Message(
                    role=common_pb2.ROLE_ASSISTANT,
                    content=self._transient.text,
                    tool_calls=final.tool_calls,
                )
                span.set_attribute("gen_ai.output.messages", _messages_json([answer]))
            return final

    def _succeeded(
        self, answer: common_pb2.Message, final_turn: FinalTurn | None = None
    ) -> Outcome:
        result = jobs_pb2.JobResult(output=answer.content, messages=self._messages)
        return Outcome(JobState.JOB_STATE_SUCCEEDED, result=result, final_turn=final_turn)

    def _time_left(self) -> float | None:
        if self._deadline is None:
            return None
        return self._deadline - time.monotonic()

    def _deadline_passed(self) -> bool:
        left = self._time_left()
        return left is not None and left <= 0


class LeasedRun(Protocol):
    """A run of one leased job: the agent loop, or a workflow's graph executor."""

    @property
    def name(self) -> str: ...

    @property
    def lease_id(self) -> str: ...

    async def run(self) -> RunEnd: ...


async def run_leased_job(run: LeasedRun, jobs: JobsPort, heartbeat_seconds: float) -> RunEnd:
    """Runs the job while a heartbeat keeps its lease. When the lease is lost the run is
    cancelled at once, which also cuts its in-flight model stream."""
    work: asyncio.Task[RunEnd] = asyncio.create_task(run.run(), name=f"run {run.name}")
    lost = False

    def on_lease_lost() -> None:
        nonlocal lost
        lost = True
        work.cancel()

    heartbeat = asyncio.create_task(
        keep_lease(jobs, run.name, run.lease_id, heartbeat_seconds, on_lease_lost),
        name=f"heartbeat {run.name}",
    )
    try:
        return await work
    except LeaseLost:
        log.info("job %s: lease lost; leaving it", run.name)
        return RunEnd.LEASE_LOST
    except JobsUnavailable as error:
        log.warning("job %s: jobs service unreachable (%s); leaving it to expire", run.name, error)
        return RunEnd.ABANDONED
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if lost and current is not None and current.cancelling() == 0:
            log.info("job %s: lease lost (cancelled or taken over); run cut", run.name)
            return RunEnd.LEASE_LOST
        raise
    finally:
        heartbeat.cancel()
        await asyncio.gather(heartbeat, return_exceptions=True)


async def keep_lease(
    jobs: JobsPort,
    job: str,
    lease_id: str,
    interval: float,
    on_lost: Callable[[], None],
) -> None:
    """Extends the lease every `interval` seconds until cancelled or the lease is lost.
    A failed heartbeat is tried again at the next interval: the lease outlasts a few."""
    while True:
        await asyncio.sleep(interval)
        try:
            await jobs.heartbeat(job, lease_id)
        except LeaseLost:
            on_lost()
            return
        except Exception as error:
            log.warning("job %s: heartbeat failed (%s); trying again", job, error)


def _messages_json(messages: Sequence[common_pb2.Message]) -> str:
    """Messages as a JSON array (for spans that capture prompts or answers)."""
    return json.dumps([json_format.MessageToDict(m) for m in messages])


def _record_answer(span: trace.Span, final: engine_pb2.CompleteChunk) -> None:
    span.set_attributes(
        {
            "gen_ai.system": final.provider,
            "gen_ai.response.model": final.model,
            **usage_attributes(final.usage),
            "gen_ai.response.finish_reasons": [
                engine_pb2.FinishReason.Name(final.finish_reason)
                .removeprefix("FINISH_REASON_")
                .lower()
            ],
        }
    )


def _failed(
    reason: ErrorReason.ValueType, message: str, metadata: dict[str, str] | None = None
) -> Outcome:
    failure = common_pb2.Failure(reason=reason, message=message, metadata=metadata or {})
    return Outcome(JobState.JOB_STATE_FAILED, failure=failure)


def _ride_out(message: str) -> Outcome:
    """The job goes back to the queue (QUEUED) because a dependency is down."""
    failure = common_pb2.Failure(
        reason=ErrorReason.ERROR_REASON_DEPENDENCY_UNAVAILABLE, message=message
    )
    return Outcome(JobState.JOB_STATE_QUEUED, failure=failure)


def _timed_out() -> Outcome:
    failure = common_pb2.Failure(
        reason=ErrorReason.ERROR_REASON_DEADLINE_EXCEEDED, message="the job ran past its deadline"
    )
    return Outcome(JobState.JOB_STATE_TIMED_OUT, failure=failure)


def _monotonic_deadline(job: jobs_pb2.Job) -> float | None:
    if not job.HasField("deadline"):
        return None
    left = job.deadline.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
    return time.monotonic() + left.total_seconds()


def _copy(usage: common_pb2.Usage) -> common_pb2.Usage:
    copy = common_pb2.Usage()
    copy.CopyFrom(usage)
    return copy
