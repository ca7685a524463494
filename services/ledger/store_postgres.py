"""The ledger store on PostgreSQL (asyncpg), for production and any number of replicas.

Reserving is one SQL statement (`reserve` in queries.sql): it locks the current-window
counters of every budget that applies (`SELECT ... ORDER BY key FOR UPDATE`, which under
READ COMMITTED waits for a concurrent writer and then sees its committed values), decides
on the locked values whether the amounts fit under every limit, and only then, in the
same statement, inserts the reservation and its holds and adds the amounts. No other
transaction on any replica can change those counters between the decision and the write,
so concurrent reservations are admitted one after another and never past a limit; and
since it is one statement there is no transaction left open across round trips (one
round trip in steady state; a missing counter costs one more to make it). Unlike a bare
conditional UPDATE it writes to no budget unless all of them fit, and it returns the
locked counters, so a denial names the budget and the overrun.

Deadlocks: every writer takes its locks in one order, reservation rows first, then counter
rows by (budget_id, period, window_start), after making every counter it needs; usage
records are inserted sorted by id. The only waits are therefore ordered ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
from agentrt.ledger.v1.ledger_pb2 import (
    Budget,
    CheckBudgetResponse,
    Price,
    Reservation,
    UsageKind,
    UsageRecord,
)

from services.kit.errors import (
    Aborted,
    AlreadyExists,
    IllegalTransition,
    NotFound,
    RequestIdReused,
)
from services.kit.ids import new_id
from services.kit.money import ModelPrice, cost_of, parse_price, to_nanos
from services.kit.storage import create_pool, load_queries
from services.ledger import records
from services.ledger.records import (
    BudgetSpec,
    Counter,
    CounterKey,
    Deltas,
    Quantities,
    ReservationRequest,
    UsageEntry,
)
from services.ledger.store import SQL_DIRECTORY, ReportQuery, ReportRow

Connection = asyncpg.pool.PoolConnectionProxy

QUERIES = load_queries(SQL_DIRECTORY / "postgres" / "queries.sql")

_REPORT_GROUPS = {
    "tenant": "tenant",
    "principal": "principal",
    "model": "model",
    "day": "date_trunc('day', usage_time, 'UTC')",
    "job": "job",
    "root_job": "CASE WHEN root_job = '' THEN job ELSE root_job END",
}


RESERVE_ATTEMPTS = 3
"""Statements a reservation may take: a missing counter costs one more, a budget that
changes period meanwhile another."""

FINISH_ATTEMPTS = 3
"""`finish_reservation` statements a settle or release may take: missing counters (a new
window or budget) cost one more, a budget deleted meanwhile another."""


def _time(value: datetime | None) -> datetime | None:
    return value


def _db_time(value: datetime) -> datetime:
    return value


class PostgresLedgerStore:
    """A LedgerStore over an asyncpg pool whose search_path is the ledger schema."""

    def __init__(self, pool: asyncpg.Pool, *, owns_pool: bool = False) -> None:
        """Use `pool`; `close` closes it when the store owns it."""
        self._pool = pool
        self._owns_pool = owns_pool

    @classmethod
    async def open(cls, dsn: str, schema: str) -> PostgresLedgerStore:
        """A store with a pool of its own on the migrated `schema`."""
        return cls(await create_pool(dsn, schema), owns_pool=True)

    async def close(self) -> None:
        if self._owns_pool:
            await self._pool.close()

    # Usage

    async def record_usage(self, entry: UsageEntry, now: datetime) -> tuple[UsageRecord, bool]:
        async with self._pool.acquire() as connection, connection.transaction():
            stored = await _record_all(connection, [entry], now)
            deltas = await _spent_deltas(connection, [row for row, new in stored if new])
            await _apply(connection, deltas, {}, [row["id"] for row, new in stored if new])
        row, created = stored[0]
        return records.usage_record_from_row(row, _time), created

    async def list_usage_records(self, tenant: str) -> list[UsageRecord]:
        rows = await self._pool.fetch(QUERIES["list_usage"], tenant)
        return [records.usage_record_from_row(row, _time) for row in rows]

    # Prices

    async def create_price(
        self,
        model: str,
        price: ModelPrice,
        now: datetime,
        request_id: str = "",
        request_hash: bytes = b"",
    ) -> Price:
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                QUERIES["insert_price"],
                model,
                *records.price_columns(price),
                records.new_etag(),
                now,
            )
            if row is None:
                raise AlreadyExists(f"price {records.price_name(model)} exists already")
            if request_id:
                await connection.execute(
                    QUERIES["insert_create_request"], "price", request_id, model, request_hash, now
                )
        return records.price_from_row(row, _time)

    async def created_by(self, kind: str, request_id: str) -> tuple[str, bytes] | None:
        row = await self._pool.fetchrow(QUERIES["create_request_by_id"], kind, request_id)
        return None if row is None else (row["resource"], bytes(row["request_hash"]))

    async def get_price(self, model: str) -> Price:
        row = await self._pool.fetchrow(QUERIES["price_of"], model)
        if row is None:
            raise NotFound(f"price {records.price_name(model)} not found")
        return records.price_from_row(row, _time)

    async def list_prices(self) -> list[Price]:
        return [
            records.price_from_row(row, _time)
            for row in await self._pool.fetch(QUERIES["list_prices"])
        ]

    async def update_price(self, model: str, price: ModelPrice, etag: str, now: datetime) -> Price:
        async with self._pool.acquire() as connection, connection.transaction():
            await _locked(connection, "price_for_update", model, etag, records.price_name(model))
            row = await connection.fetchrow(
                QUERIES["update_price"],
                model,
                *records.price_columns(price),
                records.new_etag(),
                now,
            )
        return records.price_from_row(row, _time)

    async def delete_price(self, model: str, etag: str) -> None:
        async with self._pool.acquire() as connection, connection.transaction():
            await _locked(connection, "price_for_update", model, etag, records.price_name(model))
            await connection.execute(QUERIES["delete_price"], model)

    # Budgets

    async def create_budget(
        self,
        budget_id: str,
        spec: BudgetSpec,
        now: datetime,
        request_id: str = "",
        request_hash: bytes = b"",
    ) -> Budget:
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(QUERIES["lock_usage_for_budget_change"])
            row = await connection.fetchrow(
                QUERIES["insert_budget"],
                budget_id,
                spec.description,
                spec.tenant,
                spec.principal,
                *records.budget_columns(spec),
                records.new_etag(),
                now,
                spec.root_job,
            )
            if row is None:
                raise AlreadyExists(f"budget {records.budget_name(budget_id)} exists already")
            if request_id:
                await connection.execute(
                    QUERIES["insert_create_request"],
                    "budget",
                    request_id,
                    budget_id,
                    request_hash,
                    now,
                )
        return records.budget_from_row(row, _time)

    async def get_budget(self, budget_id: str) -> Budget:
        row = await self._pool.fetchrow(QUERIES["budget_by_id"], budget_id)
        if row is None:
            raise NotFound(f"budget {records.budget_name(budget_id)} not found")
        return records.budget_from_row(row, _time)

    async def list_budgets(self, tenant: str) -> list[Budget]:
        rows = await self._pool.fetch(QUERIES["list_budgets"], tenant)
        return [records.budget_from_row(row, _time) for row in rows]

    async def update_budget(
        self, budget_id: str, spec: BudgetSpec, etag: str, now: datetime
    ) -> Budget:
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(QUERIES["lock_usage_for_budget_change"])
            name = records.budget_name(budget_id)
            current = await _locked(connection, "budget_for_update", budget_id, etag, name)
            records.check_immutable(current, spec)
            row = await connection.fetchrow(
                QUERIES["update_budget"],
                budget_id,
                spec.description,
                *records.budget_columns(spec),
                records.new_etag(),
                now,
            )
        return records.budget_from_row(row, _time)

    async def delete_budget(self, budget_id: str, etag: str) -> None:
        async with self._pool.acquire() as connection, connection.transaction():
            name = records.budget_name(budget_id)
            await _locked(connection, "budget_for_update", budget_id, etag, name)
            await connection.execute(QUERIES["delete_budget"], budget_id)

    async def check_budget(
        self, tenant: str, principal: str, amounts: Quantities, now: datetime
    ) -> CheckBudgetResponse:
        async with self._pool.acquire() as connection, connection.transaction():
            keys = await _current_keys(connection, tenant, principal, now)
            await _ensure_counters(connection, keys, [])
            rows = await connection.fetch(QUERIES["read_counters"], *_zip_keys(keys))
        return records.check_response([records.counter_from_row(r, _time) for r in rows], amounts)

    # Reservations

    async def reserve(self, request: ReservationRequest, now: datetime) -> Reservation:
        """One `reserve` statement decides and writes; a missing counter (a new window or
        budget) is made and the statement asked once more."""
        for _ in range(RESERVE_ATTEMPTS):
            reservation_id = new_id()
            rows = await self._pool.fetch(
                QUERIES["reserve"],
                reservation_id,
                request.tenant,
                request.principal,
                request.job,
                request.request_id,
                request.request_hash,
                *records.triple(request.amounts),
                now + request.ttl,
                now,
                request.root_job,
            )
            decision = rows[0]
            if decision["repeated"]:
                return await self._repeated(request)
            if decision["found"] != decision["wanted"]:
                await self._make_counters(request, now)
                continue
            if decision["made"]:
                return _made_reservation(reservation_id, request, decision, now)
            if decision["all_fit"]:
                # A concurrent reserve with the same request_id inserted first.
                return await self._repeated(request)
            if request.request_id:
                # A retry that waited on the counters while its first try committed sees
                # its own amounts in them and would not fit: the first try's answer holds.
                earlier = await self._by_request_id(request)
                if earlier is not None:
                    return earlier
            counters = [records.counter_from_row(row, _time) for row in rows]
            raise next(
                records.denial(c, request.amounts)
                for c in counters
                if records.overrun(c, request.amounts) is not None
            )
        raise Aborted("a budget changed while reserving; retry")

    async def _repeated(self, request: ReservationRequest) -> Reservation:
        """The reservation an earlier request with the same request_id made."""
        found = await self._by_request_id(request)
        if found is None:
            raise Aborted("a reservation with this request_id vanished; retry")
        return found

    async def _make_counters(self, request: ReservationRequest, now: datetime) -> None:
        """Make the current-window counters of the request's budgets that do not exist."""
        async with self._pool.acquire() as connection, connection.transaction():
            keys = await _current_keys(
                connection, request.tenant, request.principal, now, request.root_job
            )
            await _ensure_counters(connection, keys, [])

    async def _by_request_id(self, request: ReservationRequest) -> Reservation | None:
        row = await self._pool.fetchrow(
            QUERIES["reservation_by_request_id"], request.tenant, request.request_id
        )
        if row is None:
            return None
        if bytes(row["request_hash"]) != request.request_hash:
            raise RequestIdReused(request.request_id)
        return records.reservation_from_row(row, _time)

    async def settle(
        self, reservation_id: str, entries: Sequence[UsageEntry], now: datetime
    ) -> Reservation:
        """One transaction of three statements in the common case: lock the reservation
        (reading the prices it needs with it), insert the usage records, then one
        `finish_reservation` statement moves spent and reserved on the counters and ends it."""
        models = sorted({e.model for e in entries if e.cost_nanos is None and e.model})
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                QUERIES["reservation_for_settle"], reservation_id, models
            )
            if row is None:
                raise NotFound(f"reservation {records.reservation_name(reservation_id)} not found")
            settled_ids = records.settled_ids(entries)
            if row["state"] == Reservation.STATE_SETTLED:
                records.check_settled_again(row, settled_ids)
                return records.reservation_from_row(row, _time)
            records.check_tenants(row["tenant"], entries)
            prices = {p[0]: parse_price(*p[1:]) for p in json.loads(row["model_prices"])}
            stored = await _record_all(connection, entries, now, prices)
            new_records = [r["id"] for r, new in stored if new]
            total = records.total_spent(r for r, _ in stored)
            settled = (*records.triple(total), json.dumps(settled_ids))
            return await _finish(
                connection, reservation_id, Reservation.STATE_SETTLED, now, new_records, settled
            )

    async def release(self, reservation_id: str, now: datetime) -> Reservation:
        async with self._pool.acquire() as connection, connection.transaction():
            row = await _reservation_for_update(connection, reservation_id)
            if row["state"] == Reservation.STATE_SETTLED:
                raise IllegalTransition("STATE_SETTLED", "release a reservation")
            if row["state"] != Reservation.STATE_ACTIVE:
                return records.reservation_from_row(row, _time)
            return await _finish(connection, reservation_id, Reservation.STATE_RELEASED, now)

    async def expire_reservations(self, now: datetime, limit: int) -> list[Reservation]:
        async with self._pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(QUERIES["expired_for_update"], now, limit)
            return await _end_active(connection, rows, Reservation.STATE_EXPIRED, now)

    async def usage_report(self, query: ReportQuery) -> list[ReportRow]:
        groups = ", ".join(f"{_REPORT_GROUPS[d]} AS {d}" for d in query.group_by)
        order = ", ".join(str(i) for i in range(1, len(query.group_by) + 1))
        sql = (
            f"SELECT {groups + ',' if groups else ''} {records.REPORT_SUMS} FROM usage_records"
            " WHERE usage_time >= $1 AND usage_time < $2 AND ($3 = '' OR tenant = $3)"
            " AND ($4 = '' OR principal = $4) AND ($5 = '' OR model = $5)"
            + (f" GROUP BY {order} ORDER BY {order}" if order else "")
        )
        rows = await self._pool.fetch(
            sql, query.start_time, query.end_time, query.tenant, query.principal, query.model
        )
        return [
            ReportRow(*records.report_row(query.group_by, row, _time))
            for row in rows
            if row["record_count"]
        ]


