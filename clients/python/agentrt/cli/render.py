"""How the CLI shows jobs and events to a person: compact lines, tables and JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2

EVENT_TYPES: Mapping[common_pb2.EventType.ValueType, str] = {
    common_pb2.EVENT_TYPE_JOB_CREATED: "job.created",
    common_pb2.EVENT_TYPE_JOB_STARTED: "job.started",
    common_pb2.EVENT_TYPE_OUTPUT_DELTA: "job.output.delta",
    common_pb2.EVENT_TYPE_TURN_COMPLETED: "job.turn.completed",
    common_pb2.EVENT_TYPE_JOB_WAITING: "job.waiting",
    common_pb2.EVENT_TYPE_JOB_REQUEUED: "job.requeued",
    common_pb2.EVENT_TYPE_JOB_SUCCEEDED: "job.succeeded",
    common_pb2.EVENT_TYPE_JOB_FAILED: "job.failed",
    common_pb2.EVENT_TYPE_JOB_CANCELLED: "job.cancelled",
    common_pb2.EVENT_TYPE_JOB_TIMED_OUT: "job.timed_out",
    common_pb2.EVENT_TYPE_ACTION_REQUIRED: "action.required",
    common_pb2.EVENT_TYPE_ACTION_RESOLVED: "action.resolved",
    common_pb2.EVENT_TYPE_ACTION_EXPIRED: "action.expired",
    common_pb2.EVENT_TYPE_TOOL_CALLED: "tool.called",
    common_pb2.EVENT_TYPE_USAGE_RECORDED: "usage.recorded",
}
"""The dotted type string of each event type, as the common proto documents it."""


def state_name(state: common_pb2.JobState.ValueType) -> str:
    """ "SUCCEEDED" for JOB_STATE_SUCCEEDED."""
    return common_pb2.JobState.Name(state).removeprefix("JOB_STATE_")


def reason_name(reason: common_pb2.ErrorReason.ValueType) -> str:
    """ "BUDGET_EXCEEDED" for ERROR_REASON_BUDGET_EXCEEDED."""
    return common_pb2.ErrorReason.Name(reason).removeprefix("ERROR_REASON_")


def parse_state(text: str) -> common_pb2.JobState.ValueType:
    """The JobState a person means by "running", "RUNNING" or "JOB_STATE_RUNNING"."""
    name = text.strip().upper().removeprefix("JOB_STATE_")
    states = common_pb2.JobState.keys()[1:]
    if f"JOB_STATE_{name}" not in states:
        choices = ", ".join(state.removeprefix("JOB_STATE_").lower() for state in states)
        raise ValueError(f"unknown job state {text!r}; one of {choices}")
    return common_pb2.JobState.Value(f"JOB_STATE_{name}")


def failure_text(failure: common_pb2.Failure) -> str:
    """ "BUDGET_EXCEEDED: the job's token budget ran out" for a failure."""
    reason = reason_name(failure.reason)
    return f"{reason}: {failure.message}" if failure.message else reason


def event_line(event: common_pb2.RuntimeEvent) -> str:
    """One compact line saying what an event means, e.g. "job.started (attempt 2)"."""
    kind = EVENT_TYPES.get(event.type, f"event {event.type}")
    payload = event.WhichOneof("payload")
    if payload == "attempt":
        detail = f"attempt {event.attempt.attempt}"
        if event.attempt.reason:
            detail += f": {event.attempt.reason}"
    elif payload == "turn_completed":
        detail = f"turn {event.turn_completed.turn}, {usage_text(event.turn_completed.usage)}"
    elif payload == "job_succeeded":
        detail = usage_text(event.job_succeeded.usage)
    elif payload == "failure":
        detail = failure_text(event.failure)
    elif payload == "action":
        detail = f"{event.action.kind} {event.action.action}".strip()
    elif payload == "tool_called":
        detail = f"{event.tool_called.call.name} {'ok' if event.tool_called.ok else 'failed'}"
    elif payload == "usage":
        detail = usage_text(event.usage)
    else:
        detail = ""
    return f"{kind} ({detail})" if detail else kind


def usage_text(usage: common_pb2.Usage) -> str:
    """ "1,234 tokens, $0.0012" (the cost only when known)."""
    text = f"{usage.total_tokens:,} tokens"
    return f"{text}, ${usage.cost}" if usage.cost else text


def job_id(name: str) -> str:
    """The id part of "jobs/{id}"."""
    return name.removeprefix("jobs/")


def job_table(jobs: Iterable[jobs_pb2.Job]) -> str:
    """The jobs as an aligned table, one line each."""
    header = ("JOB", "STATE", "MODEL", "TURNS", "TOKENS", "CREATED", "PROMPT")
    rows = [header] + [
        (
            job_id(job.name),
            state_name(job.state),
            job.spec.model or "-",
            str(job.turns),
            f"{job.usage.total_tokens:,}",
            local_time(job.create_time),
            _one_line(job.spec.prompt, 40),
        )
        for job in jobs
    ]
    return table(rows)


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells (the first one a header) as aligned columns."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def job_details(job: jobs_pb2.Job) -> str:
    """The job as "field: value" lines, then its answer or its failure."""
    fields = [
        ("job", job.name),
        ("state", state_name(job.state)),
        ("model", job.spec.model or "(default)"),
        ("session", job.spec.session),
        ("created", local_time(job.create_time)),
        ("started", local_time(job.start_time)),
        ("ended", local_time(job.end_time)),
        ("turns", str(job.turns)),
        ("attempts", str(job.attempt)),
        ("usage", usage_text(job.usage)),
        ("trace", job.trace_id),
        ("prompt", _one_line(job.spec.prompt, 200)),
    ]
    lines = [f"{label + ':':<9} {value}" for label, value in fields if value and value != "-"]
    if job.HasField("failure"):
        lines.append(f"{'failure:':<9} {failure_text(job.failure)}")
    if job.state == common_pb2.JOB_STATE_SUCCEEDED:
        lines += ["", job.result.output]
    return "\n".join(lines)


def local_time(stamp: timestamp_pb2.Timestamp) -> str:
    """The time in the local zone to the second, or "-" when unset."""
    if not stamp.seconds and not stamp.nanos:
        return "-"
    return datetime.fromtimestamp(stamp.seconds).strftime("%Y-%m-%d %H:%M:%S")


def as_json(message: Message) -> str:
    """The message in the proto3 JSON mapping, indented."""
    return json.dumps(json_format.MessageToDict(message), indent=2, ensure_ascii=False)


def as_json_line(message: Message) -> str:
    """The message in the proto3 JSON mapping on one line (for a stream of them)."""
    return json.dumps(json_format.MessageToDict(message), ensure_ascii=False)


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
