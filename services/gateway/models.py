"""The models the engine serves, as the gateway last heard them, to refuse unknown ones early."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Collection

from agentrt.common.v1.common_pb2 import ErrorReason

from services.kit.errors import NotFound

log = logging.getLogger(__name__)

ListModels = Callable[[], Awaitable[Collection[str]]]
"""Asks the engine for the ids of every model it serves."""


class ModelDirectory:
    """Answers "is this model served?" from a list refreshed every `ttl` seconds.

    A model that is listed is accepted at once, even from a list past its `ttl` (which
    is then refreshed in the background), so the hot path never waits for the engine.
    A model that is not listed triggers a refresh first (at most one a
    `min_refresh_interval`), so a model added to the engine is usable right away.
    When a refresh fails, the list heard before stays in use.
    """

    def __init__(
        self,
        list_models: ListModels,
        ttl: float = 5.0,
        min_refresh_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._list_models = list_models
        self._ttl = ttl
        self._min_interval = min_refresh_interval
        self._clock = clock
        self._models: frozenset[str] | None = None
        self._fresh_until = 0.0
        self._last_attempt = float("-inf")
        self._refreshing: asyncio.Task[None] | None = None

    async def require(self, model: str) -> None:
        """NotFound(MODEL_NOT_FOUND) unless the engine serves `model`."""
        now = self._clock()
        if self._models is not None and model in self._models:
            if now >= self._fresh_until and now - self._last_attempt >= self._min_interval:
                self._start_refresh()
            return
        if self._models is None or now - self._last_attempt >= self._min_interval:
            await asyncio.shield(self._start_refresh())
        if self._models is None or model not in self._models:
            raise NotFound(
                f"model {model!r} is not served by any configured provider",
                ErrorReason.ERROR_REASON_MODEL_NOT_FOUND,
                {"model": model},
            )

    async def close(self) -> None:
        """Stops a refresh in progress."""
        if self._refreshing is not None:
            self._refreshing.cancel()

    def _start_refresh(self) -> asyncio.Task[None]:
        if self._refreshing is None or self._refreshing.done():
            # An empty context: the refresh must not inherit the deadline (or the trace)
            # of the call that happened to start it.
            self._refreshing = asyncio.get_running_loop().create_task(
                self._refresh(), context=contextvars.Context()
            )
        return self._refreshing

    async def _refresh(self) -> None:
        self._last_attempt = self._clock()
        try:
            models = frozenset(await self._list_models())
        except Exception:
            if self._models is None:
                raise
            log.warning(
                "could not list the engine's models; keeping the %d known",
                len(self._models),
                exc_info=True,
            )
            return
        self._models = models
        self._fresh_until = self._clock() + self._ttl
