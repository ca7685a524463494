"""The ledger's values and the rules both stores share: validation, windows, verdicts, rows."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from agentrt.common.v1.common_pb2 import Usage
from agentrt.ledger.v1.ledger_pb2 import (
    Amounts,
    Budget,
    BudgetStatus,
    BudgetVerdict,
    CheckBudgetResponse,
    Price,
    Reservation,
    UsageKind,
    UsageRecord,
    UsageReportRow,
)

from services.kit import validate
from services.kit.errors import (
    FieldInvalid,
    FieldRequired,
    IllegalTransition,
    RequestIdReused,
    ResourceExhausted,
)
from services.kit.money import ModelPrice, from_nanos, parse_amount, parse_price, to_nanos
from services.kit.names import parse_job_name

Row = Any
"""A database row indexed by column name: a sqlite3.Row or an asyncpg.Record."""

TimeOf = Callable[[Any], datetime | None]
"""How a backend's stored time becomes a UTC datetime."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""The window start of a PERIOD_TOTAL budget."""

FOREVER = datetime(9999, 1, 1, tzinfo=UTC)
"""The window end of a PERIOD_TOTAL budget."""

DIMENSIONS = ("tokens", "cost", "tool_calls")
"""The budget dimensions, in the order denials and statuses consider them."""

_RECORD_ID = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


@dataclass(frozen=True)
class Quantities:
    """Tokens, cost and tool calls; `None` in a limit means unlimited."""

    tokens: int = 0
    cost_nanos: int = 0
    tool_calls: int = 0

    def __add__(self, other: Quantities) -> Quantities:
        return Quantities(
            self.tokens + other.tokens,
            self.cost_nanos + other.cost_nanos,
            self.tool_calls + other.tool_calls,
        )

    def of(self, dimension: str) -> int:
        """The quantity of one of DIMENSIONS."""
        return self.cost_nanos if dimension == "cost" else int(getattr(self, dimension))


@dataclass(frozen=True)
class Limits:
    """A budget's limits; None means no limit in that dimension."""

    tokens: int | None = None
    cost_nanos: int | None = None
    tool_calls: int | None = None

    def of(self, dimension: str) -> int | None:
        """The limit of one of DIMENSIONS."""
        return self.cost_nanos if dimension == "cost" else getattr(self, dimension)


@dataclass(frozen=True)
class UsageEntry:
    """A validated usage record to store."""

    record_id: str
    tenant: str
    principal: str
    kind: int
    model: str
    tool: str
    job: str
    parent_job: str
    root_job: str
    trace_id: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_input_tokens: int
    cost_nanos: int | None
    """None when the caller gave no cost: the store prices a model call, if it can."""
    usage_time: datetime | None
    """None means when it is recorded."""
    body_hash: bytes
    """Hash of the record as sent; a reused id must come with the same hash."""


@dataclass(frozen=True)
class BudgetSpec:
    """A validated budget's mutable and immutable fields."""

    tenant: str
    principal: str
    period: int
    limits: Limits
    warn_threshold: float | None
    description: str = ""
    root_job: str = ""
    """The root of the one job tree it limits; '' for every job."""


@dataclass(frozen=True)
class ReservationRequest:
    """A validated request to hold amounts against a tenant's budgets."""

    tenant: str
    principal: str
    job: str
    amounts: Quantities
    ttl: timedelta
    request_id: str
    """Idempotency key, unique per tenant; empty for none."""
    request_hash: bytes
    root_job: str = ""
    """The root of the job's tree: the tree's budgets apply too."""


@dataclass(frozen=True)
class Counter:
    """One budget's window, as read (locked, when reserving) from the database."""

    budget_id: str
    period: int
    window_start: datetime
    limits: Limits
    warn_threshold: float | None
    spent: Quantities
    reserved: Quantities


