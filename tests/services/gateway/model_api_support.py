"""What the model API's tests share: the system with the HTTP endpoint on, a priced model,
budgets, policy rules, and the ledger's records."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agentrt.common.v1 import common_pb2
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from agentrt.ledger.v1.ledger_pb2 import Amounts, Budget, Price
from agentrt.policy.v1 import policy_pb2, policy_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan

from services.dev import LocalSystem, local_system

MODEL = "local"
TENANT = "dev"


@pytest.fixture
async def system(
    servers: tuple[str, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[LocalSystem]:
    """Every service in this process, the gateway's OpenAI-compatible endpoint on a free
    port, and the `local` model priced (so that every call has a cost)."""
    monkeypatch.setenv("AGENTRT_HTTP_LISTEN_ADDRESS", "127.0.0.1:0")
    database_url, redis_url, redis_prefix = servers
    async with local_system(
        tmp_path / "data", database_url=database_url, redis_url=redis_url, redis_prefix=redis_prefix
    ) as running:
        assert running.http_url.startswith("http://127.0.0.1:")
        await ledger(running).CreatePrice(
            ledger_pb2.CreatePriceRequest(
                price_id=MODEL,
                price=Price(input_price_per_million="1", output_price_per_million="2"),
            ),
            timeout=5,
        )
        yield running


def ledger(system: LocalSystem) -> ledger_pb2_grpc.LedgerServiceAsyncStub:
    return ledger_pb2_grpc.LedgerServiceStub(system.infra.channel("ledger"))


async def usage_records(system: LocalSystem, tenant: str = TENANT) -> list[ledger_pb2.UsageRecord]:
    listed = await ledger(system).ListUsageRecords(
        ledger_pb2.ListUsageRecordsRequest(tenant=tenant, page_size=1000), timeout=5
    )
    return list(listed.usage_records)


async def set_token_budget(system: LocalSystem, tokens: int, tenant: str = TENANT) -> None:
    """A daily budget of `tokens` for the tenant."""
    budget = Budget(tenant=tenant, period=Budget.PERIOD_DAY, limits=Amounts(tokens=tokens))
    await ledger(system).CreateBudget(
        ledger_pb2.CreateBudgetRequest(budget_id=f"{tenant}-daily", budget=budget), timeout=5
    )


async def deny_model(
    system: LocalSystem, pattern: str = MODEL, policy_set: str = "default", tenant: str = ""
) -> None:
    """A policy set (the default one unless named) with a rule that denies the model (to
    `tenant` alone when given)."""
    rule = policy_pb2.Rule(
        id="no-local",
        description="local is not for tenants",
        model=policy_pb2.ModelRule(
            patterns=[pattern],
            verdict=policy_pb2.VERDICT_DENY,
            tenants=[tenant] if tenant else [],
        ),
    )
    await policy_pb2_grpc.PolicyServiceStub(system.infra.channel("policy")).CreatePolicySet(
        policy_pb2.CreatePolicySetRequest(
            policy_set_id=policy_set, policy_set=policy_pb2.PolicySet(rules=[rule])
        ),
        timeout=5,
    )


async def reserved_tokens(system: LocalSystem, tenant: str = TENANT) -> int:
    """Tokens held by reservations against the tenant's budgets now."""
    checked = await ledger(system).CheckBudget(
        ledger_pb2.CheckBudgetRequest(tenant=tenant), timeout=5
    )
    return sum(status.reserved.tokens for status in checked.budgets)


async def spent_tokens(system: LocalSystem, tenant: str = TENANT) -> int:
    """Tokens counted against the tenant's budgets in their current periods."""
    checked = await ledger(system).CheckBudget(
        ledger_pb2.CheckBudgetRequest(tenant=tenant), timeout=5
    )
    return sum(status.spent.tokens for status in checked.budgets)


def expect_usage_on(span: ReadableSpan, usage: common_pb2.Usage) -> None:
    """The request's span carries the call's model and its priced usage."""
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == attributes["gen_ai.response.model"] == MODEL
    assert attributes["gen_ai.usage.input_tokens"] == usage.input_tokens > 0
    assert attributes["gen_ai.usage.output_tokens"] == usage.output_tokens > 0
    assert attributes["agentrt.usage.cost"] == usage.cost != ""
