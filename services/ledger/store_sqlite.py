"""The ledger store on SQLite, the embedded default: one file, one writer thread.

Every write is one BEGIN IMMEDIATE transaction, which holds SQLite's write lock from its
start: reading the counters, deciding whether a reservation fits and writing it back is
atomic with respect to every other writer, in this process or another.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agentrt.ledger.v1.ledger_pb2 import (
    Budget,
    BudgetVerdict,
    CheckBudgetResponse,
    Price,
    Reservation,
    UsageKind,
    UsageRecord,
)

from services.kit.errors import Aborted, AlreadyExists, IllegalTransition, NotFound, RequestIdReused
from services.kit.ids import new_id
from services.kit.money import ModelPrice, cost_of, to_nanos
from services.kit.storage import SqliteDatabase, load_queries
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

QUERIES = load_queries(SQL_DIRECTORY / "sqlite" / "queries.sql")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_DAY_MICROS = 86_400_000_000

_REPORT_GROUPS = {
    "tenant": "tenant",
    "principal": "principal",
    "model": "model",
    "day": f"usage_time - usage_time % {_DAY_MICROS}",
    "job": "job",
    "root_job": "CASE WHEN root_job = '' THEN job ELSE root_job END",
}


def _micros(time: datetime) -> int:
    return (time - _EPOCH) // _MICROSECOND


def _time(micros: int | None) -> datetime | None:
    return None if micros is None else _EPOCH + micros * _MICROSECOND


class SqliteLedgerStore:
    """A LedgerStore in a migrated SQLite database."""

    def __init__(self, database: SqliteDatabase, *, owns_database: bool = False) -> None:
        """Use `database`; `close` closes it too when the store owns it."""
        self._db = database
        self._owns_database = owns_database

    @classmethod
    async def open(cls, path: str | Path) -> SqliteLedgerStore:
        """A store on the migrated SQLite file at `path`, which it opens and owns."""
        return cls(await SqliteDatabase.open(path), owns_database=True)

    async def close(self) -> None:
        if self._owns_database:
            await self._db.close()

    # Usage

    async def record_usage(self, entry: UsageEntry, now: datetime) -> tuple[UsageRecord, bool]:
        def record(connection: sqlite3.Connection) -> tuple[UsageRecord, bool]:
            stored = _record_all(connection, [entry], now)
            new = [row for row, inserted in stored if inserted]
            _apply(connection, _spent_deltas(connection, new), {}, [row["id"] for row in new])
            row, created = stored[0]
            return records.usage_record_from_row(row, _time), created

        return await self._db.transaction(record)

    async def list_usage_records(self, tenant: str) -> list[UsageRecord]:
        rows = await self._db.fetchall(QUERIES["list_usage"], (tenant,))
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
        params = (model, *records.price_columns(price), records.new_etag(), _micros(now))
        remember = ("price", request_id, model, request_hash, _micros(now))
        row = await self._db.transaction(
            lambda connection: _create(connection, "insert_price", params, remember)
        )
        if row is None:
            raise AlreadyExists(f"price {records.price_name(model)} exists already")
        return records.price_from_row(row, _time)

    async def created_by(self, kind: str, request_id: str) -> tuple[str, bytes] | None:
        row = await self._db.fetchone(QUERIES["create_request_by_id"], (kind, request_id))
        return None if row is None else (row["resource"], bytes(row["request_hash"]))

    async def get_price(self, model: str) -> Price:
        row = await self._db.fetchone(QUERIES["price_of"], (model,))
        if row is None:
            raise NotFound(f"price {records.price_name(model)} not found")
        return records.price_from_row(row, _time)

    async def list_prices(self) -> list[Price]:
        rows = await self._db.fetchall(QUERIES["list_prices"])
        return [records.price_from_row(row, _time) for row in rows]

    async def update_price(self, model: str, price: ModelPrice, etag: str, now: datetime) -> Price:
        def update(connection: sqlite3.Connection) -> Price:
            _current(connection, "price_of", model, etag, records.price_name(model))
            params = (model, *records.price_columns(price), records.new_etag(), _micros(now))
            row = connection.execute(QUERIES["update_price"], params).fetchone()
            return records.price_from_row(row, _time)

        return await self._db.transaction(update)

    async def delete_price(self, model: str, etag: str) -> None:
        def delete(connection: sqlite3.Connection) -> None:
            _current(connection, "price_of", model, etag, records.price_name(model))
            connection.execute(QUERIES["delete_price"], (model,))

        await self._db.transaction(delete)

    # Budgets

    async def create_budget(
        self,
        budget_id: str,
        spec: BudgetSpec,
        now: datetime,
        request_id: str = "",
        request_hash: bytes = b"",
    ) -> Budget:
        params = (
            budget_id,
            spec.description,
            spec.tenant,
            spec.principal,
            *records.budget_columns(spec),
            records.new_etag(),
            _micros(now),
            spec.root_job,
        )
        remember = ("budget", request_id, budget_id, request_hash, _micros(now))
        row = await self._db.transaction(
            lambda connection: _create(connection, "insert_budget", params, remember)
        )
        if row is None:
            raise AlreadyExists(f"budget {records.budget_name(budget_id)} exists already")
        return records.budget_from_row(row, _time)

    async def get_budget(self, budget_id: str) -> Budget:
        row = await self._db.fetchone(QUERIES["budget_by_id"], (budget_id,))
        if row is None:
            raise NotFound(f"budget {records.budget_name(budget_id)} not found")
        return records.budget_from_row(row, _time)

    async def list_budgets(self, tenant: str) -> list[Budget]:
        rows = await self._db.fetchall(QUERIES["list_budgets"], (tenant,))
        return [records.budget_from_row(row, _time) for row in rows]

    async def update_budget(
        self, budget_id: str, spec: BudgetSpec, etag: str, now: datetime
    ) -> Budget:
        def update(connection: sqlite3.Connection) -> Budget:
            name = records.budget_name(budget_id)
            current = _current(connection, "budget_by_id", budget_id, etag, name)
            records.check_immutable(current, spec)
            params = (
                budget_id,
                spec.description,
                *records.budget_columns(spec),
                records.new_etag(),
                _micros(now),
            )
            row = connection.execute(QUERIES["update_budget"], params).fetchone()
            return records.budget_from_row(row, _time)

        return await self._db.transaction(update)

    async def delete_budget(self, budget_id: str, etag: str) -> None:
        def delete(connection: sqlite3.Connection) -> None:
            _current(connection, "budget_by_id", budget_id, etag, records.budget_name(budget_id))
            connection.execute(QUERIES["delete_budget"], (budget_id,))

        await self._db.transaction(delete)

    async def check_budget(
        self, tenant: str, principal: str, amounts: Quantities, now: datetime
    ) -> CheckBudgetResponse:
        def check(connection: sqlite3.Connection) -> CheckBudgetResponse:
            keys = _current_keys(connection, tenant, principal, now)
            return records.check_response(_counters(connection, keys, []), amounts)

        return await self._db.transaction(check)

    # Reservations

    async def reserve(self, request: ReservationRequest, now: datetime) -> Reservation:
        return await self._db.transaction(functools.partial(_reserve, request, now))

    async def settle(
        self, reservation_id: str, entries: Sequence[UsageEntry], now: datetime
    ) -> Reservation:
        def settle(connection: sqlite3.Connection) -> Reservation:
            row = _reservation(connection, reservation_id)
            settled_ids = records.settled_ids(entries)
            if row["state"] == Reservation.STATE_SETTLED:
                records.check_settled_again(row, settled_ids)
                return records.reservation_from_row(row, _time)
            records.check_tenants(row["tenant"], entries)
            stored = _record_all(connection, entries, now)
            new = [r for r, inserted in stored if inserted]
            spent = _spent_deltas(connection, new)
            _apply(connection, spent, _held_deltas(connection, [row]), [r["id"] for r in new])
            connection.execute(QUERIES["delete_holds"], (json.dumps([reservation_id]),))
            total = records.total_spent(r for r, _ in stored)
            params = (
                reservation_id,
                Reservation.STATE_SETTLED,
                _micros(now),
                *records.triple(total),
                json.dumps(settled_ids),
            )
            ended = connection.execute(QUERIES["end_reservation"], params).fetchone()
            return records.reservation_from_row(ended, _time)

        return await self._db.transaction(settle)

    async def release(self, reservation_id: str, now: datetime) -> Reservation:
        def release(connection: sqlite3.Connection) -> Reservation:
            row = _reservation(connection, reservation_id)
            if row["state"] == Reservation.STATE_SETTLED:
                raise IllegalTransition("STATE_SETTLED", "release a reservation")
            if row["state"] != Reservation.STATE_ACTIVE:
                return records.reservation_from_row(row, _time)
            return _end_active(connection, [row], Reservation.STATE_RELEASED, now)[0]

        return await self._db.transaction(release)

    async def expire_reservations(self, now: datetime, limit: int) -> list[Reservation]:
        def expire(connection: sqlite3.Connection) -> list[Reservation]:
            rows = connection.execute(QUERIES["expired"], (_micros(now), limit)).fetchall()
            return _end_active(connection, rows, Reservation.STATE_EXPIRED, now)

        return await self._db.transaction(expire)

    async def usage_report(self, query: ReportQuery) -> list[ReportRow]:
        groups = ", ".join(f"{_REPORT_GROUPS[d]} AS {d}" for d in query.group_by)
        order = ", ".join(str(i) for i in range(1, len(query.group_by) + 1))
        sql = (
            f"SELECT {groups + ',' if groups else ''} {records.REPORT_SUMS} FROM usage_records"
            " WHERE usage_time >= ?1 AND usage_time < ?2 AND (?3 = '' OR tenant = ?3)"
            " AND (?4 = '' OR principal = ?4) AND (?5 = '' OR model = ?5)"
            + (f" GROUP BY {order} ORDER BY {order}" if order else "")
        )
        params = (
            _micros(query.start_time),
            _micros(query.end_time),
            query.tenant,
            query.principal,
            query.model,
        )
        rows = await self._db.fetchall(sql, params)
        return [
            ReportRow(*records.report_row(query.group_by, row, _time))
            for row in rows
            if row["record_count"]
        ]


def _reserve(
    request: ReservationRequest, now: datetime, connection: sqlite3.Connection
) -> Reservation:
    if request.request_id:
        params = (request.tenant, request.request_id)
        row = connection.execute(QUERIES["reservation_by_request_id"], params).fetchone()
        if row is not None:
            if bytes(row["request_hash"]) != request.request_hash:
                raise RequestIdReused(request.request_id)
            return records.reservation_from_row(row, _time)
    keys = _current_keys(connection, request.tenant, request.principal, now, request.root_job)
    counters = _counters(connection, keys, [])
    if len(counters) != len(keys):
        raise Aborted("a budget changed while reserving; retry")
    for counter in counters:
        if records.overrun(counter, request.amounts) is not None:
            raise records.denial(counter, request.amounts)
    verdicts = {records.verdict(counter, request.amounts) for counter in counters}
    warn = BudgetVerdict.BUDGET_VERDICT_WARN in verdicts
    amounts = request.amounts
    columns = (
        new_id(),
        request.tenant,
        request.principal,
        request.job,
        request.request_id,
        request.request_hash,
        *records.triple(amounts),
        BudgetVerdict.BUDGET_VERDICT_WARN if warn else BudgetVerdict.BUDGET_VERDICT_ALLOW,
        json.dumps([key[0] for key in keys]),
        _micros(now + request.ttl),
        _micros(now),
    )
    row = connection.execute(QUERIES["insert_reservation"], columns).fetchone()
    connection.executemany(QUERIES["insert_hold"], [(row["id"], *_db_key(key)) for key in keys])
    _add(connection, {}, {key: amounts for key in keys})
    return records.reservation_from_row(row, _time)


def _end_active(
    connection: sqlite3.Connection, rows: Sequence[Any], state: int, now: datetime
) -> list[Reservation]:
    """Give back what ACTIVE reservations hold and move them to `state`."""
    _apply(connection, {}, _held_deltas(connection, rows), [])
    ids = [row["id"] for row in rows]
    connection.execute(QUERIES["delete_holds"], (json.dumps(ids),))
    ended = []
    for reservation_id in ids:
        params = (reservation_id, state, _micros(now), None, None, None, None)
        row = connection.execute(QUERIES["end_reservation"], params).fetchone()
        ended.append(records.reservation_from_row(row, _time))
    return ended


def _reservation(connection: sqlite3.Connection, reservation_id: str) -> Any:
    row = connection.execute(QUERIES["reservation_by_id"], (reservation_id,)).fetchone()
    if row is None:
        raise NotFound(f"reservation {records.reservation_name(reservation_id)} not found")
    return row


def _held_deltas(connection: sqlite3.Connection, reservations: Sequence[Any]) -> Deltas:
    """What ACTIVE reservations hold, as negative reserved deltas per counter."""
    amounts = {
        row["id"]: records.negated(Quantities(row["tokens"], row["cost_nanos"], row["tool_calls"]))
        for row in reservations
        if row["state"] == Reservation.STATE_ACTIVE
    }
    deltas: Deltas = {}
    holds = connection.execute(QUERIES["holds_of"], (json.dumps(list(amounts)),))
    for hold in holds.fetchall():
        window_start = _time(hold["window_start"])
        assert window_start is not None
        key = (hold["budget_id"], hold["period"], window_start)
        records.add_delta(deltas, key, amounts[hold["reservation_id"]])
    return deltas


def _record_all(
    connection: sqlite3.Connection, entries: Sequence[UsageEntry], now: datetime
) -> list[tuple[Any, bool]]:
    """Insert the records, as (row, inserted) in the entries' order; an id stored with
    another body is RequestIdReused."""
    stored: dict[str, tuple[Any, bool]] = {}
    for entry in entries:
        if entry.record_id in stored:
            records.check_same_body(stored[entry.record_id][0], entry)
            continue
        cost = entry.cost_nanos
        if cost is None and entry.kind == UsageKind.USAGE_KIND_MODEL_CALL:
            cost = _priced(connection, entry)
        params = records.usage_columns(entry, cost, now, _micros)
        row = connection.execute(QUERIES["insert_usage"], params).fetchone()
        inserted = row is not None
        if row is None:
            row = connection.execute(QUERIES["usage_by_id"], (entry.record_id,)).fetchone()
        records.check_same_body(row, entry)
        stored[entry.record_id] = (row, inserted)
    return [stored[entry.record_id] for entry in entries]


def _priced(connection: sqlite3.Connection, entry: UsageEntry) -> int | None:
    row = connection.execute(QUERIES["price_of"], (entry.model,)).fetchone()
    if row is None:
        return None
    price = records.model_price(row)
    return to_nanos(cost_of(price, records.entry_usage(entry)))


def _spent_deltas(connection: sqlite3.Connection, rows: Sequence[Any]) -> Deltas:
    """What newly stored usage records add to the spent counters of their budgets."""
    deltas: Deltas = {}
    for row in rows:
        params = (row["tenant"], row["principal"], row["root_job"])
        usage_time = _time(row["usage_time"])
        assert usage_time is not None
        for budget in connection.execute(QUERIES["applicable_budgets"], params).fetchall():
            key = records.counter_key(budget["id"], budget["period"], usage_time)
            records.add_delta(deltas, key, records.record_spent(row))
    return deltas


def _current_keys(
    connection: sqlite3.Connection, tenant: str, principal: str, now: datetime, root_job: str = ""
) -> list[CounterKey]:
    params = (tenant, principal, root_job)
    budgets = connection.execute(QUERIES["applicable_budgets"], params).fetchall()
    return [records.counter_key(b["id"], b["period"], now) for b in budgets]


def _apply(
    connection: sqlite3.Connection, spent: Deltas, reserved: Deltas, new_records: list[str]
) -> None:
    """Make every counter the deltas touch (if missing) and add the deltas."""
    _counters(connection, sorted(spent.keys() | reserved.keys()), new_records)
    _add(connection, spent, reserved)


def _add(connection: sqlite3.Connection, spent: Deltas, reserved: Deltas) -> None:
    zero = Quantities()
    connection.executemany(
        QUERIES["add_to_counter"],
        [
            (
                *_db_key(key),
                *records.triple(spent.get(key, zero)),
                *records.triple(reserved.get(key, zero)),
            )
            for key in sorted(spent.keys() | reserved.keys())
        ],
    )


def _counters(
    connection: sqlite3.Connection, keys: Sequence[CounterKey], new_records: list[str]
) -> list[Counter]:
    """The counters, made first from the usage already recorded when missing.

    A counter is read before it is made: making one sums the window's usage records, a
    scan that grows with the window, so it runs only for a window's first spend (the write
    lock the transaction holds keeps the read and the making together)."""
    counters = []
    for key in keys:
        budget_id, period, start = _db_key(key)
        row = connection.execute(QUERIES["read_counter"], (budget_id, period, start)).fetchone()
        if row is None:
            end = _micros(records.window(key[1], key[2])[1])
            params = (budget_id, period, start, end, json.dumps(new_records))
            connection.execute(QUERIES["ensure_counter"], params)
            row = connection.execute(QUERIES["read_counter"], params[:3]).fetchone()
        if row is not None:
            counters.append(records.counter_from_row(row, _time))
    return counters


def _db_key(key: CounterKey) -> tuple[str, int, int]:
    return key[0], key[1], _micros(key[2])


def _current(connection: sqlite3.Connection, query: str, key: str, etag: str, name: str) -> Any:
    """The row, after checking it exists and has the etag (when given)."""
    row = connection.execute(QUERIES[query], (key,)).fetchone()
    if row is None:
        raise NotFound(f"{name} not found")
    if etag and row["etag"] != etag:
        raise Aborted(f"{name} changed meanwhile (etag {etag!r} is stale)")
    return row


def _create(
    connection: sqlite3.Connection, query: str, params: tuple[Any, ...], remember: tuple[Any, ...]
) -> Any:
    """Insert a price or budget (None when it exists) and, when the create came with a
    request_id (remember[1]), the request that made it, in one transaction."""
    row = connection.execute(QUERIES[query], params).fetchone()
    if row is not None and remember[1]:
        connection.execute(QUERIES["insert_create_request"], remember)
    return row
