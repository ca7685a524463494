"""Span ids derived from names, the sampling of a job's attempts, the capture switches."""

from __future__ import annotations

import subprocess
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.kit.config import ConfigError
from services.kit.telemetry import (
    Capture,
    JobSpanIds,
    current_trace_id,
    forced_ids,
    job_span_id,
    make_provider,
    spans_exported,
)

SAMPLED_TOGETHER = """
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from services.kit.telemetry import configure_tracing, job_span_context
configure_tracing("test").add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
tracer = trace.get_tracer("test")
kept = 0
for n in range(200):
    root = tracer.start_span("request")
    trace_id = format(root.get_span_context().trace_id, "032x")
    attempt = tracer.start_span("agent.attempt", context=job_span_context(f"jobs/j{n}", trace_id))
    assert attempt.is_recording() == root.is_recording(), n
    kept += root.is_recording()
print(kept)
"""


def test_no_span_is_recorded_until_spans_have_somewhere_to_go_but_ids_are_made() -> None:
    provider = make_provider("test")
    assert not spans_exported(provider)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("unexported") as unexported:
        assert not unexported.is_recording()
        assert unexported.get_span_context().is_valid
        assert current_trace_id() == format(unexported.get_span_context().trace_id, "032x")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert spans_exported(provider)
    with tracer.start_as_current_span("exported") as exported:
        assert exported.is_recording()
    assert [span.name for span in exporter.get_finished_spans()] == ["exported"]


def test_a_forced_span_id_goes_to_the_first_span_only_and_a_root_takes_the_trace_id() -> None:
    tracer = TracerProvider(id_generator=JobSpanIds()).get_tracer("test")
    with forced_ids(0x1234, job_span_id("jobs/a")):
        first = tracer.start_span("first")
        second = tracer.start_span("second")
    assert first.get_span_context().span_id == job_span_id("jobs/a")
    assert first.get_span_context().trace_id == 0x1234
    assert second.get_span_context().span_id != job_span_id("jobs/a")
    assert second.get_span_context().trace_id != 0x1234
    assert job_span_id("jobs/a") != job_span_id("jobs/b")


def test_a_jobs_attempts_are_sampled_as_the_request_that_created_it_was() -> None:
    ran = subprocess.run(
        [sys.executable, "-c", SAMPLED_TOGETHER],
        env={"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert 40 < int(ran.stdout) < 160, "about half the requests are sampled"


def test_capture_is_off_by_default_and_a_wrong_value_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("INPUT", "OUTPUT", "TOOL_ARGS"):
        monkeypatch.delenv(f"AGENTRT_OTEL_CAPTURE_{name}", raising=False)
    assert Capture.from_env() == Capture(input=False, output=False, tool_args=False)
    monkeypatch.setenv("AGENTRT_OTEL_CAPTURE_TOOL_ARGS", "yes")
    assert Capture.from_env() == Capture(tool_args=True)
    monkeypatch.setenv("AGENTRT_OTEL_CAPTURE_INPUT", "maybe")
    with pytest.raises(ConfigError, match="AGENTRT_OTEL_CAPTURE_INPUT"):
        Capture.from_env()
