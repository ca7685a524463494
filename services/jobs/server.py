"""The jobs service's unit: its store, the outbox relay, and the deadline and action
expiry sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

import grpc
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc

from services.jobs.handlers import JobServicer
from services.jobs.job_cache import InvalidatingChannel, RedisJobCache
from services.jobs.manager import JobManager
from services.jobs.metrics import JobGauges
from services.jobs.store import ActionStore, JobStore, open_job_store
from services.jobs.store_redis import RedisActionStore
from services.jobs.tracing import record_ended_jobs
from services.jobs.validation import JobLimits
from services.kit.config import ConfigError, env_float, env_str
from services.kit.events import EventChannel, OutboxRelay, RedisEventChannel
from services.kit.infra import Infrastructure
from services.kit.metrics import metrics_enabled
from services.kit.periodic import cancel_all, run_every

log = logging.getLogger(__name__)


class JobsUnit:
    """Job records and leases; relays its outbox to the event channel."""

    name = "jobs"
    service_names = (jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,)

    def __init__(
        self,
        store: JobStore,
        infra: Infrastructure,
        sweep_seconds: float,
        actions: ActionStore | None = None,
        cache: RedisJobCache | None = None,
    ) -> None:
        """Actions in `actions` (None: in the job store); GetJob through `cache` if any,
        which the relay then keeps fresh by forgetting every job it publishes events of."""
        self._store = store
        events: EventChannel = infra.events
        if cache is not None:
            if not isinstance(events, RedisEventChannel):
                raise ConfigError("the job cache needs events on Redis (AGENTRT_REDIS_URL)")
            events = InvalidatingChannel(events, cache)
        self._relay = OutboxRelay(
            store,
            events,
            infra.wakeups,
            on_published=functools.partial(record_ended_jobs, store, actions or store),
        )
        self._manager = JobManager(
            store, infra.wakeups, self._relay.notify, JobLimits(), actions=actions, cache=cache
        )
        self._sweep_seconds = sweep_seconds
        self._gauges = JobGauges(store, actions is None) if metrics_enabled() else None
        # How often the gauges read the store; they report the last reading.
        self._gauges_seconds = env_float("AGENTRT_JOBS_METRICS_SECONDS", 5.0, minimum=0.05)
        self._tasks: list[asyncio.Task[None]] = []

    def register(self, server: grpc.aio.Server) -> None:
        jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(self._manager), server)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._relay.run(), name="jobs-outbox-relay"),
            asyncio.create_task(
                run_every(self._sweep_seconds, self._sweep_expired), name="jobs-expiry"
            ),
        ]
        if self._gauges is not None:
            self._tasks.append(
                asyncio.create_task(
                    run_every(self._gauges_seconds, self._gauges.refresh), name="jobs-metrics"
                )
            )

    async def stop(self) -> None:
        await self._manager.stop_leasing()
        await cancel_all(self._tasks)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._relay.drain()
        await self._store.close()

    async def _sweep_expired(self) -> None:
        """Times out the jobs past their deadline, then expires the actions past theirs;
        a full batch is followed at once by another."""
        limits = JobLimits()
        while len(await self._manager.expire_deadlines()) >= limits.deadline_batch:
            pass
        while len(await self._manager.expire_actions()) >= limits.action_batch:
            pass


async def create_unit(infra: Infrastructure) -> JobsUnit:
    """The jobs unit as configured; ConfigError before anything is opened."""
    sweep = env_float("AGENTRT_DEADLINE_SWEEP_SECONDS", 1.0, minimum=0.05)
    redis_actions = _actions_in_redis(infra)
    cache = _job_cache(infra)
    store = await open_job_store(infra.storage("jobs"))
    actions = None
    if redis_actions:
        assert infra.redis is not None
        actions = RedisActionStore(infra.redis, store, infra.config.redis_prefix)
    return JobsUnit(store, infra, sweep, actions, cache)


def _actions_in_redis(infra: Infrastructure) -> bool:
    """AGENTRT_JOBS_ACTION_STORE: `database` (the job store's own actions) or `redis`."""
    kind = env_str("AGENTRT_JOBS_ACTION_STORE", "database")
    if kind not in ("database", "redis"):
        raise ConfigError(f"AGENTRT_JOBS_ACTION_STORE: expected database or redis, got {kind!r}")
    if kind == "redis" and infra.redis is None:
        raise ConfigError("AGENTRT_JOBS_ACTION_STORE=redis needs AGENTRT_REDIS_URL")
    return kind == "redis"


def _job_cache(infra: Infrastructure) -> RedisJobCache | None:
    """GetJob's cache on Redis, when there is Redis and AGENTRT_JOB_CACHE_SECONDS > 0."""
    seconds = env_float("AGENTRT_JOB_CACHE_SECONDS", 1.0, minimum=0)
    if infra.redis is None or seconds == 0:
        return None
    return RedisJobCache(infra.redis, infra.config.redis_prefix, seconds)
