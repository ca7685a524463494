"""LedgerService: validates requests and delegates to the ledger store."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from agentrt.ledger.v1.ledger_pb2 import Budget, Price, UsageDimension, UsageKind, UsageRecord
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from services.kit import validate
from services.kit.errors import (
    Aborted,
    AgentrtError,
    AlreadyExists,
    FieldInvalid,
    FieldRequired,
    NameInvalid,
    NotFound,
    RequestIdReused,
    ResourceExhausted,
)
from services.kit.ids import is_valid_id
from services.kit.interceptors import status_of_error
from services.kit.money import ModelPrice, parse_price
from services.kit.paging import decode_offset, encode_offset, page_size
from services.ledger import records
from services.ledger.metrics import count_denial, count_recorded
from services.ledger.store import LedgerStore, ReportQuery

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_REQUEST_ID = 128
MAX_MODEL_ID = 128
DEFAULT_TTL = timedelta(minutes=5)
MIN_TTL = timedelta(seconds=1)
MAX_TTL = timedelta(hours=1)
MAX_BATCH_OPERATIONS = 500
"""The most operations one BatchSpend may carry."""
UPDATE_ATTEMPTS = 5
"""How often an update without an etag is retried when a concurrent change won the race."""

PRICE_PATHS = (
    "input_price_per_million",
    "output_price_per_million",
    "cached_input_price_per_million",
    "cache_write_price_per_million",
    "currency",
)
BUDGET_PATHS = ("description", "period", "limits", "warn_threshold")
REPORT_DIMENSION_NAMES = {
    UsageDimension.USAGE_DIMENSION_TENANT: "tenant",
    UsageDimension.USAGE_DIMENSION_PRINCIPAL: "principal",
    UsageDimension.USAGE_DIMENSION_MODEL: "model",
    UsageDimension.USAGE_DIMENSION_DAY: "day",
    UsageDimension.USAGE_DIMENSION_JOB_TREE: "root_job",
}

_BUDGET_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    """Usage, prices, budgets and reservations for workers, the engine and operators."""

    def __init__(self, store: LedgerStore, clock: Callable[[], datetime] = _utc_now) -> None:
        self._store = store
        self._clock = clock

    # Usage

    async def RecordUsage(
        self, request: ledger_pb2.RecordUsageRequest, context: Context
    ) -> UsageRecord:
        validate.no_nul(request)
        if not request.HasField("usage_record"):
            raise FieldRequired("usage_record")
        entry = records.usage_entry(request.usage_record_id, request.usage_record, "")
        record, created = await self._store.record_usage(entry, self._clock())
        if created:
            count_recorded([entry])
        return record

    async def ListUsageRecords(
        self, request: ledger_pb2.ListUsageRecordsRequest, context: Context
    ) -> ledger_pb2.ListUsageRecordsResponse:
        validate.no_nul(request)
        size = page_size(request.page_size, 100, 1000)
        offset = decode_offset(request.page_token)
        matches = _usage_filter(request)
        found = [r for r in await self._store.list_usage_records(request.tenant) if matches(r)]
        page, token = _page(found, offset, size)
        return ledger_pb2.ListUsageRecordsResponse(usage_records=page, next_page_token=token)

    # Prices

    async def CreatePrice(self, request: ledger_pb2.CreatePriceRequest, context: Context) -> Price:
        validate.no_nul(request)
        model = _check_model(request.price_id, "price_id")
        if not request.HasField("price"):
            raise FieldRequired("price")
        price = _model_price(request.price)
        _check_request_id(request.request_id)
        request_id = request.request_id
        digest = records.request_hash("price", model, price)
        return await _create_once(
            self._store,
            "price",
            request_id,
            digest,
            lambda: self._store.create_price(model, price, self._clock(), request_id, digest),
            self._store.get_price,
        )

    async def GetPrice(self, request: ledger_pb2.GetPriceRequest, context: Context) -> Price:
        validate.no_nul(request)
        return await self._store.get_price(_parse_price_name(request.name))

    async def ListPrices(
        self, request: ledger_pb2.ListPricesRequest, context: Context
    ) -> ledger_pb2.ListPricesResponse:
        validate.no_nul(request)
        size = page_size(request.page_size, 100, 1000)
        offset = decode_offset(request.page_token)
        page, token = _page(await self._store.list_prices(), offset, size)
        return ledger_pb2.ListPricesResponse(prices=page, next_page_token=token)

    async def UpdatePrice(self, request: ledger_pb2.UpdatePriceRequest, context: Context) -> Price:
        validate.no_nul(request)
        if not request.HasField("price"):
            raise FieldRequired("price")
        change = request.price
        model = _parse_price_name(change.name, "price.name")
        paths = _mask_paths(list(request.update_mask.paths), PRICE_PATHS, _set_price_paths(change))

        async def update(current: Price, etag: str) -> Price:
            merged = _merged(current, change, paths)
            return await self._store.update_price(model, _model_price(merged), etag, self._clock())

        return await _read_modify_write(lambda: self._store.get_price(model), update, change.etag)

    async def DeletePrice(self, request: ledger_pb2.DeletePriceRequest, context: Context) -> Empty:
        validate.no_nul(request)
        await self._store.delete_price(_parse_price_name(request.name), request.etag)
        return Empty()

    # Budgets

    async def CreateBudget(
        self, request: ledger_pb2.CreateBudgetRequest, context: Context
    ) -> Budget:
        validate.no_nul(request)
        budget_id = _check_budget_id(request.budget_id, "budget_id")
        if not request.HasField("budget"):
            raise FieldRequired("budget")
        spec = records.budget_spec(request.budget)
        _check_request_id(request.request_id)
        request_id = request.request_id
        digest = records.request_hash("budget", budget_id, spec)
        return await _create_once(
            self._store,
            "budget",
            request_id,
            digest,
            lambda: self._store.create_budget(budget_id, spec, self._clock(), request_id, digest),
            self._store.get_budget,
        )

    async def GetBudget(self, request: ledger_pb2.GetBudgetRequest, context: Context) -> Budget:
        validate.no_nul(request)
        return await self._store.get_budget(_parse_budget_name(request.name))

    async def ListBudgets(
        self, request: ledger_pb2.ListBudgetsRequest, context: Context
    ) -> ledger_pb2.ListBudgetsResponse:
        validate.no_nul(request)
        size = page_size(request.page_size, 50, 500)
        offset = decode_offset(request.page_token)
        page, token = _page(await self._store.list_budgets(request.tenant), offset, size)
        return ledger_pb2.ListBudgetsResponse(budgets=page, next_page_token=token)

    async def UpdateBudget(
        self, request: ledger_pb2.UpdateBudgetRequest, context: Context
    ) -> Budget:
        validate.no_nul(request)
        if not request.HasField("budget"):
            raise FieldRequired("budget")
        change = request.budget
        budget_id = _parse_budget_name(change.name, "budget.name")
        paths = _mask_paths(
            list(request.update_mask.paths), BUDGET_PATHS, _set_budget_paths(change)
        )

        async def update(current: Budget, etag: str) -> Budget:
            spec = records.budget_spec(_merged(current, change, paths))
            return await self._store.update_budget(budget_id, spec, etag, self._clock())

        return await _read_modify_write(
            lambda: self._store.get_budget(budget_id), update, change.etag
        )

    async def DeleteBudget(
        self, request: ledger_pb2.DeleteBudgetRequest, context: Context
    ) -> Empty:
        validate.no_nul(request)
        await self._store.delete_budget(_parse_budget_name(request.name), request.etag)
        return Empty()

    # Verdicts and reservations

    async def CheckBudget(
        self, request: ledger_pb2.CheckBudgetRequest, context: Context
    ) -> ledger_pb2.CheckBudgetResponse:
        validate.no_nul(request)
        if not request.tenant:
            raise FieldRequired("tenant")
        amounts = records.parse_amounts(request.amounts, "amounts")
        return await self._store.check_budget(
            request.tenant, request.principal, amounts, self._clock()
        )

    async def ReserveBudget(
        self, request: ledger_pb2.ReserveBudgetRequest, context: Context
    ) -> ledger_pb2.Reservation:
        validate.no_nul(request)
        try:
            return await self._store.reserve(_reservation_request(request), self._clock())
        except ResourceExhausted:
            count_denial(request.tenant)
            raise

    async def SettleReservation(
        self, request: ledger_pb2.SettleReservationRequest, context: Context
    ) -> ledger_pb2.Reservation:
        validate.no_nul(request)
        reservation_id = _parse_reservation_name(request.name)
        entries = [
            records.usage_entry(r.usage_record_id, r.usage_record, f"usage_records[{i}].")
            for i, r in enumerate(request.usage_records)
        ]
        now = self._clock()
        settled = await self._store.settle(reservation_id, entries, now)
        # A settlement made by this call ends at `now`; one repeated by a retry ended earlier
        # and its usage was counted then.
        if settled.end_time.ToDatetime(UTC) == now:
            count_recorded(entries)
        return settled

    async def ReleaseReservation(
        self, request: ledger_pb2.ReleaseReservationRequest, context: Context
    ) -> ledger_pb2.Reservation:
        validate.no_nul(request)
        reservation_id = _parse_reservation_name(request.name)
        released = await self._store.release(reservation_id, self._clock())
        log.debug("released %s: %.200s", released.name, request.reason or "no reason given")
        return released

    async def BatchSpend(
        self, request: ledger_pb2.BatchSpendRequest, context: Context
    ) -> ledger_pb2.BatchSpendResponse:
        if not request.operations:
            raise FieldRequired("operations")
        if len(request.operations) > MAX_BATCH_OPERATIONS:
            raise FieldInvalid(
                "operations",
                f"at most {MAX_BATCH_OPERATIONS} operations, got {len(request.operations)}",
            )
        for i, operation in enumerate(request.operations):
            if operation.WhichOneof("operation") is None:
                raise FieldRequired(f"operations[{i}].operation")
        results = await asyncio.gather(
            *(self._spend(operation, context) for operation in request.operations)
        )
        return ledger_pb2.BatchSpendResponse(results=results)

    async def _spend(
        self, operation: ledger_pb2.SpendOperation, context: Context
    ) -> ledger_pb2.SpendResult:
        """One operation of a batch, as its own call would do it; its domain error becomes
        its result (any other error fails the batch, whose operations are idempotent)."""
        try:
            kind = operation.WhichOneof("operation")
            if kind == "reserve":
                reservation = await self.ReserveBudget(operation.reserve, context)
            elif kind == "settle":
                reservation = await self.SettleReservation(operation.settle, context)
            else:
                reservation = await self.ReleaseReservation(operation.release, context)
        except AgentrtError as error:
            return ledger_pb2.SpendResult(error=status_of_error(error))
        return ledger_pb2.SpendResult(reservation=reservation)

    # Reports

    async def GetUsageReport(
        self, request: ledger_pb2.GetUsageReportRequest, context: Context
    ) -> ledger_pb2.GetUsageReportResponse:
        validate.no_nul(request)
        size = page_size(request.page_size, 100, 1000)
        offset = decode_offset(request.page_token)
        rows = await self._store.usage_report(_report_query(request, self._clock()))
        page, token = _page([r.row for r in rows], offset, size)
        return ledger_pb2.GetUsageReportResponse(rows=page, next_page_token=token)


# Names and ids


def _parse_price_name(name: str, field: str = "name") -> str:
    collection, _, model = name.partition("/")
    if collection != "prices" or not 0 < len(model) <= MAX_MODEL_ID or "/" in model:
        raise NameInvalid(field, name, "prices/{model}")
    return model


def _parse_budget_name(name: str, field: str = "name") -> str:
    collection, _, budget_id = name.partition("/")
    if collection != "budgets" or not _BUDGET_ID.fullmatch(budget_id):
        raise NameInvalid(field, name, "budgets/{budget}")
    return budget_id


def _parse_reservation_name(name: str, field: str = "name") -> str:
    collection, _, reservation_id = name.partition("/")
    if collection != "reservations" or not is_valid_id(reservation_id):
        raise NameInvalid(field, name, "reservations/{reservation}")
    return reservation_id


def _check_model(model: str, field: str) -> str:
    if not model:
        raise FieldRequired(field)
    if len(model) > MAX_MODEL_ID or "/" in model:
        raise FieldInvalid(field, f"1 to {MAX_MODEL_ID} characters, no '/'")
    return model


def _check_budget_id(budget_id: str, field: str) -> str:
    if not budget_id:
        raise FieldRequired(field)
    if not _BUDGET_ID.fullmatch(budget_id):
        raise FieldInvalid(
            field, "1 to 63 lowercase letters, digits and '-', starting with a letter"
        )
    return budget_id


def _check_job(job: str, field: str) -> None:
    """FieldInvalid unless `job` is empty or a job's name."""
    collection, _, job_id = job.partition("/")
    if job and (collection != "jobs" or not is_valid_id(job_id)):
        raise FieldInvalid(field, "a job's name, jobs/{job}")