def usage_entry(record_id: str, record: UsageRecord, field: str) -> UsageEntry:
    """Validate a RecordUsageRequest's id and record; `field` prefixes the error's field."""
    if not record_id:
        raise FieldRequired(f"{field}usage_record_id")
    if not _RECORD_ID.fullmatch(record_id):
        raise FieldInvalid(f"{field}usage_record_id", "1 to 128 letters, digits, '-', '_', '.'")
    at = f"{field}usage_record."
    if not record.tenant:
        raise FieldRequired(f"{at}tenant")
    if record.kind not in (UsageKind.USAGE_KIND_MODEL_CALL, UsageKind.USAGE_KIND_TOOL_CALL):
        raise FieldInvalid(f"{at}kind", "MODEL_CALL or TOOL_CALL")
    if record.kind == UsageKind.USAGE_KIND_MODEL_CALL and not record.model:
        raise FieldRequired(f"{at}model")
    if record.kind == UsageKind.USAGE_KIND_TOOL_CALL and not record.tool:
        raise FieldRequired(f"{at}tool")
    usage = record.usage
    for name in (
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "cache_write_input_tokens",
    ):
        if getattr(usage, name) < 0:
            raise FieldInvalid(f"{at}usage.{name}", "must not be negative")
    if usage.cached_input_tokens > usage.input_tokens:
        raise FieldInvalid(f"{at}usage.cached_input_tokens", "at most input_tokens")
    if usage.cached_input_tokens + usage.cache_write_input_tokens > usage.input_tokens:
        raise FieldInvalid(
            f"{at}usage.cache_write_input_tokens", "at most input_tokens - cached_input_tokens"
        )
    cost = to_nanos(parse_amount(usage.cost, f"{at}usage.cost")) if usage.cost else None
    body = UsageRecord()
    body.CopyFrom(record)
    body.ClearField("name")
    body.ClearField("create_time")
    return UsageEntry(
        record_id=record_id,
        tenant=record.tenant,
        principal=record.principal,
        kind=record.kind,
        model=record.model,
        tool=record.tool,
        job=record.job,
        parent_job=record.parent_job,
        root_job=record.root_job,
        trace_id=record.trace_id,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        cache_write_input_tokens=usage.cache_write_input_tokens,
        cost_nanos=cost,
        usage_time=validate.optional_timestamp(record, "usage_time", "usage_record.usage_time"),
        body_hash=hashlib.sha256(body.SerializeToString(deterministic=True)).digest(),
    )


def spent_by(tokens: int, cost_nanos: int | None, kind: int) -> Quantities:
    """What one usage record counts against a budget."""
    tool_calls = 1 if kind == UsageKind.USAGE_KIND_TOOL_CALL else 0
    return Quantities(tokens, cost_nanos or 0, tool_calls)


def parse_amounts(amounts: Amounts, field: str) -> Quantities:
    """Amounts about to be spent; FieldInvalid for a negative or malformed one."""
    for name in ("tokens", "tool_calls"):
        if getattr(amounts, name) < 0:
            raise FieldInvalid(f"{field}.{name}", "must not be negative")
    cost = to_nanos(parse_amount(amounts.cost, f"{field}.cost")) if amounts.cost else 0
    return Quantities(amounts.tokens, cost, amounts.tool_calls)


def budget_spec(budget: Budget) -> BudgetSpec:
    """Validate a budget's fields (as CreateBudget receives them)."""
    if not budget.tenant:
        raise FieldRequired("budget.tenant")
    if budget.root_job:
        parse_job_name(budget.root_job, "budget.root_job")
    if budget.period not in (Budget.PERIOD_DAY, Budget.PERIOD_MONTH, Budget.PERIOD_TOTAL):
        raise FieldRequired("budget.period")
    limits = budget.limits
    if not (limits.HasField("tokens") or limits.HasField("cost") or limits.HasField("tool_calls")):
        raise FieldRequired("budget.limits")
    for name in ("tokens", "tool_calls"):
        if limits.HasField(name) and getattr(limits, name) < 0:
            raise FieldInvalid(f"budget.limits.{name}", "must not be negative")
    cost = (
        to_nanos(parse_amount(limits.cost, "budget.limits.cost"))
        if limits.HasField("cost")
        else None
    )
    warn = budget.warn_threshold if budget.HasField("warn_threshold") else None
    if warn is not None and not 0 < warn <= 1:
        raise FieldInvalid("budget.warn_threshold", "must be in (0, 1]")
    return BudgetSpec(
        tenant=budget.tenant,
        principal=budget.principal,
        period=budget.period,
        limits=Limits(
            limits.tokens if limits.HasField("tokens") else None,
            cost,
            limits.tool_calls if limits.HasField("tool_calls") else None,
        ),
        warn_threshold=warn,
        description=budget.description,
        root_job=budget.root_job,
    )


