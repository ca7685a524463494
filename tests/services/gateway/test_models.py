"""The gateway's view of the engine's models: cached, refreshed on a miss at most once a second."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import pytest
from agentrt.common.v1.common_pb2 import ErrorReason

from services.gateway.models import ModelDirectory
from services.kit.errors import NotFound


class Engine:
    """Answers ListModels from a set the test changes; counts the calls."""

    def __init__(self, *models: str) -> None:
        self.models = set(models)
        self.calls = 0
        self.down = False

    async def list_models(self) -> Collection[str]:
        self.calls += 1
        if self.down:
            raise ConnectionError("engine down")
        return set(self.models)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    """Lets a background refresh run to its end."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_listed_model_is_accepted_from_the_cache() -> None:
    engine = Engine("local")
    directory = ModelDirectory(engine.list_models, ttl=5.0, clock=Clock())
    for _ in range(10):
        await directory.require("local")
    assert engine.calls == 1


async def test_an_unlisted_model_is_not_found_and_refreshes_at_most_once_a_second() -> None:
    engine = Engine("local")
    clock = Clock()
    directory = ModelDirectory(engine.list_models, ttl=60.0, min_refresh_interval=1.0, clock=clock)
    await directory.require("local")

    for _ in range(3):
        with pytest.raises(NotFound) as error:
            await directory.require("gpt-x")
        assert error.value.reason == ErrorReason.ERROR_REASON_MODEL_NOT_FOUND
        assert error.value.metadata == {"model": "gpt-x"}
    assert engine.calls == 1

    engine.models.add("gpt-x")
    clock.now += 1.0
    await directory.require("gpt-x")
    assert engine.calls == 2


async def test_a_stale_list_answers_at_once_and_is_refreshed_behind() -> None:
    engine = Engine("local", "old")
    clock = Clock()
    directory = ModelDirectory(engine.list_models, ttl=5.0, clock=clock)
    await directory.require("old")

    engine.models.discard("old")
    clock.now += 5.0
    await directory.require("old")
    await settle()

    assert engine.calls == 2
    with pytest.raises(NotFound):
        await directory.require("old")


async def test_a_failing_engine_keeps_the_known_list_in_use() -> None:
    engine = Engine("local")
    clock = Clock()
    directory = ModelDirectory(engine.list_models, ttl=5.0, clock=clock)
    await directory.require("local")

    engine.down = True
    clock.now += 5.0
    await directory.require("local")
    await settle()
    await directory.require("local")
    await settle()

    assert engine.calls == 2


async def test_without_any_list_an_engine_failure_is_the_callers_error() -> None:
    engine = Engine("local")
    engine.down = True
    directory = ModelDirectory(engine.list_models, clock=Clock())
    with pytest.raises(ConnectionError):
        await directory.require("local")
    engine.down = False
    await directory.require("local")


async def test_concurrent_first_calls_share_one_listing() -> None:
    engine = Engine("local")
    directory = ModelDirectory(engine.list_models, clock=Clock())
    await asyncio.gather(*(directory.require("local") for _ in range(20)))
    assert engine.calls == 1
