"""LedgerSpend: the SpendGuard that holds every model call's worst case in the ledger.

Before a model call the loop asks `reserve_model_call`. It first checks the job's own
BudgetSpec (max_tokens, max_cost, max_turns, max_runtime) against what the job spent so
far plus the call's worst case, then makes one ReserveBudget call that holds that worst
case against every budget of the tenant and principal at once (the ledger admits it or
refuses it atomically, whatever the number of workers). After the call the loop settles
the hold with what the call really used, recorded as a usage record under the loop's
record id, so a settle that is retried, or repeated by a worker that took the job over,
counts once. A call that failed is released; a hold whose worker died expires in the
ledger and its sweeper gives it back.

Fail closed: when the ledger cannot be reached (after a few quick retries), no call is
admitted: `LedgerUnavailable` is raised, a BudgetExceeded whose failure has the reason
DEPENDENCY_UNAVAILABLE, so a loop that only knows BudgetExceeded ends the job without
spending unaccounted money, and one that wants to retry later can catch it first.
Settling retries much longer, since that usage was really spent.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import grpc
from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2
from agentrt.errors import error_from_rpc
from agentrt.jobs.v1 import jobs_pb2
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from google.protobuf.duration_pb2 import Duration

from services.engine.convert import message_from_proto, tools_from_proto
from services.engine.tokens import estimate_message_tokens, estimate_tool_tokens
from services.kit.config import ConfigError, env_float, env_int, env_str
from services.kit.infra import Infrastructure
from services.kit.money import (
    ModelPrice,
    cost_of,
    from_nanos,
    parse_amount,
    parse_price,
    to_nanos,
)
from services.orchestrator.guards import BudgetExceeded, Hold
from services.orchestrator.spend_batch import SpendBatcher

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], datetime]
if TYPE_CHECKING:
    SpendCalls: TypeAlias = SpendBatcher | ledger_pb2_grpc.LedgerServiceAsyncStub
    """What reserves, settles and releases: batched, or the stub's single calls."""

DEFAULT_MAX_OUTPUT_TOKENS = 4096
"""The output a call may produce when its params set no max_output_tokens."""

MAX_RESERVATION_TTL = 3600.0
"""The longest ttl the ledger grants a reservation (ReserveBudgetRequest.ttl)."""

MAX_JOBS_WITH_TOOL_HOLDS = 10_000
"""Jobs whose unrecorded tool-call holds a worker remembers, oldest forgotten first."""

_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
    }
)
"""Statuses after which the same (idempotent) ledger call may succeed."""


class LedgerUnavailable(BudgetExceeded):
    """The ledger could not be reached, so nothing may be spent (fail closed). Its failure
    has reason DEPENDENCY_UNAVAILABLE; the job may be retried once the ledger is back."""

    def __init__(self, what: str, error: grpc.aio.AioRpcError) -> None:
        detail = error.details() or error.code().name
        super().__init__(
            common_pb2.Failure(
                reason=common_pb2.ERROR_REASON_DEPENDENCY_UNAVAILABLE,
                message=f"the ledger is unavailable, so no spending is allowed ({what}: {detail})",
                metadata={"service": "ledger", "call": what},
            )
        )


@dataclass(frozen=True)
class LedgerHold(Hold):
    """A Hold that also knows what it is for, so that settling needs nothing else."""

    model: str = ""
    """The model called; empty for a tool call's hold."""
    priced: bool | None = None
    """Whether the model had a price when reserving, so that settling need not ask;
    None when not known (the price is then asked for)."""


