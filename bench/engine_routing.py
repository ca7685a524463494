"""Benchmark of what the engine's routing adds to a model call, in-process and with Redis.

Against a zero-latency OpenAI-compatible upstream (a real local HTTP server) it times
`CompletionEngine.complete` one call at a time, after a warm-up, in four set-ups:

- direct: the provider's `complete` alone (the HTTP round trip, the baseline);
- in-process: the engine with in-process breakers and flights, an idempotency key per call;
- redis: breakers, flights and the record in Redis (what every replica shares), a key per
  call;
- redis, no key: breakers in Redis, no idempotency key (no flight, no record).

It prints p50/p90/p99 of each and the p50 overhead over direct. Usage:
python bench/engine_routing.py [--calls N] [--redis URL].
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as redis

from services.engine.breaker import BreakerSettings, InProcessBreakers, RedisBreakers
from services.engine.catalog import ModelCatalog
from services.engine.completion import CompletionEngine
from services.engine.flights import RedisFlights
from services.engine.idempotency import IdempotencyTracker
from services.engine.model import ChatMessage, CompletionParams
from services.engine.providers.openai_compat import OpenAICompatConfig, OpenAICompatProvider
from services.engine.shared_record import RedisCompletionRecord
from services.kit.loop import run_main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.services.engine.openai_server import OpenAIServer

WARM_UP = 20
ROUNDS = 5
HELLO = [ChatMessage("user", "hello")]


async def timed(calls: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    for i in range(WARM_UP):
        await call(-1_000_000 - i)
    seconds = []
    for i in range(calls):
        started = time.perf_counter()
        await call(i)
        seconds.append(time.perf_counter() - started)
    return seconds


def shifted(
    call: Callable[[int], Awaitable[object]], offset: int
) -> Callable[[int], Awaitable[object]]:
    """The call numbered from `offset`, so that every round uses keys of its own."""
    return lambda i: call(offset + i)


def show(name: str, seconds: list[float], baseline: float | None) -> float:
    cuts = statistics.quantiles(seconds, n=100)
    p50 = statistics.median(seconds)
    extra = "" if baseline is None else f"  overhead p50 {1000 * (p50 - baseline):+.2f} ms"
    print(
        f"{name:<16} p50 {1000 * p50:6.2f} ms  p90 {1000 * cuts[89]:6.2f} ms"
        f"  p99 {1000 * cuts[98]:6.2f} ms{extra}"
    )
    return p50


async def main(calls: int, redis_url: str) -> None:
    server = OpenAIServer(models=("gpt-test",))
    await server.start()
    provider = OpenAICompatProvider(OpenAICompatConfig(server.url, server.api_key))
    catalog = ModelCatalog([provider])
    await catalog.refresh()
    client = redis.Redis.from_url(redis_url)
    prefix = f"bench-engine:{secrets.token_hex(4)}"
    settings = BreakerSettings()
    run = secrets.token_hex(4)
    local = CompletionEngine(catalog, IdempotencyTracker(), breakers=InProcessBreakers(settings))
    tracker = IdempotencyTracker(
        shared=RedisCompletionRecord(client, prefix, 60), flights=RedisFlights(client, prefix)
    )
    shared = CompletionEngine(catalog, tracker, breakers=RedisBreakers(client, prefix, settings))
    setups: dict[str, Callable[[int], Awaitable[object]]] = {
        "direct": lambda i: provider.complete("gpt-test", HELLO, (), CompletionParams()),
        "in-process": lambda i: local.complete("gpt-test", HELLO, idempotency_key=f"l{run}{i}"),
        "redis": lambda i: shared.complete("gpt-test", HELLO, idempotency_key=f"r{run}{i}"),
        "redis, no key": lambda i: shared.complete("gpt-test", HELLO),
    }
    seconds: dict[str, list[float]] = {name: [] for name in setups}
    try:
        # Rounds alternate the set-ups, so that a busy moment of the machine hits them all.
        for round_number in range(ROUNDS):
            for name, call in setups.items():
                seconds[name] += await timed(calls // ROUNDS, shifted(call, round_number * calls))
        baseline = show("direct", seconds["direct"], None)
        for name in list(setups)[1:]:
            show(name, seconds[name], baseline)
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await client.unlink(*keys)
        await client.aclose()
        await provider.aclose()
        await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    run_main(main(args.calls, args.redis))
