"""Routing model ids to providers."""

from __future__ import annotations

import logging

import pytest

from services.engine.catalog import ModelCatalog
from services.engine.deployments import RouteTarget
from services.engine.errors import ModelNotFound
from services.engine.providers.local import LocalProvider
from services.engine.providers.openai_compat import OpenAICompatConfig, OpenAICompatProvider

from .openai_server import Failure, OpenAIServer, unused_url


async def test_refresh_routes_every_listed_model(
    openai_provider: OpenAICompatProvider,
) -> None:
    local = LocalProvider()
    catalog = ModelCatalog([local, openai_provider])

    await catalog.refresh()

    assert [m.id for m in catalog.models()] == ["gpt-mini", "gpt-test", "local", "local-slow"]
    [route] = catalog.routes("gpt-mini")
    assert route.provider is openai_provider and route.model == "gpt-mini"
    assert catalog.plan("local-slow")[0].provider is local


async def test_unknown_model_is_not_found() -> None:
    catalog = ModelCatalog([LocalProvider()])
    with pytest.raises(ModelNotFound) as before_refresh:
        catalog.routes("local")
    await catalog.refresh()

    with pytest.raises(ModelNotFound) as unknown:
        catalog.plan("gpt-5")

    assert before_refresh.value.model == "local"
    assert unknown.value.model == "gpt-5" and not unknown.value.retryable


async def test_provider_down_during_refresh_keeps_its_models(
    openai_server: OpenAIServer,
    openai_provider: OpenAICompatProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    catalog = ModelCatalog([LocalProvider(), openai_provider])
    await catalog.refresh()
    openai_server.fail_next(1, Failure(503, "maintenance"))

    with caplog.at_level(logging.WARNING, logger="services.engine.catalog"):
        await catalog.refresh()

    assert [m.id for m in catalog.models()] == ["gpt-mini", "gpt-test", "local", "local-slow"]
    [record] = caplog.records
    assert "'openai'" in record.getMessage()
    assert record.exc_info is not None and "maintenance" in str(record.exc_info[1])


async def test_provider_down_at_first_refresh_leaves_the_others_routable() -> None:
    gone = OpenAICompatProvider(OpenAICompatConfig(base_url=unused_url()))
    catalog = ModelCatalog([gone, LocalProvider()])
    try:
        await catalog.refresh()
    finally:
        await catalog.aclose()
    assert [m.id for m in catalog.models()] == ["local", "local-slow"]


async def test_first_listed_provider_wins_a_shared_model_id_the_next_is_its_fallback(
    openai_server: OpenAIServer,
) -> None:
    local = LocalProvider()
    config = OpenAICompatConfig(base_url=openai_server.url, models=("local",), name="shadow")
    shadow = OpenAICompatProvider(config)
    catalog = ModelCatalog([local, shadow])
    try:
        await catalog.refresh()
    finally:
        await catalog.aclose()
    assert [r.provider for r in catalog.plan("local")] == [local, shadow]
    assert [m.provider for m in catalog.models()] == ["local", "local"]


def test_provider_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="local"):
        ModelCatalog([LocalProvider(), LocalProvider(chunk_delay=0)])


async def test_an_alias_is_listed_and_routes_to_its_targets_by_priority() -> None:
    local = LocalProvider()
    targets = [RouteTarget("local", "local-slow", priority=1), RouteTarget("local", "local")]
    catalog = ModelCatalog([local], {"fast": targets})
    await catalog.refresh()

    assert [(r.model, r.priority) for r in catalog.plan("fast")] == [
        ("local", 0),
        ("local-slow", 1),
    ]
    [alias] = [m for m in catalog.models() if m.id == "fast"]
    assert (alias.provider, alias.supports_streaming) == ("local", True)
    with pytest.raises(ValueError, match="unknown deployments"):
        ModelCatalog([local], {"bad": [RouteTarget("ghost", "m")]})