@dataclass(frozen=True)
class SpendConfig:
    """How LedgerSpend reserves and how long it retries."""

    reservation_ttl: float = 300.0
    """AGENTRT_RESERVATION_TTL_SECONDS: how long a hold lasts unless settled or released;
    longer than a model call takes, since past it the hold stops counting (default 300)."""
    default_max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS
    """AGENTRT_DEFAULT_MAX_OUTPUT_TOKENS: the worst-case output of a call whose params set
    no max_output_tokens (default 4096)."""
    unpriced_models: str = "deny"
    """AGENTRT_UNPRICED_MODELS: `deny` (default) refuses a call to a model without a price
    whenever a cost limit applies (the job's max_cost or a tenant budget on cost), since
    the limit could not be kept; `allow` lets it run and counts it as costing nothing."""
    price_cache_seconds: float = 10.0
    """AGENTRT_PRICE_CACHE_SECONDS: how long a price (or its absence) is trusted."""
    retry_seconds: float = 2.0
    """AGENTRT_LEDGER_RETRY_SECONDS: how long reserve, release and checks retry an
    unreachable ledger before failing closed."""
    settle_retry_seconds: float = 60.0
    """AGENTRT_LEDGER_SETTLE_RETRY_SECONDS: how long settling retries, since that usage was
    spent and must be recorded (a restarted ledger accepts the same record once)."""
    attempt_timeout: float = 5.0
    """Seconds one ledger call may take."""
    batch_operations: int = 100
    """AGENTRT_LEDGER_BATCH_OPERATIONS: the most reservations, settlements and releases of
    concurrent jobs sent to the ledger in one BatchSpend call (default 100); 1 sends each
    in a call of its own."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SpendConfig:
        unpriced = env_str("AGENTRT_UNPRICED_MODELS", "deny", env).lower()
        if unpriced not in ("deny", "allow"):
            raise ConfigError(f"AGENTRT_UNPRICED_MODELS: `deny` or `allow`, got {unpriced!r}")
        ttl = env_float("AGENTRT_RESERVATION_TTL_SECONDS", 300.0, env, 1.0)
        if ttl > MAX_RESERVATION_TTL:
            raise ConfigError(
                f"AGENTRT_RESERVATION_TTL_SECONDS: at most {MAX_RESERVATION_TTL:g}, got {ttl:g}"
            )
        return cls(
            reservation_ttl=ttl,
            default_max_output_tokens=env_int(
                "AGENTRT_DEFAULT_MAX_OUTPUT_TOKENS", DEFAULT_MAX_OUTPUT_TOKENS, env, 1
            ),
            unpriced_models=unpriced,
            price_cache_seconds=env_float("AGENTRT_PRICE_CACHE_SECONDS", 10.0, env),
            retry_seconds=env_float("AGENTRT_LEDGER_RETRY_SECONDS", 2.0, env),
            settle_retry_seconds=env_float("AGENTRT_LEDGER_SETTLE_RETRY_SECONDS", 60.0, env),
            batch_operations=env_int("AGENTRT_LEDGER_BATCH_OPERATIONS", 100, env, 1),
        )


@dataclass(frozen=True)
class WorstCase:
    """What one model call may spend at most."""

    input_tokens: int
    output_tokens: int
    cost: Decimal | None
    """None when the model has no price."""

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class _Cached:
    value: Any
    until: float


_PRIMING = estimate_message_tokens([])
"""What an estimate counts for a conversation besides its messages."""


@dataclass(frozen=True)
class _Estimate:
    """The estimated tokens of the first `count` messages of a job's conversation."""

    count: int
    total: int
    """Their tokens, without _PRIMING."""
    last: common_pb2.Message
    """The last of them, to tell that the conversation is still the one estimated."""


@dataclass
class _Caches:
    prices: dict[str, _Cached] = field(default_factory=dict)
    cost_limited: dict[tuple[str, str], _Cached] = field(default_factory=dict)


def open_spend_guard(infra: Infrastructure) -> LedgerSpend:
    """The SpendGuard of an orchestrator process: the ledger over infra's channel, with
    the configuration from the environment (SpendConfig)."""
    stub: ledger_pb2_grpc.LedgerServiceAsyncStub = ledger_pb2_grpc.LedgerServiceStub(
        infra.channel("ledger")
    )
    return LedgerSpend(stub, SpendConfig.from_env())


def runtime_deadline(job: jobs_pb2.Job) -> datetime | None:
    """When the job's BudgetSpec.max_runtime runs out (create_time + max_runtime), or None
    without one: the loop may cut its run there, as reserve_model_call refuses past it."""
    budget = job.spec.budget
    if not budget.HasField("max_runtime") or not job.HasField("create_time"):
        return None
    return job.create_time.ToDatetime(UTC) + budget.max_runtime.ToTimedelta()


