"""How the CLI shows jobs and events to a person: compact lines, tables and JSON."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2
from agentrt.ledger.v1 import ledger_pb2
from agentrt.orchestrator.v1 import orchestrator_pb2
from agentrt.policy.v1 import policy_pb2

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
    common_pb2.EVENT_TYPE_CHILD_CREATED: "job.child.created",
    common_pb2.EVENT_TYPE_CHILD_FINISHED: "job.child.finished",
    common_pb2.EVENT_TYPE_NODE_STARTED: "workflow.node.started",
    common_pb2.EVENT_TYPE_NODE_FINISHED: "workflow.node.finished",
    common_pb2.EVENT_TYPE_MODEL_CALL_STARTED: "model.call.started",
    common_pb2.EVENT_TYPE_MODEL_CALL_REPLAYED: "model.call.replayed",
    common_pb2.EVENT_TYPE_MODEL_CALL_CONFLICT: "model.call.conflict",
    common_pb2.EVENT_TYPE_MODEL_CALL_COMPLETED: "model.call.completed",
    common_pb2.EVENT_TYPE_MODEL_CALL_FAILED: "model.call.failed",
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
    elif payload == "usage_recorded":
        recorded = event.usage_recorded
        detail = f"turn {recorded.turn}, {recorded.model or 'model unknown'}, "
        detail += usage_text(recorded.usage)
    elif payload == "child":
        detail = child_text(event.child)
    elif payload == "node_event":
        detail = node_text(event.node_event)
    elif payload == "model_call":
        call = event.model_call
        detail = f"turn {call.turn}, {call.model}" + (f": {call.error}" if call.error else "")
    else:
        detail = ""
    return f"{kind} ({detail})" if detail else kind


def child_text(child: common_pb2.ChildEvent) -> str:
    """ "jobs/01j… map[2] FAILED: TOOL_ERROR: boom" for a child's creation or end."""
    text = " ".join(part for part in (child.child, child.node, state_name(child.state)) if part)
    return f"{text}: {failure_text(child.failure)}" if child.HasField("failure") else text


def node_text(node: common_pb2.NodeEvent) -> str:
    """ "map, run 2, 3 children" for a node's start; "map, run 2, SUCCEEDED" or
    "map, run 2, FAILED: TOOL_ERROR: boom" for its end."""
    children = len(node.children)
    parts = [node.node or "?", f"run {node.iteration}"]
    if children:
        parts.append(f"{children} child" if children == 1 else f"{children} children")
    if node.state:
        parts.append(state_name(node.state))
    text = ", ".join(parts)
    return f"{text}: {failure_text(node.failure)}" if node.HasField("failure") else text


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


def job_tree(jobs: Sequence[jobs_pb2.Job]) -> str:
    """A tree of jobs (depth first, as Client.tree returns it) as an aligned table, each
    job indented by its depth below the first."""
    top = jobs[0].depth if jobs else 0
    header = ("JOB", "NODE", "STATE", "TOKENS", "COST", "MODEL CALLS", "TOOL CALLS")
    rows = [header] + [
        (
            "  " * (job.depth - top) + job_id(job.name),
            job.spec.node or "-",
            state_name(job.state),
            f"{job.usage.total_tokens:,}",
            f"${job.usage.cost}" if job.usage.cost else "-",
            str(job.usage.model_calls),
            str(job.usage.tool_calls),
        )
        for job in jobs
    ]
    return table(rows, right={3, 4, 5, 6})


def table(rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> str:
    """Rows of cells (the first one a header) as aligned columns; the columns numbered in
    `right` (numbers) are aligned on their right edge."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if column in right else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
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


def action_table(actions: Iterable[jobs_pb2.Action]) -> str:
    """A job's actions as an aligned table: what each asks and where it is."""
    rows = [("ACTION", "KIND", "STATE", "CREATED", "EXPIRES", "ASKS")] + [
        (
            action.name,
            jobs_pb2.ActionKind.Name(action.kind).removeprefix("ACTION_KIND_").lower(),
            jobs_pb2.Action.State.Name(action.state).removeprefix("STATE_"),
            local_time(action.create_time),
            local_time(action.expire_time),
            _one_line(_compact_json(action.payload), 60),
        )
        for action in actions
    ]
    return table(rows)


def _compact_json(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":"), sort_keys=True)


_DIMENSIONS = (("tokens", "TOKENS"), ("cost", "COST"), ("tool_calls", "TOOL CALLS"))


def price_table(prices: Iterable[ledger_pb2.Price]) -> str:
    """Prices as an aligned table, in US dollars per million tokens."""
    rows: list[tuple[str, ...]] = [("MODEL", "INPUT", "OUTPUT", "CACHE READ", "CACHE WRITE")]
    for price in prices:
        rows.append(
            (
                price.name.removeprefix("prices/"),
                *(f"${getattr(price, field)}" for field in _PRICE_FIELDS),
            )
        )
    return table(rows, right={1, 2, 3, 4})


_PRICE_FIELDS = (
    "input_price_per_million",
    "output_price_per_million",
    "cached_input_price_per_million",
    "cache_write_price_per_million",
)