async def _create_once(
    store: LedgerStore,
    kind: str,
    request_id: str,
    digest: bytes,
    create: Callable[[], Awaitable[T]],
    get: Callable[[str], Awaitable[T]],
) -> T:
    """Create a price or budget at most once per request_id: a retry (same id, same body)
    returns what the first one made, as it is now; the same id with another body is
    REQUEST_ID_REUSED. The store remembers the id in the creating transaction, so a retry
    that races the first create finds it once that commits."""
    if request_id:
        earlier = await _created_by(store, kind, request_id, digest)
        if earlier is not None:
            try:
                return await get(earlier)
            except NotFound:
                pass  # Deleted since: the retry creates it again.
    try:
        return await create()
    except AlreadyExists:
        earlier = await _created_by(store, kind, request_id, digest) if request_id else None
        if earlier is None:
            raise
        return await get(earlier)


async def _created_by(store: LedgerStore, kind: str, request_id: str, digest: bytes) -> str | None:
    """What the earlier create with this request_id made; RequestIdReused for another body."""
    found = await store.created_by(kind, request_id)
    if found is None:
        return None
    resource, earlier_digest = found
    if earlier_digest != digest:
        raise RequestIdReused(request_id)
    return resource


def _check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise FieldInvalid("request_id", f"must be at most {MAX_REQUEST_ID} printable characters")


