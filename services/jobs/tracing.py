"""The jobs service's spans: `agent.job` over a job's whole life, `agent.action` from an
action's request to its end (also when the job's end cancels it), and
`agent.action.resolve` in the resolver's trace.

`agent.job` cannot be held open from creation to end (the job outlives any process), so
the creating call's span context is stored with the job and the span is emitted when the
outbox relay publishes the job's terminal event, with the job's create and end times.
Its span id is derived from the job's name, so attempts and children hang under it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from agentrt.common.v1.common_pb2 import ErrorReason, EventType, JobState, RuntimeEvent
from agentrt.jobs.v1.jobs_pb2 import Action, ActionKind, Job
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.jobs.store import ActionStore, EndedJob, JobStore
from services.kit.events.base import job_id_of
from services.kit.telemetry import (
    action_span_id,
    forced_ids,
    job_span_context,
    job_span_id,
    parse_trace_id,
    spans_exported,
)
from services.kit.usage_attributes import usage_attributes

tracer = trace.get_tracer("agentrt.jobs")
_log = logging.getLogger(__name__)

_TRACEPARENT = "traceparent"
_W3C = TraceContextTextMapPropagator()
_ENDS = frozenset(
    {
        EventType.EVENT_TYPE_JOB_SUCCEEDED,
        EventType.EVENT_TYPE_JOB_FAILED,
        EventType.EVENT_TYPE_JOB_CANCELLED,
        EventType.EVENT_TYPE_JOB_TIMED_OUT,
    }
)
_FAILED = frozenset({JobState.JOB_STATE_FAILED, JobState.JOB_STATE_TIMED_OUT})
_ENDED_WHILE_WAITING = frozenset({JobState.JOB_STATE_CANCELLED, JobState.JOB_STATE_TIMED_OUT})
"""The ends a WAITING job can meet (it holds no lease to finish by), which cancel the
action it waits on."""


def creator_trace_parent(trace_id_hex: str) -> str:
    """The W3C traceparent of the current span (the CreateJob call) when it is in the
    trace `trace_id_hex`, to be stored with the job; empty otherwise."""
    current = trace.get_current_span().get_span_context()
    if not current.is_valid or current.trace_id != parse_trace_id(trace_id_hex):
        return ""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get(_TRACEPARENT, "")


async def record_ended_jobs(
    store: JobStore, actions: ActionStore, published: Sequence[RuntimeEvent]
) -> None:
    """Emits the `agent.job` span of each job whose terminal event was just published, and
    the `agent.action` of each action (in `actions`) that the job's end cancelled.

    Called by the outbox relay after the channel stored the events and before they are
    marked published, so every terminal path (a worker's finish, a cancellation and the
    descendants it cascades to, a deadline) emits it, also when the job ended before a
    restart of the jobs service; a batch published again emits its spans again, with the
    same ids, which trace backends merge. Without an exporter it reads nothing.
    """
    if not spans_exported():
        return
    ended = [job_id_of(event.job) for event in published if event.type in _ENDS and event.trace_id]
    if ended:
        for job in await store.ended_jobs(ended):
            record_job_ended(job)
            if job.job.state in _ENDED_WHILE_WAITING:
                try:
                    await _record_actions_cancelled_with(actions, job.job)
                except Exception:
                    # The spans of the batch's other jobs are emitted all the same.
                    _log.warning(
                        "no agent.action for the actions of %s", job.job.name, exc_info=True
                    )


async def _record_actions_cancelled_with(actions: ActionStore, job: Job) -> None:
    """The `agent.action` of each action the job's end cancelled: those of its actions
    CANCELLED at the very time it ended."""
    token = ""
    while True:
        page, token = await actions.list_actions(
            job.tenant, job_id_of(job.name), [Action.State.STATE_CANCELLED], 100, token
        )
        for action in page:
            if action.resolve_time == job.end_time:
                record_action_ended(action, job)
        if not token:
            return


def record_job_ended(ended: EndedJob) -> None:
    """Emits the job's one `agent.job` span, from its creation to its end.

    Its parent is the span that created the job (the CreateJob call, itself under the
    gateway's call or a parent job's attempt); a job created outside its trace gets a
    root span in that trace.
    """
    job = ended.job
    trace_id = parse_trace_id(job.trace_id)
    if not trace_id:
        return
    parent = (
        _W3C.extract({_TRACEPARENT: ended.trace_parent})
        if ended.trace_parent
        else otel_context.Context()
    )
    with forced_ids(trace_id, job_span_id(job.name)):
        span = tracer.start_span(
            "agent.job",
            context=parent,
            kind=trace.SpanKind.INTERNAL,
            start_time=job.create_time.ToNanoseconds(),
            attributes=_job_attributes(job),
        )
    if job.state in _FAILED:
        span.set_status(trace.StatusCode.ERROR, job.failure.message)
    span.end(end_time=job.end_time.ToNanoseconds())


def _job_attributes(job: Job) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "agentrt.job": job.name,
        "agentrt.tenant": job.tenant,
        "agentrt.job.state": _lower(JobState.Name(job.state), "JOB_STATE_"),
        "agentrt.job.attempts": job.attempt,
        "agentrt.job.turns": job.turns,
        **usage_attributes(job.usage),
    }
    if job.spec.parent:
        attributes["agentrt.parent_job"] = job.spec.parent
    if job.root and job.root != job.name:
        attributes["agentrt.root_job"] = job.root
    if job.HasField("failure"):
        attributes["agentrt.job.failure_reason"] = _lower(
            ErrorReason.Name(job.failure.reason), "ERROR_REASON_"
        )
    return attributes


def record_action_resolved(action: Action, job: Job) -> None:
    """Emits `agent.action.resolve` under the resolving call's span and the action's
    `agent.action` in the job's trace, each linked to the other."""
    trace_id = parse_trace_id(job.trace_id)
    if not trace_id:
        return
    target = trace.SpanContext(
        trace_id=trace_id,
        span_id=action_span_id(action.name),
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    resolve = tracer.start_span(
        "agent.action.resolve",
        links=[trace.Link(target)],
        attributes={"agentrt.job": job.name, "agentrt.action": action.name},
    )
    resolve.end()
    resolver = resolve.get_span_context()
    sampled = resolver.is_valid and resolver.trace_flags.sampled
    record_action_ended(action, job, [trace.Link(resolver)] if sampled else [])


def record_action_ended(action: Action, job: Job, links: Sequence[trace.Link] = ()) -> None:
    """Emits the action's `agent.action` span, from its request to its end, under the
    job's `agent.job` (the attempt that asked has ended: a waiting job holds no lease).
    Its id is derived from the action's name, which the resolver's span links to."""
    parent = job_span_context(job.name, job.trace_id)
    if parent is None:
        return
    with forced_ids(0, action_span_id(action.name)):
        span = tracer.start_span(
            "agent.action",
            context=parent,
            links=links,
            start_time=action.create_time.ToNanoseconds(),
            attributes={
                "agentrt.job": job.name,
                "agentrt.action": action.name,
                "agentrt.action.kind": _lower(ActionKind.Name(action.kind), "ACTION_KIND_"),
                "agentrt.action.state": _lower(Action.State.Name(action.state), "STATE_"),
                "agentrt.action.resolved_by": action.resolved_by,
            },
        )
    if action.state != Action.State.STATE_RESOLVED:
        span.set_status(trace.StatusCode.ERROR, "the action was not resolved")
    span.end(end_time=action.resolve_time.ToNanoseconds() or None)


def _lower(enum_name: str, prefix: str) -> str:
    return enum_name.removeprefix(prefix).lower()