def budget_table(
    budgets: Iterable[ledger_pb2.Budget], statuses: Mapping[str, ledger_pb2.BudgetStatus]
) -> str:
    """Budgets as an aligned table: each limited dimension as "spent / limit" for the
    current period (spent from `statuses` by budget name, "-" when unknown), then the
    verdict of spending nothing more (ALLOW, WARN or DENY)."""
    header = ("BUDGET", "TENANT", "PRINCIPAL", "PERIOD", *(label for _, label in _DIMENSIONS))
    rows: list[tuple[str, ...]] = [(*header, "WARN AT", "STATUS")]
    for budget in budgets:
        status = statuses.get(budget.name)
        rows.append(
            (
                budget.name.removeprefix("budgets/"),
                budget.tenant,
                budget.principal or "*",
                ledger_pb2.Budget.Period.Name(budget.period).removeprefix("PERIOD_").lower(),
                *(_spent_of(budget.limits, status, field) for field, _ in _DIMENSIONS),
                f"{budget.warn_threshold:.0%}" if budget.HasField("warn_threshold") else "-",
                _verdict(status.verdict) if status is not None else "-",
            )
        )
    return table(rows, right={4, 5, 6, 7})


def _spent_of(
    limits: ledger_pb2.Amounts, status: ledger_pb2.BudgetStatus | None, field: str
) -> str:
    if not limits.HasField(field):  # type: ignore[arg-type]
        return "-"
    limit = _amount(limits, field)
    spent = _amount(status.spent, field) if status is not None else "-"
    return f"{spent} / {limit}"


def _amount(amounts: ledger_pb2.Amounts, field: str) -> str:
    if field == "cost":
        return f"${amounts.cost or '0'}"
    value: int = getattr(amounts, field)
    return f"{value:,}"


def _verdict(verdict: ledger_pb2.BudgetVerdict.ValueType) -> str:
    return ledger_pb2.BudgetVerdict.Name(verdict).removeprefix("BUDGET_VERDICT_")


_GROUP_COLUMNS = {
    ledger_pb2.USAGE_DIMENSION_TENANT: "TENANT",
    ledger_pb2.USAGE_DIMENSION_PRINCIPAL: "PRINCIPAL",
    ledger_pb2.USAGE_DIMENSION_MODEL: "MODEL",
    ledger_pb2.USAGE_DIMENSION_DAY: "DAY",
    ledger_pb2.USAGE_DIMENSION_JOB_TREE: "JOB",
}
_USAGE_COLUMNS = ("MODEL CALLS", "TOOL CALLS", "INPUT", "OUTPUT", "TOKENS", "COST")


def usage_table(
    rows: Sequence[ledger_pb2.UsageReportRow],
    group_by: Sequence[ledger_pb2.UsageDimension.ValueType],
) -> str:
    """A usage report as an aligned table: a column per dimension grouped by, then the
    sums, numbers aligned right, and a TOTAL line when there is more than one row. The
    cost is summed exactly; "-" means no record of the group had a price."""
    lines: list[tuple[str, ...]] = [(*(_GROUP_COLUMNS[d] for d in group_by), *_USAGE_COLUMNS)]
    lines += [(*(_group_value(row, d) for d in group_by), *_usage_cells(row.usage)) for row in rows]
    if len(rows) > 1:
        total = _sum_usage(row.usage for row in rows)
        labels = ("TOTAL", *([""] * (len(group_by) - 1))) if group_by else ()
        lines.append((*labels, *_usage_cells(total)))
    first_number = len(group_by)
    return table(lines, right=set(range(first_number, first_number + len(_USAGE_COLUMNS))))


def _group_value(
    row: ledger_pb2.UsageReportRow, dimension: ledger_pb2.UsageDimension.ValueType
) -> str:
    if dimension == ledger_pb2.USAGE_DIMENSION_DAY:
        return datetime.fromtimestamp(row.day.seconds, UTC).strftime("%Y-%m-%d")
    if dimension == ledger_pb2.USAGE_DIMENSION_JOB_TREE:
        return job_id(row.root_job) or "-"
    value: str = getattr(row, _GROUP_COLUMNS[dimension].lower())
    return value or "-"


def _usage_cells(usage: common_pb2.Usage) -> tuple[str, ...]:
    return (
        f"{usage.model_calls:,}",
        f"{usage.tool_calls:,}",
        f"{usage.input_tokens:,}",
        f"{usage.output_tokens:,}",
        f"{usage.total_tokens:,}",
        f"${usage.cost}" if usage.cost else "-",
    )


def _sum_usage(usages: Iterable[common_pb2.Usage]) -> common_pb2.Usage:
    total = common_pb2.Usage()
    cost: Decimal | None = None
    for usage in usages:
        total.model_calls += usage.model_calls
        total.tool_calls += usage.tool_calls
        total.input_tokens += usage.input_tokens
        total.output_tokens += usage.output_tokens
        total.total_tokens += usage.total_tokens
        if usage.cost:
            cost = (cost or Decimal(0)) + Decimal(usage.cost)
    if cost is not None:
        total.cost = str(cost)
    return total


def policy_set_table(policy_sets: Iterable[policy_pb2.PolicySet]) -> str:
    """Policy sets as an aligned table."""
    rows = [("POLICY SET", "VERSION", "RULES", "UPDATED", "DESCRIPTION")] + [
        (
            policy_set.name.removeprefix("policySets/"),
            str(policy_set.version),
            str(len(policy_set.rules)),
            local_time(policy_set.update_time),
            _one_line(policy_set.description, 50),
        )
        for policy_set in policy_sets
    ]
    return table(rows, right={1, 2})


def plugin_table(plugins: Iterable[orchestrator_pb2.Plugin]) -> str:
    """Registered plugins as an aligned table."""
    rows = [("PLUGIN", "VERSION", "STATE", "ENDPOINT", "TOOLS")] + [
        (
            plugin.name.removeprefix("plugins/"),
            plugin.manifest.version,
            orchestrator_pb2.Plugin.State.Name(plugin.state).removeprefix("STATE_"),
            plugin.manifest.endpoint,
            ", ".join(plugin.manifest.tools),
        )
        for plugin in plugins
    ]
    return table(rows)
