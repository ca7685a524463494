"""The catalog of models the engine serves, and the deployments (providers) serving each."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from services.engine.deployments import RouteTarget
from services.engine.errors import ModelNotFound
from services.engine.model import ModelInfo
from services.engine.providers.base import Provider

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """One deployment that can answer for a model id, and the id it knows the model by."""

    provider: Provider
    model: str
    priority: int
    weight: int


class ModelCatalog:
    """Routes a model id, or an alias, to the deployments (providers) that serve it.

    Providers are listed in order of preference: when two serve the same model id, the
    first one listed gets the calls and the next ones are its fallbacks. An alias routes to
    its targets: lower priority first, targets of one priority shared by weight. The
    catalog is empty until the first `refresh`.
    """

    def __init__(
        self,
        providers: Sequence[Provider],
        aliases: Mapping[str, Sequence[RouteTarget]] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        names = [provider.name for provider in providers]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"provider names must be unique, repeated: {duplicates}")
        self._providers = tuple(providers)
        by_name = {provider.name: provider for provider in providers}
        self._aliases: dict[str, tuple[Route, ...]] = {}
        for alias, targets in (aliases or {}).items():
            unknown = [t.deployment for t in targets if t.deployment not in by_name]
            if unknown:
                raise ValueError(f"alias {alias!r} names unknown deployments {unknown}")
            self._aliases[alias] = tuple(
                Route(by_name[t.deployment], t.model, t.priority, t.weight) for t in targets
            )
        self._rng = rng
        self._listed: dict[str, list[ModelInfo]] = {name: [] for name in names}
        self._routes: dict[str, tuple[Provider, ModelInfo]] = {}
        self._fallbacks: dict[str, tuple[Route, ...]] = {}

    @property
    def providers(self) -> tuple[Provider, ...]:
        return self._providers

    async def refresh(self) -> None:
        """Ask every provider for its models; one that fails keeps the list it had."""
        await asyncio.gather(*(self._refresh_one(provider) for provider in self._providers))
        routes: dict[str, tuple[Provider, ModelInfo]] = {}
        fallbacks: dict[str, list[Route]] = {}
        for provider in self._providers:
            for info in self._listed[provider.name]:
                routes.setdefault(info.id, (provider, info))
                served = fallbacks.setdefault(info.id, [])
                served.append(Route(provider, info.id, len(served), 1))
        for alias, targets in self._aliases.items():
            first = targets[0]
            known = self._info(first.provider.name, first.model)
            routes[alias] = (first.provider, replace(known, id=alias))
            fallbacks[alias] = list(targets)
        self._routes = routes
        self._fallbacks = {model: tuple(served) for model, served in fallbacks.items()}

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

    def _info(self, provider: str, model: str) -> ModelInfo:
        for info in self._listed[provider]:
            if info.id == model:
                return info
        return ModelInfo(model, provider, 0, supports_tools=True, supports_streaming=True)

    def routes(self, model_id: str) -> tuple[Route, ...]:
        """Every deployment serving `model_id` as configured, in priority order."""
        try:
            return self._fallbacks[model_id]
        except KeyError:
            raise ModelNotFound(model_id) from None

    def plan(self, model_id: str) -> list[Route]:
        """The deployments to try for one call, in order: by priority, and among equal
        priorities a weighted random order, so that each comes first in proportion to its
        weight."""
        routes = self.routes(model_id)
        if len(routes) == 1:
            return list(routes)  # most models: nothing to order
        # Weighted random order by Efraimidis-Spirakis keys: u ** (1 / weight), largest first.
        keyed = [(r.priority, -(self._rng() ** (1.0 / r.weight)), i) for i, r in enumerate(routes)]
        return [routes[i] for _, _, i in sorted(keyed)]

    def models(self) -> list[ModelInfo]:
        """Every routable model, sorted by id."""
        return sorted((info for _, info in self._routes.values()), key=lambda info: info.id)

    async def aclose(self) -> None:
        """Close every provider."""
        for provider in self._providers:
            await provider.aclose()
