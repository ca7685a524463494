"""Fixtures of the ledger tests: a migrated LedgerStore on each backend, value factories,
and the invariant every test ends with: counters agree with records and reservations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
from agentrt.common.v1.common_pb2 import Usage
from agentrt.ledger.v1.ledger_pb2 import Amounts, Budget, UsageKind, UsageRecord

from services.kit.storage import SqliteDatabase, StorageConfig, migrate
from services.ledger import records
from services.ledger.records import (
    BudgetSpec,
    Quantities,
    ReservationRequest,
    UsageEntry,
)
from services.ledger.store import SQL_DIRECTORY, LedgerStore, open_ledger_store

T0 = datetime(2030, 1, 15, 12, tzinfo=UTC)
"""The time the tests act at, unless they say otherwise."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def seconds(n: float) -> datetime:
    """T0 plus n seconds."""
    return T0 + timedelta(seconds=n)


def model_call(record_id: str, **fields: Any) -> UsageEntry:
    """A validated model-call usage record (fields as model_call_record's)."""
    return records.usage_entry(record_id, model_call_record(**fields), "")


def model_call_record(
    *,
    tenant: str = "acme",
    principal: str = "alice",
    input_tokens: int = 100,
    output_tokens: int = 50,
    cached_input_tokens: int = 0,
    cache_write_input_tokens: int = 0,
    cost: str = "0.01",
    usage_time: datetime | None = None,
    job: str = "",
    root_job: str = "",
    model: str = "m1",
) -> UsageRecord:
    """A model-call usage record, as a caller sends it."""
    record = UsageRecord(
        kind=UsageKind.USAGE_KIND_MODEL_CALL,
        usage=Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_input_tokens=cached_input_tokens,
            cache_write_input_tokens=cache_write_input_tokens,
            cost=cost,
        ),
        model=model,
        tenant=tenant,
        principal=principal,
        job=job,
        root_job=root_job,
    )
    if usage_time is not None:
        record.usage_time.FromDatetime(usage_time)
    return record


def tool_call(record_id: str, *, tenant: str = "acme", principal: str = "alice") -> UsageEntry:
    record = UsageRecord(
        kind=UsageKind.USAGE_KIND_TOOL_CALL,
        usage=Usage(),
        tool="search",
        tenant=tenant,
        principal=principal,
    )
    return records.usage_entry(record_id, record, "")


def budget(
    *,
    tenant: str = "acme",
    principal: str = "",
    period: Budget.Period.ValueType = Budget.PERIOD_DAY,
    tokens: int | None = None,
    cost: str | None = None,
    tool_calls: int | None = None,
    warn: float | None = None,
    root_job: str = "",
) -> BudgetSpec:
    """A validated budget."""
    message = Budget(tenant=tenant, principal=principal, period=period, root_job=root_job)
    if tokens is not None:
        message.limits.tokens = tokens
    if cost is not None:
        message.limits.cost = cost
    if tool_calls is not None:
        message.limits.tool_calls = tool_calls
    if warn is not None:
        message.warn_threshold = warn
    return records.budget_spec(message)


def amounts(tokens: int = 0, cost: str = "", tool_calls: int = 0) -> Quantities:
    return records.parse_amounts(Amounts(tokens=tokens, cost=cost, tool_calls=tool_calls), "a")