def _made_reservation(
    reservation_id: str, request: ReservationRequest, decision: Any, now: datetime
) -> Reservation:
    """The reservation the `reserve` statement inserted, from what was sent and decided."""
    row = {
        "id": reservation_id,
        "tenant": request.tenant,
        "principal": request.principal,
        "job": request.job,
        "state": Reservation.STATE_ACTIVE,
        "budgets": decision["made_budgets"],
        "verdict": decision["made_verdict"],
        "request_id": request.request_id,
        "tokens": request.amounts.tokens,
        "cost_nanos": request.amounts.cost_nanos,
        "tool_calls": request.amounts.tool_calls,
        "expire_time": now + request.ttl,
        "create_time": now,
        "end_time": None,
    }
    return records.reservation_from_row(row, _time)


async def _finish(
    connection: Connection,
    reservation_id: str,
    state: int,
    now: datetime,
    new_records: Sequence[str] = (),
    settled: tuple[int, int, int, str] | None = None,
) -> Reservation:
    """Run `finish_reservation` in the caller's transaction, making the counters it finds
    missing first; Aborted (rolling the transaction back) if budgets keep changing under it.
    `settled` is what a settle settled (tokens, cost, tool calls, record ids as JSON)."""
    for _ in range(FINISH_ATTEMPTS):
        rows = await connection.fetch(
            QUERIES["finish_reservation"],
            reservation_id,
            list(new_records),
            state,
            now,
            *(settled or (None, None, None, None)),
        )
        ended = rows[0]
        if ended["complete"]:
            return records.reservation_from_row(ended, _time)
        missing = zip(
            ended["missing_budgets"],
            ended["missing_periods"],
            ended["missing_windows"],
            strict=True,
        )
        await _make_missing_counters(connection, list(missing), list(new_records))
    raise Aborted("a budget changed while ending a reservation; retry")


