"""The engine's metrics: response cache hits and misses, and each deployment's breaker state."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence

from opentelemetry.metrics import CallbackOptions, Observation

from services.engine.breaker import Breakers, BreakerState
from services.kit.metrics import meter

_hits = meter().create_counter(
    "agentrt.engine.cache.hits",
    unit="{lookup}",
    description="Response cache lookups that found an answer, by model and store",
)
_misses = meter().create_counter(
    "agentrt.engine.cache.misses",
    unit="{lookup}",
    description="Response cache lookups that found none, by model and store",
)

BREAKER_VALUES: dict[BreakerState, int] = {"closed": 0, "half_open": 1, "open": 2}


def count_cache_lookup(model: str, store: str, hit: bool) -> None:
    """One lookup of the response cache (`store`: memory or redis); no tenant label, so
    the series stay few."""
    (_hits if hit else _misses).add(1, {"model": model, "store": store})


class BreakerGauge:
    """An observable gauge of each deployment's breaker (0 closed, 1 half-open, 2 open).

    The metrics readers call gauges from their own threads, which cannot await Redis, so
    `refresh` (a periodic task of the engine) reads the states and the gauge reports them.
    """

    def __init__(self, breakers: Breakers, deployments: Sequence[str]) -> None:
        self._breakers = breakers
        self._deployments = tuple(deployments)
        self._states: dict[str, BreakerState] = {}
        _live_gauges.add(self)

    async def refresh(self) -> None:
        self._states = {name: await self._breakers.state(name) for name in self._deployments}

    def observations(self) -> Iterable[Observation]:
        for name, state in self._states.items():
            yield Observation(BREAKER_VALUES[state], {"deployment": name})


# One instrument for the process (a second of the same name would be ignored), observing
# every engine's gauge that is alive.
_live_gauges: weakref.WeakSet[BreakerGauge] = weakref.WeakSet()


def _observe_breakers(options: CallbackOptions) -> Iterable[Observation]:
    for gauge in list(_live_gauges):
        yield from gauge.observations()


meter().create_observable_gauge(
    "agentrt.engine.breaker.state",
    callbacks=[_observe_breakers],
    description="Each deployment's circuit breaker: 0 closed, 1 half-open, 2 open",
)
