"""The response cache: whole answers by exact request, scoped to the tenant, with a TTL.

Asked for per call or per job (`CachePolicy`), never implied: a sampled answer
(temperature unset or above 0) is cached only with an explicit `allow_sampled`, since
every repeat then gets the same sample. A hit calls no provider and reports no tokens,
so the ledger charges nothing for it; the answer says `cache_hit`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

import redis.asyncio as redis

from services.engine.model import Completion, CompletionParams
from services.engine.redis_outage import RedisGuard, RedisOutage
from services.engine.shared_record import completion_from_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheRequest:
    """What a call asks of the response cache."""

    enabled: bool = False
    ttl_seconds: float = 0.0
    """How long a stored answer is served; 0 means the engine's default."""
    allow_sampled: bool = False

    def applies_to(self, params: CompletionParams) -> bool:
        """Whether this call's answer may be looked up and stored."""
        deterministic = params.temperature == 0.0
        return self.enabled and (deterministic or self.allow_sampled)


NO_CACHE = CacheRequest()


def cache_key(tenant: str, fingerprint: str) -> str:
    """The entry of a request for a tenant: one tenant never reads another's answers."""
    return hashlib.sha256(f"{tenant}\0{fingerprint}".encode()).hexdigest()


class ResponseCache(Protocol):
    store: str
    """Where the answers are (`memory`, `redis`): the label of the cache's metrics."""

    async def get(self, key: str) -> Completion | None: ...

    async def put(self, key: str, completion: Completion, ttl_seconds: float) -> None: ...


@dataclass(frozen=True)
class _Entry:
    completion: Completion
    expires_at: float


class InMemoryResponseCache:
    """Answers of one engine process; at most `max_entries`, the least recently used go."""

    store = "memory"

    def __init__(
        self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    async def get(self, key: str) -> Completion | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.completion

    async def put(self, key: str, completion: Completion, ttl_seconds: float) -> None:
        self._entries[key] = _Entry(completion, self._clock() + ttl_seconds)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


class RedisResponseCache:
    """Answers shared by every engine replica: `{prefix}:engine:cache:{key}`, expiring.

    A cache is an optimisation: Redis being unreachable makes a miss, never an error.
    """

    store = "redis"

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        timeout_seconds: float = 0.5,
        guard: RedisGuard | None = None,
    ) -> None:
        self._redis = client
        self._prefix = f"{prefix}:engine:cache:"
        self._guard = guard or RedisGuard(timeout_seconds)

    async def get(self, key: str) -> Completion | None:
        try:
            raw = await self._guard.run(lambda: self._redis.get(self._prefix + key))
        except RedisOutage:
            return None  # a miss; the guard logged the outage
        except redis.RedisError as error:
            log.warning("the response cache is unreachable (%r): a miss", error)
            return None
        return None if raw is None else completion_from_json(json.loads(raw))

    async def put(self, key: str, completion: Completion, ttl_seconds: float) -> None:
        value = json.dumps(asdict(completion))
        ttl_ms = int(ttl_seconds * 1000)
        try:
            await self._guard.run(lambda: self._redis.set(self._prefix + key, value, px=ttl_ms))
        except RedisOutage:
            pass  # the guard logged the outage
        except redis.RedisError as error:
            log.warning("could not store an answer in the response cache (%r)", error)