class LedgerSpend:
    """A SpendGuard over the LedgerService: see the module's docstring."""

    def __init__(
        self,
        stub: ledger_pb2_grpc.LedgerServiceAsyncStub,
        config: SpendConfig | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._stub = stub
        self._config = config or SpendConfig()
        self._spend: SpendCalls = (
            SpendBatcher(stub, self._config.batch_operations)
            if self._config.batch_operations > 1
            else stub
        )
        """Where reservations, settlements and releases go."""
        self._clock = clock or (lambda: datetime.now(UTC))
        self._caches = _Caches()
        self._estimates: dict[str, _Estimate] = {}
        """Per job, its conversation's estimate at its latest model call."""
        self._tool_holds: dict[str, deque[tuple[str, float]]] = {}
        """Per job, the tool-call holds check_tool_call made that no record settled yet,
        with when they were made."""

    # Model calls

    async def reserve_model_call(
        self, job: jobs_pb2.Job, spent: common_pb2.Usage, request: engine_pb2.CompleteRequest
    ) -> Hold:
        """Check the job's spec, then hold the worst case against the tenant's budgets."""
        model = request.model or job.spec.model
        price = await self._price(model)
        worst = self.worst_case(request, price)
        self._check_job(job, spent, worst)
        if worst.cost is None:
            await self._check_unpriced(job, model)
        amounts = ledger_pb2.Amounts(tokens=worst.tokens)
        if worst.cost is not None:
            amounts.cost = from_nanos(to_nanos(worst.cost))
        reservation = await self._reserve(job, amounts, request.idempotency_key)
        return LedgerHold(
            reservation=reservation.name,
            amounts={"tokens": str(worst.tokens), "cost": amounts.cost},
            model=model,
            priced=price is not None,
        )

    async def settle_model_call(
        self, job: jobs_pb2.Job, hold: Hold, usage: common_pb2.Usage, record_id: str
    ) -> common_pb2.Usage:
        """Record `usage` under `record_id` and settle the hold with it; returns `usage`
        with its cost (empty when the model has no price)."""
        model = hold.model if isinstance(hold, LedgerHold) and hold.model else job.spec.model
        record = _usage_record(
            job,
            common_pb2.Usage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cached_input_tokens=usage.cached_input_tokens,
                cache_write_input_tokens=usage.cache_write_input_tokens,
            ),
        )
        record.kind = ledger_pb2.USAGE_KIND_MODEL_CALL
        record.model = model
        if usage.cost:
            record.usage.cost = usage.cost
        if isinstance(hold, LedgerHold) and hold.priced is not None:
            had_price = hold.priced
        else:
            had_price = await self._cached_price(model) is not None
        cost = await self._settle_or_record(hold.reservation, record_id, record, had_price)
        priced = common_pb2.Usage()
        priced.CopyFrom(usage)
        priced.total_tokens = usage.input_tokens + usage.output_tokens
        priced.cost = usage.cost or cost
        return priced

    async def release(self, hold: Hold, reason: str) -> None:
        """Give the hold back. A caller cut meanwhile (a drain cuts every run) is cut at
        once, and the release goes on without it; a release that fails is logged, since
        the hold expires on its own."""
        if hold.reservation:
            await asyncio.shield(asyncio.ensure_future(self._give_back(hold.reservation, reason)))

    async def _give_back(self, reservation: str, reason: str) -> None:
        request = ledger_pb2.ReleaseReservationRequest(name=reservation, reason=reason)
        try:
            await self._call("release", self._spend.ReleaseReservation, request)
        except Exception as error:  # an outage, a refusal, a closed channel: never raised
            log.warning("%s not released (a hold left expires on its own): %s", reservation, error)

    # Tool calls

    async def check_tool_call(
        self, job: jobs_pb2.Job, spent: common_pb2.Usage, hold: bool = True
    ) -> None:
        """Refuse a tool call past the job's max_tool_calls, then hold one tool call against
        the tenant's budgets until record_tool_call settles it (or its ttl runs out). The
        loop checks right before each call it runs, so a job has one such hold at a time:
        checking again before recording keeps the one made.

        Without `hold` (before an approval, which may take long or be refused, and may
        be followed by a run on another worker) the tenant's budgets are checked by a
        hold that is given back at once: nothing stays held while the job waits."""
        budget = job.spec.budget
        if budget.HasField("max_tool_calls") and spent.tool_calls + 1 > budget.max_tool_calls:
            raise _job_denial(
                "max_tool_calls",
                str(budget.max_tool_calls),
                "1",
                f"{spent.tool_calls} tool calls made so far + this one",
            )
        self._check_runtime(job)
        if not hold:
            checked = await self._reserve(job, ledger_pb2.Amounts(tool_calls=1), "")
            await self.release(Hold(checked.name), "checked before an approval")
            return
        holds = self._tool_holds.pop(job.name, deque())
        fresh_after = time.monotonic() - self._config.reservation_ttl / 2
        while holds and holds[0][1] < fresh_after:
            holds.popleft()  # Its ttl is about to end; the ledger expires it.
        if not holds:
            reservation = await self._reserve(job, ledger_pb2.Amounts(tool_calls=1), "")
            holds.append((reservation.name, time.monotonic()))
        # Otherwise checked again before the same call (after an approval): the hold made
        # for it still stands. Either way the job becomes the newest entry.
        self._tool_holds[job.name] = holds
        while len(self._tool_holds) > MAX_JOBS_WITH_TOOL_HOLDS:
            # Jobs that went on elsewhere (or waited) without recording: their holds expire.
            del self._tool_holds[next(iter(self._tool_holds))]

    async def record_tool_call(
        self, job: jobs_pb2.Job, call: common_pb2.ToolCall, record_id: str
    ) -> None:
        """Record the tool call, settling the oldest hold check_tool_call made for the job."""
        record = _usage_record(job, common_pb2.Usage())
        record.kind = ledger_pb2.USAGE_KIND_TOOL_CALL
        record.tool = call.name or "tool"
        holds = self._tool_holds.get(job.name)
        reservation = holds.popleft()[0] if holds else ""
        if holds is not None and not holds:
            del self._tool_holds[job.name]
        await self._settle_or_record(reservation, record_id, record, priced=False)

    # Job trees

    async def open_tree(self, job: jobs_pb2.Job) -> None:
        """Creates the tree's budget (PERIOD_TOTAL, scoped to the root job) from the root's
        BudgetSpec; a repeat (a retried or resumed root) finds it made."""
        if job.spec.parent or not tree_inherits(job):
            return
        budget = job.spec.budget
        limits = ledger_pb2.Amounts()
        if budget.HasField("max_tokens"):
            limits.tokens = budget.max_tokens
        if budget.HasField("max_cost"):
            limits.cost = _text(parse_amount(budget.max_cost, "spec.budget.max_cost"))
        if budget.HasField("max_tool_calls"):
            limits.tool_calls = budget.max_tool_calls
        if not limits.ListFields():
            return
        budget_id = tree_budget_id(job.name)
        request = ledger_pb2.CreateBudgetRequest(
            budget_id=budget_id,
            budget=ledger_pb2.Budget(
                description=f"the job tree of {job.name}",
                tenant=job.tenant,
                period=ledger_pb2.Budget.PERIOD_TOTAL,
                limits=limits,
                root_job=job.name,
            ),
            request_id=budget_id,
        )
        try:
            await self._call("create tree budget", self._stub.CreateBudget, request)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise

    # The job's own budget

    def worst_case(
        self, request: engine_pb2.CompleteRequest, price: ModelPrice | None
    ) -> WorstCase:
        """The estimated input (messages and tools) plus the most output the call may make,
        at the model's price: every input token at the highest of its input, cache-read and
        cache-write prices, since the call may read or write any part of its prompt."""
        input_tokens = self._conversation_tokens(request) + estimate_tool_tokens(
            tools_from_proto(request.tools)
        )
        params = request.params
        output_tokens = (
            params.max_output_tokens
            if params.HasField("max_output_tokens")
            else self._config.default_max_output_tokens
        )
        cost = None
        if price is not None:
            worst_input = max(
                price.input_per_million,
                price.cached_input_per_million,
                price.cache_write_per_million,
            )
            worst_price = ModelPrice(
                worst_input, price.output_per_million, worst_input, worst_input
            )
            usage = common_pb2.Usage(input_tokens=input_tokens, output_tokens=output_tokens)
            cost = cost_of(worst_price, usage)
        return WorstCase(input_tokens, output_tokens, cost)

    def _conversation_tokens(self, request: engine_pb2.CompleteRequest) -> int:
        """estimate_message_tokens of the request's messages, estimating only those added
        since the job's previous call: a job's conversation grows by appending, so
        estimating all of it every turn would be quadratic in its length. The messages
        estimated before are taken as they were when the last of them is unchanged."""
        messages = request.messages
        known = self._estimates.pop(request.job, None) if request.job else None
        start, total = 0, 0
        same = (
            known is not None
            and 0 < known.count <= len(messages)
            and messages[known.count - 1] == known.last
        )
        if same and known is not None:
            start, total = known.count, known.total
        for index in range(start, len(messages)):
            message = message_from_proto(messages[index], f"messages[{index}]")
            total += estimate_message_tokens([message]) - _PRIMING
        if request.job and messages:
            last = common_pb2.Message()
            last.CopyFrom(messages[-1])
            self._estimates[request.job] = _Estimate(len(messages), total, last)
            while len(self._estimates) > MAX_JOBS_WITH_TOOL_HOLDS:
                del self._estimates[next(iter(self._estimates))]  # the least recent job's
        return _PRIMING + total

    def _check_job(self, job: jobs_pb2.Job, spent: common_pb2.Usage, worst: WorstCase) -> None:
        """BudgetExceeded when the job's spec cannot take one more call of `worst`."""
        budget = job.spec.budget
        if budget.HasField("max_turns") and spent.model_calls + 1 > budget.max_turns:
            made = f"{spent.model_calls} model calls made so far + this one"
            raise _job_denial("max_turns", str(budget.max_turns), "1", made)
        self._check_runtime(job)
        call = (
            f"this call's worst case {worst.tokens} ({worst.input_tokens} estimated input "
            f"+ {worst.output_tokens} max output tokens)"
        )
        used = spent.input_tokens + spent.output_tokens
        if budget.HasField("max_tokens") and used + worst.tokens > budget.max_tokens:
            over = used + worst.tokens - budget.max_tokens
            raise _job_denial(
                "max_tokens", str(budget.max_tokens), str(over), f"{used} used so far + {call}"
            )
        if not budget.HasField("max_cost"):
            return
        limit = parse_amount(budget.max_cost, "spec.budget.max_cost")
        if worst.cost is None:
            if self._config.unpriced_models == "deny":
                raise _job_denial(
                    "max_cost", _text(limit), "unknown", "the model has no price in the ledger"
                )
            return
        so_far = parse_amount(spent.cost, "usage.cost") if spent.cost else Decimal(0)
        if so_far + worst.cost > limit:
            raise _job_denial(
                "max_cost",
                _text(limit),
                _text(so_far + worst.cost - limit),
                f"{_text(so_far)} spent so far + this call's worst case {_text(worst.cost)}",
            )

    def _check_runtime(self, job: jobs_pb2.Job) -> None:
        deadline = runtime_deadline(job)
        if deadline is None:
            return
        late = self._clock() - deadline
        if late >= timedelta(0):
            limit = job.spec.budget.max_runtime.ToTimedelta().total_seconds()
            raise _job_denial(
                "max_runtime", f"{limit:g}s", f"{late.total_seconds():.3f}s", "the job ran past it"
            )

    async def _check_unpriced(self, job: jobs_pb2.Job, model: str) -> None:
        """With AGENTRT_UNPRICED_MODELS=deny, refuse an unpriced model when a tenant budget
        limits cost: the ledger could not hold the call's cost against it."""
        if self._config.unpriced_models != "deny":
            return
        key = (job.tenant, job.principal)
        cached = self._caches.cost_limited.get(key)
        if cached is None or cached.until < time.monotonic():
            request = ledger_pb2.CheckBudgetRequest(tenant=job.tenant, principal=job.principal)
            response = await self._call("check budget", self._stub.CheckBudget, request)
            limited = [s.budget for s in response.budgets if s.limits.HasField("cost")]
            cached = _Cached(limited, time.monotonic() + self._config.price_cache_seconds)
            self._caches.cost_limited[key] = cached
        if cached.value:
            raise BudgetExceeded(
                common_pb2.Failure(
                    reason=common_pb2.ERROR_REASON_BUDGET_EXCEEDED,
                    message=(
                        f"model {model!r} has no price in the ledger, so tenant budget "
                        f"{cached.value[0]} on cost cannot be kept (AGENTRT_UNPRICED_MODELS"
                        "=deny); set the model's price"
                    ),
                    metadata={"budget": cached.value[0], "dimension": "cost", "model": model},
                )
            )

    # Ledger calls

    async def _price(self, model: str) -> ModelPrice | None:
        """The model's price from the ledger, cached briefly; None when it has none."""
        cached = self._caches.prices.get(model)
        if cached is not None and cached.until >= time.monotonic():
            return cached.value  # type: ignore[no-any-return]
        request = ledger_pb2.GetPriceRequest(name=f"prices/{model}")
        try:
            found = await self._call("get price", self._stub.GetPrice, request)
            value: ModelPrice | None = parse_price(
                found.input_price_per_million,
                found.output_price_per_million,
                found.cached_input_price_per_million,
                found.cache_write_price_per_million,
            )
        except grpc.aio.AioRpcError as error:
            # INVALID_ARGUMENT: a model id the ledger cannot name as a price (one with a
            # '/', as vLLM's "org/model"), so it can have none.
            if error.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise
            value = None
        until = time.monotonic() + self._config.price_cache_seconds
        self._caches.prices[model] = _Cached(value, until)
        return value

    async def _reserve(
        self, job: jobs_pb2.Job, amounts: ledger_pb2.Amounts, key: str
    ) -> ledger_pb2.Reservation:
        """One ReserveBudget; its request_id makes the retries of this reservation (and
        only of this one) return the same reservation.

        A caller cut while it is under way (a drain cuts every run) waits for the ledger's
        answer and gives back the hold it made before it ends: nobody else knows the hold's
        name, so it would count against the budgets until its ttl."""
        suffix = secrets.token_hex(8)
        request = ledger_pb2.ReserveBudgetRequest(
            tenant=job.tenant,
            principal=job.principal,
            job=job.name,
            amounts=amounts,
            ttl=Duration(seconds=max(1, int(self._config.reservation_ttl))),
            request_id=f"{key[:100]}.{suffix}" if key else suffix,
            root_job=tree_root(job) if tree_inherits(job) else "",
        )
        reserving = asyncio.ensure_future(self._call("reserve", self._spend.ReserveBudget, request))
        try:
            return await asyncio.shield(reserving)
        except asyncio.CancelledError:
            (made,) = await asyncio.gather(reserving, return_exceptions=True)
            if isinstance(made, ledger_pb2.Reservation):
                await self.release(Hold(made.name), "the run was cut while reserving")
            raise
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            raise _tenant_denial(error) from error

    async def _settle_or_record(
        self, reservation: str, record_id: str, record: ledger_pb2.UsageRecord, priced: bool
    ) -> str:
        """Settle `reservation` with the record (RecordUsage without one); the cost, which
        a settlement reports only when the call was `priced`. A caller cut meanwhile ends
        only once the ledger answered, so that the hold is settled (or known not to be)
        rather than left counted until its ttl."""
        settling = asyncio.ensure_future(self._settle(reservation, record_id, record, priced))
        try:
            return await asyncio.shield(settling)
        except asyncio.CancelledError:
            await asyncio.gather(settling, return_exceptions=True)
            raise

    async def _settle(
        self, reservation: str, record_id: str, record: ledger_pb2.UsageRecord, priced: bool
    ) -> str:
        usage = ledger_pb2.RecordUsageRequest(usage_record_id=record_id, usage_record=record)
        retry = self._config.settle_retry_seconds
        if not reservation:
            stored = await self._call("record usage", self._stub.RecordUsage, usage, retry)
            return str(stored.usage.cost)
        request = ledger_pb2.SettleReservationRequest(name=reservation, usage_records=[usage])
        settled = await self._call("settle", self._spend.SettleReservation, request, retry)
        return str(settled.settled.cost) if priced else ""

    async def _cached_price(self, model: str) -> ModelPrice | None:
        """The price known when reserving; asked again only when the cache lost it."""
        try:
            return await self._price(model)
        except LedgerUnavailable:
            return None

    async def _call(
        self,
        what: str,
        rpc: Callable[..., Awaitable[T]],
        request: Any,
        retry_seconds: float | None = None,
    ) -> T:
        """`rpc(request)`, retried with backoff while the ledger is unreachable (every
        ledger call made here is idempotent); LedgerUnavailable once `retry_seconds`
        passed."""
        give_up = time.monotonic() + (
            self._config.retry_seconds if retry_seconds is None else retry_seconds
        )
        pause = 0.05
        while True:
            try:
                return await rpc(request, timeout=self._config.attempt_timeout)
            except grpc.aio.AioRpcError as error:
                if error.code() not in _RETRYABLE:
                    raise
                if time.monotonic() + pause > give_up:
                    raise LedgerUnavailable(what, error) from error
                log.info("ledger %s failed (%s); retrying", what, error.code().name)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)


