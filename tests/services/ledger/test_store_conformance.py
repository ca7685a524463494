"""The LedgerStore conformance suite, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import shutil
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
from agentrt.common.v1.common_pb2 import ErrorReason
from agentrt.ledger.v1.ledger_pb2 import Budget, BudgetVerdict, Reservation

from services.kit.errors import (
    Aborted,
    AlreadyExists,
    FieldInvalid,
    IllegalTransition,
    NotFound,
    RequestIdReused,
    ResourceExhausted,
)
from services.kit.money import parse_price
from services.kit.storage import SqliteDatabase, StorageConfig, migrate
from services.ledger.records import Quantities, UsageEntry
from services.ledger.store import SQL_DIRECTORY, LedgerStore, ReportQuery, open_ledger_store
from tests.services.ledger.conftest import (
    T0,
    LedgerDatabases,
    amounts,
    budget,
    model_call,
    reservation,
    seconds,
    tool_call,
)

ROOT1 = "jobs/" + "1r".ljust(26, "a")
ROOT2 = "jobs/" + "2r".ljust(26, "a")


def reservation_id(reservation: Reservation) -> str:
    return reservation.name.removeprefix("reservations/")


class Tokens(NamedTuple):
    """A budget's spent and reserved tokens."""

    spent: int
    reserved: int


async def status(store: LedgerStore, principal: str = "alice") -> dict[str, Tokens]:
    """The tokens each applicable budget has spent and reserved now, by budget name."""
    response = await store.check_budget("acme", principal, Quantities(), T0)
    return {s.budget: Tokens(s.spent.tokens, s.reserved.tokens) for s in response.budgets}


# Usage records


async def test_a_usage_record_is_stored_once_by_its_id(store: LedgerStore) -> None:
    record, created = await store.record_usage(model_call("r1"), T0)
    again, created_again = await store.record_usage(model_call("r1"), seconds(5))

    assert created and not created_again
    assert again == record
    assert record.name == "usageRecords/r1"
    assert record.usage.total_tokens == 150
    assert record.usage.cost == "0.01"
    assert record.usage.model_calls == 1
    assert [r.name for r in await store.list_usage_records("acme")] == ["usageRecords/r1"]


async def test_an_id_reused_with_another_body_is_refused_and_changes_nothing(
    store: LedgerStore,
) -> None:
    await store.create_budget("daily", budget(tokens=1000), T0)
    await store.record_usage(model_call("r1"), T0)

    with pytest.raises(RequestIdReused):
        await store.record_usage(model_call("r1", input_tokens=999), T0)

    assert (await status(store))["budgets/daily"].spent == 150


async def test_concurrent_duplicates_of_a_record_count_once(store: LedgerStore) -> None:
    await store.create_budget("daily", budget(tokens=10_000), T0)

    results = await asyncio.gather(*(store.record_usage(model_call("dup"), T0) for _ in range(20)))

    assert sum(created for _, created in results) == 1
    assert (await status(store))["budgets/daily"].spent == 150


async def test_a_model_call_without_cost_is_priced_with_the_current_price(
    store: LedgerStore,
) -> None:
    await store.create_price("m1", parse_price("2", "10", "0.5", ""), T0)
    entry = model_call("r1", input_tokens=1_000_000, output_tokens=3, cost="")
    unpriced = model_call("r2", cost="", model="unknown")

    record, _ = await store.record_usage(entry, T0)
    other, _ = await store.record_usage(unpriced, T0)

    assert record.usage.cost == "2.00003"
    assert other.usage.cost == ""


def prompt_cache_call(record_id: str) -> UsageEntry:
    """A million prompt tokens: 400k fresh, 200k read from the prompt cache, 400k written."""
    return model_call(
        record_id,
        input_tokens=1_000_000,
        cached_input_tokens=200_000,
        cache_write_input_tokens=400_000,
        output_tokens=0,
        cost="",
    )


