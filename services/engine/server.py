"""The engine service's unit: deployments from the environment and its config file, the
catalog, breakers, flights, the response cache, the servicer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
import redis.asyncio as redis
from agentrt.engine.v1 import engine_pb2, engine_pb2_grpc

from services.engine.breaker import Breakers, InProcessBreakers, RedisBreakers
from services.engine.catalog import ModelCatalog
from services.engine.completion import CompletionEngine
from services.engine.deployments import RoutingConfig, load_routing
from services.engine.flights import Flights, InProcessFlights, RedisFlights
from services.engine.handlers import EngineServicer
from services.engine.idempotency import IdempotencyTracker
from services.engine.metrics import BreakerGauge
from services.engine.providers.base import Provider
from services.engine.providers.local import LocalProvider
from services.engine.providers.openai_compat import OpenAICompatConfig, OpenAICompatProvider
from services.engine.redis_outage import RedisGuard
from services.engine.response_cache import (
    InMemoryResponseCache,
    RedisResponseCache,
    ResponseCache,
)
from services.engine.shared_record import RedisCompletionRecord
from services.kit.config import ConfigError, env_float, env_int, env_str
from services.kit.infra import Infrastructure
from services.kit.metrics import metrics_enabled
from services.kit.periodic import cancel_all, run_every

log = logging.getLogger(__name__)

BREAKER_GAUGE_SECONDS = 5.0
"""How often the breaker gauge reads every deployment's breaker (from Redis when shared)."""


