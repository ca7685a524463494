"""LedgerService through a real gRPC server: usage, prices, budgets, reservations, reports
and the reservation sweeper."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import pytest
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from agentrt.ledger.v1.ledger_pb2 import (
    Amounts,
    Budget,
    BudgetVerdict,
    Price,
    RecordUsageRequest,
    Reservation,
    UsageDimension,
    UsageKind,
)
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2  # type: ignore[import-untyped, unused-ignore]

from services.kit.config import RuntimeConfig
from services.kit.events import InMemoryEventChannel, InMemoryWakeups
from services.kit.infra import Infrastructure
from services.kit.server import Server
from services.kit.storage import migrate
from services.ledger.server import create_unit
from services.ledger.store import SQL_DIRECTORY
from tests.services.kit.status import error_info
from tests.services.ledger.conftest import LedgerDatabases, model_call_record

Stub: TypeAlias = "ledger_pb2_grpc.LedgerServiceAsyncStub"

TIMEOUT = 5
INVALID = grpc.StatusCode.INVALID_ARGUMENT
A_RESERVATION = "reservations/01arz3ndektsv4rrffq69g5fav"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def ledger_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The runtime's environment: SQLite under a temporary data dir, or a fresh PostgreSQL
    database."""
    env = {"AGENTRT_DATA_DIR": str(tmp_path)}
    if request.param == "postgres":
        env["AGENTRT_DATABASE_URL"] = request.getfixturevalue("pg_dsn")
    return env


@pytest.fixture
async def ledger(
    ledger_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    ledger_databases: LedgerDatabases,
) -> AsyncIterator[Stub]:
    """A stub of the ledger unit served by a real server, its sweeper every 0.1 s; after the
    test, the counters must agree with the records and reservations."""
    monkeypatch.setenv("AGENTRT_RESERVATION_SWEEP_SECONDS", "0.1")
    infra = Infrastructure(
        RuntimeConfig.from_env(ledger_env), InMemoryEventChannel(), InMemoryWakeups()
    )
    storage = ledger_databases.track(infra.storage("ledger"))
    await migrate(storage, SQL_DIRECTORY)
    unit = await create_unit(infra)
    server = Server("127.0.0.1:0", "ledger")
    await server.start([unit])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield ledger_pb2_grpc.LedgerServiceStub(channel)
    finally:
        await server.stop(grace=1.0)
        await unit.close()
        await infra.close()


