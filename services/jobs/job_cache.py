"""A read-through cache of Job messages in Redis, for GetJob.

Reads dominate writes: clients poll GetJob, and the gateway asks for a job on every watch.
Each job has one hash `{prefix}:jobcache:{job id}` holding the serialized Job (`job`, kept
`ttl_seconds`) and a generation counter (`gen`, kept an hour). Forgetting a job bumps the
generation and drops the Job; a reader that missed stores what it loaded only if the
generation is still the one it saw before loading, so a slow reader never puts back a
version older than a forget that happened meanwhile.

Who forgets: JobManager, after each commit and before its RPC returns (so a call that
starts after a write returned sees it); and the outbox relay, before it publishes a job's
events (InvalidatingChannel), which covers the jobs a commit changes without the manager
naming them (descendants of a cancelled job, the Redis action store's repairs) and a
process that died between its commit and its forget. So a GetJob never returns a version
of a job older than an event of it already delivered to a watcher, and a cached entry is
never older than `ttl_seconds` in any case. The cache never answers for another tenant:
an entry of another tenant is a miss, which the store then refuses with NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

import redis.asyncio
from agentrt.common.v1.common_pb2 import RuntimeEvent
from agentrt.jobs.v1.jobs_pb2 import Job

from services.kit.errors import JobNotFound
from services.kit.events import RedisEventChannel
from services.kit.events.base import Cursor, job_id_of
from services.kit.names import job_name

_LOG = logging.getLogger(__name__)

GENERATION_SECONDS = 3600
"""How long a job's generation is kept after its last forget: longer than any read."""

# Stores the Job with its own deadline (now + ttl), then keeps the hash as long as its
# generation must live. ARGV: generation seen, serialized Job, ttl (ms).
_PUT = """
local gen = redis.call('HGET', KEYS[1], 'gen') or ''
if gen ~= ARGV[1] then return 0 end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('HSET', KEYS[1], 'job', ARGV[2], 'until', ms + tonumber(ARGV[3]))
if redis.call('TTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
"""

# Forgets every job of KEYS in one call, which costs the caller one command, not three
# a job. ARGV: how long a generation is kept (s).
_FORGET = """
for _, key in ipairs(KEYS) do
  redis.call('HINCRBY', key, 'gen', 1)
  redis.call('HDEL', key, 'job', 'until')
  redis.call('EXPIRE', key, ARGV[1])
end
return #KEYS
"""

# The Job expires on its own: a hash field cannot, so `job` keeps its own deadline.
_GET = """
local values = redis.call('HMGET', KEYS[1], 'job', 'until', 'gen')
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if values[1] and values[2] and tonumber(values[2]) > ms then
  return {values[1], values[3] or ''}
end
return {false, values[3] or ''}
"""


class RedisJobCache:
    """The job cache on Redis. Every Redis call is bounded by `timeout_seconds`, and a
    failed one falls back to the store: a Redis outage slows GetJob by that much at most,
    and a failed forget leaves the old entry to expire (`ttl_seconds`)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        prefix: str,
        ttl_seconds: float,
        *,
        timeout_seconds: float = 0.5,
    ) -> None:
        self._redis = client
        self._prefix = f"{prefix}:jobcache:"
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._timeout = timeout_seconds
        self._put = client.register_script(_PUT)
        self._get = client.register_script(_GET)
        self._forget = client.register_script(_FORGET)

    async def read_through(
        self, tenant: str | None, job_id: str, load: Callable[[], Awaitable[Job]]
    ) -> Job:
        """The job, from the cache or else from `load` (which sees every tenant's jobs);
        JobNotFound when it is not the tenant's (None: any tenant)."""
        key = self._prefix + job_id
        try:
            async with asyncio.timeout(self._timeout):
                cached, seen = await self._get(keys=[key])
        except (redis.RedisError, TimeoutError):
            _LOG.warning("job cache unreachable; reading the store", exc_info=True)
            return _owned(await load(), tenant, job_id)
        if cached is not None:
            return _owned(Job.FromString(cached), tenant, job_id)
        job = await load()
        try:
            async with asyncio.timeout(self._timeout):
                await self._put(
                    keys=[key], args=[_text(seen), job.SerializeToString(), self._ttl_ms]
                )
        except (redis.RedisError, TimeoutError):
            _LOG.warning("could not cache job %s", job_id, exc_info=True)
        return _owned(job, tenant, job_id)

    async def forget(self, job_ids: Iterable[str]) -> None:
        """Drop the jobs' cached versions, and refuse any read that began before; raises
        RedisError or TimeoutError when that cannot be done."""
        keys = self._keys(job_ids)
        if not keys:
            return
        async with asyncio.timeout(self._timeout):
            await self._forget(keys=keys, args=[GENERATION_SECONDS])

    def forget_in(self, pipe: redis.asyncio.client.Pipeline, job_ids: Iterable[str]) -> None:
        """Queue `forget` of the jobs on a pipeline of this cache's client."""
        keys = self._keys(job_ids)
        if keys:
            # EVAL, not EVALSHA: a pipeline would first ask whether the script is loaded.
            pipe.eval(_FORGET, len(keys), *keys, GENERATION_SECONDS)

    @property
    def redis(self) -> redis.asyncio.Redis:
        """The client the cache is kept with."""
        return self._redis

    def _keys(self, job_ids: Iterable[str]) -> list[str]:
        return [self._prefix + job_id for job_id in sorted(set(job_ids))]


class InvalidatingChannel:
    """The event channel the outbox relay publishes to, forgetting each job in the cache
    before its events are published (so no watcher sees an event ahead of GetJob). The
    forget goes first in the publishing pipeline: one round trip for both, in order."""

    def __init__(self, events: RedisEventChannel, cache: RedisJobCache) -> None:
        """`events` and `cache` on the same client, whose one connection orders both."""
        if events.redis is not cache.redis:
            raise ValueError("the event channel and the job cache must share a Redis client")
        self._events = events
        self._cache = cache

    async def publish(self, events: Sequence[RuntimeEvent]) -> None:
        job_ids = [job_id_of(event.job) for event in events]
        await self._events.publish(events, first=lambda pipe: self._cache.forget_in(pipe, job_ids))

    async def job_position(self, job: str) -> Cursor:
        return await self._events.job_position(job)

    async def global_position(self) -> Cursor:
        return await self._events.global_position()

    def follow_job(self, job: str, after: Cursor) -> AsyncIterator[tuple[Cursor, RuntimeEvent]]:
        return self._events.follow_job(job, after)

    def follow_all(self, after: Cursor) -> AsyncIterator[tuple[Cursor, RuntimeEvent]]:
        return self._events.follow_all(after)

    async def close(self) -> None:
        await self._events.close()


def _owned(job: Job, tenant: str | None, job_id: str) -> Job:
    if tenant is not None and job.tenant != tenant:
        raise JobNotFound(job_name(job_id))
    return job


def _text(value: object) -> str:
    if value is None or value is False:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
