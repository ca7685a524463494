"""OpenTelemetry set-up for every service: a tracer provider from the OTEL_* variables."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision, Sampler, SamplingResult

from services.kit.config import ConfigError

log = logging.getLogger(__name__)
_configured = False


def _exporter(name: str) -> SpanExporter | None:
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "console":
        return ConsoleSpanExporter()
    if name != "none":
        log.warning("OTEL_TRACES_EXPORTER: unknown exporter %r ignored", name)
    return None


def configure_tracing(service_name: str) -> TracerProvider:
    """Installs the global tracer provider once per process.

    Spans are exported by the exporters named in OTEL_TRACES_EXPORTER (`otlp`,
    `console`, `none`). The default is `otlp` when OTEL_EXPORTER_OTLP_ENDPOINT is set and
    `none` otherwise, so a laptop without a collector logs no export errors. The OTLP
    exporter reads its endpoint, headers and protocol from the standard
    OTEL_EXPORTER_OTLP_* variables. While no exporter receives spans, none is recorded
    (see `UnlessUnexported`); trace ids are made all the same, for logs and events.
    """
    global _configured
    capture()  # a wrong AGENTRT_OTEL_CAPTURE_* value stops the process at start
    current = trace.get_tracer_provider()
    if _configured and isinstance(current, TracerProvider):
        return current
    name = os.environ.get("OTEL_SERVICE_NAME", service_name)
    # The sampler comes from the standard OTEL_TRACES_SAMPLER(_ARG) variables.
    provider = make_provider(name)
    default = "otlp" if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "none"
    for exporter_name in os.environ.get("OTEL_TRACES_EXPORTER", default).split(","):
        exporter = _exporter(exporter_name.strip().lower())
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _configured = True
    return provider


def make_provider(service_name: str) -> TracerProvider:
    """A tracer provider with the job span ids and the sampler of the OTEL_TRACES_SAMPLER
    variables, which records spans only once a span processor is added."""
    return _ExportingProvider(
        resource=Resource.create({"service.name": service_name}), id_generator=JobSpanIds()
    )


class UnlessUnexported(Sampler):
    """Another sampler's decisions once spans have somewhere to go; until then, none.

    A span nobody exports costs its call the recording (attributes, events, the end) for
    nothing. Unrecorded spans still have their ids: logs, events and usage records carry
    the trace id, and calls pass it on, marked not sampled, so a service that exports
    behind one that does not records none of that trace either (give every service the
    same exporter settings)."""

    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler
        self.exporting = False

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        chosen = self._sampler if self.exporting else ALWAYS_OFF
        return chosen.should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return f"UnlessUnexported{{{self._sampler.get_description()}}}"


class _ExportingProvider(TracerProvider):
    """A provider whose sampler records from the first span processor on."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._gate = UnlessUnexported(self.sampler)
        self.sampler = self._gate

    @property
    def exporting(self) -> bool:
        return self._gate.exporting

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self._gate.exporting = True


def spans_exported(provider: trace.TracerProvider | None = None) -> bool:
    """Whether spans started now can reach an exporter (the global provider's, unless one
    is given): work done only to make spans, such as reading what they describe, can be
    skipped when not. False for an agentrt provider without a span processor and for no
    provider at all; True for any other SDK provider."""
    chosen = trace.get_tracer_provider() if provider is None else provider
    if isinstance(chosen, _ExportingProvider):
        return chosen.exporting
    return isinstance(chosen, TracerProvider)


def current_trace_id() -> str:
    """The hex trace id of the current span, or "" outside a trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


_forced_ids: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "agentrt_forced_ids", default=None
)
"""(trace id or 0, span id) for the next span started in this context."""


class JobSpanIds(IdGenerator):
    """Random ids, except for the span started inside `forced_ids`.

    A job's `agent.job` span is emitted by the jobs service when the job ends, and its
    attempts run earlier in workers that know only the job: both find the span's id
    from the job's name (`job_span_id`), so no id has to be stored.
    """

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        forced = _forced_ids.get()
        if forced is not None:
            _forced_ids.set(None)  # only the first span started inside gets it
            return forced[1]
        return self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        # The SDK asks for the trace id of a root span before its span id.
        forced = _forced_ids.get()
        if forced is not None and forced[0]:
            return forced[0]
        return self._random.generate_trace_id()


@contextlib.contextmanager
def forced_ids(trace_id: int, span_id: int) -> Iterator[None]:
    """The next span started here (by a provider using JobSpanIds) gets `span_id` and,
    if it is a root span and `trace_id` is not 0, `trace_id`."""
    token = _forced_ids.set((trace_id, span_id))
    try:
        yield
    finally:
        _forced_ids.reset(token)


def parse_trace_id(trace_id_hex: str) -> int:
    """The trace id as a number, 0 when it is not one."""
    try:
        trace_id = int(trace_id_hex, 16)
    except ValueError:
        return 0
    return trace_id if 0 < trace_id < 2**128 else 0


def job_span_id(job_name: str) -> int:
    """The span id of the job's `agent.job` span, derived from its name."""
    return int.from_bytes(hashlib.sha256(job_name.encode()).digest()[:8], "big") or 1


def action_span_id(action_name: str) -> int:
    """The span id of the action's `agent.action` span, derived from its name."""
    return job_span_id(action_name)


def job_span_context(job_name: str, trace_id_hex: str) -> otel_context.Context | None:
    """A context whose parent is the job's `agent.job` span, None without a trace id."""
    trace_id = parse_trace_id(trace_id_hex)
    if not trace_id:
        return None
    parent = trace.SpanContext(
        trace_id=trace_id,
        span_id=job_span_id(job_name),
        is_remote=True,
        trace_flags=_root_decision(trace_id),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(parent))


def _root_decision(trace_id: int) -> trace.TraceFlags:
    """Whether the sampler keeps a trace begun with this id, as the first service of the
    request decided it (a ratio sampler decides by trace id alone): the spans of a job
    whose creation was not sampled are not sampled either, rather than left parentless."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        return trace.TraceFlags(trace.TraceFlags.SAMPLED)
    decision = provider.sampler.should_sample(None, trace_id, "agent.job").decision
    sampled = decision == Decision.RECORD_AND_SAMPLE
    return trace.TraceFlags(trace.TraceFlags.SAMPLED if sampled else trace.TraceFlags.DEFAULT)


def _flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


@dataclass(frozen=True)
class Capture:
    """What spans may carry besides metadata: prompts, answers, tool arguments (off by
    default: they may hold personal data)."""

    input: bool = False
    output: bool = False
    tool_args: bool = False

    @classmethod
    def from_env(cls) -> Capture:
        """From AGENTRT_OTEL_CAPTURE_INPUT, _OUTPUT and _TOOL_ARGS."""
        return cls(
            input=_flag("AGENTRT_OTEL_CAPTURE_INPUT"),
            output=_flag("AGENTRT_OTEL_CAPTURE_OUTPUT"),
            tool_args=_flag("AGENTRT_OTEL_CAPTURE_TOOL_ARGS"),
        )


@functools.cache
def capture() -> Capture:
    """The process's capture switches, read once."""
    return Capture.from_env()