# Fields


def _model_price(price: Price) -> ModelPrice:
    if not price.input_price_per_million:
        raise FieldRequired("price.input_price_per_million")
    if not price.output_price_per_million:
        raise FieldRequired("price.output_price_per_million")
    if price.currency not in ("", "USD"):
        raise FieldInvalid("price.currency", 'only "USD"')
    return parse_price(
        price.input_price_per_million,
        price.output_price_per_million,
        price.cached_input_price_per_million,
        price.cache_write_price_per_million,
    )


def _reservation_request(request: ledger_pb2.ReserveBudgetRequest) -> records.ReservationRequest:
    if not request.tenant:
        raise FieldRequired("tenant")
    _check_job(request.job, "job")
    _check_job(request.root_job, "root_job")
    if not request.HasField("amounts"):
        raise FieldRequired("amounts")
    amounts = records.parse_amounts(request.amounts, "amounts")
    ttl = validate.duration(request.ttl, "ttl", MAX_TTL)
    if ttl == timedelta(0):
        ttl = DEFAULT_TTL
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise FieldInvalid("ttl", "from 1 second to 1 hour")
    _check_request_id(request.request_id)
    return records.ReservationRequest(
        tenant=request.tenant,
        principal=request.principal,
        job=request.job,
        amounts=amounts,
        ttl=ttl,
        request_id=request.request_id,
        request_hash=records.request_hash(
            request.tenant, request.principal, request.job, amounts, ttl.total_seconds()
        ),
        root_job=request.root_job,
    )


