"""CachedPolicy: the orchestrator's PolicyGuard, deciding locally over cached policy sets.

Design. Each orchestrator process caches whole policy sets, by name, with their version,
and decides every call itself with `services.policy.rules.decide`, the very function
EvaluatePolicy runs. So a model or tool call needs no RPC while its set is cached, and
the decision can never be stale in what depends on the call: limits rules read the job's
counts, which are an argument of every check and never part of a cache key. Caching
EvaluatePolicy answers instead would have to key them by tenant, principal, subject and
counts, so that nearly every limits check would miss, and it would still need the same
invalidation.

A cached set is trusted until one of:
- a notice: the policy service notifies the wake-up topic `policy.changed` after every
  create, update and delete (in-process under `agentrt dev`, Redis pub/sub across
  processes). Wake-ups carry no payload, so a notice drops every cached set; sets are few
  and a refetch is one small GetPolicySet each. A fetch that was in flight when the notice
  came is used for its own call but not cached (a generation counter), so it cannot put
  the old version back.
- its age: a set fetched more than `revalidate_seconds` ago
  (AGENTRT_POLICY_REVALIDATE_SECONDS, default 5) is fetched again on its next use, and its
  version compared. Notices are best effort (a Redis blip loses them), so this bounds how
  long a lost notice can delay a change; it never strands one.

The default set ("policySets/default") governs a job whose spec.policy names none; when
it does not exist everything is allowed (cached as an empty set at version 0, as
EvaluatePolicy answers). A named set that does not exist is cached as missing, for the
same time, and every check of its jobs raises PolicySetNotFound.

Failure mode: fail closed. When the policy service cannot be reached, or does not answer
in time, while a set must be fetched or revalidated, the check raises PolicyUnavailable
and gives no decision: the call must not be made. See `PolicyCheckFailed` for what the
agent loop does with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import grpc
from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2
from agentrt.policy.v1 import policy_pb2, policy_pb2_grpc

from services.kit.config import env_float
from services.kit.errors import FieldInvalid
from services.kit.events import Wakeups, retry_delay
from services.kit.infra import Infrastructure
from services.policy.names import (
    CHANGED_TOPIC,
    DEFAULT_POLICY_SET,
    check_policy_set_id,
    policy_set_name,
)
from services.policy.rules import Call, decide

if TYPE_CHECKING:
    from collections.abc import Mapping

    from agentrt.policy.v1.policy_pb2_grpc import PolicyServiceAsyncStub

log = logging.getLogger(__name__)

ErrorReason = common_pb2.ErrorReason

DEFAULT_REVALIDATE_SECONDS = 5.0
"""How long a cached set is used without asking the policy service for its version."""

FETCH_TIMEOUT_SECONDS = 5.0
"""How long one GetPolicySet may take; a slower policy service counts as unavailable, so
that a check fails closed promptly instead of holding the job for the call timeout."""


class PolicyCheckFailed(Exception):
    """No decision could be made, so the call must not be made (fail closed).

    What the agent loop does with it: the model or tool call is not made. When
    `retryable`, the check may be tried again after a pause (like a retryable model call
    failure, within the job's deadline); once the loop gives up, or at once when not
    `retryable`, the job ends FAILED with `failure`. The loop must never treat it as
    ALLOW, nor tell the model of a tool call that no decision was made.
    """

    retryable = False

    def __init__(self, failure: common_pb2.Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class PolicyUnavailable(PolicyCheckFailed):
    """The policy service could not be reached or did not answer in time while the job's
    set had to be fetched; failure reason DEPENDENCY_UNAVAILABLE. Retryable."""

    retryable = True

    def __init__(self, policy_set: str, detail: str) -> None:
        super().__init__(
            common_pb2.Failure(
                reason=ErrorReason.ERROR_REASON_DEPENDENCY_UNAVAILABLE,
                message=f"the policy service is unavailable, so {policy_set} "
                f"could not be checked: {detail}",
                metadata={"service": "policy", "policy_set": policy_set},
            )
        )


class PolicySetNotFound(PolicyCheckFailed):
    """The job names a policy set that does not exist (never created, deleted, or not a
    valid name); failure reason NOT_FOUND. Not retryable: the job fails at once."""

    def __init__(self, policy_set: str) -> None:
        super().__init__(
            common_pb2.Failure(
                reason=ErrorReason.ERROR_REASON_NOT_FOUND,
                message=f"the job's policy set {policy_set} does not exist",
                metadata={"policy_set": policy_set},
            )
        )


def policy_denied(decision: policy_pb2.Decision) -> common_pb2.Failure:
    """The failure of a job whose model call `decision` denied: POLICY_DENIED, with the
    rule in metadata["rule"] (as common.proto documents) and the set in ["policy_set"]."""
    rule = decision.matched_rule
    return common_pb2.Failure(
        reason=ErrorReason.ERROR_REASON_POLICY_DENIED,
        message=f"denied by policy: {decision.reason}",
        metadata={"rule": rule.rule_id, "policy_set": rule.policy_set},
    )


@dataclass(frozen=True)
class PolicyCacheConfig:
    """How long cached policy sets are trusted."""

    revalidate_seconds: float
    """AGENTRT_POLICY_REVALIDATE_SECONDS: a cached set older than this is fetched again
    on its next use (default 5). The longest a lost change notice delays a change."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PolicyCacheConfig:
        return cls(env_float("AGENTRT_POLICY_REVALIDATE_SECONDS", DEFAULT_REVALIDATE_SECONDS, env))


@dataclass(frozen=True)
class _Entry:
    """A policy set as last fetched."""

    rules: Sequence[policy_pb2.Rule] | None
    """None when the set does not exist."""
    version: int
    """0 when it does not exist."""
    fetched: float
    """The clock's time of the fetch."""


@runtime_checkable
class _Listening(Protocol):
    """Wake-ups that can subscribe ahead of the first wait (both kit implementations)."""

    async def listen(self, topic: str, timeout: float = 5.0) -> bool: ...


class CachedPolicy:
    """A PolicyGuard over the PolicyService (see the module docstring for the design).

    `start` begins following change notices and `stop` ends it; checks work without it,
    bounded by the revalidation interval alone.
    """

    def __init__(
        self,
        stub: PolicyServiceAsyncStub,
        wakeups: Wakeups,
        config: PolicyCacheConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = stub
        self._wakeups = wakeups
        self._revalidate = config.revalidate_seconds
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._generation = 0
        self._follower: asyncio.Task[None] | None = None
        self.fetches = 0
        """GetPolicySet calls made so far, for telemetry and tests."""

    async def check_model(
        self, job: jobs_pb2.Job, model: str, counts: policy_pb2.JobCounts
    ) -> policy_pb2.Decision:
        """The decision on calling `model` now; PolicyCheckFailed when there is none."""
        call = Call(tenant=job.tenant, principal=job.principal, model=model, counts=counts)
        return await self._decide(job, call)

    async def check_tool(
        self, job: jobs_pb2.Job, call: common_pb2.ToolCall, counts: policy_pb2.JobCounts
    ) -> policy_pb2.Decision:
        """The decision on running `call` now; PolicyCheckFailed when there is none."""
        subject = Call(tenant=job.tenant, principal=job.principal, tool=call.name, counts=counts)
        return await self._decide(job, subject)

    def invalidate(self) -> None:
        """Drops every cached set, and keeps fetches in flight from caching what they get."""
        self._generation += 1
        self._entries.clear()

    async def start(self) -> None:
        """Subscribes to change notices and follows them until `stop`."""
        if self._follower is not None:
            return
        if isinstance(self._wakeups, _Listening):
            await self._wakeups.listen(CHANGED_TOPIC)
        self._follower = asyncio.create_task(self._follow_notices(), name="policy-notices")

    async def stop(self) -> None:
        """Stops following notices (before the wake-ups are closed)."""
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    async def _decide(self, job: jobs_pb2.Job, call: Call) -> policy_pb2.Decision:
        name = _policy_set_of(job)
        entry = await self._entry(name)
        if entry.rules is None:
            raise PolicySetNotFound(name)
        decision = decide(name, entry.rules, call)
        log.debug(
            "policy %s v%d for %s: %s %s (%s)",
            name,
            entry.version,
            job.name,
            call.tool or call.model,
            policy_pb2.Verdict.Name(decision.verdict),
            decision.reason,
        )
        return decision

    async def _entry(self, name: str) -> _Entry:
        """The cached set, fetched first when absent or older than the interval. One fetch
        per set at a time: the checks of many jobs waiting for it share its answer."""
        entry = self._fresh(name)
        if entry is not None:
            return entry
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            entry = self._fresh(name)
            if entry is not None:
                return entry
            generation = self._generation
            entry = await self._fetch(name)
            if generation == self._generation:
                self._entries[name] = entry
            return entry

    def _fresh(self, name: str) -> _Entry | None:
        entry = self._entries.get(name)
        if entry is None or self._clock() - entry.fetched >= self._revalidate:
            return None
        return entry

    async def _fetch(self, name: str) -> _Entry:
        self.fetches += 1
        now = self._clock()
        try:
            policy_set = await self._stub.GetPolicySet(
                policy_pb2.GetPolicySetRequest(name=name), timeout=FETCH_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                rules = () if name == policy_set_name(DEFAULT_POLICY_SET) else None
                return _Entry(rules, 0, now)
            raise PolicyUnavailable(name, f"{error.code().name}: {error.details()}") from error
        previous = self._entries.get(name)
        if previous is not None and previous.version != policy_set.version:
            log.info("policy %s: v%d replaces v%d", name, policy_set.version, previous.version)
        return _Entry(tuple(policy_set.rules), policy_set.version, now)

    async def _follow_notices(self) -> None:
        """Drops the cache on every notice. The wait's timeout only paces the loop: the
        revalidation by age happens on use."""
        failures = 0
        while True:
            try:
                if await self._wakeups.wait(CHANGED_TOPIC, max(self._revalidate, 1.0)):
                    self.invalidate()
                failures = 0
            except Exception as error:
                failures += 1
                log.warning("policy change notices: %s; dropping the cache", error)
                self.invalidate()
                await asyncio.sleep(retry_delay(failures))


def _policy_set_of(job: jobs_pb2.Job) -> str:
    """The resource name of the job's set; PolicySetNotFound for a malformed id, which
    the jobs service should have refused (no such set can exist)."""
    policy_set_id = job.spec.policy.name or DEFAULT_POLICY_SET
    try:
        check_policy_set_id(policy_set_id)
    except FieldInvalid:
        raise PolicySetNotFound(policy_set_name(policy_set_id)) from None
    return policy_set_name(policy_set_id)


def open_policy_guard(
    infra: Infrastructure, config: PolicyCacheConfig | None = None
) -> CachedPolicy:
    """The orchestrator's PolicyGuard: the policy service through the process's channel
    and its wake-ups; configured from the environment unless `config` is given. Call
    `start()` with the unit's start and `stop()` with its stop."""
    stub = policy_pb2_grpc.PolicyServiceStub(infra.channel("policy"))
    return CachedPolicy(stub, infra.wakeups, config or PolicyCacheConfig.from_env())