async def test_cache_writes_are_priced_at_the_cache_write_price_when_recorded_and_settled(
    store: LedgerStore,
) -> None:
    await store.create_price("m1", parse_price("2", "10", "0.5", "2.5"), T0)
    held = await store.reserve(reservation(2_000_000), T0)

    recorded, _ = await store.record_usage(prompt_cache_call("r1"), T0)
    settled = await store.settle(reservation_id(held), [prompt_cache_call("r2")], seconds(1))

    # 400k fresh at 2, 200k read at 0.5, 400k written at 2.5 (not at the input price: 1.7).
    assert recorded.usage.cost == "1.9"
    assert settled.settled.cost == "1.9"
    assert recorded.usage.cache_write_input_tokens == 400_000
    listed = await store.list_usage_records("acme")
    assert sorted(r.usage.cache_write_input_tokens for r in listed) == [400_000, 400_000]
    (total,) = await store.usage_report(ReportQuery(T0, T0 + timedelta(days=1)))
    assert total.row.usage.cache_write_input_tokens == 800_000
    assert total.row.usage.cached_input_tokens == 400_000


async def test_a_price_made_before_cache_writes_were_priced_charges_them_the_input_price(
    storage_config: StorageConfig, ledger_databases: LedgerDatabases, tmp_path: Path
) -> None:
    await migrate(ledger_databases.track(storage_config), sql_before(tmp_path, 4))
    time = "now()" if storage_config.backend == "postgres" else "0"
    await execute(
        storage_config,
        "INSERT INTO prices (model, input_price, output_price, cached_input_price, etag,"
        f" create_time, update_time) VALUES ('m1', '2', '10', '0.5', 'e1', {time}, {time})",
    )
    await migrate(storage_config, SQL_DIRECTORY)
    store = await open_ledger_store(storage_config)
    try:
        price = await store.get_price("m1")
        recorded, _ = await store.record_usage(prompt_cache_call("r1"), T0)
    finally:
        await store.close()

    assert (price.cached_input_price_per_million, price.cache_write_price_per_million) == (
        "0.5",
        "2",
    )
    # 400k fresh and 400k written at 2, 200k read at 0.5.
    assert recorded.usage.cost == "1.7"


def sql_before(tmp_path: Path, version: int) -> Path:
    """A copy of the ledger's sql/ folder without migrations from `version` on."""
    copy = Path(shutil.copytree(SQL_DIRECTORY, tmp_path / "sql"))
    for migration in copy.glob("*/migrations/*.sql"):
        if int(migration.name.split("_")[0]) >= version:
            migration.unlink()
    return copy


async def execute(config: StorageConfig, statement: str) -> None:
    if config.backend == "postgres":
        connection = await asyncpg.connect(
            config.postgres_dsn, server_settings={"search_path": config.schema}
        )
        try:
            await connection.execute(statement)
        finally:
            await connection.close()
        return
    assert config.sqlite_path is not None
    async with await SqliteDatabase.open(config.sqlite_path) as database:
        await database.execute(statement)


async def test_a_budget_counts_the_usage_recorded_before_it(store: LedgerStore) -> None:
    await store.record_usage(model_call("r1"), T0)
    await store.record_usage(model_call("old", usage_time=T0 - timedelta(days=1)), T0)
    await store.record_usage(model_call("other", tenant="globex"), T0)
    await store.create_budget("daily", budget(tokens=1000), T0)
    await store.create_budget("forever", budget(tokens=1000, period=Budget.PERIOD_TOTAL), T0)

    spent = await status(store)

    assert spent["budgets/daily"].spent == 150
    assert spent["budgets/forever"].spent == 300


# Reservations


async def test_a_reservation_holds_its_amounts_on_every_applicable_budget(
    store: LedgerStore,
) -> None:
    await store.create_budget("tenant", budget(tokens=1000), T0)
    await store.create_budget("alice", budget(principal="alice", tokens=500), T0)
    await store.create_budget("bob", budget(principal="bob", tokens=500), T0)

    held = await store.reserve(reservation(300), T0)

    assert held.state == Reservation.STATE_ACTIVE
    assert list(held.budgets) == ["budgets/alice", "budgets/tenant"]
    assert held.amounts.tokens == 300
    assert held.verdict == BudgetVerdict.BUDGET_VERDICT_ALLOW
    assert held.expire_time.ToDatetime().replace(tzinfo=T0.tzinfo) == seconds(60)
    reserved = await status(store)
    assert reserved["budgets/alice"].reserved == 300
    assert reserved["budgets/tenant"].reserved == 300
    assert "budgets/bob" not in reserved


