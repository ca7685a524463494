"""The `agent.job` span, started and ended when a job is created, in the creator's trace."""

from __future__ import annotations

from agentrt.jobs.v1.jobs_pb2 import Job
from opentelemetry import context as otel_context
from opentelemetry import trace

from services.kit.telemetry import forced_ids, job_span_id, parse_trace_id

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
