"""CachedPolicy over a real PolicyService: cache hits, invalidation by notice and by
version check, limits decided on fresh counts, the default set, missing sets, outages,
two caches (two orchestrator processes) sharing Redis wake-ups, and the in-process
system of `agentrt dev`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
import redis.asyncio
from agentrt import Client
from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2
from agentrt.policy.v1 import policy_pb2, policy_pb2_grpc
from agentrt.policy.v1.policy_pb2 import (
    JobCounts,
    LimitsRule,
    ModelRule,
    PolicySet,
    Rule,
    ToolRule,
    Verdict,
)

from services.dev import LocalSystem, local_system
from services.kit.config import RuntimeConfig
from services.kit.events import InMemoryEventChannel, InMemoryWakeups, RedisWakeups, Wakeups
from services.kit.infra import Infrastructure
from services.kit.server import Server
from services.kit.storage import migrate
from services.orchestrator.policy import (
    CachedPolicy,
    PolicyCacheConfig,
    PolicySetNotFound,
    PolicyUnavailable,
    open_policy_guard,
)
from services.policy.server import create_unit
from services.policy.store import SQL_DIRECTORY
from tests.e2e.processes import free_port

if TYPE_CHECKING:
    from agentrt.policy.v1.policy_pb2_grpc import PolicyServiceAsyncStub

LONG = PolicyCacheConfig(revalidate_seconds=3600)
"""So long that only a notice can refresh a set within a test."""
NO_COUNTS = JobCounts()


@dataclass
class PolicyServer:
    """The policy unit served on a real port, and a stub of it."""

    address: str
    stub: PolicyServiceAsyncStub
    server: Server
    stopped: bool = False

    def cache(
        self, wakeups: Wakeups, config: PolicyCacheConfig = LONG, clock: Clock | None = None
    ) -> CachedPolicy:
        if clock is None:
            return CachedPolicy(self.stub, wakeups, config)
        return CachedPolicy(self.stub, wakeups, config, clock)

    async def stop(self) -> None:
        """Takes the policy service down: an outage."""
        self.stopped = True
        await self.server.stop(grace=0.1)


@asynccontextmanager
async def serve_policy(tmp_path: Path, wakeups: Wakeups) -> AsyncIterator[PolicyServer]:
    """The policy service on SQLite, announcing its changes on `wakeups`."""
    config = RuntimeConfig.from_env({"AGENTRT_DATA_DIR": str(tmp_path)})
    infra = Infrastructure(config, InMemoryEventChannel(), wakeups)
    await migrate(infra.storage("policy"), SQL_DIRECTORY)
    server = Server("127.0.0.1:0", "policy")
    await server.start([await create_unit(infra)])
    address = f"127.0.0.1:{server.port}"
    served = None
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            served = PolicyServer(address, policy_pb2_grpc.PolicyServiceStub(channel), server)
            yield served
    finally:
        if served is None or not served.stopped:
            await server.stop(grace=1.0)


@pytest.fixture
async def wakeups() -> AsyncIterator[InMemoryWakeups]:
    shared = InMemoryWakeups()
    yield shared
    await shared.close()


@pytest.fixture
async def service(tmp_path: Path, wakeups: InMemoryWakeups) -> AsyncIterator[PolicyServer]:
    async with serve_policy(tmp_path, wakeups) as served:
        yield served


@asynccontextmanager
async def running(cache: CachedPolicy) -> AsyncIterator[CachedPolicy]:
    await cache.start()
    try:
        yield cache
    finally:
        await cache.stop()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def job(policy: str = "", tenant: str = "acme", principal: str = "alice") -> jobs_pb2.Job:
    return jobs_pb2.Job(
        name="jobs/j1",
        tenant=tenant,
        principal=principal,
        spec=jobs_pb2.JobSpec(model="local", policy=common_pb2.PolicyRef(name=policy)),
    )


def deny_model(pattern: str = "local*", rule_id: str = "no-local") -> Rule:
    return Rule(id=rule_id, model=ModelRule(patterns=[pattern], verdict=Verdict.VERDICT_DENY))


def allow_model(pattern: str = "*") -> Rule:
    return Rule(id="any-model", model=ModelRule(patterns=[pattern], verdict=Verdict.VERDICT_ALLOW))


async def create(stub: PolicyServiceAsyncStub, policy_set_id: str, *rules: Rule) -> PolicySet:
    request = policy_pb2.CreatePolicySetRequest(
        policy_set_id=policy_set_id, policy_set=PolicySet(rules=rules)
    )
    created: PolicySet = await stub.CreatePolicySet(request, timeout=5)
    return created


async def replace_rules(stub: PolicyServiceAsyncStub, name: str, *rules: Rule) -> PolicySet:
    change = PolicySet(name=f"policySets/{name}", rules=rules)
    request = policy_pb2.UpdatePolicySetRequest(policy_set=change)
    request.update_mask.paths.append("rules")
    updated: PolicySet = await stub.UpdatePolicySet(request, timeout=5)
    return updated


async def verdict_of_model(cache: CachedPolicy, policy: str, model: str = "local") -> int:
    return (await cache.check_model(job(policy), model, NO_COUNTS)).verdict


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Polls `check` until it holds, failing after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - the condition is another service's state
            await asyncio.sleep(0.02)


# Caching


async def test_a_cached_set_decides_without_asking_again(service: PolicyServer) -> None:
    await create(service.stub, "production", deny_model("gpt-*"), allow_model())
    cache = service.cache(InMemoryWakeups())

    denied = await cache.check_model(job("production"), "gpt-4o", NO_COUNTS)
    allowed = await cache.check_model(job("production"), "local", NO_COUNTS)
    tool = await cache.check_tool(job("production"), common_pb2.ToolCall(name="x"), NO_COUNTS)

    assert denied.verdict == Verdict.VERDICT_DENY
    assert (denied.matched_rule.policy_set, denied.matched_rule.rule_id) == (
        "policySets/production",
        "no-local",
    )
    assert allowed.verdict == Verdict.VERDICT_ALLOW
    assert allowed.matched_rule.rule_id == "any-model"
    assert tool.verdict == Verdict.VERDICT_ALLOW
    assert cache.fetches == 1


async def test_concurrent_checks_on_a_cold_cache_fetch_the_set_once(
    service: PolicyServer,
) -> None:
    await create(service.stub, "production", deny_model())
    cache = service.cache(InMemoryWakeups())
    verdicts = await asyncio.gather(*(verdict_of_model(cache, "production") for _ in range(20)))
    assert verdicts == [Verdict.VERDICT_DENY] * 20
    assert cache.fetches == 1


async def test_a_tool_rule_requiring_approval_carries_its_timeout(service: PolicyServer) -> None:
    rule = Rule(
        id="writes",
        description="writes need a person",
        tool=ToolRule(patterns=["file_write"], verdict=Verdict.VERDICT_REQUIRE_APPROVAL),
    )
    rule.tool.approval_timeout.FromSeconds(90)
    await create(service.stub, "production", rule)
    cache = service.cache(InMemoryWakeups())

    decision = await cache.check_tool(
        job("production"), common_pb2.ToolCall(name="file_write", arguments="{}"), NO_COUNTS
    )
    assert decision.verdict == Verdict.VERDICT_REQUIRE_APPROVAL
    assert decision.approval_timeout.seconds == 90
    assert decision.reason.startswith("rule writes: writes need a person")


async def test_limits_are_decided_on_the_counts_of_every_call(service: PolicyServer) -> None:
    limits = LimitsRule(max_turns=2, max_tool_calls=3, max_tool_calls_per_tool={"search": 1})
    await create(service.stub, "production", Rule(id="limits", limits=limits))
    cache = service.cache(InMemoryWakeups())
    production = job("production")
    search = common_pb2.ToolCall(name="search")

    async def model(turns: int) -> int:
        return (await cache.check_model(production, "local", JobCounts(turns=turns))).verdict

    async def tool(calls: int, searches: int) -> int:
        counts = JobCounts(tool_calls=calls, tool_calls_per_tool={"search": searches})
        return (await cache.check_tool(production, search, counts)).verdict

    allow, deny = Verdict.VERDICT_ALLOW, Verdict.VERDICT_DENY
    assert [await model(turns) for turns in (0, 1, 2, 1, 5, 0)] == [
        allow,
        allow,
        deny,
        allow,
        deny,
        allow,
    ]
    assert [await tool(0, 0), await tool(1, 1), await tool(3, 0), await tool(2, 0)] == [
        allow,
        deny,
        deny,
        allow,
    ]
    assert cache.fetches == 1


# Invalidation


async def test_a_change_notice_drops_the_cached_set(
    service: PolicyServer, wakeups: InMemoryWakeups
) -> None:
    await create(service.stub, "production", allow_model())
    async with running(service.cache(wakeups)) as cache:
        assert await verdict_of_model(cache, "production") == Verdict.VERDICT_ALLOW

        await replace_rules(service.stub, "production", deny_model())

        async def denied() -> bool:
            return await verdict_of_model(cache, "production") == Verdict.VERDICT_DENY

        await eventually(denied)
        assert cache.fetches >= 2


async def test_without_a_notice_the_version_is_checked_after_the_interval(
    service: PolicyServer,
) -> None:
    await create(service.stub, "production", allow_model())
    clock = Clock()
    unheard = InMemoryWakeups()  # not the service's: no notice reaches this cache
    cache = service.cache(unheard, PolicyCacheConfig(revalidate_seconds=5), clock=clock)
    async with running(cache):
        assert await verdict_of_model(cache, "production") == Verdict.VERDICT_ALLOW

        await replace_rules(service.stub, "production", deny_model())
        clock.now += 4.9
        assert await verdict_of_model(cache, "production") == Verdict.VERDICT_ALLOW
        assert cache.fetches == 1

        clock.now += 0.1
        assert await verdict_of_model(cache, "production") == Verdict.VERDICT_DENY
        assert cache.fetches == 2
    await unheard.close()


async def test_a_fetch_in_flight_during_a_notice_is_not_cached(service: PolicyServer) -> None:
    await create(service.stub, "production", allow_model())
    cache = service.cache(InMemoryWakeups())
    fetching = asyncio.create_task(verdict_of_model(cache, "production"))
    await asyncio.sleep(0)
    assert cache.fetches == 1  # the check is now waiting for GetPolicySet
    cache.invalidate()
    assert await fetching == Verdict.VERDICT_ALLOW
    await replace_rules(service.stub, "production", deny_model())
    assert await verdict_of_model(cache, "production") == Verdict.VERDICT_DENY
    assert cache.fetches == 2


# The default set and missing sets


async def test_without_a_default_set_everything_is_allowed_until_one_is_created(
    service: PolicyServer, wakeups: InMemoryWakeups
) -> None:
    async with running(service.cache(wakeups)) as cache:
        decision = await cache.check_model(job(""), "local", NO_COUNTS)
        assert decision.verdict == Verdict.VERDICT_ALLOW
        assert not decision.HasField("matched_rule")

        await create(service.stub, "default", deny_model())

        async def denied() -> bool:
            decision = await cache.check_model(job(""), "local", NO_COUNTS)
            return decision.matched_rule.policy_set == "policySets/default"

        await eventually(denied)


async def test_a_missing_named_set_fails_the_check_clearly(
    service: PolicyServer, wakeups: InMemoryWakeups
) -> None:
    async with running(service.cache(wakeups)) as cache:
        with pytest.raises(PolicySetNotFound) as missing:
            await cache.check_model(job("nope"), "local", NO_COUNTS)
        assert not missing.value.retryable
        failure = missing.value.failure
        assert failure.reason == common_pb2.ERROR_REASON_NOT_FOUND
        assert failure.metadata["policy_set"] == "policySets/nope"
        assert "policySets/nope does not exist" in failure.message
        with pytest.raises(PolicySetNotFound):
            await cache.check_tool(job("Not A Name"), common_pb2.ToolCall(name="x"), NO_COUNTS)


async def test_a_deleted_set_fails_the_checks_of_its_jobs(
    service: PolicyServer, wakeups: InMemoryWakeups
) -> None:
    created = await create(service.stub, "production", allow_model())
    async with running(service.cache(wakeups)) as cache:
        assert await verdict_of_model(cache, "production") == Verdict.VERDICT_ALLOW
        await service.stub.DeletePolicySet(policy_pb2.DeletePolicySetRequest(name=created.name))

        async def gone() -> bool:
            try:
                await verdict_of_model(cache, "production")
            except PolicySetNotFound:
                return True
            return False

        await eventually(gone)


# Outages: fail closed


async def test_an_unreachable_policy_service_fails_closed() -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        cache = CachedPolicy(stub, InMemoryWakeups(), LONG)
        with pytest.raises(PolicyUnavailable) as unavailable:
            await cache.check_model(job("production"), "local", NO_COUNTS)
    assert unavailable.value.retryable
    failure = unavailable.value.failure
    assert failure.reason == common_pb2.ERROR_REASON_DEPENDENCY_UNAVAILABLE
    assert failure.metadata == {"service": "policy", "policy_set": "policySets/production"}


async def test_a_set_due_for_revalidation_is_not_used_while_the_service_is_down(
    tmp_path: Path,
) -> None:
    clock = Clock()
    async with serve_policy(tmp_path, InMemoryWakeups()) as served:
        await create(served.stub, "production", allow_model())
        cache = served.cache(
            InMemoryWakeups(), PolicyCacheConfig(revalidate_seconds=5), clock=clock
        )
        assert await verdict_of_model(cache, "production") == Verdict.VERDICT_ALLOW
        await served.stop()

        clock.now += 4
        assert await verdict_of_model(cache, "production") == Verdict.VERDICT_ALLOW
        clock.now += 1
        with pytest.raises(PolicyUnavailable):
            await verdict_of_model(cache, "production")


# Two orchestrator processes: two caches, each with its own Redis wake-ups


@pytest.mark.integration
async def test_an_update_reaches_two_caches_through_redis_wakeups(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(3)]
    service_wakeups, *worker_wakeups = (RedisWakeups(c, prefix=redis_prefix) for c in clients)
    try:
        async with serve_policy(tmp_path, service_wakeups) as served:
            await create(served.stub, "production", allow_model())
            caches = [served.cache(w) for w in worker_wakeups]
            for cache in caches:
                await cache.start()
            try:
                for cache in caches:
                    assert await verdict_of_model(cache, "production") == Verdict.VERDICT_ALLOW

                await replace_rules(served.stub, "production", deny_model())

                for cache in caches:

                    async def denied(cache: CachedPolicy = cache) -> bool:
                        verdict = await verdict_of_model(cache, "production")
                        return verdict == Verdict.VERDICT_DENY

                    await eventually(denied)
            finally:
                for cache in caches:
                    await cache.stop()
    finally:
        for wakeups in (service_wakeups, *worker_wakeups):
            await wakeups.close()
        for client in clients:
            await client.aclose()


# Construction


def test_the_revalidation_interval_comes_from_the_environment() -> None:
    assert PolicyCacheConfig.from_env({}).revalidate_seconds == 5.0
    env = {"AGENTRT_POLICY_REVALIDATE_SECONDS": "0.5"}
    assert PolicyCacheConfig.from_env(env).revalidate_seconds == 0.5


async def test_open_policy_guard_uses_the_infrastructure(
    service: PolicyServer, wakeups: InMemoryWakeups, tmp_path: Path
) -> None:
    config = RuntimeConfig.from_env(
        {"AGENTRT_DATA_DIR": str(tmp_path), "AGENTRT_POLICY_ADDRESS": service.address}
    )
    infra = Infrastructure(config, InMemoryEventChannel(), wakeups)
    await create(service.stub, "production", deny_model())
    guard = open_policy_guard(infra, LONG)
    async with running(guard):
        assert await verdict_of_model(guard, "production") == Verdict.VERDICT_DENY
        await replace_rules(service.stub, "production", allow_model())

        async def allowed() -> bool:
            return await verdict_of_model(guard, "production") == Verdict.VERDICT_ALLOW

        await eventually(allowed)
    await infra.close()


# The whole system in one process (`agentrt dev`): in-process wake-ups


@pytest.fixture
async def dev_system(tmp_path: Path) -> AsyncIterator[LocalSystem]:
    """Every service in this process, as `agentrt dev` runs them."""
    async with local_system(tmp_path / "data") as running:
        yield running


async def test_in_dev_mode_a_new_default_set_governs_the_next_job(
    dev_system: LocalSystem,
) -> None:
    async with Client(dev_system.endpoint, dev_system.api_key) as client:
        first = await client.run("hello")  # the worker caches the missing default set
        assert first.state == common_pb2.JOB_STATE_SUCCEEDED

        await client.create_policy_set("default", PolicySet(rules=[deny_model()]))
        second = await client.run("hello again")

    assert second.state == common_pb2.JOB_STATE_FAILED
    assert second.failure.reason == common_pb2.ERROR_REASON_POLICY_DENIED
    assert second.failure.metadata["rule"] == "no-local"
    assert second.failure.metadata["policy_set"] == "policySets/default"
