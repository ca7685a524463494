"""Process-wide logging: one line per record, level from AGENTRT_LOG_LEVEL, text or JSON."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

from services.kit.config import ConfigError, env_str
from services.kit.request_context import FIELDS as CONTEXT_FIELDS
from services.kit.request_context import RequestContextFilter

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s%(request_context)s"
_STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the trace and span ids
    of the span current when it was logged (absent outside a trace), the exception, and
    any attributes passed with `extra=`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        for key, value in record.__dict__.items():
            # The one-line form of the context is for the text format; its fields come
            # one by one, and those it does not know are left out.
            if key == "request_context" or (key in CONTEXT_FIELDS and not value):
                continue
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        return json.dumps(entry, default=str)


def configure_logging(request_log: bool) -> None:
    """AGENTRT_LOG_LEVEL (default INFO) for every logger; the per-RPC request log
    (`agentrt.requests`) is kept at that level when `request_log`, else only its failures.
    Every line ends with the request context of the work it is about (tenant, job, ...);
    AGENTRT_LOG_FORMAT `json` writes each record as one JSON object with its trace id and
    the context's fields (default `text`)."""
    level = env_str("AGENTRT_LOG_LEVEL", "INFO").upper()
    if level not in LEVELS:
        raise ConfigError(f"AGENTRT_LOG_LEVEL: expected one of {', '.join(LEVELS)}, got {level!r}")
    log_format = env_str("AGENTRT_LOG_FORMAT", "text").lower()
    if log_format not in FORMATS:
        raise ConfigError(
            f"AGENTRT_LOG_FORMAT: expected one of {', '.join(FORMATS)}, got {log_format!r}"
        )
    logging.basicConfig(level=level, format=_TEXT_FORMAT, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestContextFilter())
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
    if not request_log and level != "DEBUG":
        logging.getLogger("agentrt.requests").setLevel(logging.WARNING)
