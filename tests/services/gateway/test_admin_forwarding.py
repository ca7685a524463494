"""The admin APIs through the gateway: admin keys call them, tenant keys read their own
tenant's budgets and usage only, and the services' answers and errors come back as they are.

The system fixture runs every service in one server, where the gateway forwards nothing
(the services answer on that port themselves); these tests start a second gateway, alone
in its server as in production, that forwards to the system.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from agentrt.common.v1 import common_pb2
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from agentrt.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from agentrt.policy.v1 import policy_pb2, policy_pb2_grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.dev import DEV_TENANT, LocalSystem, dev_api_key
from services.gateway.admin import create_api_key, key_principal
from services.gateway.admin_forwarding import (
    FORWARDED_SERVICES,
    Access,
    authorize,
    forwarded_here,
)
from services.gateway.keys import Principal
from services.gateway.server import MODEL_SERVICE, RUNTIME_SERVICE
from services.kit.errors import PermissionDenied
from services.units import create_unit
from tests.services.gateway.conftest import TIMEOUT, Metadata, bearer, refused
from tests.services.gateway.forwarding import forwarding_gateway

Budget = ledger_pb2.Budget


@pytest.fixture
async def channel(system: LocalSystem) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a gateway in a server of its own, forwarding to the system."""
    async with (
        forwarding_gateway(system) as endpoint,
        grpc.aio.insecure_channel(endpoint) as opened,
    ):
        yield opened


@pytest.fixture
def admin(system: LocalSystem) -> Metadata:
    """The dev key, which is an admin key."""
    return bearer(system.api_key)


@pytest.fixture
async def tenant(system: LocalSystem) -> Metadata:
    """A tenant key of the dev tenant."""
    return bearer(await create_api_key(system.infra.storage("gateway"), DEV_TENANT, "app"))


@pytest.fixture
def ledger(channel: grpc.aio.Channel) -> ledger_pb2_grpc.LedgerServiceAsyncStub:
    return ledger_pb2_grpc.LedgerServiceStub(channel)


def budget(tenant: str, tokens: int = 1000) -> Budget:
    return Budget(
        tenant=tenant,
        period=Budget.PERIOD_MONTH,
        limits=ledger_pb2.Amounts(tokens=tokens),
        warn_threshold=0.8,
    )


async def create_budget(
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub, key: Metadata, budget_id: str, tenant: str
) -> Budget:
    created: Budget = await ledger.CreateBudget(
        ledger_pb2.CreateBudgetRequest(budget_id=budget_id, budget=budget(tenant)),
        metadata=key,
        timeout=TIMEOUT,
    )
    return created


def test_every_method_of_a_forwarded_service_has_an_access_rule() -> None:
    for service in FORWARDED_SERVICES:
        methods = {method.name for method in service.descriptor.methods}
        assert set(service.access) == methods, service.full_name
        for name, access in service.access.items():
            method = service.descriptor.methods_by_name[name]
            if access is Access.TENANT:
                assert "tenant" in method.input_type.fields_by_name, name
            if access is Access.TENANT_RESULT:
                assert "tenant" in method.output_type.fields_by_name, name


def test_authorize_forces_the_tenant_of_a_tenant_key_and_passes_an_admin_request() -> None:
    team = Principal("acme", "app", "k" * 16)
    operator = Principal("ops", "root", "o" * 16, admin=True)
    asked = ledger_pb2.ListBudgetsRequest(page_size=5)

    forced = authorize(team, Access.TENANT, "LedgerService.ListBudgets", asked)
    assert forced == ledger_pb2.ListBudgetsRequest(tenant="acme", page_size=5)
    assert asked.tenant == ""  # the caller's message is left alone
    assert authorize(operator, Access.TENANT, "m", asked) is asked
    assert authorize(operator, Access.ADMIN, "m", asked) is asked
    for caller, access in [(team, Access.ADMIN), (team, None), (operator, Access.INTERNAL)]:
        with pytest.raises(PermissionDenied):
            authorize(caller, access, "m", asked)
    with pytest.raises(PermissionDenied):
        authorize(team, Access.TENANT, "m", ledger_pb2.ListBudgetsRequest(tenant="globex"))


def test_the_dev_gateway_forwards_nothing_its_own_server_serves() -> None:
    assert forwarded_here(lambda service: True) == []
    assert [s.name for s in forwarded_here(lambda service: service == "policy")] == [
        "ledger",
        "orchestrator",
        "replay",
    ]


