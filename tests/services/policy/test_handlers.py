"""PolicyService through a real gRPC server: CRUD, etags, validation and evaluation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import pytest
from agentrt.common.v1.common_pb2 import ToolCall
from agentrt.policy.v1 import policy_pb2, policy_pb2_grpc
from agentrt.policy.v1.policy_pb2 import (
    JobCounts,
    LimitsRule,
    ModelRule,
    PolicySet,
    Rule,
    ScopeRule,
    ToolRule,
    Verdict,
)
from google.protobuf.field_mask_pb2 import FieldMask

from services.kit.config import RuntimeConfig
from services.kit.events import InMemoryEventChannel, InMemoryWakeups
from services.kit.infra import Infrastructure
from services.kit.server import Server
from services.kit.storage import migrate
from services.policy.names import CHANGED_TOPIC
from services.policy.server import create_unit
from services.policy.store import SQL_DIRECTORY
from tests.services.kit.status import error_info

Stub: TypeAlias = "policy_pb2_grpc.PolicyServiceAsyncStub"


@pytest.fixture
def wakeups() -> InMemoryWakeups:
    """The wake-ups the policy unit announces its changes on."""
    return InMemoryWakeups()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def policy_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The policy unit's environment: SQLite as `agentrt dev` runs it, or PostgreSQL, so
    that every RPC's statuses (ABORTED on a stale etag among them) hold on both stores."""
    env = {"AGENTRT_DATA_DIR": str(tmp_path)}
    if request.param == "postgres":
        env["AGENTRT_DATABASE_URL"] = request.getfixturevalue("pg_dsn")
    return env


@pytest.fixture
async def policy(policy_env: dict[str, str], wakeups: InMemoryWakeups) -> AsyncIterator[Stub]:
    """A stub of the policy unit served by a real server."""
    env = policy_env
    config = RuntimeConfig.from_env(env)
    infra = Infrastructure(config, InMemoryEventChannel(), wakeups)
    await migrate(infra.storage("policy"), SQL_DIRECTORY)
    server = Server("127.0.0.1:0", "policy")
    await server.start([await create_unit(infra)])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield policy_pb2_grpc.PolicyServiceStub(channel)
    finally:
        await server.stop(grace=1.0)
        await infra.close()


def deny_shell() -> Rule:
    return Rule(
        id="no-shell",
        description="no shell in production",
        tool=ToolRule(patterns=["shell*"], verdict=Verdict.VERDICT_DENY),
    )


def approve_writes() -> Rule:
    rule = Rule(
        id="writes",
        tool=ToolRule(patterns=["file_write"], verdict=Verdict.VERDICT_REQUIRE_APPROVAL),
    )
    rule.tool.approval_timeout.FromSeconds(120)
    return rule


async def create(
    stub: Stub, policy_set_id: str = "production", *rules: Rule, request_id: str = ""
) -> PolicySet:
    request = policy_pb2.CreatePolicySetRequest(
        policy_set_id=policy_set_id,
        policy_set=PolicySet(description="prod", rules=rules or (deny_shell(),)),
        request_id=request_id,
    )
    created: PolicySet = await stub.CreatePolicySet(request, timeout=5)
    return created