async def test_a_reservation_past_any_limit_is_denied_and_holds_nothing(
    store: LedgerStore,
) -> None:
    await store.create_budget("tenant", budget(tokens=1000, cost="1.00"), T0)
    await store.create_budget("alice", budget(principal="alice", cost="0.50"), T0)
    await store.record_usage(model_call("r1", cost="0.25"), T0)

    with pytest.raises(ResourceExhausted) as denied:
        await store.reserve(reservation(100, "0.30"), T0)

    error = denied.value
    assert error.reason == ErrorReason.ERROR_REASON_BUDGET_EXCEEDED
    assert error.metadata == {
        "budget": "budgets/alice",
        "dimension": "cost",
        "limit": "0.5",
        "period": "per day",
        "overrun": "0.05",
    }
    reserved = await status(store)
    assert all(s.reserved == 0 for s in reserved.values())


async def test_a_tree_budget_counts_only_its_trees_usage_and_reservations(
    store: LedgerStore,
) -> None:
    await store.record_usage(model_call("before", root_job=ROOT1), T0)
    await store.record_usage(model_call("elsewhere", root_job=ROOT2), T0)
    tree = budget(tokens=500, period=Budget.PERIOD_TOTAL, root_job=ROOT1)
    await store.create_budget("tree-root1", tree, T0)
    await store.create_budget("tenant", budget(tokens=10_000), T0)

    held = await store.reserve(reservation(300, root_job=ROOT1), T0)
    other = await store.reserve(reservation(400, root_job=ROOT2), T0)
    alone = await store.reserve(reservation(400), T0)

    assert list(held.budgets) == ["budgets/tenant", "budgets/tree-root1"]
    assert list(other.budgets) == list(alone.budgets) == ["budgets/tenant"]
    with pytest.raises(ResourceExhausted) as denied:
        await store.reserve(reservation(100, root_job=ROOT1), T0)
    assert denied.value.metadata["budget"] == "budgets/tree-root1"
    assert denied.value.metadata["overrun"] == "50"  # 150 recorded + 300 held + 100 > 500
    await store.settle(reservation_id(held), [model_call("in-tree", root_job=ROOT1)], T0)
    listed = {b.name: b for b in await store.list_budgets("acme")}
    assert listed["budgets/tree-root1"].root_job == ROOT1


async def test_a_reservation_without_budgets_holds_nothing(store: LedgerStore) -> None:
    held = await store.reserve(reservation(10**9), T0)

    assert held.state == Reservation.STATE_ACTIVE
    assert list(held.budgets) == []


async def test_a_reservation_past_the_warn_threshold_warns(store: LedgerStore) -> None:
    await store.create_budget("daily", budget(tokens=1000, warn=0.8), T0)

    first = await store.reserve(reservation(700), T0)
    second = await store.reserve(reservation(200), T0)

    assert first.verdict == BudgetVerdict.BUDGET_VERDICT_ALLOW
    assert second.verdict == BudgetVerdict.BUDGET_VERDICT_WARN


async def test_a_request_id_returns_the_reservation_made_with_it(store: LedgerStore) -> None:
    await store.create_budget("daily", budget(tokens=1000), T0)

    first = await store.reserve(reservation(600, request_id="call-1"), T0)
    again = await store.reserve(reservation(600, request_id="call-1"), seconds(1))

    assert again == first
    assert (await status(store))["budgets/daily"].reserved == 600
    with pytest.raises(RequestIdReused):
        await store.reserve(reservation(10, request_id="call-1"), T0)


async def test_concurrent_reservations_with_one_request_id_reserve_once(
    store: LedgerStore,
) -> None:
    await store.create_budget("daily", budget(tokens=10_000), T0)

    made = await asyncio.gather(
        *(store.reserve(reservation(100, request_id="same"), T0) for _ in range(10))
    )

    assert len({r.name for r in made}) == 1
    assert (await status(store))["budgets/daily"].reserved == 100


async def test_only_one_of_concurrent_reservations_fitting_once_is_admitted(
    store: LedgerStore, storage_config: StorageConfig
) -> None:
    rounds = 200 if storage_config.backend == "postgres" else 20
    for round_number in range(rounds):
        tenant = f"t{round_number}"
        await store.create_budget(f"b{round_number}", budget(tenant=tenant, tokens=100), T0)
        admitted = await race(store, store, tenant)
        assert admitted == 1, f"round {round_number}: {admitted} reservations admitted"