def _report_query(request: ledger_pb2.GetUsageReportRequest, now: datetime) -> ReportQuery:
    if not request.HasField("start_time"):
        raise FieldRequired("start_time")
    start = validate.timestamp(request.start_time, "start_time")
    end = validate.optional_timestamp(request, "end_time") or now
    if end < start:
        raise FieldInvalid("end_time", "must not be before start_time")
    group_by = []
    for dimension in request.group_by:
        name = REPORT_DIMENSION_NAMES.get(dimension)
        if name is None or name in group_by:
            raise FieldInvalid("group_by", "known dimensions, each at most once")
        group_by.append(name)
    return ReportQuery(
        start_time=start,
        end_time=end,
        group_by=group_by,
        tenant=request.tenant,
        principal=request.principal,
        model=request.model,
    )


def _usage_filter(request: ledger_pb2.ListUsageRecordsRequest) -> Callable[[UsageRecord], bool]:
    """Whether a record passes the request's filters other than the tenant."""
    _check_job(request.job, "job")
    _check_job(request.root_job, "root_job")
    if request.kind not in UsageKind.values():
        raise FieldInvalid("kind", "a UsageKind")
    start = validate.optional_timestamp(request, "start_time")
    end = validate.optional_timestamp(request, "end_time")

    def matches(record: UsageRecord) -> bool:
        at = record.usage_time.ToDatetime(UTC)
        root = record.root_job or record.job
        return (
            request.principal in ("", record.principal)
            and request.job in ("", record.job)
            and request.root_job in ("", root)
            and request.model in ("", record.model)
            and request.kind in (0, record.kind)
            and (start is None or at >= start)
            and (end is None or at < end)
        )

    return matches


