"""OpenTelemetry set-up for every service: a tracer provider from the OTEL_* variables."""

from __future__ import annotations

import logging
import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

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

    Spans are always created (so trace ids reach logs and events); they are exported
    by the exporters named in OTEL_TRACES_EXPORTER (`otlp`, `console`, `none`). The
    default is `otlp` when OTEL_EXPORTER_OTLP_ENDPOINT is set and `none` otherwise,
    so a laptop without a collector logs no export errors. The OTLP exporter reads
    its endpoint, headers and protocol from the standard OTEL_EXPORTER_OTLP_* variables.
    """
    global _configured
    current = trace.get_tracer_provider()
    if _configured and isinstance(current, TracerProvider):
        return current
    name = os.environ.get("OTEL_SERVICE_NAME", service_name)
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    default = "otlp" if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "none"
    for exporter_name in os.environ.get("OTEL_TRACES_EXPORTER", default).split(","):
        exporter = _exporter(exporter_name.strip().lower())
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _configured = True
    return provider


def current_trace_id() -> str:
    """The hex trace id of the current span, or "" outside a trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
