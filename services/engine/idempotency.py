"""Deduplication of model calls by idempotency key, so that a retried step gets the recorded answer.

Calls in flight are deduplicated in-process; completed results are recorded in-process and,
when a shared record is given (Redis, `shared_record.py`), for every engine replica, so a
retry that reaches another replica, or this one after a restart, is answered too.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.engine.errors import IdempotencyConflict
from services.engine.model import Completion
from services.engine.shared_record import CompletionRecord


@dataclass(frozen=True)
class _Recorded:
    fingerprint: str
    result: Completion
    expires_at: float


@dataclass
class _InFlight:
    fingerprint: str
    done: asyncio.Event = field(default_factory=asyncio.Event)
    result: Completion | None = None
    error: Exception | None = None
    """Set when the call failed; the waiters get the same error."""


class IdempotencyTracker:
    """Runs each idempotency key's call once, and answers repeats with the recorded result."""

    def __init__(
        self,
        ttl_seconds: float = 3600.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        shared: CompletionRecord | None = None,
    ) -> None:
        """Completed results are kept `ttl_seconds` and at most `max_entries` of them (the
        oldest go first); `clock` returns seconds and is replaceable for tests."""
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._shared = shared
        self._recorded: OrderedDict[str, _Recorded] = OrderedDict()
        self._in_flight: dict[str, _InFlight] = {}

    def __len__(self) -> int:
        """The number of recorded (completed, unexpired) results."""
        self._evict_expired()
        return len(self._recorded)

    async def run(
        self, key: str, fingerprint: str, call: Callable[[], Awaitable[Completion]]
    ) -> Completion:
        """Return the result recorded for `key`, await the call in flight for it, or run `call`.

        `fingerprint` identifies the request: reusing a key for a different fingerprint
        raises IdempotencyConflict. A failed call is not recorded, so a retry runs it again;
        callers waiting on it get its error. If the running caller is cancelled, a waiting
        caller runs the call instead.
        """
        if not key:
            raise ValueError("the idempotency key must not be empty")
        while True:
            self._evict_expired()
            recorded = self._recorded.get(key)
            if recorded is not None:
                _check(key, recorded.fingerprint, fingerprint)
                return recorded.result
            flight = self._in_flight.get(key)
            if flight is None:
                return await self._lead(key, fingerprint, call)
            _check(key, flight.fingerprint, fingerprint)
            await flight.done.wait()
            if flight.result is not None:
                return flight.result
            if flight.error is not None:
                raise flight.error
            # The caller that ran it was cancelled: loop round and take over.

    async def _lead(
        self, key: str, fingerprint: str, call: Callable[[], Awaitable[Completion]]
    ) -> Completion:
        flight = _InFlight(fingerprint)
        self._in_flight[key] = flight
        try:
            result = await self._from_shared(key, fingerprint) or await call()
        except Exception as exc:
            flight.error = exc
            raise
        else:
            flight.result = result
            await self.record(key, fingerprint, result)
            return result
        finally:
            del self._in_flight[key]
            flight.done.set()

    def __contains__(self, key: object) -> bool:
        """Whether a result is recorded for the key."""
        self._evict_expired()
        return key in self._recorded

    async def lookup(self, key: str, fingerprint: str) -> Completion | None:
        """The result recorded for `key` here or in the shared record, if any;
        IdempotencyConflict for another request."""
        self._evict_expired()
        recorded = self._recorded.get(key)
        if recorded is not None:
            _check(key, recorded.fingerprint, fingerprint)
            return recorded.result
        return await self._from_shared(key, fingerprint)

    async def record(self, key: str, fingerprint: str, result: Completion) -> None:
        """Records a completed call (also one made outside `run`: a stream), unless one is
        recorded already."""
        self._evict_expired()
        if key not in self._recorded:
            self._record(key, fingerprint, result)
            if self._shared is not None:
                await self._shared.put(key, fingerprint, result)

    async def _from_shared(self, key: str, fingerprint: str) -> Completion | None:
        if self._shared is None:
            return None
        found = await self._shared.get(key)
        if found is None:
            return None
        recorded_fingerprint, result = found
        _check(key, recorded_fingerprint, fingerprint)
        self._record(key, fingerprint, result)
        return result

    def _record(self, key: str, fingerprint: str, result: Completion) -> None:
        self._recorded[key] = _Recorded(fingerprint, result, self._clock() + self._ttl)
        self._recorded.move_to_end(key)
        while len(self._recorded) > self._max_entries:
            self._recorded.popitem(last=False)

    def _evict_expired(self) -> None:
        # Every entry lives the same TTL, so insertion order is expiry order.
        now = self._clock()
        while self._recorded:
            oldest = next(iter(self._recorded.values()))
            if oldest.expires_at > now:
                break
            self._recorded.popitem(last=False)


def _check(key: str, expected: str, fingerprint: str) -> None:
    if expected != fingerprint:
        raise IdempotencyConflict(key)
