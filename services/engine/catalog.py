"""The catalog of models the engine serves, and which provider serves each."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from services.engine.errors import ModelNotFound
from services.engine.model import ModelInfo
from services.engine.providers.base import Provider

_log = logging.getLogger(__name__)


class ModelCatalog:
    """Routes a model id to its provider.

    Providers are listed in order of preference: when two serve the same model id, the
    first one listed gets the calls. The catalog is empty until the first `refresh`.
    """

    def __init__(self, providers: Sequence[Provider]) -> None:
        names = [provider.name for provider in providers]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"provider names must be unique, repeated: {duplicates}")
        self._providers = tuple(providers)
        self._listed: dict[str, list[ModelInfo]] = {name: [] for name in names}
        self._routes: dict[str, tuple[Provider, ModelInfo]] = {}

    @property
    def providers(self) -> tuple[Provider, ...]:
        return self._providers

    async def refresh(self) -> None:
        """Ask every provider for its models; one that fails keeps the list it had."""
        await asyncio.gather(*(self._refresh_one(provider) for provider in self._providers))
        routes: dict[str, tuple[Provider, ModelInfo]] = {}
        for provider in self._providers:
            for info in self._listed[provider.name]:
                routes.setdefault(info.id, (provider, info))
        self._routes = routes

    async def _refresh_one(self, provider: Provider) -> None:
        try:
            self._listed[provider.name] = await provider.list_models()
        # Any failure, not just the domain's: one broken provider must not hide the others.
        except Exception:
            _log.warning(
                "could not list the models of provider %r; keeping its %d known models",
                provider.name,
                len(self._listed[provider.name]),
                exc_info=True,
            )

    def resolve(self, model_id: str) -> tuple[Provider, ModelInfo]:
        """The provider serving `model_id` and what it says about the model."""
        try:
            return self._routes[model_id]
        except KeyError:
            raise ModelNotFound(model_id) from None

    def models(self) -> list[ModelInfo]:
        """Every routable model, sorted by id."""
        return sorted((info for _, info in self._routes.values()), key=lambda info: info.id)

    async def aclose(self) -> None:
        """Close every provider."""
        for provider in self._providers:
            await provider.aclose()
