"""Circuit breakers: one suite for the in-process and the Redis ones, and two engine replicas
sharing breakers through the real Redis in front of two real upstreams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from services.engine.breaker import Breakers, BreakerSettings, InProcessBreakers, RedisBreakers
from services.engine.catalog import ModelCatalog
from services.engine.completion import CompletionEngine
from services.engine.idempotency import IdempotencyTracker

from .openai_server import Failure, Reply
from .test_routing import HELLO
from .upstreams import Upstreams

pytestmark = pytest.mark.integration

COOLDOWN = 0.3
SETTINGS = BreakerSettings(failure_threshold=3, cooldown_seconds=COOLDOWN, probe_seconds=5.0)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


@pytest.fixture(params=["in-process", "redis"])
def breakers(request: pytest.FixtureRequest, client: redis.Redis, redis_prefix: str) -> Breakers:
    if request.param == "redis":
        return RedisBreakers(client, redis_prefix, SETTINGS)
    return InProcessBreakers(SETTINGS)


async def fail(breakers: Breakers, times: int) -> None:
    for _ in range(times):
        await breakers.failed("d")


async def test_opens_after_the_threshold_of_consecutive_failures(breakers: Breakers) -> None:
    await fail(breakers, 2)
    await breakers.succeeded("d")
    await fail(breakers, 2)
    assert await breakers.state("d") == "closed"
    assert await breakers.acquire("d") == "admitted"

    await fail(breakers, 1)

    assert await breakers.state("d") == "open"
    assert await breakers.acquire("d") == "refused"
    assert await breakers.state("other") == "closed"
    assert await breakers.acquire("other") == "clean"


async def test_half_open_lets_exactly_one_probe_through(breakers: Breakers) -> None:
    await fail(breakers, 3)
    await asyncio.sleep(COOLDOWN + 0.05)
    assert await breakers.state("d") == "half_open"

    probes = await asyncio.gather(*(breakers.acquire("d") for _ in range(5)))

    assert sorted(probes) == ["admitted"] + ["refused"] * 4
    await breakers.succeeded("d")
    assert await breakers.state("d") == "closed"
    assert await breakers.acquire("d") == "clean"


async def test_a_failed_probe_opens_the_breaker_again(breakers: Breakers) -> None:
    await fail(breakers, 3)
    await asyncio.sleep(COOLDOWN + 0.05)
    assert await breakers.acquire("d") == "admitted"

    await breakers.failed("d")

    assert await breakers.state("d") == "open"
    assert await breakers.acquire("d") == "refused"


async def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        BreakerSettings(failure_threshold=0)


def replica(catalog: ModelCatalog, client: redis.Redis, prefix: str) -> CompletionEngine:
    return CompletionEngine(
        catalog,
        IdempotencyTracker(),
        max_attempts=1,
        breakers=RedisBreakers(client, prefix, SETTINGS),
    )


async def test_a_breaker_opened_on_one_replica_makes_the_other_skip_the_deployment(
    upstreams: Upstreams,
    client: redis.Redis,
    redis_prefix: str,
) -> None:
    one = replica(await upstreams.catalog(), client, redis_prefix)
    other = replica(await upstreams.catalog(), client, redis_prefix)
    upstreams.first.fail_next(3, Failure(500))
    for _ in range(3):
        assert (await one.complete("fast", HELLO)).provider == "second"
    assert len(upstreams.first.chat_requests) == 3

    completion = await other.complete("fast", HELLO)

    assert completion.provider == "second"
    assert [(a.deployment, a.outcome) for a in completion.attempts] == [
        ("first", "breaker_open"),
        ("second", "ok"),
    ]
    assert len(upstreams.first.chat_requests) == 3
    [listed] = [d for d in await other.deployments("fast") if d.route.provider.name == "first"]
    assert listed.breaker == "open"


async def test_after_the_cooldown_one_probe_goes_through_and_closes_the_breaker(
    upstreams: Upstreams,
    client: redis.Redis,
    redis_prefix: str,
) -> None:
    one = replica(await upstreams.catalog(), client, redis_prefix)
    other = replica(await upstreams.catalog(), client, redis_prefix)
    upstreams.first.fail_next(3, Failure(500))
    for _ in range(3):
        await one.complete("fast", HELLO)
    await asyncio.sleep(COOLDOWN + 0.05)
    # The probe is slow, so that the other calls come while it is in flight.
    upstreams.first.reply_next(Reply(text="probe", response_delay=0.2))

    answers = await asyncio.gather(
        *(engine.complete("fast", HELLO) for engine in (one, other, one, other))
    )

    assert sorted(a.provider for a in answers) == ["first", "second", "second", "second"]
    assert len(upstreams.first.chat_requests) == 3 + 1
    assert [d.breaker for d in await other.deployments("fast")] == ["closed", "closed"]
    assert (await other.complete("fast", HELLO)).provider == "first"


async def test_a_probe_given_up_frees_its_slot_at_once(breakers: Breakers) -> None:
    await fail(breakers, 3)
    await asyncio.sleep(COOLDOWN + 0.05)
    assert await breakers.acquire("d") == "admitted"
    assert await breakers.acquire("d") == "refused"

    await breakers.released("d")

    assert await breakers.acquire("d") == "admitted"


async def test_a_cancelled_probe_call_lets_the_next_call_probe(
    upstreams: Upstreams,
    client: redis.Redis,
    redis_prefix: str,
) -> None:
    one = replica(await upstreams.catalog(), client, redis_prefix)
    upstreams.first.fail_next(3, Failure(500))
    for _ in range(3):
        await one.complete("fast", HELLO)
    await asyncio.sleep(COOLDOWN + 0.05)
    upstreams.first.reply_next(Reply(text="slow probe", response_delay=0.25))
    probe = asyncio.create_task(one.complete("fast", HELLO))
    await asyncio.sleep(0.1)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe

    assert (await one.complete("fast", HELLO)).provider == "first"