async def failure(call: Any) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """The status code, ErrorInfo reason and metadata of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    info = error_info(raised.value)
    return raised.value.code(), info.reason, dict(info.metadata)


def model_usage(record_id: str, **fields: Any) -> RecordUsageRequest:
    """RecordUsage of a model call (fields as model_call_record's)."""
    return RecordUsageRequest(usage_record_id=record_id, usage_record=model_call_record(**fields))


async def create_budget(
    stub: Stub, budget_id: str = "daily", *, tokens: int = 1000, warn: float | None = None
) -> Budget:
    budget = Budget(tenant="acme", period=Budget.PERIOD_DAY, limits=Amounts(tokens=tokens))
    if warn is not None:
        budget.warn_threshold = warn
    request = ledger_pb2.CreateBudgetRequest(budget_id=budget_id, budget=budget)
    created: Budget = await stub.CreateBudget(request, timeout=TIMEOUT)
    return created


async def reserve(stub: Stub, tokens: int, *, request_id: str = "", ttl: float = 0) -> Reservation:
    request = ledger_pb2.ReserveBudgetRequest(
        tenant="acme",
        principal="alice",
        job="jobs/01arz3ndektsv4rrffq69g5fav",
        amounts=Amounts(tokens=tokens),
        request_id=request_id,
    )
    if ttl:
        request.ttl.CopyFrom(Duration(seconds=int(ttl)))
    reserved: Reservation = await stub.ReserveBudget(request, timeout=TIMEOUT)
    return reserved


async def check(stub: Stub, tokens: int = 0) -> ledger_pb2.CheckBudgetResponse:
    request = ledger_pb2.CheckBudgetRequest(
        tenant="acme", principal="alice", amounts=Amounts(tokens=tokens)
    )
    response: ledger_pb2.CheckBudgetResponse = await stub.CheckBudget(request, timeout=TIMEOUT)
    return response


async def record_names(stub: Stub, **filters: Any) -> list[str]:
    listed = await stub.ListUsageRecords(ledger_pb2.ListUsageRecordsRequest(**filters))
    return [record.name for record in listed.usage_records]


# Usage records


async def test_a_usage_id_is_recorded_once_and_refused_with_another_body(ledger: Stub) -> None:
    first = await ledger.RecordUsage(model_usage("call-1"), timeout=TIMEOUT)
    again = await ledger.RecordUsage(model_usage("call-1"), timeout=TIMEOUT)
    assert again == first
    assert (first.name, first.usage.total_tokens, first.usage.cost) == (
        "usageRecords/call-1",
        150,
        "0.01",
    )

    code, reason, metadata = await failure(
        ledger.RecordUsage(model_usage("call-1", output_tokens=999), timeout=TIMEOUT)
    )
    assert (code, reason, metadata["request_id"]) == (INVALID, "REQUEST_ID_REUSED", "call-1")
    listed = await ledger.ListUsageRecords(ledger_pb2.ListUsageRecordsRequest(tenant="acme"))
    assert list(listed.usage_records) == [first]


async def test_usage_records_are_listed_with_filters_and_pages(ledger: Stub) -> None:
    await ledger.RecordUsage(model_usage("a", model="m1"), timeout=TIMEOUT)
    await ledger.RecordUsage(model_usage("b", model="m2", tenant="other"), timeout=TIMEOUT)
    await ledger.RecordUsage(model_usage("c", model="m2"), timeout=TIMEOUT)

    assert await record_names(ledger) == ["usageRecords/c", "usageRecords/b", "usageRecords/a"]
    assert await record_names(ledger, tenant="acme", model="m2") == ["usageRecords/c"]
    assert await record_names(ledger, kind=UsageKind.USAGE_KIND_TOOL_CALL) == []
    first = await ledger.ListUsageRecords(ledger_pb2.ListUsageRecordsRequest(page_size=2))
    second = await ledger.ListUsageRecords(
        ledger_pb2.ListUsageRecordsRequest(page_size=2, page_token=first.next_page_token)
    )
    assert [r.name for r in second.usage_records] == ["usageRecords/a"]
    assert second.next_page_token == ""


# Prices


async def test_a_create_retried_with_its_request_id_returns_what_it_made(ledger: Stub) -> None:
    price = Price(input_price_per_million="1", output_price_per_million="2")
    create_price = ledger_pb2.CreatePriceRequest(price_id="m1", price=price, request_id="p-1")
    budget = Budget(tenant="acme", period=Budget.PERIOD_DAY, limits=Amounts(tokens=10))
    create_budget = ledger_pb2.CreateBudgetRequest(
        budget_id="daily", budget=budget, request_id="b-1"
    )
    made_price, made_budget = await asyncio.gather(
        ledger.CreatePrice(create_price), ledger.CreateBudget(create_budget)
    )
    # The retries race each other: every one gets what the first made.
    prices = await asyncio.gather(*(ledger.CreatePrice(create_price) for _ in range(5)))
    budgets = await asyncio.gather(*(ledger.CreateBudget(create_budget) for _ in range(5)))
    assert set(p.etag for p in prices) == {made_price.etag}
    assert set(b.etag for b in budgets) == {made_budget.etag}

    # After a change, a retry gets the resource as it is now, not a conflict.
    change = Price(name="prices/m1", output_price_per_million="3")
    changed = await ledger.UpdatePrice(ledger_pb2.UpdatePriceRequest(price=change))
    assert await ledger.CreatePrice(create_price) == changed


async def test_a_request_id_reused_for_another_create_is_refused(ledger: Stub) -> None:
    price = Price(input_price_per_million="1", output_price_per_million="2")
    await ledger.CreatePrice(
        ledger_pb2.CreatePriceRequest(price_id="m1", price=price, request_id="r-1")
    )
    other = Price(input_price_per_million="5", output_price_per_million="2")
    budget = Budget(tenant="acme", period=Budget.PERIOD_DAY, limits=Amounts(tokens=10))
    await ledger.CreateBudget(
        ledger_pb2.CreateBudgetRequest(budget_id="daily", budget=budget, request_id="r-1")
    )

    refused = [
        await failure(
            ledger.CreatePrice(
                ledger_pb2.CreatePriceRequest(price_id="m1", price=other, request_id="r-1")
            )
        ),
        await failure(
            ledger.CreatePrice(
                ledger_pb2.CreatePriceRequest(price_id="m2", price=price, request_id="r-1")
            )
        ),
        await failure(
            ledger.CreateBudget(
                ledger_pb2.CreateBudgetRequest(budget_id="other", budget=budget, request_id="r-1")
            )
        ),
    ]
    assert [(code, reason) for code, reason, _ in refused] == [(INVALID, "REQUEST_ID_REUSED")] * 3
    # Another request_id for an existing price is a conflict, not a retry.
    code, reason, _ = await failure(
        ledger.CreatePrice(
            ledger_pb2.CreatePriceRequest(price_id="m1", price=price, request_id="r-2")
        )
    )
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS")


async def test_prices_are_created_read_updated_and_deleted_with_etags(ledger: Stub) -> None:
    price = Price(input_price_per_million="2.50", output_price_per_million="10")
    created = await ledger.CreatePrice(
        ledger_pb2.CreatePriceRequest(price_id="gpt-x", price=price, request_id="r1")
    )
    assert (created.name, created.cached_input_price_per_million, created.currency) == (
        "prices/gpt-x",
        "2.5",
        "USD",
    )
    retried = await ledger.CreatePrice(
        ledger_pb2.CreatePriceRequest(price_id="gpt-x", price=price, request_id="r1")
    )
    assert retried == created
    code, reason, _ = await failure(
        ledger.CreatePrice(ledger_pb2.CreatePriceRequest(price_id="gpt-x", price=price))
    )
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS")
    assert await ledger.GetPrice(ledger_pb2.GetPriceRequest(name="prices/gpt-x")) == created

    change = Price(name="prices/gpt-x", etag=created.etag, output_price_per_million="12")
    updated = await ledger.UpdatePrice(
        ledger_pb2.UpdatePriceRequest(
            price=change, update_mask=FieldMask(paths=["output_price_per_million"])
        )
    )
    assert (updated.input_price_per_million, updated.output_price_per_million) == ("2.5", "12")
    assert updated.etag != created.etag

    code, reason, _ = await failure(ledger.UpdatePrice(ledger_pb2.UpdatePriceRequest(price=change)))
    assert (code, reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    code, reason, _ = await failure(
        ledger.DeletePrice(ledger_pb2.DeletePriceRequest(name="prices/gpt-x", etag=created.etag))
    )
    assert (code, reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    assert await ledger.GetPrice(ledger_pb2.GetPriceRequest(name="prices/gpt-x")) == updated

    await ledger.DeletePrice(ledger_pb2.DeletePriceRequest(name="prices/gpt-x", etag=updated.etag))
    code, reason, _ = await failure(
        ledger.GetPrice(ledger_pb2.GetPriceRequest(name="prices/gpt-x"))
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")


async def test_prices_are_listed_by_name_in_pages(ledger: Stub) -> None:
    price = Price(input_price_per_million="1", output_price_per_million="2")
    for model in ("b", "a", "c"):
        await ledger.CreatePrice(ledger_pb2.CreatePriceRequest(price_id=model, price=price))
    first = await ledger.ListPrices(ledger_pb2.ListPricesRequest(page_size=2))
    second = await ledger.ListPrices(
        ledger_pb2.ListPricesRequest(page_size=2, page_token=first.next_page_token)
    )
    assert [p.name for p in (*first.prices, *second.prices)] == ["prices/a", "prices/b", "prices/c"]
    assert second.next_page_token == ""


async def test_a_usage_record_without_cost_is_priced(ledger: Stub) -> None:
    price = Price(input_price_per_million="2", output_price_per_million="10")
    await ledger.CreatePrice(ledger_pb2.CreatePriceRequest(price_id="m1", price=price))
    recorded = await ledger.RecordUsage(
        model_usage("priced", input_tokens=1000, output_tokens=100, cost=""), timeout=TIMEOUT
    )
    assert recorded.usage.cost == "0.003"


async def test_a_cache_write_price_is_set_by_update_mask_and_prices_cache_writes(
    ledger: Stub,
) -> None:
    price = Price(input_price_per_million="2", output_price_per_million="10")
    created = await ledger.CreatePrice(ledger_pb2.CreatePriceRequest(price_id="m1", price=price))
    assert created.cache_write_price_per_million == "2"
    change = Price(name="prices/m1", cache_write_price_per_million="2.50")

    updated = await ledger.UpdatePrice(
        ledger_pb2.UpdatePriceRequest(
            price=change, update_mask=FieldMask(paths=["cache_write_price_per_million"])
        )
    )
    recorded = await ledger.RecordUsage(
        model_usage(
            "written",
            input_tokens=1000,
            cache_write_input_tokens=400,
            output_tokens=0,
            cost="",
        ),
        timeout=TIMEOUT,
    )

    assert (updated.input_price_per_million, updated.cache_write_price_per_million) == ("2", "2.5")
    assert await ledger.GetPrice(ledger_pb2.GetPriceRequest(name="prices/m1")) == updated
    # 600 fresh tokens at 2 and 400 written at 2.5 per million.
    assert (recorded.usage.cost, recorded.usage.cache_write_input_tokens) == ("0.0022", 400)


# Budgets


async def test_budgets_are_created_read_updated_and_deleted_with_etags(ledger: Stub) -> None:
    created = await create_budget(ledger)
    assert await ledger.GetBudget(ledger_pb2.GetBudgetRequest(name="budgets/daily")) == created
    await create_budget(ledger, "another")
    listed = await ledger.ListBudgets(ledger_pb2.ListBudgetsRequest(tenant="acme"))
    assert [b.name for b in listed.budgets] == ["budgets/another", "budgets/daily"]

    change = Budget(name="budgets/daily", etag=created.etag, limits=Amounts(cost="5"))
    updated = await ledger.UpdateBudget(ledger_pb2.UpdateBudgetRequest(budget=change))
    assert not updated.limits.HasField("tokens")
    assert (updated.limits.cost, updated.tenant, updated.period) == ("5", "acme", Budget.PERIOD_DAY)

    code, reason, _ = await failure(
        ledger.UpdateBudget(ledger_pb2.UpdateBudgetRequest(budget=change))
    )
    assert (code, reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    code, reason, metadata = await failure(
        ledger.UpdateBudget(
            ledger_pb2.UpdateBudgetRequest(
                budget=Budget(name="budgets/daily", tenant="evil"),
                update_mask=FieldMask(paths=["tenant"]),
            )
        )
    )
    assert (code, reason, metadata["field"]) == (INVALID, "FIELD_INVALID", "update_mask")
    assert await ledger.GetBudget(ledger_pb2.GetBudgetRequest(name="budgets/daily")) == updated

    code, reason, _ = await failure(
        ledger.DeleteBudget(ledger_pb2.DeleteBudgetRequest(name="budgets/daily", etag=created.etag))
    )
    assert (code, reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    await ledger.DeleteBudget(ledger_pb2.DeleteBudgetRequest(name="budgets/daily"))
    code, reason, _ = await failure(
        ledger.GetBudget(ledger_pb2.GetBudgetRequest(name="budgets/daily"))
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")


# Bad requests


BAD_REQUESTS = [
    ("GetPrice", ledger_pb2.GetPriceRequest(name="models/m1"), "NAME_INVALID", "name"),
    ("GetPrice", ledger_pb2.GetPriceRequest(name="prices/a/b"), "NAME_INVALID", "name"),
    ("GetBudget", ledger_pb2.GetBudgetRequest(name="budgets/Daily"), "NAME_INVALID", "name"),
    (
        "ReleaseReservation",
        ledger_pb2.ReleaseReservationRequest(name="reservations/nope"),
        "NAME_INVALID",
        "name",
    ),
    (
        "CreatePrice",
        ledger_pb2.CreatePriceRequest(
            price_id="m1", price=Price(input_price_per_million="1,5", output_price_per_million="2")
        ),
        "FIELD_INVALID",
        "price.input_price_per_million",
    ),
    (
        "CreatePrice",
        ledger_pb2.CreatePriceRequest(
            price_id="m1",
            price=Price(input_price_per_million="1", output_price_per_million="2", currency="EUR"),
        ),
        "FIELD_INVALID",
        "price.currency",
    ),
    (
        "CreateBudget",
        ledger_pb2.CreateBudgetRequest(
            budget_id="daily",
            budget=Budget(tenant="acme", period=Budget.PERIOD_DAY, limits=Amounts(cost="-1")),
        ),
        "FIELD_INVALID",
        "budget.limits.cost",
    ),
    (
        "CreateBudget",
        ledger_pb2.CreateBudgetRequest(
            budget_id="9lives",
            budget=Budget(tenant="acme", period=Budget.PERIOD_DAY, limits=Amounts(tokens=1)),
        ),
        "FIELD_INVALID",
        "budget_id",
    ),
    (
        "RecordUsage",
        model_usage("bad-cost", cost="ten dollars"),
        "FIELD_INVALID",
        "usage_record.usage.cost",
    ),
    ("RecordUsage", model_usage("bad id"), "FIELD_INVALID", "usage_record_id"),
    (
        "RecordUsage",
        model_usage(
            "overcached", input_tokens=10, cached_input_tokens=6, cache_write_input_tokens=5
        ),
        "FIELD_INVALID",
        "usage_record.usage.cache_write_input_tokens",
    ),
    (
        "RecordUsage",
        model_usage("negative", cache_write_input_tokens=-1),
        "FIELD_INVALID",
        "usage_record.usage.cache_write_input_tokens",
    ),
    (
        "CreatePrice",
        ledger_pb2.CreatePriceRequest(
            price_id="m1",
            price=Price(
                input_price_per_million="1",
                output_price_per_million="2",
                cache_write_price_per_million="-1.25",
            ),
        ),
        "FIELD_INVALID",
        "price.cache_write_price_per_million",
    ),
    (
        "ReserveBudget",
        ledger_pb2.ReserveBudgetRequest(tenant="acme", amounts=Amounts(tokens=-5)),
        "FIELD_INVALID",
        "amounts.tokens",
    ),
    ("ReserveBudget", ledger_pb2.ReserveBudgetRequest(tenant="acme"), "FIELD_REQUIRED", "amounts"),
    (
        "ReserveBudget",
        ledger_pb2.ReserveBudgetRequest(
            tenant="acme", amounts=Amounts(tokens=1), ttl=Duration(seconds=7200)
        ),
        "FIELD_INVALID",
        "ttl",
    ),
    (
        "CheckBudget",
        ledger_pb2.CheckBudgetRequest(tenant="acme", amounts=Amounts(cost="1.2.3")),
        "FIELD_INVALID",
        "amounts.cost",
    ),
    ("CheckBudget", ledger_pb2.CheckBudgetRequest(), "FIELD_REQUIRED", "tenant"),
    (
        "ListUsageRecords",
        ledger_pb2.ListUsageRecordsRequest(root_job="job-1"),
        "FIELD_INVALID",
        "root_job",
    ),
    (
        "ListPrices",
        ledger_pb2.ListPricesRequest(page_token="garbage!"),
        "FIELD_INVALID",
        "page_token",
    ),
    ("ListBudgets", ledger_pb2.ListBudgetsRequest(page_size=-1), "FIELD_INVALID", "page_size"),
]


@pytest.mark.parametrize(("method", "request_message", "reason", "field"), BAD_REQUESTS)
async def test_a_bad_request_is_invalid_names_its_field_and_changes_nothing(
    ledger: Stub, method: str, request_message: Any, reason: str, field: str
) -> None:
    code, got_reason, metadata = await failure(
        getattr(ledger, method)(request_message, timeout=TIMEOUT)
    )
    assert (code, got_reason, metadata["field"]) == (INVALID, reason, field)
    assert not (await ledger.ListPrices(ledger_pb2.ListPricesRequest())).prices
    assert not (await ledger.ListBudgets(ledger_pb2.ListBudgetsRequest())).budgets
    assert await record_names(ledger) == []


async def test_a_bad_price_update_changes_nothing(ledger: Stub) -> None:
    price = Price(input_price_per_million="1", output_price_per_million="2")
    created = await ledger.CreatePrice(ledger_pb2.CreatePriceRequest(price_id="m1", price=price))
    change = Price(name="prices/m1", input_price_per_million="-3")
    code, reason, metadata = await failure(
        ledger.UpdatePrice(ledger_pb2.UpdatePriceRequest(price=change))
    )
    assert (code, reason, metadata["field"]) == (
        INVALID,
        "FIELD_INVALID",
        "price.input_price_per_million",
    )
    code, reason, metadata = await failure(
        ledger.UpdatePrice(
            ledger_pb2.UpdatePriceRequest(price=change, update_mask=FieldMask(paths=["etag"]))
        )
    )
    assert (code, reason, metadata["field"]) == (INVALID, "FIELD_INVALID", "update_mask")
    code, reason, metadata = await failure(
        ledger.UpdatePrice(
            ledger_pb2.UpdatePriceRequest(
                price=Price(name="prices/m1", cache_write_price_per_million="1.25 USD"),
                update_mask=FieldMask(paths=["cache_write_price_per_million"]),
            )
        )
    )
    assert (code, reason, metadata["field"]) == (
        INVALID,
        "FIELD_INVALID",
        "price.cache_write_price_per_million",
    )
    assert await ledger.GetPrice(ledger_pb2.GetPriceRequest(name="prices/m1")) == created


# Reservations


async def test_a_reservation_is_admitted_then_one_past_the_limit_is_denied(ledger: Stub) -> None:
    await create_budget(ledger, tokens=1000)
    admitted = await reserve(ledger, 600, request_id="call-1")
    assert admitted.state == Reservation.STATE_ACTIVE
    assert list(admitted.budgets) == ["budgets/daily"]
    assert admitted.verdict == BudgetVerdict.BUDGET_VERDICT_ALLOW
    assert await reserve(ledger, 600, request_id="call-1") == admitted

    code, reason, metadata = await failure(reserve(ledger, 600))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED")
    assert metadata == {
        "budget": "budgets/daily",
        "dimension": "tokens",
        "limit": "1000",
        "period": "per day",
        "overrun": "200",
    }
    code, reason, _ = await failure(reserve(ledger, 10, request_id="call-1"))
    assert (code, reason) == (INVALID, "REQUEST_ID_REUSED")
    assert (await check(ledger)).budgets[0].reserved.tokens == 600


async def test_settle_records_the_usage_and_release_gives_back(ledger: Stub) -> None:
    await create_budget(ledger, tokens=1000)
    held = await reserve(ledger, 600)
    settle = ledger_pb2.SettleReservationRequest(
        name=held.name, usage_records=[model_usage("call-1", input_tokens=200, output_tokens=100)]
    )
    settled = await ledger.SettleReservation(settle, timeout=TIMEOUT)
    assert (settled.state, settled.settled.tokens) == (Reservation.STATE_SETTLED, 300)
    assert await ledger.SettleReservation(settle, timeout=TIMEOUT) == settled
    status = (await check(ledger)).budgets[0]
    assert (status.spent.tokens, status.reserved.tokens, status.remaining.tokens) == (300, 0, 700)

    code, reason, metadata = await failure(
        ledger.ReleaseReservation(ledger_pb2.ReleaseReservationRequest(name=held.name))
    )
    assert (code, reason, metadata["state"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ILLEGAL_TRANSITION",
        "STATE_SETTLED",
    )

    other = await reserve(ledger, 500)
    released = await ledger.ReleaseReservation(
        ledger_pb2.ReleaseReservationRequest(name=other.name, reason="call not made")
    )
    assert released.state == Reservation.STATE_RELEASED
    assert (
        await ledger.ReleaseReservation(ledger_pb2.ReleaseReservationRequest(name=other.name))
        == released
    )
    assert (await check(ledger)).budgets[0].reserved.tokens == 0

    code, reason, metadata = await failure(
        ledger.SettleReservation(
            ledger_pb2.SettleReservationRequest(
                name=other.name, usage_records=[model_usage("call-2", cost="lots")]
            )
        )
    )
    assert (code, reason, metadata["field"]) == (
        INVALID,
        "FIELD_INVALID",
        "usage_records[0].usage_record.usage.cost",
    )
    code, reason, _ = await failure(
        ledger.SettleReservation(ledger_pb2.SettleReservationRequest(name=A_RESERVATION))
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert await record_names(ledger) == ["usageRecords/call-1"]


async def test_check_budget_says_allow_warn_or_deny(ledger: Stub) -> None:
    nothing = await check(ledger, 10**9)
    assert (nothing.verdict, nothing.deciding_budget, list(nothing.budgets)) == (
        BudgetVerdict.BUDGET_VERDICT_ALLOW,
        "",
        [],
    )
    await create_budget(ledger, tokens=100, warn=0.8)
    assert (await check(ledger, 10)).verdict == BudgetVerdict.BUDGET_VERDICT_ALLOW
    assert (await check(ledger, 85)).verdict == BudgetVerdict.BUDGET_VERDICT_WARN
    denied = await check(ledger, 101)
    assert (denied.verdict, denied.deciding_budget) == (
        BudgetVerdict.BUDGET_VERDICT_DENY,
        "budgets/daily",
    )
    await ledger.RecordUsage(model_usage("spent", input_tokens=20, output_tokens=10))
    left = (await check(ledger)).budgets[0]
    assert (left.spent.tokens, left.remaining.tokens) == (30, 70)
    assert left.HasField("period_end_time")


# Reports


async def test_a_usage_report_sums_per_group(ledger: Stub) -> None:
    await ledger.RecordUsage(model_usage("a", model="m1", cost="0.5"))
    await ledger.RecordUsage(model_usage("b", model="m2", cost="0.25"))
    await ledger.RecordUsage(model_usage("c", model="m2", tenant="other", cost="1"))
    start = Timestamp()
    start.FromSeconds(0)

    report = await ledger.GetUsageReport(
        ledger_pb2.GetUsageReportRequest(
            start_time=start,
            group_by=[UsageDimension.USAGE_DIMENSION_TENANT, UsageDimension.USAGE_DIMENSION_MODEL],
        )
    )
    rows = [(r.tenant, r.model, r.usage.cost, r.record_count) for r in report.rows]
    assert rows == [("acme", "m1", "0.5", 1), ("acme", "m2", "0.25", 1), ("other", "m2", "1", 1)]

    total = await ledger.GetUsageReport(
        ledger_pb2.GetUsageReportRequest(start_time=start, tenant="acme")
    )
    assert [(r.usage.total_tokens, r.usage.model_calls) for r in total.rows] == [(300, 2)]

    code, reason, metadata = await failure(
        ledger.GetUsageReport(
            ledger_pb2.GetUsageReportRequest(
                start_time=start,
                group_by=[UsageDimension.USAGE_DIMENSION_DAY, UsageDimension.USAGE_DIMENSION_DAY],
            )
        )
    )
    assert (code, reason, metadata["field"]) == (INVALID, "FIELD_INVALID", "group_by")
    code, reason, metadata = await failure(
        ledger.GetUsageReport(ledger_pb2.GetUsageReportRequest())
    )
    assert (code, reason, metadata["field"]) == (INVALID, "FIELD_REQUIRED", "start_time")


# The sweeper


async def test_the_sweeper_expires_a_reservation_nobody_released(ledger: Stub) -> None:
    await create_budget(ledger, tokens=1000)
    held = await reserve(ledger, 600, ttl=1)
    assert held.expire_time.ToDatetime() - held.create_time.ToDatetime() == timedelta(seconds=1)
    assert (await check(ledger)).budgets[0].reserved.tokens == 600

    async def given_back() -> None:
        # Nothing announces an expiry: ask until the hold is gone.
        while (await check(ledger)).budgets[0].reserved.tokens:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    await asyncio.wait_for(given_back(), timeout=TIMEOUT)
    unchanged = await ledger.ReleaseReservation(
        ledger_pb2.ReleaseReservationRequest(name=held.name)
    )
    assert unchanged.state == Reservation.STATE_EXPIRED
    assert unchanged.HasField("end_time")


# Batches


def reserve_operation(tokens: int, request_id: str = "") -> ledger_pb2.SpendOperation:
    return ledger_pb2.SpendOperation(
        reserve=ledger_pb2.ReserveBudgetRequest(
            tenant="acme",
            principal="alice",
            job="jobs/01arz3ndektsv4rrffq69g5fav",
            amounts=Amounts(tokens=tokens),
            request_id=request_id,
        )
    )


def result_error(result: ledger_pb2.SpendResult) -> tuple[int, str, dict[str, str]]:
    """The code, ErrorInfo reason and metadata of a failed operation's result."""
    info = error_details_pb2.ErrorInfo()
    assert result.WhichOneof("result") == "error"
    assert result.error.details[0].Unpack(info)
    return result.error.code, info.reason, dict(info.metadata)


async def test_a_batch_does_each_operation_as_its_own_call_would(ledger: Stub) -> None:
    await create_budget(ledger, tokens=1000)
    held = await reserve(ledger, 300)
    unknown = ledger_pb2.SpendOperation(
        settle=ledger_pb2.SettleReservationRequest(name=A_RESERVATION)
    )
    settle = ledger_pb2.SpendOperation(
        settle=ledger_pb2.SettleReservationRequest(
            name=held.name, usage_records=[model_usage("call-1", input_tokens=100, output_tokens=0)]
        )
    )
    batch = ledger_pb2.BatchSpendRequest(
        operations=[reserve_operation(500, "big"), reserve_operation(900), unknown, settle]
    )
    response = await ledger.BatchSpend(batch, timeout=TIMEOUT)

    admitted, denied, missing, settled = response.results
    assert admitted.reservation.state == Reservation.STATE_ACTIVE
    assert admitted.reservation.request_id == "big"
    code, reason, metadata = result_error(denied)
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "BUDGET_EXCEEDED")
    assert metadata["budget"] == "budgets/daily"
    assert result_error(missing)[:2] == (grpc.StatusCode.NOT_FOUND.value[0], "NOT_FOUND")
    assert (settled.reservation.state, settled.reservation.settled.tokens) == (
        Reservation.STATE_SETTLED,
        100,
    )
    # The denial changed nothing; the rest happened: 500 held, 100 spent.
    status = (await check(ledger)).budgets[0]
    assert (status.spent.tokens, status.reserved.tokens) == (100, 500)
    # Each operation is as idempotent as its call: the batch again changes nothing.
    again = await ledger.BatchSpend(batch, timeout=TIMEOUT)
    assert again.results[0] == admitted and again.results[3] == settled
    assert (await check(ledger)).budgets[0].reserved.tokens == 500
    release = ledger_pb2.SpendOperation(
        release=ledger_pb2.ReleaseReservationRequest(name=admitted.reservation.name)
    )
    released = await ledger.BatchSpend(
        ledger_pb2.BatchSpendRequest(operations=[release]), timeout=TIMEOUT
    )
    assert released.results[0].reservation.state == Reservation.STATE_RELEASED


@pytest.mark.parametrize(
    ("operations", "field"),
    [
        ([], "operations"),
        ([ledger_pb2.SpendOperation()], "operations[1].operation"),
        ([reserve_operation(1)] * 501, "operations"),
    ],
)
async def test_a_bad_batch_is_refused_whole_and_changes_nothing(
    ledger: Stub, operations: list[ledger_pb2.SpendOperation], field: str
) -> None:
    await create_budget(ledger, tokens=1000)
    request = ledger_pb2.BatchSpendRequest(operations=[reserve_operation(10), *operations])
    if not operations:
        request = ledger_pb2.BatchSpendRequest()
    code, _, metadata = await failure(ledger.BatchSpend(request, timeout=TIMEOUT))
    assert (code, metadata["field"]) == (INVALID, field)
    assert (await check(ledger)).budgets[0].reserved.tokens == 0