def window(period: int, at: datetime) -> tuple[datetime, datetime]:
    """The UTC window of a budget period that contains `at`: [start, end)."""
    at = at.astimezone(UTC)
    if period == Budget.PERIOD_DAY:
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    if period == Budget.PERIOD_MONTH:
        start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (start + timedelta(days=32)).replace(day=1)
        return start, following
    return EPOCH, FOREVER


def request_hash(*parts: object) -> bytes:
    """A stable hash of a request's fields, to tell a retry from a reused request_id."""
    return hashlib.sha256(json.dumps(parts, default=str).encode()).digest()


# Verdicts


def overrun(counter: Counter, amounts: Quantities) -> tuple[str, int, int] | None:
    """The first dimension (DIMENSIONS order) in which spending `amounts` would exceed the
    counter's limit, as (dimension, limit, overrun); None when it fits."""
    for dimension in DIMENSIONS:
        limit = counter.limits.of(dimension)
        if limit is None:
            continue
        after = counter.spent.of(dimension) + counter.reserved.of(dimension) + amounts.of(dimension)
        if after > limit:
            return dimension, limit, after - limit
    return None


def verdict(counter: Counter, amounts: Quantities) -> BudgetVerdict.ValueType:
    """DENY past a limit, WARN past the warn threshold of one, else ALLOW."""
    if overrun(counter, amounts) is not None:
        return BudgetVerdict.BUDGET_VERDICT_DENY
    if counter.warn_threshold is not None:
        for dimension in DIMENSIONS:
            limit = counter.limits.of(dimension)
            used = counter.spent.of(dimension) + counter.reserved.of(dimension)
            if limit is not None and used + amounts.of(dimension) >= counter.warn_threshold * limit:
                return BudgetVerdict.BUDGET_VERDICT_WARN
    return BudgetVerdict.BUDGET_VERDICT_ALLOW


def denial(counter: Counter, amounts: Quantities) -> ResourceExhausted:
    """The error for a reservation the counter cannot take."""
    found = overrun(counter, amounts)
    assert found is not None
    dimension, limit, over = found
    shown = (
        (from_nanos(limit), from_nanos(over)) if dimension == "cost" else (str(limit), str(over))
    )
    period = _PERIOD_WORDS.get(counter.period, "")
    return ResourceExhausted(
        f"budget {budget_name(counter.budget_id)} would be exceeded: {dimension} limit "
        f"{shown[0]} {period}, overrun {shown[1]}",
        metadata={
            "budget": budget_name(counter.budget_id),
            "dimension": dimension,
            "limit": shown[0],
            "overrun": shown[1],
            "period": period,
        },
    )


_PERIOD_WORDS: dict[int, str] = {
    Budget.PERIOD_DAY: "per day",
    Budget.PERIOD_MONTH: "per month",
    Budget.PERIOD_TOTAL: "in total",
}
"""How a denial names a budget's period."""


def check_response(counters: Sequence[Counter], amounts: Quantities) -> CheckBudgetResponse:
    """What CheckBudget says about spending `amounts` given the applicable counters."""
    response = CheckBudgetResponse(verdict=BudgetVerdict.BUDGET_VERDICT_ALLOW)
    ranked = []
    for counter in sorted(counters, key=lambda c: c.budget_id):
        status = budget_status(counter, amounts)
        response.budgets.append(status)
        ranked.append((status.verdict, -_fraction_left(counter), counter.budget_id))
    if ranked:
        worst = max(ranked)
        response.verdict = worst[0]
        response.deciding_budget = budget_name(worst[2])
    return response