async def race(first: LedgerStore, second: LedgerStore, tenant: str) -> int:
    """Run 50 concurrent reservations of 100 tokens alternating between two stores;
    returns how many were admitted (the others must be BUDGET_EXCEEDED)."""
    # Made first so that the race is on the counter row, as in steady state, rather than
    # on inserting it.
    await first.check_budget(tenant, "alice", Quantities(), T0)
    attempts = [
        (first if n % 2 else second).reserve(reservation(100, tenant=tenant), T0) for n in range(50)
    ]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    denied = [r for r in results if isinstance(r, ResourceExhausted)]
    admitted = [r for r in results if isinstance(r, Reservation)]
    assert len(denied) + len(admitted) == 50, [r for r in results if isinstance(r, Exception)]
    return len(admitted)


# Settling, releasing, expiring


async def test_settling_moves_the_real_usage_from_reserved_to_spent(store: LedgerStore) -> None:
    await store.create_budget("daily", budget(tokens=1000), T0)
    held = await store.reserve(reservation(500), T0)

    settled = await store.settle(
        reservation_id(held), [model_call("c1"), tool_call("t1")], seconds(1)
    )

    assert settled.state == Reservation.STATE_SETTLED
    assert settled.settled.tokens == 150
    assert settled.settled.cost == "0.01"
    assert settled.settled.tool_calls == 1
    assert (await status(store))["budgets/daily"] == Tokens(150, 0)


async def test_settling_again_with_the_same_records_changes_nothing(store: LedgerStore) -> None:
    await store.create_budget("daily", budget(tokens=1000), T0)
    held = await store.reserve(reservation(500), T0)
    settled = await store.settle(reservation_id(held), [model_call("c1")], seconds(1))

    again = await store.settle(reservation_id(held), [model_call("c1")], seconds(2))

    assert again == settled
    assert (await status(store))["budgets/daily"] == Tokens(150, 0)
    with pytest.raises(IllegalTransition):
        await store.settle(reservation_id(held), [model_call("c2")], seconds(3))


async def test_usage_past_the_reservation_is_recorded_in_full(store: LedgerStore) -> None:
    await store.create_budget("daily", budget(tokens=1000), T0)
    held = await store.reserve(reservation(10), T0)

    await store.settle(reservation_id(held), [model_call("c1", input_tokens=2000)], T0)

    assert (await status(store))["budgets/daily"] == Tokens(2050, 0)
    with pytest.raises(ResourceExhausted):
        await store.reserve(reservation(1), T0)


async def test_a_released_or_expired_reservation_still_records_its_usage_once(
    store: LedgerStore,
) -> None:
    await store.create_budget("daily", budget(tokens=1000), T0)
    released = await store.reserve(reservation(400), T0)
    expiring = await store.reserve(reservation(400, ttl=5), T0)
    await store.release(reservation_id(released), seconds(1))
    assert [r.name for r in await store.expire_reservations(seconds(10), 100)] == [expiring.name]

    first = await store.settle(reservation_id(released), [model_call("a")], seconds(11))
    second = await store.settle(reservation_id(expiring), [model_call("b")], seconds(11))

    assert first.state == second.state == Reservation.STATE_SETTLED
    assert (await status(store))["budgets/daily"] == Tokens(300, 0)


async def test_a_record_already_recorded_is_not_counted_again_by_a_settle(
    store: LedgerStore,
) -> None:
    await store.create_budget("daily", budget(tokens=1000), T0)
    await store.record_usage(model_call("c1"), T0)
    held = await store.reserve(reservation(400), T0)

    settled = await store.settle(reservation_id(held), [model_call("c1")], seconds(1))

    assert settled.settled.tokens == 150
    assert (await status(store))["budgets/daily"] == Tokens(150, 0)


async def test_a_settle_counts_each_record_in_its_own_budgets_and_window(
    store: LedgerStore,
) -> None:
    await store.create_budget("daily", budget(tokens=10_000), T0)
    await store.create_budget("bob", budget(principal="bob", tokens=10_000), T0)
    await store.create_budget("tree", budget(root_job=ROOT1, tokens=1000), T0)
    held = await store.reserve(reservation(400), T0)
    yesterday = T0 - timedelta(days=1)
    entries = [
        model_call("alice"),
        model_call("bob", principal="bob"),
        model_call("tree", root_job=ROOT1),
        model_call("yesterday", usage_time=yesterday),
        tool_call("search"),
    ]

    settled = await store.settle(reservation_id(held), entries, seconds(1))

    assert settled.settled.tokens == 4 * 150
    assert settled.settled.tool_calls == 1
    assert (await status(store))["budgets/daily"] == Tokens(3 * 150, 0)
    assert (await status(store, "bob"))["budgets/bob"] == Tokens(150, 0)
    before = await store.check_budget("acme", "alice", Quantities(), yesterday)
    assert {s.budget: s.spent.tokens for s in before.budgets} == {"budgets/daily": 150}
    with pytest.raises(ResourceExhausted):
        await store.reserve(reservation(1000 - 150 + 1, root_job=ROOT1), T0)
    await store.reserve(reservation(1000 - 150, root_job=ROOT1), T0)