async def _end_active(
    connection: Connection, rows: Sequence[Any], state: int, now: datetime
) -> list[Reservation]:
    """Give back what ACTIVE reservations (locked) hold and move them to `state`."""
    await _apply(connection, {}, await _held_deltas(connection, rows), [])
    ids = [row["id"] for row in rows]
    await connection.execute(QUERIES["delete_holds"], ids)
    ended = []
    for reservation_id in ids:
        row = await connection.fetchrow(
            QUERIES["end_reservation"], reservation_id, state, now, None, None, None, None
        )
        ended.append(records.reservation_from_row(row, _time))
    return ended


async def _reservation_for_update(connection: Connection, reservation_id: str) -> Any:
    row = await connection.fetchrow(QUERIES["reservation_for_update"], reservation_id)
    if row is None:
        raise NotFound(f"reservation {records.reservation_name(reservation_id)} not found")
    return row


async def _held_deltas(connection: Connection, reservations: Sequence[Any]) -> Deltas:
    """What ACTIVE reservations hold, as negative reserved deltas per counter."""
    amounts = {
        row["id"]: records.negated(Quantities(row["tokens"], row["cost_nanos"], row["tool_calls"]))
        for row in reservations
        if row["state"] == Reservation.STATE_ACTIVE
    }
    deltas: Deltas = {}
    for hold in await connection.fetch(QUERIES["holds_of"], list(amounts)):
        key = (hold["budget_id"], hold["period"], hold["window_start"])
        records.add_delta(deltas, key, amounts[hold["reservation_id"]])
    return deltas