def budget_status(counter: Counter, amounts: Quantities) -> BudgetStatus:
    """One budget's view of spending `amounts`."""
    status = BudgetStatus(budget=budget_name(counter.budget_id), verdict=verdict(counter, amounts))
    left = Limits(*(_left(counter, dimension) for dimension in DIMENSIONS))
    status.limits.CopyFrom(limits_message(counter.limits))
    status.spent.CopyFrom(amounts_message(counter.spent))
    status.reserved.CopyFrom(amounts_message(counter.reserved))
    status.remaining.CopyFrom(limits_message(left))
    if counter.period != Budget.PERIOD_TOTAL:
        status.period_end_time.FromDatetime(window(counter.period, counter.window_start)[1])
    return status


def _left(counter: Counter, dimension: str) -> int | None:
    limit = counter.limits.of(dimension)
    if limit is None:
        return None
    return limit - counter.spent.of(dimension) - counter.reserved.of(dimension)


def _fraction_left(counter: Counter) -> float:
    fractions = [
        (limit - counter.spent.of(d) - counter.reserved.of(d)) / limit if limit else 0.0
        for d in DIMENSIONS
        if (limit := counter.limits.of(d)) is not None
    ]
    return min(fractions, default=1.0)


# Names and messages


def budget_name(budget_id: str) -> str:
    return f"budgets/{budget_id}"


def price_name(model: str) -> str:
    return f"prices/{model}"


def reservation_name(reservation_id: str) -> str:
    return f"reservations/{reservation_id}"


def amounts_message(quantities: Quantities) -> Amounts:
    return Amounts(
        tokens=quantities.tokens,
        cost=from_nanos(quantities.cost_nanos),
        tool_calls=quantities.tool_calls,
    )


def limits_message(limits: Limits) -> Amounts:
    message = Amounts()
    if limits.tokens is not None:
        message.tokens = limits.tokens
    if limits.cost_nanos is not None:
        message.cost = from_nanos(limits.cost_nanos)
    if limits.tool_calls is not None:
        message.tool_calls = limits.tool_calls
    return message


def usage_record_from_row(row: Row, time: TimeOf) -> UsageRecord:
    cost = row["cost_nanos"]
    tokens = row["input_tokens"] + row["output_tokens"]
    model_call = row["kind"] == UsageKind.USAGE_KIND_MODEL_CALL
    record = UsageRecord(
        name=f"usageRecords/{row['id']}",
        kind=row["kind"],
        usage=Usage(
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            cached_input_tokens=row["cached_input_tokens"],
            cache_write_input_tokens=row["cache_write_input_tokens"],
            total_tokens=tokens,
            cost="" if cost is None else from_nanos(cost),
            model_calls=1 if model_call else 0,
            tool_calls=0 if model_call else 1,
        ),
        **{name: row[name] for name in _RECORD_TEXT},
    )
    _set_time(record.usage_time, time(row["usage_time"]))
    _set_time(record.create_time, time(row["create_time"]))
    return record


_RECORD_TEXT = ("model", "tool", "tenant", "principal", "job", "parent_job", "root_job", "trace_id")


def price_from_row(row: Row, time: TimeOf) -> Price:
    price = Price(
        name=price_name(row["model"]),
        input_price_per_million=row["input_price"],
        output_price_per_million=row["output_price"],
        cached_input_price_per_million=row["cached_input_price"],
        cache_write_price_per_million=row["cache_write_price"],
        currency="USD",
        etag=row["etag"],
    )
    _set_time(price.create_time, time(row["create_time"]))
    _set_time(price.update_time, time(row["update_time"]))
    return price


def budget_from_row(row: Row, time: TimeOf) -> Budget:
    budget = Budget(
        name=budget_name(row["id"]),
        description=row["description"],
        tenant=row["tenant"],
        principal=row["principal"],
        period=row["period"],
        etag=row["etag"],
        root_job=row["root_job"],
    )
    budget.limits.CopyFrom(limits_message(limits_from_row(row)))
    if row["warn_threshold"] is not None:
        budget.warn_threshold = row["warn_threshold"]
    _set_time(budget.create_time, time(row["create_time"]))
    _set_time(budget.update_time, time(row["update_time"]))
    return budget


def limits_from_row(row: Row) -> Limits:
    return Limits(row["limit_tokens"], row["limit_cost_nanos"], row["limit_tool_calls"])


