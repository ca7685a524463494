"""One engine's view of its Redis: an outage costs one short timeout, then Redis is skipped."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as redis

log = logging.getLogger(__name__)

T = TypeVar("T")


class RedisOutage(Exception):
    """Redis was not asked (it is being skipped) or did not answer in time."""


class RedisGuard:
    """Shared by the breakers, flights, call records and response cache of one engine.

    Redis is not their source of truth: without it each falls back to what this replica
    knows. A call waits at most `timeout_seconds` for Redis; a connection failure or a
    timeout then makes every Redis use of the engine skip it for `skip_seconds` (failing
    at once), so that an outage does not add a timeout to each step of every call. The
    outage is logged once, and its end once.
    """

    def __init__(
        self,
        timeout_seconds: float = 0.5,
        skip_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self._skip_seconds = skip_seconds
        self._clock = clock
        self._skip_until = 0.0
        self._down = False

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """The operation's result; raises RedisOutage while Redis is skipped or when it
        fails to connect or answer in time (other Redis errors are raised as they are)."""
        if self._clock() < self._skip_until:
            raise RedisOutage("skipped while Redis is unreachable")
        try:
            async with asyncio.timeout(self.timeout_seconds):
                result = await operation()
        except (redis.ConnectionError, redis.TimeoutError, TimeoutError) as error:
            self._skip_until = self._clock() + self._skip_seconds
            if not self._down:
                self._down = True
                log.warning(
                    "Redis is unreachable (%r): the engine keeps breakers, flights, call "
                    "records and cached answers in this replica, retrying Redis every %g s",
                    error,
                    self._skip_seconds,
                )
            raise RedisOutage(str(error)) from error
        if self._down:
            self._down = False
            log.warning("Redis is reachable again: the engine shares its state through it")
        return result