async def test_usage_settled_while_a_budget_is_created_is_counted(store: LedgerStore) -> None:
    held = [await store.reserve(reservation(100), T0) for _ in range(30)]

    async def settle_and_check(n: int) -> None:
        # Checking makes the budget's counter, possibly while other settles are in flight.
        await asyncio.gather(
            store.settle(reservation_id(held[n]), [model_call(f"r{n}")], T0),
            store.check_budget("acme", "alice", Quantities(), T0),
        )

    calls = [settle_and_check(n) for n in range(len(held))]
    created = store.create_budget("daily", budget(tokens=100_000), T0)

    await asyncio.gather(*calls[:10], created, *calls[10:])

    assert (await status(store))["budgets/daily"] == Tokens(30 * 150, 0)


async def test_settles_while_a_budget_is_deleted_count_on_the_others(store: LedgerStore) -> None:
    await store.create_budget("daily", budget(tokens=100_000), T0)
    await store.create_budget("monthly", budget(period=Budget.PERIOD_MONTH, tokens=100_000), T0)
    held = [await store.reserve(reservation(100), T0) for _ in range(30)]

    def settle(n: int) -> asyncio.Task[Reservation]:
        return asyncio.create_task(store.settle(reservation_id(held[n]), [model_call(f"r{n}")], T0))

    first = [settle(n) for n in range(10)]
    deleted = asyncio.create_task(store.delete_budget("daily", ""))
    rest = [settle(n) for n in range(10, len(held))]
    settled = await asyncio.gather(*first, *rest)
    await deleted

    assert [r.state for r in settled] == [Reservation.STATE_SETTLED] * len(held)
    assert await status(store) == {"budgets/monthly": Tokens(30 * 150, 0)}


async def test_a_failing_settle_changes_nothing(store: LedgerStore) -> None:
    await store.create_budget("daily", budget(tokens=1000), T0)
    await store.record_usage(model_call("taken"), T0)
    held = await store.reserve(reservation(400), T0)
    entries = [model_call("fresh"), model_call("taken", input_tokens=1)]

    with pytest.raises(RequestIdReused):
        await store.settle(reservation_id(held), entries, seconds(1))
    with pytest.raises(FieldInvalid):
        await store.settle(reservation_id(held), [model_call("x", tenant="globex")], seconds(1))

    assert (await status(store))["budgets/daily"] == Tokens(150, 400)
    assert [r.name for r in await store.list_usage_records("acme")] == ["usageRecords/taken"]


async def test_a_malformed_amount_is_refused_before_anything_changes(store: LedgerStore) -> None:
    await store.create_budget("daily", budget(tokens=1000), T0)
    held = await store.reserve(reservation(400), T0)

    for bad in ("1,5", "-1", "1e3", "", " 1", "1.2.3", "0x10"):
        with pytest.raises(FieldInvalid):
            model_call("r", cost=bad) if bad else amounts(cost="abc")
    with pytest.raises(FieldInvalid):
        budget(cost="ten")

    assert (await status(store))["budgets/daily"] == Tokens(0, 400)
    assert (await store.release(reservation_id(held), T0)).state == Reservation.STATE_RELEASED


async def test_releasing_gives_the_amounts_back_once(store: LedgerStore) -> None:
    await store.create_budget("daily", budget(tokens=1000), T0)
    held = await store.reserve(reservation(1000), T0)

    released = await store.release(reservation_id(held), seconds(1))
    again = await store.release(reservation_id(held), seconds(2))

    assert released.state == Reservation.STATE_RELEASED
    assert again == released
    assert (await status(store))["budgets/daily"] == Tokens(0, 0)
    assert (await store.reserve(reservation(1000), T0)).state == Reservation.STATE_ACTIVE


async def test_a_settled_reservation_cannot_be_released(store: LedgerStore) -> None:
    held = await store.reserve(reservation(10), T0)
    await store.settle(reservation_id(held), [], T0)

    with pytest.raises(IllegalTransition):
        await store.release(reservation_id(held), T0)
    with pytest.raises(NotFound):
        await store.release("0" * 26, T0)


