"""Fixtures of the engine tests: a real OpenAI-compatible server and providers pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.engine.providers.openai_compat import OpenAICompatConfig, OpenAICompatProvider

from .openai_server import OpenAIServer
from .upstreams import Upstreams


@pytest.fixture
async def openai_server() -> AsyncIterator[OpenAIServer]:
    server = OpenAIServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def openai_provider(openai_server: OpenAIServer) -> AsyncIterator[OpenAICompatProvider]:
    provider = OpenAICompatProvider(
        OpenAICompatConfig(base_url=openai_server.url, api_key=openai_server.api_key)
    )
    yield provider
    await provider.aclose()


@pytest.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    ups = Upstreams()
    await ups.first.start()
    await ups.second.start()
    yield ups
    for provider in ups.providers:
        await provider.aclose()
    await ups.first.stop()
    await ups.second.stop()