def reservation(
    tokens: int = 0,
    cost: str = "",
    *,
    tenant: str = "acme",
    principal: str = "alice",
    request_id: str = "",
    ttl: float = 60,
    root_job: str = "",
) -> ReservationRequest:
    quantities = amounts(tokens, cost)
    return ReservationRequest(
        tenant=tenant,
        principal=principal,
        job="jobs/j1",
        amounts=quantities,
        ttl=timedelta(seconds=ttl),
        request_id=request_id,
        request_hash=records.request_hash(tenant, principal, quantities, ttl),
        root_job=root_job,
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def storage_config(request: pytest.FixtureRequest, sqlite_path: Path) -> StorageConfig:
    if request.param == "postgres":
        return StorageConfig("postgres", None, request.getfixturevalue("pg_dsn"), "ledger")
    return StorageConfig("sqlite", sqlite_path, None, "ledger")


@dataclass
class LedgerDatabases:
    """The ledger databases a test used; each must satisfy the invariant at its end."""

    configs: list[StorageConfig] = field(default_factory=list)

    def track(self, config: StorageConfig) -> StorageConfig:
        """Check `config`'s database when the test ends; returns it."""
        if config not in self.configs:
            self.configs.append(config)
        return config


@pytest.fixture
def _postgres_first(request: pytest.FixtureRequest) -> None:
    """Sets up the test's PostgreSQL database (when it uses one) before ledger_databases,
    so that it is dropped only after ledger_databases checked it."""
    if _uses_postgres(request):
        request.getfixturevalue("pg_dsn")


@pytest.fixture(autouse=True)
async def ledger_databases(_postgres_first: None) -> AsyncIterator[LedgerDatabases]:
    """After every ledger test, in every ledger database it used (its fixtures and the test
    itself track them), the counters equal the sum of the usage records and of the active
    reservations' holds. Torn down after the stores and servers closed."""
    used = LedgerDatabases()
    yield used
    for config in used.configs:
        await check_invariant(config)


def _uses_postgres(request: pytest.FixtureRequest) -> bool:
    """Whether the test asks for pg_dsn, directly or through a "postgres" parameter."""
    if "pg_dsn" in request.fixturenames:
        return True
    callspec = getattr(request.node, "callspec", None)
    return callspec is not None and "postgres" in callspec.params.values()


@pytest.fixture
async def store(
    storage_config: StorageConfig, ledger_databases: LedgerDatabases
) -> AsyncIterator[LedgerStore]:
    """A store on a fresh database, checked by `ledger_databases` after the test."""
    await migrate(ledger_databases.track(storage_config), SQL_DIRECTORY)
    opened = await open_ledger_store(storage_config)
    try:
        yield opened
    finally:
        await opened.close()


async def check_invariant(config: StorageConfig) -> None:
    """Every counter's spent equals the sum of the usage records in its window, and its
    reserved equals what the ACTIVE reservations holding it hold; nothing is negative."""
    tables = await _read_tables(config)
    for counter in tables["budget_counters"]:
        owner = next(b for b in tables["budgets"] if b["id"] == counter["budget_id"])
        start = _as_time(counter["window_start"])
        end = records.window(counter["period"], start)[1]
        spent = Quantities()
        for usage in tables["usage_records"]:
            if (
                usage["tenant"] == owner["tenant"]
                and owner["principal"] in ("", usage["principal"])
                and owner["root_job"] in ("", usage["root_job"])
                and start <= _as_time(usage["usage_time"]) < end
            ):
                spent = spent + records.record_spent(usage)
        held = Quantities()
        key = (counter["budget_id"], counter["period"], counter["window_start"])
        for hold in tables["reservation_holds"]:
            if (hold["budget_id"], hold["period"], hold["window_start"]) == key:
                row = next(r for r in tables["reservations"] if r["id"] == hold["reservation_id"])
                assert row["state"] == 1, "only ACTIVE reservations hold amounts"
                held = held + Quantities(row["tokens"], row["cost_nanos"], row["tool_calls"])
        found = Quantities(
            counter["spent_tokens"], counter["spent_cost_nanos"], counter["spent_tool_calls"]
        )
        reserved = Quantities(
            counter["reserved_tokens"],
            counter["reserved_cost_nanos"],
            counter["reserved_tool_calls"],
        )
        assert found == spent, f"spent of {key} is {found}, its usage records sum to {spent}"
        assert reserved == held, f"reserved of {key} is {reserved}, its holds sum to {held}"


_TABLES = ("budgets", "budget_counters", "usage_records", "reservations", "reservation_holds")


async def _read_tables(config: StorageConfig) -> dict[str, list[Any]]:
    if config.backend == "postgres":
        connection = await asyncpg.connect(
            config.postgres_dsn, server_settings={"search_path": "ledger"}
        )
        try:
            # One snapshot: a sweeper still running cannot move rows between the reads.
            async with connection.transaction(isolation="repeatable_read", readonly=True):
                return {t: list(await connection.fetch(f"SELECT * FROM {t}")) for t in _TABLES}
        finally:
            await connection.close()
    assert config.sqlite_path is not None
    async with await SqliteDatabase.open(config.sqlite_path) as database:
        return {t: await database.fetchall(f"SELECT * FROM {t}") for t in _TABLES}


def _as_time(value: datetime | int) -> datetime:
    if isinstance(value, datetime):
        return value
    return _EPOCH + timedelta(microseconds=value)