async def test_expiry_frees_what_a_dead_holder_reserved(store: LedgerStore) -> None:
    await store.create_budget("daily", budget(tokens=1000), T0)
    held = await store.reserve(reservation(1000, ttl=30), T0)
    await store.reserve(reservation(0, ttl=300), T0)

    assert await store.expire_reservations(seconds(29), 100) == []
    expired = await store.expire_reservations(seconds(30), 100)

    assert [(r.name, r.state) for r in expired] == [(held.name, Reservation.STATE_EXPIRED)]
    assert (await store.release(reservation_id(held), T0)).state == Reservation.STATE_EXPIRED
    assert (await status(store))["budgets/daily"] == Tokens(0, 0)


async def test_a_deleted_budget_stops_counting_active_reservations(store: LedgerStore) -> None:
    await store.create_budget("daily", budget(tokens=1000), T0)
    held = await store.reserve(reservation(500), T0)

    await store.delete_budget("daily", "")

    assert (await store.release(reservation_id(held), T0)).state == Reservation.STATE_RELEASED


async def test_a_new_window_starts_from_zero(store: LedgerStore) -> None:
    await store.create_budget("daily", budget(tokens=200), T0)
    await store.record_usage(model_call("r1"), T0)

    with pytest.raises(ResourceExhausted):
        await store.reserve(reservation(100), T0)
    tomorrow = T0 + timedelta(days=1)
    held = await store.reserve(reservation(200), tomorrow)

    assert held.state == Reservation.STATE_ACTIVE


# Checking


async def test_check_budget_gives_the_verdict_and_what_remains(store: LedgerStore) -> None:
    await store.create_budget("tenant", budget(tokens=1000, warn=0.5), T0)
    await store.create_budget("alice", budget(principal="alice", tokens=400), T0)
    await store.record_usage(model_call("r1"), T0)
    await store.reserve(reservation(100), T0)

    allow = await store.check_budget("acme", "alice", amounts(10), T0)
    warn = await store.check_budget("acme", "bob", amounts(300), T0)
    deny = await store.check_budget("acme", "alice", amounts(151), T0)

    assert allow.verdict == BudgetVerdict.BUDGET_VERDICT_ALLOW
    assert [s.remaining.tokens for s in allow.budgets] == [150, 750]
    assert not allow.budgets[0].remaining.HasField("cost")
    assert warn.verdict == BudgetVerdict.BUDGET_VERDICT_WARN
    assert warn.deciding_budget == "budgets/tenant"
    assert deny.verdict == BudgetVerdict.BUDGET_VERDICT_DENY
    assert deny.deciding_budget == "budgets/alice"


# Prices and budgets


async def test_prices_are_created_read_updated_and_deleted_with_etags(
    store: LedgerStore,
) -> None:
    created = await store.create_price("m1", parse_price("2.50", "10", "", ""), T0)
    assert created.input_price_per_million == "2.5"
    assert created.cached_input_price_per_million == "2.5"
    assert created.cache_write_price_per_million == "2.5"
    with pytest.raises(AlreadyExists):
        await store.create_price("m1", parse_price("1", "1", "", ""), T0)

    updated = await store.update_price("m1", parse_price("3", "12", "1", "3.750"), created.etag, T0)
    assert updated.etag != created.etag
    assert updated.cache_write_price_per_million == "3.75"
    assert await store.get_price("m1") == updated
    with pytest.raises(Aborted):
        await store.update_price("m1", parse_price("4", "4", "", ""), created.etag, T0)
    with pytest.raises(Aborted):
        await store.delete_price("m1", created.etag)

    await store.delete_price("m1", updated.etag)
    assert await store.list_prices() == []
    with pytest.raises(NotFound):
        await store.get_price("m1")