def counter_from_row(row: Row, time: TimeOf) -> Counter:
    window_start = time(row["window_start"])
    assert window_start is not None
    return Counter(
        budget_id=row["budget_id"],
        period=row["period"],
        window_start=window_start,
        limits=limits_from_row(row),
        warn_threshold=row["warn_threshold"],
        spent=Quantities(row["spent_tokens"], row["spent_cost_nanos"], row["spent_tool_calls"]),
        reserved=Quantities(
            row["reserved_tokens"], row["reserved_cost_nanos"], row["reserved_tool_calls"]
        ),
    )


def reservation_from_row(row: Row, time: TimeOf) -> Reservation:
    reservation = Reservation(
        name=reservation_name(row["id"]),
        tenant=row["tenant"],
        principal=row["principal"],
        job=row["job"],
        state=row["state"],
        budgets=[budget_name(b) for b in json.loads(row["budgets"])],
        verdict=row["verdict"],
        request_id=row["request_id"],
    )
    reservation.amounts.CopyFrom(
        amounts_message(Quantities(row["tokens"], row["cost_nanos"], row["tool_calls"]))
    )
    if row["state"] == Reservation.STATE_SETTLED:
        settled = Quantities(
            row["settled_tokens"], row["settled_cost_nanos"], row["settled_tool_calls"]
        )
        reservation.settled.CopyFrom(amounts_message(settled))
    _set_time(reservation.expire_time, time(row["expire_time"]))
    _set_time(reservation.create_time, time(row["create_time"]))
    _set_time(reservation.end_time, time(row["end_time"]))
    return reservation


def _set_time(field: Any, value: datetime | None) -> None:
    if value is not None:
        field.FromDatetime(value)


# Counters touched by a change

CounterKey = tuple[str, int, datetime]
"""A counter row: budget id, period, window start."""

Deltas = dict[CounterKey, Quantities]
"""What a change adds to each counter."""


def add_delta(deltas: Deltas, key: CounterKey, amount: Quantities) -> None:
    """Add `amount` to the counter's delta."""
    deltas[key] = deltas.get(key, Quantities()) + amount


def negated(amount: Quantities) -> Quantities:
    return Quantities(-amount.tokens, -amount.cost_nanos, -amount.tool_calls)


def counter_key(budget_id: str, period: int, at: datetime) -> CounterKey:
    """The counter of the budget's window containing `at`."""
    return budget_id, period, window(period, at)[0]


def record_spent(row: Row) -> Quantities:
    """What a stored usage record counts against a budget."""
    return spent_by(row["input_tokens"] + row["output_tokens"], row["cost_nanos"], row["kind"])


def report_row(
    group_by: Sequence[str], values: Row, time: TimeOf
) -> tuple[dict[str, Any], UsageReportRow]:
    """A report row's group values and its UsageReportRow, from a grouped query's row."""
    model_calls, tool_calls = values["model_calls"], values["tool_calls"]
    row = UsageReportRow(
        usage=Usage(
            input_tokens=values["input_tokens"] or 0,
            output_tokens=values["output_tokens"] or 0,
            cached_input_tokens=values["cached_input_tokens"] or 0,
            cache_write_input_tokens=values["cache_write_input_tokens"] or 0,
            total_tokens=(values["input_tokens"] or 0) + (values["output_tokens"] or 0),
            cost=from_nanos(values["cost_nanos"] or 0),
            model_calls=model_calls,
            tool_calls=tool_calls,
        ),
        record_count=values["record_count"],
    )
    group: dict[str, Any] = {}
    for dimension in group_by:
        value = values[dimension]
        if dimension == "day":
            value = time(value)
            _set_time(row.day, value)
        elif dimension in ("tenant", "principal", "model", "root_job"):
            setattr(row, dimension, value)
        group[dimension] = value
    return group, row


# Helpers of both stores


