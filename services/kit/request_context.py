"""The request context: who and what the current work is for, carried on every internal call.

One `RequestContext` message lives in a contextvar. The kit's client side (the channel
interceptor and in-process calls) sends it as the binary metadata header
`agentrt-context-bin`; the server interceptor reads it back into the contextvar of the RPC
it serves, puts it on the RPC's span, and the log filter adds it to every log record. The
gateway sets it from the caller's credential (replacing whatever a caller sent) and the
orchestrator from the job it runs.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from agentrt.common.v1.common_pb2 import RequestContext
from agentrt.jobs.v1 import jobs_pb2
from google.protobuf.message import DecodeError
from opentelemetry import trace

HEADER = "agentrt-context-bin"
"""The metadata key; `-bin` makes gRPC carry the serialized message as bytes."""

FIELDS = ("request_id", "trace_id", "tenant", "principal", "session", "job", "parent_job")
"""The message's fields, in the order logs show them."""

_current: ContextVar[RequestContext | None] = ContextVar("agentrt_request_context", default=None)

log = logging.getLogger(__name__)


def current_request_context() -> RequestContext | None:
    """The context of the work being done, or None outside any request."""
    return _current.get()


def set_request_context(context: RequestContext | None) -> None:
    """Makes `context` the current one for this task (and the tasks it starts)."""
    _current.set(context)


def update_request_context(**fields: str) -> RequestContext:
    """The current context with `fields` set (empty ones left as they were), made current."""
    context = RequestContext()
    current = _current.get()
    if current is not None:
        context.CopyFrom(current)
    for name, value in fields.items():
        if value:
            setattr(context, name, value)
    _current.set(context)
    return context


def new_request_id() -> str:
    """A request id for a request that came without one."""
    return f"req_{secrets.token_hex(12)}"


def job_request_context(job: jobs_pb2.Job) -> RequestContext:
    """The context of the calls made while running `job`."""
    return RequestContext(
        request_id=job.request_id,
        trace_id=job.trace_id,
        tenant=job.tenant,
        principal=job.principal,
        session=job.spec.session,
        job=job.name,
        parent_job=job.spec.parent,
    )


def with_context_header(
    metadata: Iterable[tuple[str, Any]] | None,
) -> tuple[tuple[str, Any], ...] | None:
    """`metadata` with the current context added (replacing one already there), for an
    outgoing call; None when there is no current context, so nothing to add."""
    context = _current.get()
    if context is None:
        return None
    kept = tuple((key, value) for key, value in metadata or () if key != HEADER)
    return (*kept, (HEADER, context.SerializeToString()))


def read_context_header(metadata: Iterable[tuple[str, Any]]) -> RequestContext | None:
    """The context an incoming call carries, or None. A malformed header is logged and
    ignored: the context describes the call, it never decides what the call may do."""
    for key, value in metadata:
        if key != HEADER or not isinstance(value, bytes):
            continue
        try:
            return RequestContext.FromString(value)
        except DecodeError:
            log.warning("ignored a malformed %s header", HEADER)
            return None
    return None


def span_attributes(context: RequestContext) -> dict[str, str]:
    """The context as span attributes (`agentrt.<field>`), the empty fields left out."""
    return {f"agentrt.{name}": value for name in FIELDS if (value := getattr(context, name))}


def annotate_current_span(context: RequestContext) -> None:
    """Puts the context on the current span."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(span_attributes(context))


class RequestContextFilter(logging.Filter):
    """Adds the current context to every record: each field as an attribute (`tenant`,
    `job`, ... empty when unknown, for structured formatters) and `request_context`, the
    non-empty ones as ` key=value` pairs, for the one-line format."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        pairs = []
        for name in FIELDS:
            value = getattr(context, name) if context is not None else ""
            setattr(record, name, value)
            if value:
                pairs.append(f" {name}={value}")
        record.request_context = "".join(pairs)
        return True