async def _record_all(
    connection: Connection,
    entries: Sequence[UsageEntry],
    now: datetime,
    prices: dict[str, ModelPrice] | None = None,
) -> list[tuple[Any, bool]]:
    """Insert the records (sorted by id, so that concurrent batches wait in one order), as
    (row, inserted) in the entries' order; an id stored with another body is
    RequestIdReused. A model call without a cost is priced from `prices` when given (read
    by the caller in this transaction; a model missing from it has no price), else from
    the prices table."""
    stored: dict[str, tuple[Any, bool]] = {}
    for entry in sorted(entries, key=lambda e: e.record_id):
        if entry.record_id in stored:
            records.check_same_body(stored[entry.record_id][0], entry)
            continue
        cost = entry.cost_nanos
        if cost is None and entry.kind == UsageKind.USAGE_KIND_MODEL_CALL:
            cost = (
                await _priced(connection, entry)
                if prices is None
                else _cost(prices.get(entry.model), entry)
            )
        row = await connection.fetchrow(
            QUERIES["insert_usage"], *records.usage_columns(entry, cost, now, _db_time)
        )
        inserted = row is not None
        if row is None:
            row = await connection.fetchrow(QUERIES["usage_by_id"], entry.record_id)
        records.check_same_body(row, entry)
        stored[entry.record_id] = (row, inserted)
    return [stored[entry.record_id] for entry in entries]