async def test_in_dev_the_gateway_serves_only_its_own_services(system: LocalSystem) -> None:
    unit = await create_unit("gateway", system.infra)
    try:
        assert list(unit.service_names) == [RUNTIME_SERVICE, MODEL_SERVICE]
    finally:
        await unit.close()


async def test_the_gateway_reports_health_of_what_it_forwards(
    channel: grpc.aio.Channel,
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in FORWARDED_SERVICES:
        answer = await health.Check(
            health_pb2.HealthCheckRequest(service=service.full_name), timeout=TIMEOUT
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_an_admin_key_manages_budgets_of_any_tenant(
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub, admin: Metadata
) -> None:
    created = await create_budget(ledger, admin, "globex-monthly", "globex")
    assert (created.name, created.tenant) == ("budgets/globex-monthly", "globex")
    listed = await ledger.ListBudgets(
        ledger_pb2.ListBudgetsRequest(tenant="globex"), metadata=admin, timeout=TIMEOUT
    )
    assert [b.name for b in listed.budgets] == ["budgets/globex-monthly"]


async def test_a_tenant_key_cannot_change_anything(
    channel: grpc.aio.Channel,
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub,
    tenant: Metadata,
) -> None:
    policy = policy_pb2_grpc.PolicyServiceStub(channel)
    orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
    calls: list[Awaitable[object]] = [
        ledger.CreateBudget(
            ledger_pb2.CreateBudgetRequest(budget_id="mine", budget=budget(DEV_TENANT)),
            metadata=tenant,
            timeout=TIMEOUT,
        ),
        ledger.CreatePrice(
            ledger_pb2.CreatePriceRequest(
                price_id="local",
                price=ledger_pb2.Price(input_price_per_million="1", output_price_per_million="2"),
            ),
            metadata=tenant,
            timeout=TIMEOUT,
        ),
        policy.ListPolicySets(policy_pb2.ListPolicySetsRequest(), metadata=tenant, timeout=TIMEOUT),
        orchestrator.ListPlugins(
            orchestrator_pb2.ListPluginsRequest(), metadata=tenant, timeout=TIMEOUT
        ),
    ]
    methods = []
    for call in calls:
        code, info = await refused(call)
        assert (code, info.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
        methods.append(info.metadata["method"])
    assert methods == [
        "LedgerService.CreateBudget",
        "LedgerService.CreatePrice",
        "PolicyService.ListPolicySets",
        "OrchestratorService.ListPlugins",
    ]


async def test_reservations_are_not_reachable_even_with_an_admin_key(
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub, admin: Metadata
) -> None:
    code, info = await refused(
        ledger.ReserveBudget(
            ledger_pb2.ReserveBudgetRequest(tenant="dev", amounts=ledger_pb2.Amounts(tokens=1)),
            metadata=admin,
            timeout=TIMEOUT,
        )
    )
    assert (code, info.metadata["method"]) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "LedgerService.ReserveBudget",
    )


async def test_a_tenant_key_reads_its_own_tenant_only(
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub, admin: Metadata, tenant: Metadata
) -> None:
    await create_budget(ledger, admin, "dev-monthly", DEV_TENANT)
    await create_budget(ledger, admin, "globex-monthly", "globex")

    # Unnamed tenant: forced to the key's.
    listed = await ledger.ListBudgets(ledger_pb2.ListBudgetsRequest(), metadata=tenant)
    assert [b.name for b in listed.budgets] == ["budgets/dev-monthly"]
    check = await ledger.CheckBudget(
        ledger_pb2.CheckBudgetRequest(amounts=ledger_pb2.Amounts(tokens=10)), metadata=tenant
    )
    assert check.deciding_budget == "budgets/dev-monthly"
    assert check.verdict == ledger_pb2.BUDGET_VERDICT_ALLOW
    mine = await ledger.GetBudget(
        ledger_pb2.GetBudgetRequest(name="budgets/dev-monthly"), metadata=tenant
    )
    assert mine.tenant == DEV_TENANT

    # Another tenant, named or reached by name: refused, or hidden as if missing.
    code, info = await refused(
        ledger.ListBudgets(ledger_pb2.ListBudgetsRequest(tenant="globex"), metadata=tenant)
    )
    assert (code, info.metadata["tenant"]) == (grpc.StatusCode.PERMISSION_DENIED, "globex")
    hidden = await refused(
        ledger.GetBudget(
            ledger_pb2.GetBudgetRequest(name="budgets/globex-monthly"), metadata=tenant
        )
    )
    missing = await refused(
        ledger.GetBudget(ledger_pb2.GetBudgetRequest(name="budgets/nobody"), metadata=tenant)
    )
    assert hidden[0] == missing[0] == grpc.StatusCode.NOT_FOUND
    assert hidden[1].reason == missing[1].reason == "NOT_FOUND"


async def test_a_tenant_key_sees_the_usage_report_of_its_tenant(
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub, admin: Metadata, tenant: Metadata
) -> None:
    for tenant_name in (DEV_TENANT, "globex"):
        await ledger.RecordUsage(
            ledger_pb2.RecordUsageRequest(
                usage_record_id=f"r-{tenant_name}",
                usage_record=ledger_pb2.UsageRecord(
                    kind=ledger_pb2.USAGE_KIND_MODEL_CALL,
                    model="local",
                    tenant=tenant_name,
                    principal="app",
                    usage=common_pb2.Usage(input_tokens=3, output_tokens=4),
                ),
            ),
            metadata=admin,
            timeout=TIMEOUT,
        )
    start = timestamp_pb2.Timestamp()
    start.FromDatetime(datetime.now(UTC) - timedelta(days=1))
    request = ledger_pb2.GetUsageReportRequest(
        start_time=start, group_by=[ledger_pb2.USAGE_DIMENSION_TENANT]
    )
    everyone = await ledger.GetUsageReport(request, metadata=admin, timeout=TIMEOUT)
    assert sorted(row.tenant for row in everyone.rows) == [DEV_TENANT, "globex"]
    own = await ledger.GetUsageReport(request, metadata=tenant, timeout=TIMEOUT)
    assert [(row.tenant, row.usage.total_tokens) for row in own.rows] == [(DEV_TENANT, 7)]


async def test_the_services_errors_are_relayed_with_their_error_info(
    channel: grpc.aio.Channel, ledger: ledger_pb2_grpc.LedgerServiceAsyncStub, admin: Metadata
) -> None:
    code, info = await refused(
        ledger.CreateBudget(
            ledger_pb2.CreateBudgetRequest(budget_id="Not A Name", budget=budget("dev")),
            metadata=admin,
            timeout=TIMEOUT,
        )
    )
    assert (code, info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")
    policy = policy_pb2_grpc.PolicyServiceStub(channel)
    created = await policy.CreatePolicySet(
        policy_pb2.CreatePolicySetRequest(
            policy_set_id="production", policy_set=policy_pb2.PolicySet(description="v1")
        ),
        metadata=admin,
        timeout=TIMEOUT,
    )
    updated = await policy.UpdatePolicySet(
        policy_pb2.UpdatePolicySetRequest(
            policy_set=policy_pb2.PolicySet(name=created.name, description="v2", etag=created.etag)
        ),
        metadata=admin,
        timeout=TIMEOUT,
    )
    assert updated.version == created.version + 1
    code, info = await refused(
        policy.UpdatePolicySet(
            policy_pb2.UpdatePolicySetRequest(
                policy_set=policy_pb2.PolicySet(
                    name=created.name, description="v3", etag=created.etag
                )
            ),
            metadata=admin,
            timeout=TIMEOUT,
        )
    )
    assert (code, info.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")


async def test_admin_calls_need_a_valid_key(
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub,
) -> None:
    code, info = await refused(ledger.ListBudgets(ledger_pb2.ListBudgetsRequest()))
    assert (code, info.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")
    code, info = await refused(
        ledger.ListBudgets(ledger_pb2.ListBudgetsRequest(), metadata=bearer("agk_nope"))
    )
    assert (code, info.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")


async def test_the_dev_key_is_an_admin_key_kept_across_restarts(system: LocalSystem) -> None:
    storage = system.infra.storage("gateway")
    owner = await key_principal(storage, system.api_key)
    assert owner is not None and (owner.tenant, owner.admin) == (DEV_TENANT, True)
    assert await dev_api_key(system.infra, system.api_key) == system.api_key

    # A dev.json of an older release holds a tenant key: it is replaced by an admin key.
    older = await create_api_key(storage, DEV_TENANT, "dev")
    replaced = await dev_api_key(system.infra, older)
    assert replaced != older
    renewed = await key_principal(storage, replaced)
    assert renewed is not None and renewed.admin