REPORT_SUMS = """
    CAST(sum(input_tokens) AS BIGINT) AS input_tokens,
    CAST(sum(output_tokens) AS BIGINT) AS output_tokens,
    CAST(sum(cached_input_tokens) AS BIGINT) AS cached_input_tokens,
    CAST(sum(cache_write_input_tokens) AS BIGINT) AS cache_write_input_tokens,
    CAST(sum(cost_nanos) AS BIGINT) AS cost_nanos,
    count(*) FILTER (WHERE kind = 1) AS model_calls,
    count(*) FILTER (WHERE kind = 2) AS tool_calls,
    count(*) AS record_count"""
"""The sums of a usage report row (valid on PostgreSQL and SQLite alike)."""


def usage_columns(
    entry: UsageEntry, cost_nanos: int | None, now: datetime, to_db: Callable[[datetime], Any]
) -> tuple[Any, ...]:
    """insert_usage's parameters, in column order."""
    return (
        entry.record_id,
        entry.body_hash,
        entry.tenant,
        entry.principal,
        entry.kind,
        entry.model,
        entry.tool,
        entry.job,
        entry.parent_job,
        entry.root_job,
        entry.trace_id,
        entry.input_tokens,
        entry.output_tokens,
        entry.cached_input_tokens,
        entry.cache_write_input_tokens,
        cost_nanos,
        to_db(entry.usage_time or now),
        to_db(now),
    )


def entry_usage(entry: UsageEntry) -> Usage:
    """The token counts of an entry, for pricing."""
    return Usage(
        input_tokens=entry.input_tokens,
        output_tokens=entry.output_tokens,
        cached_input_tokens=entry.cached_input_tokens,
        cache_write_input_tokens=entry.cache_write_input_tokens,
    )


def check_same_body(row: Row, entry: UsageEntry) -> None:
    """RequestIdReused unless the stored record was sent with the entry's body."""
    if bytes(row["body_hash"]) != entry.body_hash:
        raise RequestIdReused(entry.record_id)


def settled_ids(entries: Sequence[UsageEntry]) -> list[str]:
    return sorted({entry.record_id for entry in entries})


def check_settled_again(row: Row, ids: list[str]) -> None:
    """Settling a SETTLED reservation again is a no-op only with the same records."""
    if json.loads(row["settled_records"]) != ids:
        raise IllegalTransition("STATE_SETTLED", "settle a reservation again with other records")


def check_tenants(tenant: str, entries: Sequence[UsageEntry]) -> None:
    """FieldInvalid for a record of another tenant than the reservation's."""
    for index, entry in enumerate(entries):
        if entry.tenant != tenant:
            raise FieldInvalid(
                f"usage_records[{index}].usage_record.tenant",
                f"must be the reservation's tenant {tenant!r}",
            )


def check_immutable(current: Row, spec: BudgetSpec) -> None:
    """FieldInvalid when an update would move a budget to another tenant or principal."""
    for name in ("tenant", "principal", "root_job"):
        if current[name] != getattr(spec, name):
            raise FieldInvalid(f"budget.{name}", "cannot change")


def total_spent(rows: Iterable[Row]) -> Quantities:
    """What distinct usage records add up to."""
    unique = {row["id"]: row for row in rows}
    total = Quantities()
    for row in unique.values():
        total = total + record_spent(row)
    return total


def triple(quantities: Quantities) -> tuple[int, int, int]:
    return quantities.tokens, quantities.cost_nanos, quantities.tool_calls


def price_text(price: Decimal) -> str:
    """A price as the contract's decimal string, without trailing zeros past the point."""
    text = format(price, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def new_etag() -> str:
    return secrets.token_hex(8)


def model_price(row: Row) -> ModelPrice:
    """The price a prices row holds, for costing usage."""
    return parse_price(
        row["input_price"], row["output_price"], row["cached_input_price"], row["cache_write_price"]
    )


def price_columns(price: ModelPrice) -> tuple[str, str, str, str]:
    """A price's input, output, cached input and cache write price columns."""
    return (
        price_text(price.input_per_million),
        price_text(price.output_per_million),
        price_text(price.cached_input_per_million),
        price_text(price.cache_write_per_million),
    )


def budget_columns(spec: BudgetSpec) -> tuple[Any, ...]:
    """A budget's period, limit and warn threshold columns."""
    limits = spec.limits
    return spec.period, limits.tokens, limits.cost_nanos, limits.tool_calls, spec.warn_threshold
