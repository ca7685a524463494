"""Two real OpenAI-compatible upstreams behind deployments "first" and "second" of alias "fast"."""

from __future__ import annotations

from services.engine.catalog import ModelCatalog
from services.engine.deployments import RouteTarget
from services.engine.providers.openai_compat import OpenAICompatConfig, OpenAICompatProvider

from .openai_server import OpenAIServer


class Upstreams:
    def __init__(self) -> None:
        self.first = OpenAIServer()
        self.second = OpenAIServer()
        self.providers: list[OpenAICompatProvider] = []

    def provider(self, name: str, server: OpenAIServer) -> OpenAICompatProvider:
        config = OpenAICompatConfig(
            base_url=server.url, api_key=server.api_key, name=name, timeout_seconds=0.3
        )
        provider = OpenAICompatProvider(config)
        self.providers.append(provider)
        return provider

    async def catalog(self, targets: list[RouteTarget] | None = None) -> ModelCatalog:
        providers = [self.provider("first", self.first), self.provider("second", self.second)]
        targets = targets or [
            RouteTarget("first", "gpt-test", priority=0),
            RouteTarget("second", "gpt-test", priority=1),
        ]
        catalog = ModelCatalog(providers, {"fast": targets})
        await catalog.refresh()
        return catalog
