"""An OTLP/gRPC receiver for tests and benchmarks: keeps every span and every metrics
export it is sent."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2 as otlp_common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass
class Received:
    """A span as the receiver got it, with the service that sent it."""

    service: str
    span: trace_pb2.Span

    @property
    def id(self) -> bytes:
        return self.span.span_id

    @property
    def attributes(self) -> dict[str, Any]:
        return {a.key: _value(a.value) for a in self.span.attributes}


def _value(value: otlp_common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _service_name(resource: resource_pb2.Resource) -> str:
    return next((a.value.string_value for a in resource.attributes if a.key == "service.name"), "")


@dataclass
class Receiver:
    """An OTLP/gRPC receiver (opentelemetry.proto.collector's TraceService and
    MetricsService) that keeps every span and every metrics export it is sent."""

    spans: list[Received] = field(default_factory=list)
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)

    def export_spans(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = _service_name(resource_spans.resource)
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(Received(service, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def export_metrics(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: object
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self.metrics.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def sums(self, name: str) -> float:
        """The newest cumulative total of a counter, over its data points."""
        newest = 0.0
        for request in list(self.metrics):
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        if metric.name == name:
                            points = metric.sum.data_points
                            newest = sum(p.as_double or p.as_int for p in points)
        return newest

    def metric_services(self) -> set[str]:
        """The service names of the processes that exported metrics."""
        return {
            _service_name(resource.resource)
            for request in list(self.metrics)
            for resource in request.resource_metrics
        }


def start_receiver(port: int = 0) -> tuple[grpc.Server, Receiver, int]:
    """A started receiver on 127.0.0.1:`port` (0: any free port), and its port.

    It serves from threads of its own, not from the caller's event loop: a test that blocks
    its loop while a process it started shuts down still gets that process's last export
    answered, instead of holding the exporter to its timeout."""
    server = grpc.server(ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)])
    found = Receiver()
    traces = grpc.unary_unary_rpc_method_handler(
        found.export_spans,
        request_deserializer=trace_service_pb2.ExportTraceServiceRequest.FromString,
        response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
    )
    metrics = grpc.unary_unary_rpc_method_handler(
        found.export_metrics,
        request_deserializer=metrics_service_pb2.ExportMetricsServiceRequest.FromString,
        response_serializer=metrics_service_pb2.ExportMetricsServiceResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": traces}
            ),
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.metrics.v1.MetricsService", {"Export": metrics}
            ),
        )
    )
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, found, port


def span_tree(spans: list[Received], leave_out: Callable[[Received], bool]) -> str:
    """The spans of one trace as an indented tree, children in start order, each with its
    service, duration and links; spans `leave_out` picks (and their subtrees) left out."""
    by_id = {span.id: span for span in spans}
    children: dict[bytes, list[Received]] = defaultdict(list)
    for span in spans:
        parent = span.span.parent_span_id
        children[parent if parent in by_id else b""].append(span)
    lines: list[str] = []
    names = {span.id: span.span.name for span in spans}

    def draw(span: Received, head: str, lead: str) -> None:
        """`head` starts the span's line, `lead` the lines of its children."""
        name = span.span.name.removeprefix("/agentrt.").replace(".v1.", ".")
        label = "  ".join(
            f"{key}={span.attributes[key]}"
            for key in _SHOWN
            if key in span.attributes and span.attributes[key] != ""
        )
        links = "".join(f"  ──link──▶ {names.get(link.span_id, '?')}" for link in span.span.links)
        millis = (span.span.end_time_unix_nano - span.span.start_time_unix_nano) / 1e6
        text = f"{head}{name}  {label}{links}".rstrip()
        lines.append(f"{text:<72} {span.service:<13} {millis:7.1f} ms")
        kept = [c for c in children[span.id] if not leave_out(c)]
        kept.sort(key=lambda c: c.span.start_time_unix_nano)
        for index, child in enumerate(kept):
            last = index == len(kept) - 1
            draw(child, lead + ("└─ " if last else "├─ "), lead + ("   " if last else "│  "))

    for root in sorted(children[b""], key=lambda s: s.span.start_time_unix_nano):
        draw(root, "", "")
    return "\n".join(lines)


_SHOWN = (
    "agentrt.attempt",
    "agentrt.job.state",
    "gen_ai.request.model",
    "gen_ai.tool.name",
    "agentrt.action.kind",
)
