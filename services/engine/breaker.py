"""Circuit breakers per deployment: in-process for one engine, in Redis for every replica.

A breaker is closed until `failure_threshold` consecutive failures; it then stays open for
`cooldown_seconds`, during which calls skip the deployment; then it is half-open: exactly
one call at a time (a probe) may try the deployment. The probe's success closes the
breaker, its failure opens it again. A probe that never reports (its engine crashed) holds
the slot for `probe_seconds` at most.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import redis.asyncio as redis
from redis.commands.core import AsyncScript

from services.engine.redis_outage import RedisGuard, RedisOutage

log = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half_open"]
Admission = Literal["refused", "admitted", "clean"]
"""Whether a call may try a deployment: `clean` is closed with no failure on record, so
that a success need not be reported (saving a round trip to Redis on the common path)."""


@dataclass(frozen=True)
class BreakerSettings:
    """When a deployment's breaker opens and how it recovers."""

    failure_threshold: int = 5
    """Consecutive failures (429, 5xx, timeouts) that open the breaker."""
    cooldown_seconds: float = 30.0
    """How long an open breaker keeps calls away before letting a probe through."""
    probe_seconds: float = 60.0
    """How long a probe holds the half-open slot when it does not report back."""

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {self.failure_threshold}")
        if self.cooldown_seconds <= 0 or self.probe_seconds <= 0:
            raise ValueError("cooldown_seconds and probe_seconds must be positive")


class Breakers(Protocol):
    """The breakers of every deployment, by deployment name."""

    async def acquire(self, deployment: str) -> Admission:
        """Whether a call may try the deployment now; in half-open, admission is the probe."""
        ...

    async def succeeded(self, deployment: str) -> None:
        """A call to the deployment succeeded: the breaker closes."""
        ...

    async def failed(self, deployment: str) -> None:
        """A call to the deployment failed in a way that counts against it."""
        ...

    async def released(self, deployment: str) -> None:
        """A call admitted gave up with no outcome (its caller went away): a half-open
        breaker's probe slot is free again at once."""
        ...

    async def state(self, deployment: str) -> BreakerState:
        """The breaker's state now (an open breaker past its cool-down is half-open)."""
        ...


@dataclass
class _Breaker:
    state: BreakerState = "closed"
    failures: int = 0
    open_until: float = 0.0
    probe_until: float = 0.0


class InProcessBreakers:
    """Breakers of one engine process (dev, or a single replica)."""

    def __init__(
        self, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._breakers: dict[str, _Breaker] = {}

    async def acquire(self, deployment: str) -> Admission:
        breaker = self._breakers.get(deployment)
        if breaker is None:
            return "clean"
        now = self._clock()
        if breaker.state == "closed":
            return "admitted"
        if breaker.state == "open" and now < breaker.open_until:
            return "refused"
        if breaker.state == "half_open" and now < breaker.probe_until:
            return "refused"
        breaker.state = "half_open"
        breaker.probe_until = now + self._settings.probe_seconds
        return "admitted"

    async def succeeded(self, deployment: str) -> None:
        self._breakers.pop(deployment, None)

    async def released(self, deployment: str) -> None:
        breaker = self._breakers.get(deployment)
        if breaker is not None and breaker.state == "half_open":
            breaker.probe_until = 0.0

    async def failed(self, deployment: str) -> None:
        breaker = self._breakers.setdefault(deployment, _Breaker())
        breaker.failures += 1
        if breaker.state == "half_open" or breaker.failures >= self._settings.failure_threshold:
            breaker.state = "open"
            breaker.failures = 0
            breaker.open_until = self._clock() + self._settings.cooldown_seconds

    async def state(self, deployment: str) -> BreakerState:
        breaker = self._breakers.get(deployment)
        if breaker is None:
            return "closed"
        if breaker.state == "open" and self._clock() >= breaker.open_until:
            return "half_open"
        return breaker.state


# Each script reads and changes one breaker's hash atomically, with Redis's clock, so that
# replicas whose clocks disagree still agree on when a cool-down ends.
_NOW_MS = "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

_ACQUIRE = (
    _NOW_MS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 2 end
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'closed' then return 1 end
if state == 'open' and now < tonumber(redis.call('HGET', KEYS[1], 'open_until')) then
  return 0
end
if state == 'half_open' and now < tonumber(redis.call('HGET', KEYS[1], 'probe_until')) then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_until', now + tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

_FAILED = (
    _NOW_MS
    + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if state == 'half_open' or failures >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'failures', 0, 'open_until', now + tonumber(ARGV[2]))
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

_RELEASED = """
if redis.call('HGET', KEYS[1], 'state') == 'half_open' then
  redis.call('HSET', KEYS[1], 'probe_until', 0)
end
return 1
"""

_STATE = (
    _NOW_MS
    + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'open' and now >= tonumber(redis.call('HGET', KEYS[1], 'open_until')) then
  return 'half_open'
end
return state
"""
)


_ADMISSIONS: dict[int, Admission] = {0: "refused", 1: "admitted", 2: "clean"}


class RedisBreakers:
    """Breakers shared by every engine replica: one hash a deployment,
    `{prefix}:engine:breaker:{deployment}`.

    Redis being unreachable must not stop model calls: the breaker then lets calls through
    (as closed) and the failure is logged.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        settings: BreakerSettings,
        timeout_seconds: float = 0.5,
        guard: RedisGuard | None = None,
    ) -> None:
        self._redis = client
        self._prefix = f"{prefix}:engine:breaker:"
        self._settings = settings
        self._guard = guard or RedisGuard(timeout_seconds)
        # A breaker's hash outlives its longest meaningful state, then goes.
        self._keep_ms = int(1000 * 10 * (settings.cooldown_seconds + settings.probe_seconds))
        self._acquire = client.register_script(_ACQUIRE)
        self._failed = client.register_script(_FAILED)
        self._state = client.register_script(_STATE)
        self._released = client.register_script(_RELEASED)

    async def acquire(self, deployment: str) -> Admission:
        probe_ms = int(self._settings.probe_seconds * 1000)
        result = await self._run(self._acquire, deployment, [probe_ms, self._keep_ms], 2)
        return _ADMISSIONS[int(result)]

    async def succeeded(self, deployment: str) -> None:
        try:
            await self._guard.run(lambda: self._redis.delete(self._prefix + deployment))
        except RedisOutage:
            pass  # the guard logged the outage
        except redis.RedisError as error:
            log.warning("could not close the breaker of %s in Redis (%r)", deployment, error)

    async def released(self, deployment: str) -> None:
        await self._run(self._released, deployment, [], 0)

    async def failed(self, deployment: str) -> None:
        settings = self._settings
        cooldown_ms = int(settings.cooldown_seconds * 1000)
        await self._run(
            self._failed, deployment, [settings.failure_threshold, cooldown_ms, self._keep_ms], 0
        )

    async def state(self, deployment: str) -> BreakerState:
        raw = await self._run(self._state, deployment, [], b"closed")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        if text == "open":
            return "open"
        return "half_open" if text == "half_open" else "closed"

    async def _run(
        self, script: AsyncScript, deployment: str, args: list[int], fallback: object
    ) -> Any:
        try:
            keys = [self._prefix + deployment]
            return await self._guard.run(lambda: script(keys=keys, args=args))
        except RedisOutage:
            return fallback  # the guard logged the outage
        except redis.RedisError as error:
            log.warning("the breaker of %s in Redis is unreachable (%r)", deployment, error)
            return fallback
