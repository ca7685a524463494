"""JSON log records: one object a line, with the current span's trace id."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from services.kit.config import ConfigError
from services.kit.logs import JsonFormatter, configure_logging


def logged(emit: logging.Logger, message: str, **extra: object) -> dict[str, object]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    emit.addHandler(handler)
    try:
        emit.warning(message, "x", extra=extra)
    finally:
        emit.removeHandler(handler)
    line = out.getvalue()
    assert line.count("\n") == 1
    parsed: dict[str, object] = json.loads(line)
    return parsed


def test_a_record_in_a_span_carries_its_trace_and_span_ids() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        entry = logged(logging.getLogger("agentrt.test"), "job %s started", job="jobs/a")
        context = span.get_span_context()
    assert entry["message"] == "job x started"
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "agentrt.test"
    assert entry["trace_id"] == format(context.trace_id, "032x")
    assert entry["span_id"] == format(context.span_id, "016x")
    assert entry["job"] == "jobs/a"
    assert str(entry["time"]).endswith("+00:00")


def test_a_record_outside_a_trace_has_no_trace_id() -> None:
    entry = logged(logging.getLogger("agentrt.test"), "idle %s")
    assert "trace_id" not in entry
    assert entry["message"] == "idle x"


def test_an_unknown_log_format_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_LOG_FORMAT", "yaml")
    with pytest.raises(ConfigError, match="AGENTRT_LOG_FORMAT: expected one of text, json"):
        configure_logging(request_log=False)
