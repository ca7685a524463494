"""The engine's metrics, read through the OpenTelemetry SDK's in-memory reader."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from services.engine.breaker import BreakerSettings, InProcessBreakers, RedisBreakers
from services.engine.catalog import ModelCatalog
from services.engine.completion import CompletionEngine
from services.engine.idempotency import IdempotencyTracker
from services.engine.metrics import BreakerGauge
from services.engine.model import ChatMessage, CompletionParams
from services.engine.providers.local import LOCAL_MODEL, LocalProvider
from services.engine.response_cache import (
    CacheRequest,
    InMemoryResponseCache,
    RedisResponseCache,
    ResponseCache,
)

pytestmark = pytest.mark.integration

_reader = InMemoryMetricReader()
# The global provider can be set once per process: instruments made before (the engine's,
# at import) start recording through it from now on.
metrics.set_meter_provider(MeterProvider(metric_readers=[_reader]))

HELLO = [ChatMessage("user", "hello")]
GREEDY = CompletionParams(temperature=0.0)


def points(name: str) -> dict[tuple[tuple[str, object], ...], float]:
    """The series of metric `name` now, by their sorted labels."""
    data = _reader.get_metrics_data()
    found: dict[tuple[tuple[str, object], ...], float] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        labels = tuple(sorted((point.attributes or {}).items()))
                        found[labels] = point.value  # type: ignore[union-attr]
    return found


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest, client: redis.Redis, redis_prefix: str) -> ResponseCache:
    if request.param == "redis":
        return RedisResponseCache(client, redis_prefix)
    return InMemoryResponseCache()


async def test_cache_hits_and_misses_are_counted_by_model_and_store(
    cache: ResponseCache,
) -> None:
    catalog = ModelCatalog([LocalProvider(chunk_delay=0)])
    await catalog.refresh()
    engine = CompletionEngine(catalog, IdempotencyTracker(), cache=cache)
    labels = (("model", LOCAL_MODEL), ("store", cache.store))
    hits = points("agentrt.engine.cache.hits").get(labels, 0)
    misses = points("agentrt.engine.cache.misses").get(labels, 0)
    request = CacheRequest(enabled=True)

    await engine.complete(LOCAL_MODEL, HELLO, params=GREEDY, tenant="t", cache=request)
    await engine.complete(LOCAL_MODEL, HELLO, params=GREEDY, tenant="t", cache=request)
    chunks = engine.stream(LOCAL_MODEL, HELLO, params=GREEDY, tenant="t", cache=request)
    assert [c async for c in chunks][-1].cache_hit
    await engine.complete(LOCAL_MODEL, HELLO, params=GREEDY, tenant="u", cache=request)
    await engine.complete(LOCAL_MODEL, HELLO, params=GREEDY, tenant="t")  # no lookup

    assert points("agentrt.engine.cache.hits")[labels] == hits + 2
    assert points("agentrt.engine.cache.misses")[labels] == misses + 2


@pytest.mark.parametrize("shared", [False, True])
async def test_the_breaker_gauge_reports_each_deployments_state(
    shared: bool, client: redis.Redis, redis_prefix: str
) -> None:
    settings = BreakerSettings(failure_threshold=1, cooldown_seconds=60, probe_seconds=60)
    breakers = (
        RedisBreakers(client, redis_prefix, settings) if shared else InProcessBreakers(settings)
    )
    gauge = BreakerGauge(breakers, ["dep-a", "dep-b", "dep-c"])
    await breakers.failed("dep-b")
    await breakers.failed("dep-c")
    await breakers.succeeded("dep-c")

    await gauge.refresh()

    states = points("agentrt.engine.breaker.state")
    assert states[(("deployment", "dep-a"),)] == 0
    assert states[(("deployment", "dep-b"),)] == 2
    assert states[(("deployment", "dep-c"),)] == 0
