"""The single-agent loop: one worker's run of one leased job, turn by turn, to its end."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2
from agentrt.jobs.v1 import jobs_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace

from services.kit.events import EventChannel
from services.kit.telemetry import current_trace_id
from services.orchestrator.ports import (
    FinalTurn,
    JobsPort,
    JobsUnavailable,
    LeaseLost,
    ModelCallFailed,
    ModelPort,
    retry_delay,
)

log = logging.getLogger(__name__)
tracer = trace.get_tracer("agentrt.orchestrator")

DEFAULT_MAX_TURNS = 8
"""Turns a job may take when its spec says 0 (as the jobs service documents)."""

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


class RunEnd(enum.Enum):
    """Why a worker stopped running a job."""

    FINISHED = "finished"
    """FinishJob was accepted."""
    LEASE_LOST = "lease lost"
    """The job was cancelled, finished or taken over; nothing more was written."""
    ABANDONED = "abandoned"
    """The jobs service was unreachable; the lease will expire and another worker
    resumes the job from its last checkpoint."""


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
    after a takeover or a resumed action, the spec's on a first attempt."""
    checkpoint = lease.checkpoint
    if checkpoint.turn > 0:
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
    of it is known."""
    cost = ""
    if total.cost or part.cost:
        cost = str(Decimal(total.cost or "0") + Decimal(part.cost or "0"))
    return common_pb2.Usage(
        input_tokens=total.input_tokens + part.input_tokens,
        output_tokens=total.output_tokens + part.output_tokens,
        cached_input_tokens=total.cached_input_tokens + part.cached_input_tokens,
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


def delta_event_id(job_name: str, sequence: int, n: int) -> str:
    """The id of the n-th transient event that follows history event `sequence`."""
    return f"{job_id(job_name)}.{sequence}.{n}"


def model_call_key(job_name: str, turn: int) -> str:
    """The engine idempotency key of a turn's model call: a retry of the turn after a
    takeover is answered from the engine's record instead of calling the provider again."""
    return f"{job_id(job_name)}:{turn}:0"


def tool_unavailable_replies(calls: Sequence[common_pb2.ToolCall]) -> list[common_pb2.Message]:
    """Tool messages answering each call with "not available", so that the model can
    carry on without the tool."""
    return [
        common_pb2.Message(
            role=common_pb2.ROLE_TOOL,
            content=f"Error: the tool {call.name!r} is not available. Answer without it.",
            tool_call_id=call.id,
            name=call.name,
        )
        for call in calls
    ]


