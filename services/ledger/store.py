"""The ledger store contract: what the ledger needs from a database, on any backend.

Counters: each budget has one row per window of its period (`budget_counters`), holding
what the window has spent (the sum of its usage records) and what ACTIVE reservations
hold on it. A counter row is made on first use from the usage already recorded in its
window; afterwards every change to usage or reservations moves it in the same
transaction, so `spent` always equals the sum of the window's usage records.

Times are passed in (`now`, UTC) so that one clock decides everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from agentrt.ledger.v1.ledger_pb2 import (
    Budget,
    CheckBudgetResponse,
    Price,
    Reservation,
    UsageRecord,
    UsageReportRow,
)

from services.kit.money import ModelPrice
from services.kit.storage import StorageConfig, open_store
from services.ledger.records import BudgetSpec, Quantities, ReservationRequest, UsageEntry

SQL_DIRECTORY = Path(__file__).resolve().parent / "sql"
"""The ledger service's `sql/` folder: migrations and named queries per backend."""

REPORT_DIMENSIONS = ("tenant", "principal", "model", "day", "job", "root_job")
"""What a usage report may group by; "root_job" groups job trees (a top-level job is its
own root)."""


@dataclass(frozen=True)
class ReportQuery:
    """Which usage a report sums, and how it groups it."""

    start_time: datetime
    """Inclusive."""
    end_time: datetime
    """Exclusive."""
    group_by: Sequence[str] = ()
    """Names from REPORT_DIMENSIONS, each at most once."""
    tenant: str = ""
    principal: str = ""
    model: str = ""


@dataclass(frozen=True)
class ReportRow:
    """The sums of one group of a report; `group` holds the value of each dimension
    grouped by (the UTC day's start for "day")."""

    group: dict[str, Any]
    row: UsageReportRow


class LedgerStore(Protocol):
    """Usage records, prices, budgets, counters and reservations on one backend.

    Errors: NotFound for an unknown price, budget or reservation; Aborted when an etag is
    stale; AlreadyExists when creating an existing price or budget; RequestIdReused when an
    id or request_id comes back with a different body; ResourceExhausted
    (BUDGET_EXCEEDED) when a reservation does not fit; IllegalTransition when a
    reservation's state forbids the change.
    """

    async def record_usage(self, entry: UsageEntry, now: datetime) -> tuple[UsageRecord, bool]:
        """Store the record and add it to the spent counters of every budget it falls in,
        or return the stored one with created=False when its id was recorded with the same
        body. A model call without a cost is priced with the model's current price."""
        ...

    async def list_usage_records(self, tenant: str) -> list[UsageRecord]:
        """The tenant's usage records (every record for ""), newest first."""
        ...

    async def create_price(
        self,
        model: str,
        price: ModelPrice,
        now: datetime,
        request_id: str = "",
        request_hash: bytes = b"",
    ) -> Price:
        """Create the price; with a request_id, remember in the same transaction that this
        request (and body hash) made it."""
        ...

    async def created_by(self, kind: str, request_id: str) -> tuple[str, bytes] | None:
        """The (model or budget id, request hash) that the create of `kind` ("price" or
        "budget") with `request_id` made, or None."""
        ...

    async def get_price(self, model: str) -> Price: ...

    async def list_prices(self) -> list[Price]:
        """Every price, sorted by model."""
        ...

    async def update_price(self, model: str, price: ModelPrice, etag: str, now: datetime) -> Price:
        """Replace the price; an empty etag skips the check."""
        ...

    async def delete_price(self, model: str, etag: str) -> None: ...

    async def create_budget(
        self,
        budget_id: str,
        spec: BudgetSpec,
        now: datetime,
        request_id: str = "",
        request_hash: bytes = b"",
    ) -> Budget:
        """Create the budget; it counts the usage already recorded in its current window.
        A request_id is remembered as create_price does."""
        ...

    async def get_budget(self, budget_id: str) -> Budget: ...

    async def list_budgets(self, tenant: str) -> list[Budget]:
        """The tenant's budgets (every budget for ""), sorted by id."""
        ...

    async def update_budget(
        self, budget_id: str, spec: BudgetSpec, etag: str, now: datetime
    ) -> Budget:
        """Replace description, period, limits and warn threshold (tenant and principal
        must be the budget's own; FieldInvalid otherwise)."""
        ...

    async def delete_budget(self, budget_id: str, etag: str) -> None:
        """Delete the budget, its counters, and the holds reservations have on it."""
        ...

    async def check_budget(
        self, tenant: str, principal: str, amounts: Quantities, now: datetime
    ) -> CheckBudgetResponse:
        """What every budget of the tenant and principal says about spending `amounts`."""
        ...

    async def reserve(self, request: ReservationRequest, now: datetime) -> Reservation:
        """Hold `request.amounts` on the current window of every budget of the tenant (and
        principal) at once, or on none: ResourceExhausted naming the first budget that
        cannot take them. Never admits more than a limit, whatever the concurrency. A
        request_id seen before returns the reservation made then."""
        ...

    async def settle(
        self, reservation_id: str, entries: Sequence[UsageEntry], now: datetime
    ) -> Reservation:
        """Record the usage (each entry as record_usage would), release what the
        reservation held and make it SETTLED, in one transaction. Settling again with the
        same record ids returns it unchanged; a RELEASED or EXPIRED reservation is settled
        too, since its usage was really spent."""
        ...

    async def release(self, reservation_id: str, now: datetime) -> Reservation:
        """Give back what an ACTIVE reservation holds (RELEASED); a RELEASED or EXPIRED one
        is returned unchanged; IllegalTransition for a SETTLED one."""
        ...

    async def expire_reservations(self, now: datetime, limit: int) -> list[Reservation]:
        """Make EXPIRED up to `limit` ACTIVE reservations past their expire time, giving
        back what they held; returns them."""
        ...

    async def usage_report(self, query: ReportQuery) -> list[ReportRow]:
        """The usage of the range summed per group, sorted by the group values."""
        ...

    async def close(self) -> None:
        """Release the database if the store opened it."""
        ...


async def open_ledger_store(config: StorageConfig) -> LedgerStore:
    """The configured backend's store; UnmigratedDatabaseError unless `agentrt migrate` ran."""
    store: LedgerStore = await open_store(
        config,
        SQL_DIRECTORY,
        "services.ledger.store_postgres:PostgresLedgerStore",
        "services.ledger.store_sqlite:SqliteLedgerStore",
    )
    return store