@dataclass(frozen=True)
class EngineConfig:
    """The engine's providers and call policy."""

    openai: OpenAICompatConfig | None
    """AGENTRT_OPENAI_BASE_URL (e.g. http://localhost:11434/v1), AGENTRT_OPENAI_API_KEY,
    AGENTRT_OPENAI_MODELS (comma-separated ids; empty asks the server's /models),
    AGENTRT_OPENAI_TIMEOUT (seconds): an OpenAI-compatible server, if any: the shorthand
    for one deployment named `openai`."""
    routing: RoutingConfig
    """AGENTRT_ENGINE_CONFIG: a YAML file of deployments, model aliases and breaker
    settings (`deployments.py`); unset means none beyond the local model and the shorthand."""
    cache_seconds: float
    """AGENTRT_ENGINE_CACHE_SECONDS: how long a cached answer is served when the call's
    cache policy sets no TTL (default 300)."""
    local_chunk_delay: float
    """AGENTRT_LOCAL_SLOW_CHUNK_DELAY: seconds between chunks of the `local-slow` model."""
    max_attempts: int
    """AGENTRT_ENGINE_MAX_ATTEMPTS: attempts of a call that fails retryably (default 3)."""
    refresh_seconds: float
    """AGENTRT_ENGINE_REFRESH_SECONDS: how often the model list is refreshed (default 60)."""
    record_seconds: float
    """AGENTRT_ENGINE_RECORD_SECONDS: how long a completed call is remembered under its
    idempotency key, in this process and in Redis when there is one (default 3600)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EngineConfig:
        base_url = env_str("AGENTRT_OPENAI_BASE_URL", "", env)
        openai = None
        if base_url:
            models = env_str("AGENTRT_OPENAI_MODELS", "", env)
            openai = OpenAICompatConfig(
                base_url=base_url,
                api_key=env_str("AGENTRT_OPENAI_API_KEY", "", env),
                models=tuple(m.strip() for m in models.split(",") if m.strip()),
                timeout_seconds=env_float("AGENTRT_OPENAI_TIMEOUT", 60.0, env, minimum=0.1),
            )
        path = env_str("AGENTRT_ENGINE_CONFIG", "", env)
        routing = load_routing(path, env) if path else RoutingConfig()
        taken = {"local", "openai"} if openai else {"local"}
        clashes = sorted(taken & {d.name for d in routing.deployments})
        if clashes:
            raise ConfigError(
                f"AGENTRT_ENGINE_CONFIG ({path}): deployment names {clashes} are taken by the"
                " built-in local model or the AGENTRT_OPENAI_* shorthand"
            )
        return cls(
            openai=openai,
            routing=routing,
            cache_seconds=env_float("AGENTRT_ENGINE_CACHE_SECONDS", 300.0, env, minimum=1.0),
            local_chunk_delay=env_float("AGENTRT_LOCAL_SLOW_CHUNK_DELAY", 0.1, env),
            max_attempts=env_int("AGENTRT_ENGINE_MAX_ATTEMPTS", 3, env, minimum=1),
            refresh_seconds=env_float("AGENTRT_ENGINE_REFRESH_SECONDS", 60.0, env, minimum=1.0),
            record_seconds=env_float("AGENTRT_ENGINE_RECORD_SECONDS", 3600.0, env, minimum=1.0),
        )

    def providers(self) -> Sequence[Provider]:
        providers: list[Provider] = [LocalProvider(chunk_delay=self.local_chunk_delay)]
        if self.openai is not None:
            providers.append(OpenAICompatProvider(self.openai))
        providers.extend(deployment.build() for deployment in self.routing.deployments)
        return providers


class EngineUnit:
    """Model calls: no storage of its own. Without Redis, breakers, flights, records and
    the response cache are in-process; with it, every replica shares them."""

    name = "engine"
    service_names = (engine_pb2.DESCRIPTOR.services_by_name["EngineService"].full_name,)

    def __init__(
        self, config: EngineConfig, redis_client: redis.Redis | None = None, prefix: str = ""
    ) -> None:
        self._config = config
        self._catalog = ModelCatalog(config.providers(), config.routing.aliases)
        settings = config.routing.breaker
        breakers: Breakers = InProcessBreakers(settings)
        flights: Flights = InProcessFlights()
        cache: ResponseCache = InMemoryResponseCache()
        shared = None
        if redis_client is not None:
            # One view of Redis for all four: an outage found by one is skipped by all.
            guard = RedisGuard()
            breakers = RedisBreakers(redis_client, prefix, settings, guard=guard)
            flights = RedisFlights(redis_client, prefix, guard=guard)
            cache = RedisResponseCache(redis_client, prefix, guard=guard)
            shared = RedisCompletionRecord(redis_client, prefix, config.record_seconds, guard=guard)
        self.tracker = IdempotencyTracker(
            ttl_seconds=config.record_seconds, shared=shared, flights=flights
        )
        engine = CompletionEngine(
            self._catalog,
            self.tracker,
            max_attempts=config.max_attempts,
            breakers=breakers,
            cache=cache,
            cache_seconds=config.cache_seconds,
        )
        self.engine = engine
        self._servicer = EngineServicer(engine)
        self._refresher: asyncio.Task[None] | None = None
        self.breaker_gauge = BreakerGauge(breakers, [p.name for p in self._catalog.providers])
        self._gauge_reader: asyncio.Task[None] | None = None

    def register(self, server: grpc.aio.Server) -> None:
        engine_pb2_grpc.add_EngineServiceServicer_to_server(self._servicer, server)

    async def start(self) -> None:
        await self._catalog.refresh()
        self._refresher = asyncio.create_task(self._refresh_periodically())
        if metrics_enabled():
            self._gauge_reader = asyncio.create_task(
                run_every(BREAKER_GAUGE_SECONDS, self.breaker_gauge.refresh)
            )

    async def stop(self) -> None:
        await cancel_all([t for t in (self._refresher, self._gauge_reader) if t is not None])

    async def close(self) -> None:
        await self._catalog.aclose()

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._config.refresh_seconds)
            await self._catalog.refresh()


async def create_unit(infra: Infrastructure) -> EngineUnit:
    """The engine; with Redis, its breakers, calls in flight, record of completed calls and
    response cache are shared by every replica."""
    return EngineUnit(EngineConfig.from_env(), infra.redis, infra.config.redis_prefix)