async def failure(call: Any) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """The status code, ErrorInfo reason and metadata of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    info = error_info(raised.value)
    return raised.value.code(), info.reason, dict(info.metadata)


# CRUD


async def test_create_get_list_update_delete(policy: Stub) -> None:
    created = await create(policy)
    assert (created.name, created.version) == ("policySets/production", 1)
    await create(policy, "staging")

    got = await policy.GetPolicySet(policy_pb2.GetPolicySetRequest(name=created.name))
    assert got == created

    first = await policy.ListPolicySets(policy_pb2.ListPolicySetsRequest(page_size=1))
    assert [s.name for s in first.policy_sets] == ["policySets/production"]
    second = await policy.ListPolicySets(
        policy_pb2.ListPolicySetsRequest(page_size=1, page_token=first.next_page_token)
    )
    assert [s.name for s in second.policy_sets] == ["policySets/staging"]
    assert second.next_page_token == ""

    update = PolicySet(name=created.name, etag=created.etag, rules=[approve_writes()])
    updated = await policy.UpdatePolicySet(
        policy_pb2.UpdatePolicySetRequest(policy_set=update, update_mask=FieldMask(paths=["rules"]))
    )
    assert updated.version == 2
    assert [r.id for r in updated.rules] == ["writes"]
    assert updated.description == "prod"

    await policy.DeletePolicySet(
        policy_pb2.DeletePolicySetRequest(name=created.name, etag=updated.etag)
    )
    code, reason, _ = await failure(
        policy.GetPolicySet(policy_pb2.GetPolicySetRequest(name=created.name))
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")


async def test_create_twice_is_already_exists_unless_the_request_is_retried(policy: Stub) -> None:
    first = await create(policy, request_id="req-1")
    assert await create(policy, request_id="req-1") == first

    code, reason, _ = await failure(create(policy))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS")
    code, reason, _ = await failure(
        create(policy, "production", approve_writes(), request_id="req-1")
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")


async def test_an_empty_update_mask_changes_the_fields_that_are_set(policy: Stub) -> None:
    created = await create(policy)
    updated = await policy.UpdatePolicySet(
        policy_pb2.UpdatePolicySetRequest(
            policy_set=PolicySet(name=created.name, description="now documented")
        )
    )
    assert updated.description == "now documented"
    assert [r.id for r in updated.rules] == ["no-shell"]

    everything = await policy.UpdatePolicySet(
        policy_pb2.UpdatePolicySetRequest(
            policy_set=PolicySet(name=created.name), update_mask=FieldMask(paths=["*"])
        )
    )
    assert (everything.description, list(everything.rules), everything.version) == ("", [], 3)


async def test_stale_etags_are_aborted(policy: Stub) -> None:
    created = await create(policy)
    change = PolicySet(name=created.name, etag=created.etag, description="first")
    await policy.UpdatePolicySet(policy_pb2.UpdatePolicySetRequest(policy_set=change))

    change.description = "second"
    code, reason, metadata = await failure(
        policy.UpdatePolicySet(policy_pb2.UpdatePolicySetRequest(policy_set=change))
    )
    assert (code, reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    assert metadata["name"] == created.name
    code, reason, _ = await failure(
        policy.DeletePolicySet(
            policy_pb2.DeletePolicySetRequest(name=created.name, etag=created.etag)
        )
    )
    assert (code, reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    got = await policy.GetPolicySet(policy_pb2.GetPolicySetRequest(name=created.name))
    assert (got.description, got.version) == ("first", 2)


async def test_concurrent_updates_with_one_etag_let_one_win(policy: Stub) -> None:
    created = await create(policy)

    async def update(n: int) -> grpc.StatusCode:
        change = PolicySet(name=created.name, etag=created.etag, description=f"writer {n}")
        try:
            await policy.UpdatePolicySet(policy_pb2.UpdatePolicySetRequest(policy_set=change))
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    codes = await asyncio.gather(*(update(n) for n in range(5)))
    assert sorted(code.name for code in codes) == ["ABORTED"] * 4 + ["OK"]


async def test_every_write_is_announced_to_the_orchestrators(
    policy: Stub, wakeups: InMemoryWakeups
) -> None:
    async def announced() -> bool:
        # The in-process notify ran before the RPC answered, so it is kept already.
        return await wakeups.wait(CHANGED_TOPIC, 0)

    await wakeups.listen(CHANGED_TOPIC)
    created = await create(policy)
    assert await announced()
    updated = await policy.UpdatePolicySet(
        policy_pb2.UpdatePolicySetRequest(
            policy_set=PolicySet(name=created.name, etag=created.etag, description="v2")
        )
    )
    assert await announced()

    with pytest.raises(grpc.aio.AioRpcError):
        await policy.UpdatePolicySet(
            policy_pb2.UpdatePolicySetRequest(
                policy_set=PolicySet(name=created.name, etag=created.etag, description="v3")
            )
        )
    assert not await announced()

    await policy.DeletePolicySet(
        policy_pb2.DeletePolicySetRequest(name=created.name, etag=updated.etag)
    )
    assert await announced()


# Validation


def bad_rule() -> Rule:
    return Rule(id="empty", model=ModelRule(verdict=Verdict.VERDICT_DENY))


@pytest.mark.parametrize(
    ("request_", "reason", "field"),
    [
        (
            policy_pb2.CreatePolicySetRequest(policy_set=PolicySet()),
            "FIELD_REQUIRED",
            "policy_set_id",
        ),
        (policy_pb2.CreatePolicySetRequest(policy_set_id="prod"), "FIELD_REQUIRED", "policy_set"),
        (
            policy_pb2.CreatePolicySetRequest(policy_set_id="Prod", policy_set=PolicySet()),
            "FIELD_INVALID",
            "policy_set_id",
        ),
        (
            policy_pb2.CreatePolicySetRequest(
                policy_set_id="prod", policy_set=PolicySet(rules=[deny_shell(), bad_rule()])
            ),
            "FIELD_INVALID",
            "policy_set.rules[1].model.patterns",
        ),
        (
            policy_pb2.CreatePolicySetRequest(
                policy_set_id="prod", policy_set=PolicySet(), request_id="x" * 129
            ),
            "FIELD_INVALID",
            "request_id",
        ),
    ],
)
async def test_a_bad_create_is_invalid_and_names_the_field(
    policy: Stub, request_: policy_pb2.CreatePolicySetRequest, reason: str, field: str
) -> None:
    code, got_reason, metadata = await failure(policy.CreatePolicySet(request_))
    assert (code, got_reason, metadata["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
        field,
    )
    listed = await policy.ListPolicySets(policy_pb2.ListPolicySetsRequest())
    assert list(listed.policy_sets) == []


async def test_a_bad_update_is_invalid_and_changes_nothing(policy: Stub) -> None:
    created = await create(policy)
    requests = {
        "policy_set.rules[0].model.patterns": policy_pb2.UpdatePolicySetRequest(
            policy_set=PolicySet(name=created.name, rules=[bad_rule()])
        ),
        "update_mask": policy_pb2.UpdatePolicySetRequest(
            policy_set=PolicySet(name=created.name, description="x"),
            update_mask=FieldMask(paths=["version"]),
        ),
        "policy_set.name": policy_pb2.UpdatePolicySetRequest(
            policy_set=PolicySet(name="production", description="x")
        ),
    }
    for field, request in requests.items():
        code, _, metadata = await failure(policy.UpdatePolicySet(request))
        assert (code, metadata["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, field)
    empty = policy_pb2.UpdatePolicySetRequest(policy_set=PolicySet(name=created.name))
    _, reason, metadata = await failure(policy.UpdatePolicySet(empty))
    assert (reason, metadata["field"]) == ("FIELD_INVALID", "update_mask")
    assert await policy.GetPolicySet(policy_pb2.GetPolicySetRequest(name=created.name)) == created


async def test_bad_names_and_page_requests_are_invalid(policy: Stub) -> None:
    for name in ("", "policySets/", "policySets/UPPER", "jobs/production", "policySets/a/b"):
        _, reason, metadata = await failure(
            policy.GetPolicySet(policy_pb2.GetPolicySetRequest(name=name))
        )
        assert (reason, metadata["field"]) == ("NAME_INVALID", "name")
    for request in (
        policy_pb2.ListPolicySetsRequest(page_size=-1),
        policy_pb2.ListPolicySetsRequest(page_token="nonsense"),
    ):
        code, reason, _ = await failure(policy.ListPolicySets(request))
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")


# Evaluation


def evaluate(
    policy_set: str = "",
    model: str = "",
    tool: str = "",
    tenant: str = "acme",
    counts: JobCounts | None = None,
) -> policy_pb2.EvaluatePolicyRequest:
    request = policy_pb2.EvaluatePolicyRequest(
        tenant=tenant, principal="alice", policy_set=policy_set, counts=counts, job="jobs/x"
    )
    if model:
        request.model = model
    if tool:
        request.tool_call.CopyFrom(ToolCall(id="c1", name=tool, arguments='{"path": "/tmp/x"}'))
    return request


async def test_evaluation_decides_with_the_named_set(policy: Stub) -> None:
    limits = Rule(id="limits", limits=LimitsRule(max_turns=3))
    created = await create(policy, "production", deny_shell(), approve_writes(), limits)

    denied = await policy.EvaluatePolicy(evaluate(created.name, tool="shell_exec"))
    assert denied.decision.verdict == Verdict.VERDICT_DENY
    assert denied.decision.matched_rule.rule_id == "no-shell"
    assert denied.decision.reason.startswith("rule no-shell: no shell in production")
    assert (denied.policy_version, denied.policy_set) == (1, created.name)

    approval = await policy.EvaluatePolicy(evaluate(created.name, tool="file_write"))
    assert approval.decision.verdict == Verdict.VERDICT_REQUIRE_APPROVAL
    assert approval.decision.approval_timeout.seconds == 120

    allowed = await policy.EvaluatePolicy(evaluate(created.name, model="gpt-4o"))
    assert allowed.decision.verdict == Verdict.VERDICT_ALLOW
    assert not allowed.decision.HasField("matched_rule")

    too_far = await policy.EvaluatePolicy(
        evaluate(created.name, model="gpt-4o", counts=JobCounts(turns=3))
    )
    assert too_far.decision.matched_rule.rule_id == "limits"


async def test_scope_rules_and_model_rules_decide_through_the_rpc(policy: Stub) -> None:
    scope = Rule(
        id="scope",
        scope=ScopeRule(denied_tenants=["evil"], denied_principals=["mallory"]),
    )
    big = Rule(
        id="big-models",
        model=ModelRule(patterns=["gpt-4*"], verdict=Verdict.VERDICT_REQUIRE_APPROVAL),
    )
    local = Rule(id="no-local", model=ModelRule(patterns=["local"], verdict=Verdict.VERDICT_DENY))
    created = await create(policy, "production", scope, big, local)

    async def decided(request: policy_pb2.EvaluatePolicyRequest) -> tuple[int, str]:
        response = await policy.EvaluatePolicy(request)
        return response.decision.verdict, response.decision.matched_rule.rule_id

    by_mallory = evaluate(created.name, tool="search")
    by_mallory.principal = "mallory"
    assert await decided(evaluate(created.name, model="gpt-4o", tenant="evil")) == (
        Verdict.VERDICT_DENY,
        "scope",
    )
    assert await decided(by_mallory) == (Verdict.VERDICT_DENY, "scope")
    assert await decided(evaluate(created.name, model="gpt-4o")) == (
        Verdict.VERDICT_REQUIRE_APPROVAL,
        "big-models",
    )
    assert await decided(evaluate(created.name, model="local")) == (
        Verdict.VERDICT_DENY,
        "no-local",
    )
    assert await decided(evaluate(created.name, model="o1")) == (Verdict.VERDICT_ALLOW, "")


async def test_evaluation_uses_the_new_rules_at_once_after_an_update(policy: Stub) -> None:
    created = await create(policy)
    await policy.UpdatePolicySet(
        policy_pb2.UpdatePolicySetRequest(
            policy_set=PolicySet(name=created.name, rules=[approve_writes()])
        )
    )
    after = await policy.EvaluatePolicy(evaluate(created.name, tool="shell"))
    assert (after.decision.verdict, after.policy_version) == (Verdict.VERDICT_ALLOW, 2)


async def test_without_a_default_set_everything_is_allowed_at_version_zero(policy: Stub) -> None:
    response = await policy.EvaluatePolicy(evaluate(tool="shell"))
    assert response.decision.verdict == Verdict.VERDICT_ALLOW
    assert (response.policy_version, response.policy_set) == (0, "policySets/default")


async def test_an_empty_set_name_means_the_default_set(policy: Stub) -> None:
    await create(policy, "default")
    response = await policy.EvaluatePolicy(evaluate(tool="shell"))
    assert response.decision.verdict == Verdict.VERDICT_DENY
    assert (response.policy_version, response.policy_set) == (1, "policySets/default")
    assert response.decision.matched_rule.policy_set == "policySets/default"


async def test_evaluating_a_missing_named_set_is_not_found(policy: Stub) -> None:
    code, reason, _ = await failure(
        policy.EvaluatePolicy(evaluate("policySets/gone", model="gpt-4o"))
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")


@pytest.mark.parametrize(
    ("request_", "reason", "field"),
    [
        (evaluate(model="m", tenant=""), "FIELD_REQUIRED", "tenant"),
        (evaluate(), "FIELD_REQUIRED", "subject"),
        (policy_pb2.EvaluatePolicyRequest(tenant="acme", model=""), "FIELD_REQUIRED", "model"),
        (
            policy_pb2.EvaluatePolicyRequest(tenant="acme", tool_call=ToolCall(id="c1")),
            "FIELD_REQUIRED",
            "tool_call.name",
        ),
        (evaluate("production", model="m"), "NAME_INVALID", "policy_set"),
    ],
)
async def test_a_bad_evaluation_request_is_invalid(
    policy: Stub, request_: policy_pb2.EvaluatePolicyRequest, reason: str, field: str
) -> None:
    code, got_reason, metadata = await failure(policy.EvaluatePolicy(request_))
    assert (code, got_reason, metadata["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
        field,
    )
