"""Deduplication of model calls by idempotency key, so that a retried step gets the recorded answer.

A call in flight is joined (`flights.py`: in-process, or through Redis for every replica),
streams included: the joiner gets the same deltas and the same end. Completed results are
recorded in-process and, when a shared record is given (Redis, `shared_record.py`), for
every engine replica, so a retry that reaches another replica, or this one after a
restart, is answered too. Joined and recorded answers are marked `replayed`.

The tracker counts its hooks (start, hit, conflict, complete, fail) in `counts`, in the
`agentrt.engine.idempotency` metric, as events on the call's span and in log lines, and
tells the caller: each chunk carries the hooks fired since the previous one (a whole
answer, all of them), and an error those fired after the last chunk. The orchestrator
turns them into its job's model.call.* events.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace

from opentelemetry import metrics, trace

from services.engine.errors import EngineError, IdempotencyConflict, ProviderUnavailable
from services.engine.flights import (
    Flights,
    Follower,
    InProcessFlights,
    Leader,
    LeaderGone,
    Recorded,
    error_from_json,
    error_to_json,
)
from services.engine.model import (
    Completion,
    CompletionChunk,
    IdempotencyHook,
    closing_chunk,
    completion_of,
)
from services.engine.shared_record import CompletionRecord

log = logging.getLogger(__name__)

Fired = list[IdempotencyHook]
"""The hooks a call fired that its caller was not told of yet."""
_HOOKS = metrics.get_meter("agentrt.engine").create_counter(
    "agentrt.engine.idempotency",
    description="Idempotency hooks of model calls, by hook: start, hit, conflict, complete, fail",
)


@dataclass(frozen=True)
class _Recorded:
    fingerprint: str
    result: Completion
    expires_at: float


class IdempotencyTracker:
    """Runs each idempotency key's call once, and answers repeats with the recorded result."""

    def __init__(
        self,
        ttl_seconds: float = 3600.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        shared: CompletionRecord | None = None,
        flights: Flights | None = None,
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
        self._flights = flights or InProcessFlights()
        self._recorded: OrderedDict[str, _Recorded] = OrderedDict()
        self.counts: Counter[IdempotencyHook] = Counter()
        """How often each hook fired in this process."""

    def __len__(self) -> int:
        """The number of recorded (completed, unexpired) results."""
        self._evict_expired()
        return len(self._recorded)

    def _hook(self, hook: IdempotencyHook, key: str, fired: Fired) -> None:
        fired.append(hook)
        self.counts[hook] += 1
        _HOOKS.add(1, {"hook": hook})
        trace.get_current_span().add_event("engine.idempotency", {"agentrt.idempotency.hook": hook})
        log.info("idempotency %s: key %s", hook, key)

    async def run(
        self, key: str, fingerprint: str, call: Callable[[], Awaitable[Completion]]
    ) -> Completion:
        """Return the result recorded for `key`, join the call in flight for it, or run `call`.

        `fingerprint` identifies the request: reusing a key for a different fingerprint
        raises IdempotencyConflict. A failed call is not recorded, so a retry runs it again;
        callers that joined it get its error. If the running caller goes away, a joined
        caller runs the call instead.
        """
        text: list[str] = []
        hooks: list[IdempotencyHook] = []
        chunks = self._stream(key, fingerprint, lambda: _one_chunk(call), deltas=False)
        async with aclosing(chunks):
            async for chunk in chunks:
                text.append(chunk.text_delta)
                hooks.extend(chunk.idempotency_hooks)
                if chunk.finish_reason:
                    completion = completion_of(chunk, "".join(text))
                    return replace(completion, idempotency_hooks=tuple(hooks))
        raise AssertionError("a finished stream always ends with a closing chunk")

    def stream(
        self,
        key: str,
        fingerprint: str,
        open_stream: Callable[[], AsyncGenerator[CompletionChunk, None]],
    ) -> AsyncGenerator[CompletionChunk, None]:
        """The chunks of the call for `key`: recorded, joined, or from `open_stream()`.

        The closing chunk of the engine's stream carries model, provider and attempts; a
        recorded or joined answer arrives as the deltas seen plus a closing chunk marked
        `replayed`. A joined call whose leader goes away is made again, unless deltas were
        already passed on: then the stream ends with ProviderUnavailable, as a stream that
        breaks mid-way does.
        """
        return self._stream(key, fingerprint, open_stream, deltas=True)

    async def _stream(
        self,
        key: str,
        fingerprint: str,
        open_stream: Callable[[], AsyncGenerator[CompletionChunk, None]],
        deltas: bool,
    ) -> AsyncGenerator[CompletionChunk, None]:
        """The tracked call's chunks, each with the hooks fired since the previous one; an
        EngineError carries the hooks fired after the last chunk."""
        if not key:
            raise ValueError("the idempotency key must not be empty")
        fired: Fired = []
        chunks = self._tracked(key, fingerprint, open_stream, deltas, fired)
        try:
            async with aclosing(chunks):
                async for chunk in chunks:
                    if fired:
                        chunk = replace(chunk, idempotency_hooks=tuple(fired))
                        fired.clear()
                    yield chunk
        except EngineError as error:
            error.idempotency_hooks = tuple(fired)
            raise

    async def _tracked(
        self,
        key: str,
        fingerprint: str,
        open_stream: Callable[[], AsyncGenerator[CompletionChunk, None]],
        deltas: bool,
        fired: Fired,
    ) -> AsyncGenerator[CompletionChunk, None]:
        shared_first = not self._flights.checks_records
        while True:
            recorded = await self._checked_lookup(key, fingerprint, shared_first, fired)
            if recorded is not None:
                self._hook("hit", key, fired)
                yield _replay(recorded, "")
                return
            try:
                claim = await self._flights.claim(key, fingerprint)
            except IdempotencyConflict:
                self._hook("conflict", key, fired)
                raise
            if isinstance(claim, Recorded):
                recorded = await self._checked_lookup(key, fingerprint, True, fired)
                if recorded is not None:
                    self._hook("hit", key, fired)
                    yield _replay(recorded, "")
                    return
                continue  # expired since: claim again
            if isinstance(claim, Leader):
                async for chunk in self._lead(key, fingerprint, claim, open_stream, fired):
                    yield chunk
                return
            passed_on = False
            try:
                async for chunk in self._follow(key, claim, deltas, fired):
                    passed_on = True
                    yield chunk
                return
            except LeaderGone:
                if passed_on:
                    raise ProviderUnavailable(
                        "engine", "the call this one joined was abandoned mid-stream"
                    ) from None

    async def _checked_lookup(
        self, key: str, fingerprint: str, shared: bool, fired: Fired
    ) -> Completion | None:
        try:
            return await self.lookup(key, fingerprint, shared)
        except IdempotencyConflict:
            self._hook("conflict", key, fired)
            raise

    async def _lead(
        self,
        key: str,
        fingerprint: str,
        leader: Leader,
        open_stream: Callable[[], AsyncGenerator[CompletionChunk, None]],
        fired: Fired,
    ) -> AsyncGenerator[CompletionChunk, None]:
        ended = False
        try:
            # Recorded between the lookup and the claim, by a leader that just finished
            # (flights that check records have ruled that out in the claim itself).
            recorded = await self.lookup(key, fingerprint, not self._flights.checks_records)
            if recorded is not None:
                self._hook("hit", key, fired)
                await leader.finish(recorded)
                ended = True
                yield _replay(recorded, "")
                return
            self._hook("start", key, fired)
            text: list[str] = []
            async with aclosing(open_stream()) as chunks:
                async for chunk in chunks:
                    if chunk.finish_reason:
                        completion = completion_of(chunk, "".join(text) + chunk.text_delta)
                        await self.record(key, fingerprint, completion)
                        await leader.finish(completion)
                        ended = True
                        self._hook("complete", key, fired)
                    elif chunk.text_delta:
                        text.append(chunk.text_delta)
                        await leader.publish(chunk.text_delta)
                    yield chunk
        except EngineError as error:
            if not ended:
                ended = True
                await leader.fail(error)
                self._hook("fail", key, fired)
            raise
        finally:
            if not ended:
                await leader.abandon()

    async def _follow(
        self, key: str, follower: Follower, deltas: bool, fired: Fired
    ) -> AsyncGenerator[CompletionChunk, None]:
        self._hook("hit", key, fired)
        streamed: list[str] = []
        async for event in follower.events():
            if event.kind == "delta":
                if deltas:
                    streamed.append(event.text)
                    yield CompletionChunk(text_delta=event.text)
            elif event.completion is not None:
                yield _replay(event.completion, "".join(streamed))
            elif event.error is not None:
                # A copy of its own: the error carries this call's hooks, not the leader's.
                raise error_from_json(error_to_json(event.error))

    def __contains__(self, key: object) -> bool:
        """Whether a result is recorded for the key."""
        self._evict_expired()
        return key in self._recorded

    async def lookup(self, key: str, fingerprint: str, shared: bool = True) -> Completion | None:
        """The result recorded for `key` here or (with `shared`) in the shared record, if
        any; IdempotencyConflict for another request."""
        self._evict_expired()
        recorded = self._recorded.get(key)
        if recorded is not None:
            _check(key, recorded.fingerprint, fingerprint)
            return recorded.result
        return await self._from_shared(key, fingerprint) if shared else None

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


async def _one_chunk(
    call: Callable[[], Awaitable[Completion]],
) -> AsyncGenerator[CompletionChunk, None]:
    yield closing_chunk(await call())


def _replay(completion: Completion, already_streamed: str) -> CompletionChunk:
    """The closing chunk of a recorded or joined answer, after `already_streamed` text."""
    return replace(closing_chunk(completion, already_streamed), attempts=(), replayed=True)
