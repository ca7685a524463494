"""The jobs service's spans: `agent.job` when a job is created, in the creator's trace,
and `agent.action.resolve` in the resolver's, linked to the action's span."""

from __future__ import annotations

from agentrt.jobs.v1.jobs_pb2 import Action, Job
from opentelemetry import context as otel_context
from opentelemetry import trace

from services.kit.telemetry import action_span_id, forced_ids, job_span_id, parse_trace_id

tracer = trace.get_tracer("agentrt.jobs")


def record_job_created(job: Job) -> None:
    """Emits the job's one `agent.job` span.

    Its parent is the span that created the job (the CreateJob call, itself under the
    gateway's call or a parent job's attempt) when that is in the job's trace; a job
    whose trace id came from elsewhere gets a root span in that trace. Its id is derived
    from the job's name, so the attempts that workers run later are its children.
    """
    trace_id = parse_trace_id(job.trace_id)
    if not trace_id:
        return
    current = trace.get_current_span().get_span_context()
    parent = None if current.is_valid and current.trace_id == trace_id else otel_context.Context()
    attributes: dict[str, str | int] = {"agentrt.job": job.name, "agentrt.tenant": job.tenant}
    if job.spec.parent:
        attributes["agentrt.parent_job"] = job.spec.parent
    if job.root and job.root != job.name:
        attributes["agentrt.root_job"] = job.root
    with forced_ids(trace_id, job_span_id(job.name)):
        span = tracer.start_span(
            "agent.job", context=parent, kind=trace.SpanKind.INTERNAL, attributes=attributes
        )
    span.end()


def record_action_resolved(action: Action, job: Job) -> None:
    """Emits `agent.action.resolve` under the resolving call's span, linked to the
    action's `agent.action` span in the job's trace (which the worker emits with the
    id derived from the action's name once the job resumes)."""
    trace_id = parse_trace_id(job.trace_id)
    if not trace_id:
        return
    target = trace.SpanContext(
        trace_id=trace_id,
        span_id=action_span_id(action.name),
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    span = tracer.start_span(
        "agent.action.resolve",
        links=[trace.Link(target)],
        attributes={"agentrt.job": job.name, "agentrt.action": action.name},
    )
    span.end()
