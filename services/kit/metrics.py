"""OpenTelemetry metrics for every service: a Prometheus scrape endpoint and OTLP, as configured."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from services.kit.config import env_address, env_str

log = logging.getLogger(__name__)

METER_NAME = "agentrt"
_configured = False


def meter() -> metrics.Meter:
    """The meter every agentrt instrument comes from. Instruments made before
    `configure_metrics` start recording once it installs the provider; without it they
    record nothing, at almost no cost."""
    return metrics.get_meter(METER_NAME)


def metrics_enabled() -> bool:
    """Whether `configure_metrics` installed a provider: work done only to feed metrics
    (reading a store for a gauge) is skipped otherwise."""
    return _configured


def configure_metrics(service_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Installs the global meter provider once per process, when anything reads it:
    a Prometheus scrape endpoint at AGENTRT_METRICS_ADDRESS (host:port; empty: none), and
    OTLP export (every OTEL_METRIC_EXPORT_INTERVAL ms) when OTEL_EXPORTER_OTLP_ENDPOINT is
    set and OTEL_METRICS_EXPORTER is not `none`. Returns whether a provider is installed."""
    global _configured
    if _configured:
        return True
    source = os.environ if env is None else env
    readers: list[MetricReader] = []
    address = env_str("AGENTRT_METRICS_ADDRESS", "", source)
    if address:
        host, _, port = env_address("AGENTRT_METRICS_ADDRESS", address, source).rpartition(":")
        readers.append(_prometheus_reader(host, int(port)))
        log.info("metrics at http://%s:%s/metrics", host, port)
    otlp = source.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    if otlp and source.get("OTEL_METRICS_EXPORTER", "otlp").strip().lower() != "none":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if not readers:
        return False
    name = source.get("OTEL_SERVICE_NAME", service_name)
    provider = MeterProvider(
        resource=Resource.create({"service.name": name}), metric_readers=readers
    )
    metrics.set_meter_provider(provider)
    _configured = True
    return True


def _prometheus_reader(host: str, port: int) -> MetricReader:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    # The scrape endpoint serves from a thread of its own, off the event loop.
    start_http_server(port, addr=host)
    return PrometheusMetricReader()