class DeltaPublisher:
    """Publishes the text of a streamed answer as transient job.output.delta events.

    A retried model call streams its answer again; text the watchers already have is not
    sent twice. Deltas are a live preview: job.turn.completed carries the real message,
    so a failure to publish one is logged and the run goes on.
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
        self._text += piece
        if len(self._text) <= len(self._sent):
            return
        fresh = self._text[len(self._sent) :]
        self._sent = self._text
        sequence = history_sequence(job.last_event_id)
        if sequence != self._sequence:
            self._sequence, self._n = sequence, 0
        self._n += 1
        event = output_delta_event(job, sequence, self._n, turn, fresh)
        try:
            await self._events.publish([event])
        except Exception:
            log.warning("job %s: could not publish an output delta", job.name, exc_info=True)


def output_delta_event(
    job: jobs_pb2.Job, sequence: int, n: int, turn: int, text: str
) -> common_pb2.RuntimeEvent:
    now = Timestamp()
    now.GetCurrentTime()
    return common_pb2.RuntimeEvent(
        id=delta_event_id(job.name, sequence, n),
        type=common_pb2.EVENT_TYPE_OUTPUT_DELTA,
        sequence=sequence,
        time=now,
        tenant=job.tenant,
        job=job.name,
        parent_job=job.spec.parent,
        trace_id=job.trace_id,
        job_state=JobState.JOB_STATE_RUNNING,
        output_delta=common_pb2.OutputDelta(turn=turn, text=text),
    )


class AgentRun:
    """Runs one leased job from where it stands to FinishJob.

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
    ) -> None:
        self._job = lease.job
        self._lease_id = lease.lease_id
        self._jobs = jobs
        self._model = model
        self._retry = retry
        self._deltas = DeltaPublisher(events)
        self._turn, self._messages, self._usage = resume_point(lease)
        self._max_turns = lease.job.spec.max_turns or DEFAULT_MAX_TURNS
        self._deadline = _monotonic_deadline(lease.job)

    @property
    def name(self) -> str:
        return self._job.name

    @property
    def lease_id(self) -> str:
        return self._lease_id

    async def run(self) -> None:
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
        await self._jobs.finish(
            self.name,
            self._lease_id,
            outcome.state,
            self._usage,
            result=outcome.result,
            failure=outcome.failure,
            final_turn=outcome.final_turn,
        )

    async def _outcome(self) -> Outcome:
        answer = final_answer(self._turn, self._messages)
        if answer is not None:
            return self._succeeded(answer)
        cut = asyncio.timeout(self._time_left())
        try:
            async with cut:
                return await self._turns()
        except TimeoutError:
            if cut.expired():
                return _timed_out()
            raise
        except ModelCallFailed as error:
            if self._deadline_passed():
                return _timed_out()
            return _failed(error.reason, error.message)

    async def _turns(self) -> Outcome:
        for turn in range(self._turn + 1, self._max_turns + 1):
            answer, usage = await self._model_turn(turn)
            self._messages.append(answer)
            self._messages.extend(tool_unavailable_replies(answer.tool_calls))
            self._usage = add_usage(self._usage, usage)
            checkpoint = jobs_pb2.Checkpoint(turn=turn, messages=self._messages, usage=self._usage)
            if not answer.tool_calls:
                return self._succeeded(answer, FinalTurn(checkpoint, answer, usage))
            self._job = await self._jobs.checkpoint(
                self.name, self._lease_id, checkpoint, answer, usage
            )
            self._turn = turn
        return _failed(
            ErrorReason.ERROR_REASON_MAX_TURNS_EXCEEDED,
            f"no final answer after {self._max_turns} turns",
            {"max_turns": str(self._max_turns)},
        )

    async def _model_turn(self, turn: int) -> tuple[common_pb2.Message, common_pb2.Usage]:
        spec = self._job.spec
        request = engine_pb2.CompleteRequest(
            model=spec.model,
            messages=self._messages,
            tools=spec.tools,
            params=spec.params,
            idempotency_key=model_call_key(self.name, turn),
            tenant=self._job.tenant,
            job=self.name,
        )
        self._deltas.start_turn()
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
            await asyncio.sleep(retry_delay(self._retry.backoff, attempt))
            self._deltas.restart_attempt()
            attempt += 1
        answer = common_pb2.Message(
            role=common_pb2.ROLE_ASSISTANT, content=self._deltas.text, tool_calls=final.tool_calls
        )
        return answer, call_usage(final.usage)

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

            async def publish(piece: str) -> None:
                await self._deltas.publish(self._job, turn, piece)

            try:
                final = await self._model.stream(request, self._time_left(), publish)
            except ModelCallFailed as error:
                span.set_status(trace.StatusCode.ERROR, error.message)
                raise
            _record_answer(span, final)
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


async def run_leased_job(run: AgentRun, jobs: JobsPort, heartbeat_seconds: float) -> RunEnd:
    """Runs the job while a heartbeat keeps its lease. When the lease is lost the run is
    cancelled at once, which also cuts its in-flight model stream."""
    work = asyncio.create_task(run.run(), name=f"run {run.name}")
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
        await work
        return RunEnd.FINISHED
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


def _record_answer(span: trace.Span, final: engine_pb2.CompleteChunk) -> None:
    span.set_attributes(
        {
            "gen_ai.response.model": final.model,
            "gen_ai.usage.input_tokens": final.usage.input_tokens,
            "gen_ai.usage.output_tokens": final.usage.output_tokens,
            "gen_ai.response.finish_reasons": [
                engine_pb2.FinishReason.Name(final.finish_reason)
                .removeprefix("FINISH_REASON_")
                .lower()
            ],
        }
    )
    if final.usage.cost:
        span.set_attribute("agentrt.usage.cost", final.usage.cost)


def _failed(
    reason: ErrorReason.ValueType, message: str, metadata: dict[str, str] | None = None
) -> Outcome:
    failure = common_pb2.Failure(reason=reason, message=message, metadata=metadata or {})
    return Outcome(JobState.JOB_STATE_FAILED, failure=failure)


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