async def _priced(connection: Connection, entry: UsageEntry) -> int | None:
    row = await connection.fetchrow(QUERIES["price_of"], entry.model)
    if row is None:
        return None
    price = records.model_price(row)
    return _cost(price, entry)


def _cost(price: ModelPrice | None, entry: UsageEntry) -> int | None:
    """The entry's cost in nano-dollars at `price`; None without one."""
    if price is None:
        return None
    return to_nanos(cost_of(price, records.entry_usage(entry)))


async def _spent_deltas(connection: Connection, rows: Sequence[Any]) -> Deltas:
    """What newly stored usage records add to the spent counters of their budgets."""
    deltas: Deltas = {}
    budgets: dict[tuple[str, str, str], list[Any]] = {}
    for row in rows:
        who = (row["tenant"], row["principal"], row["root_job"])
        if who not in budgets:
            budgets[who] = await connection.fetch(QUERIES["applicable_budgets"], *who)
        for budget in budgets[who]:
            key = records.counter_key(budget["id"], budget["period"], row["usage_time"])
            records.add_delta(deltas, key, records.record_spent(row))
    return deltas


async def _current_keys(
    connection: Connection, tenant: str, principal: str, now: datetime, root_job: str = ""
) -> list[CounterKey]:
    budgets = await connection.fetch(QUERIES["applicable_budgets"], tenant, principal, root_job)
    return [records.counter_key(b["id"], b["period"], now) for b in budgets]


async def _apply(
    connection: Connection, spent: Deltas, reserved: Deltas, new_records: list[str]
) -> None:
    """Lock every counter the deltas touch (making missing ones) and add the deltas."""
    await _lock_counters(connection, sorted(spent.keys() | reserved.keys()), new_records)
    await _add(connection, spent, reserved)


async def _add(connection: Connection, spent: Deltas, reserved: Deltas) -> None:
    zero = Quantities()
    await connection.executemany(
        QUERIES["add_to_counter"],
        [
            (
                *key,
                *records.triple(spent.get(key, zero)),
                *records.triple(reserved.get(key, zero)),
            )
            for key in sorted(spent.keys() | reserved.keys())
        ],
    )


async def _lock_counters(
    connection: Connection, keys: Sequence[CounterKey], new_records: list[str]
) -> list[Counter]:
    """Make the missing counters, then lock them all in key order."""
    if not keys:
        return []
    await _ensure_counters(connection, keys, new_records)
    rows = await connection.fetch(QUERIES["lock_counters"], *_zip_keys(keys))
    return [records.counter_from_row(row, _time) for row in rows]


async def _ensure_counters(
    connection: Connection, keys: Sequence[CounterKey], new_records: list[str]
) -> None:
    if not keys:
        return
    rows = await connection.fetch(QUERIES["read_counters"], *_zip_keys(keys))
    existing = {(row["budget_id"], row["period"], row["window_start"]) for row in rows}
    await _make_missing_counters(connection, sorted(set(keys) - existing), new_records)


async def _make_missing_counters(
    connection: Connection, missing: Sequence[CounterKey], new_records: list[str]
) -> None:
    """Make counters that did not exist, from the usage recorded in their window except
    `new_records` (which the caller adds itself); one a concurrent writer made meanwhile
    is left as it is."""
    await connection.executemany(
        QUERIES["ensure_counter"],
        [(*key, records.window(key[1], key[2])[1], new_records) for key in missing],
    )


def _zip_keys(keys: Sequence[CounterKey]) -> tuple[list[str], list[int], list[datetime]]:
    return [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]


async def _locked(connection: Connection, query: str, key: str, etag: str, name: str) -> Any:
    """The row `query` locks, after checking it exists and has the etag (when given)."""
    row = await connection.fetchrow(QUERIES[query], key)
    if row is None:
        raise NotFound(f"{name} not found")
    if etag and row["etag"] != etag:
        raise Aborted(f"{name} changed meanwhile (etag {etag!r} is stale)")
    return row