def tree_root(job: jobs_pb2.Job) -> str:
    """The root of the job's tree: the job itself for a top-level job."""
    return job.root or job.name


def tree_inherits(job: jobs_pb2.Job) -> bool:
    """Whether the job's tree spends from its root's account (the default)."""
    config = job.spec.orchestration
    return not config.HasField("inherit_budgets") or config.inherit_budgets


def tree_budget_id(root: str) -> str:
    """The ledger budget of a job tree: "tree-{root job id}"."""
    return f"tree-{root.removeprefix('jobs/')}"


def _usage_record(job: jobs_pb2.Job, usage: common_pb2.Usage) -> ledger_pb2.UsageRecord:
    """A usage record of the job. Only stable fields go in (the job's trace id, not the
    current span's), so that a worker that repeats the call sends the same body; the
    tree's root makes usage "by job tree" exact at any depth."""
    return ledger_pb2.UsageRecord(
        usage=usage,
        tenant=job.tenant,
        principal=job.principal,
        job=job.name,
        parent_job=job.spec.parent,
        root_job=tree_root(job),
        trace_id=job.trace_id,
    )


def _job_denial(limit_name: str, limit: str, overrun: str, because: str) -> BudgetExceeded:
    """BudgetExceeded for the job's own BudgetSpec."""
    return BudgetExceeded(
        common_pb2.Failure(
            reason=common_pb2.ERROR_REASON_BUDGET_EXCEEDED,
            message=(
                f"job budget {limit_name} ({limit}) would be exceeded by {overrun}: {because}"
            ),
            metadata={
                "budget": f"job.spec.budget.{limit_name}",
                "limit": limit,
                "overrun": overrun,
            },
        )
    )


def _tenant_denial(error: grpc.aio.AioRpcError) -> BudgetExceeded:
    """BudgetExceeded from the ledger's RESOURCE_EXHAUSTED, naming the tenant's budget."""
    metadata = error_from_rpc(error).metadata  # the budget, dimension, limit, overrun
    return BudgetExceeded(
        common_pb2.Failure(
            reason=common_pb2.ERROR_REASON_BUDGET_EXCEEDED,
            message=f"tenant {error.details()}",
            metadata=metadata,
        )
    )


def _text(amount: Decimal) -> str:
    """Dollars as the contract writes them."""
    return from_nanos(to_nanos(amount))