# Update masks (AIP-134)


def _set_price_paths(price: Price) -> list[str]:
    return [path for path in PRICE_PATHS if getattr(price, path)]


def _set_budget_paths(budget: Budget) -> list[str]:
    present = {
        "description": bool(budget.description),
        "period": budget.period != Budget.PERIOD_UNSPECIFIED,
        "limits": budget.HasField("limits"),
        "warn_threshold": budget.HasField("warn_threshold"),
    }
    return [path for path in BUDGET_PATHS if present[path]]


def _mask_paths(paths: list[str], mutable: Sequence[str], set_paths: list[str]) -> list[str]:
    """The fields an update replaces: the mask's, all for "*", those set for an empty mask."""
    if paths == ["*"]:
        return list(mutable)
    if not paths:
        if not set_paths:
            raise FieldInvalid("update_mask", "is empty and the request sets no mutable field")
        return set_paths
    for path in paths:
        if path not in mutable:
            raise FieldInvalid(
                "update_mask",
                f"path {path!r} is unknown or immutable; use {', '.join(mutable)} or *",
            )
    return paths


M = TypeVar("M", Price, Budget)


def _merged(current: M, change: M, paths: Sequence[str]) -> M:
    """`current` with the fields named in `paths` taken from `change`."""
    merged = type(current)()
    merged.CopyFrom(current)
    # As plain messages: the paths are checked against the mutable fields, not typed.
    target: Message = merged
    source: Message = change
    for path in paths:
        field = source.DESCRIPTOR.fields_by_name[path]
        target.ClearField(path)
        if field.message_type is not None:
            if source.HasField(path):
                getattr(target, path).CopyFrom(getattr(source, path))
        elif not field.has_presence or source.HasField(path):
            setattr(target, path, getattr(source, path))
    return merged


async def _read_modify_write(
    read: Callable[[], Awaitable[M]], write: Callable[[M, str], Awaitable[M]], etag: str
) -> M:
    """Apply a partial update: with the caller's etag once, or, without one, against the
    version read, again if a concurrent change came in between (so that none is lost)."""
    attempt = 1
    while True:
        current = await read()
        try:
            return await write(current, etag or current.etag)
        except Aborted:
            if etag or attempt >= UPDATE_ATTEMPTS:
                raise
            attempt += 1


def _page(items: Sequence[T], offset: int, size: int) -> tuple[list[T], str]:
    """One page of `items` from `offset`, and the token of the next (empty on the last)."""
    page = list(items[offset : offset + size])
    more = offset + size < len(items)
    return page, encode_offset(offset + size) if more else ""