async def test_budgets_are_created_read_updated_and_deleted_with_etags(
    store: LedgerStore,
) -> None:
    created = await store.create_budget("daily", budget(tokens=100, cost="2"), T0)
    assert created.limits.cost == "2"
    assert not created.limits.HasField("tool_calls")
    with pytest.raises(AlreadyExists):
        await store.create_budget("daily", budget(tokens=1), T0)

    updated = await store.update_budget("daily", budget(tokens=200), created.etag, T0)
    assert updated.limits.tokens == 200
    assert not updated.limits.HasField("cost")
    with pytest.raises(Aborted):
        await store.update_budget("daily", budget(tokens=300), created.etag, T0)
    with pytest.raises(FieldInvalid):
        await store.update_budget("daily", budget(tenant="globex", tokens=1), "", T0)
    assert [b.name for b in await store.list_budgets("acme")] == ["budgets/daily"]
    assert await store.list_budgets("globex") == []

    with pytest.raises(Aborted):
        await store.delete_budget("daily", created.etag)
    await store.delete_budget("daily", updated.etag)
    with pytest.raises(NotFound):
        await store.get_budget("daily")


async def test_a_budget_changing_period_counts_its_new_window(store: LedgerStore) -> None:
    created = await store.create_budget("b", budget(tokens=1000), T0)
    await store.record_usage(model_call("old", usage_time=T0 - timedelta(days=3)), T0)
    await store.record_usage(model_call("now"), T0)
    assert (await status(store))["budgets/b"].spent == 150

    await store.update_budget(
        "b", budget(tokens=1000, period=Budget.PERIOD_MONTH), created.etag, T0
    )

    assert (await status(store))["budgets/b"].spent == 300


# Reports


async def test_a_usage_report_sums_by_the_dimensions_asked(store: LedgerStore) -> None:
    await store.record_usage(model_call("a", job="jobs/root"), T0)
    await store.record_usage(model_call("b", job="jobs/child", root_job="jobs/root"), T0)
    await store.record_usage(model_call("c", principal="bob", model="m2"), T0)
    await store.record_usage(model_call("d", usage_time=T0 + timedelta(days=1)), T0)
    await store.record_usage(tool_call("e"), T0)

    by_principal = await store.usage_report(
        ReportQuery(T0 - timedelta(days=1), T0 + timedelta(days=1), ["principal", "model"])
    )
    by_tree = await store.usage_report(
        ReportQuery(T0 - timedelta(days=1), T0 + timedelta(days=2), ["root_job", "day"])
    )
    total = await store.usage_report(ReportQuery(T0, T0 + timedelta(days=9)))

    assert [(r.group, r.row.record_count) for r in by_principal] == [
        ({"principal": "alice", "model": ""}, 1),
        ({"principal": "alice", "model": "m1"}, 2),
        ({"principal": "bob", "model": "m2"}, 1),
    ]
    assert by_principal[1].row.usage.total_tokens == 300
    assert by_principal[1].row.usage.cost == "0.02"
    tree = {(r.group["root_job"], r.group["day"].day): r.row.record_count for r in by_tree}
    assert tree == {("", 15): 2, ("", 16): 1, ("jobs/root", 15): 2}
    assert len(total) == 1
    assert total[0].row.record_count == 5
    assert total[0].row.usage.model_calls == 4
    assert total[0].row.usage.tool_calls == 1


# Concurrency of everything at once


async def test_concurrent_reserves_settles_and_releases_keep_counters_exact(
    store: LedgerStore,
) -> None:
    await store.create_budget("tenant", budget(tokens=5_000), T0)
    await store.create_budget("alice", budget(principal="alice", tokens=3_000), T0)

    async def call(n: int) -> None:
        try:
            held = await store.reserve(reservation(400, request_id=f"call-{n}"), T0)
        except ResourceExhausted:
            return
        if n % 3 == 0:
            await store.release(reservation_id(held), T0)
        else:
            await store.settle(reservation_id(held), [model_call(f"c{n}"), tool_call(f"t{n}")], T0)

    await asyncio.gather(*(call(n) for n in range(40)))
    await store.expire_reservations(seconds(3600), 100)

    usage = await store.list_usage_records("acme")
    spent = await status(store)
    assert spent["budgets/alice"] == Tokens(150 * (len(usage) // 2), 0)


async def test_usage_recorded_while_a_budget_is_created_is_counted(store: LedgerStore) -> None:
    async def record_and_check(n: int) -> None:
        # Checking makes the budget's counter, possibly while other records are in flight.
        await asyncio.gather(
            store.record_usage(model_call(f"r{n}"), T0),
            store.check_budget("acme", "alice", Quantities(), T0),
        )

    calls = [record_and_check(n) for n in range(40)]
    created = store.create_budget("daily", budget(tokens=100_000), T0)

    await asyncio.gather(*calls[:10], created, *calls[10:])

    assert (await status(store))["budgets/daily"].spent == 40 * 150
