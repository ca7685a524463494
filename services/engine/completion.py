"""Model calls with routing, fallbacks, breakers, the response cache and idempotency:
what the engine's RPC handlers call."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

from opentelemetry import trace

from services.engine.breaker import Breakers, BreakerSettings, BreakerState, InProcessBreakers
from services.engine.catalog import ModelCatalog, Route
from services.engine.errors import (
    EngineError,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from services.engine.idempotency import IdempotencyTracker
from services.engine.metrics import count_cache_lookup
from services.engine.model import (
    Attempt,
    AttemptOutcome,
    ChatMessage,
    Completion,
    CompletionChunk,
    CompletionParams,
    ModelInfo,
    TokenUsage,
    ToolSpec,
    closing_chunk,
    completion_of,
)
from services.engine.response_cache import (
    NO_CACHE,
    CacheRequest,
    InMemoryResponseCache,
    ResponseCache,
    cache_key,
)

_log = logging.getLogger(__name__)

DEFAULT_PARAMS = CompletionParams()
_T = TypeVar("_T")
_NO_USAGE = TokenUsage(0, 0)


@dataclass(frozen=True)
class DeploymentStatus:
    """One deployment serving a model, as ListModels shows it."""

    route: Route
    breaker: BreakerState


class CompletionEngine:
    """Plans the deployments of a call, falls back at once, and dedupes and caches answers."""

    def __init__(
        self,
        catalog: ModelCatalog,
        tracker: IdempotencyTracker,
        max_attempts: int = 3,
        backoff_base: float = 0.2,
        max_retry_wait: float = 30.0,
        breakers: Breakers | None = None,
        cache: ResponseCache | None = None,
        cache_seconds: float = 300.0,
    ) -> None:
        """A call tries each planned deployment once, falling over to the next at once on
        a rate limit, an outage, a timeout or an open breaker. Only when every deployment
        failed does it wait and go round again, up to `max_attempts` rounds: round `i`
        (from 1) waits about `backoff_base * 2**(i-1)` seconds, jittered, or as long as
        rate limits asked (Retry-After), if that fits before the call's deadline and
        within `max_retry_wait` seconds; otherwise the last error is passed on at once."""
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if backoff_base < 0 or max_retry_wait < 0:
            raise ValueError("backoff_base and max_retry_wait must not be negative")
        self._catalog = catalog
        self._tracker = tracker
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._max_retry_wait = max_retry_wait
        self._breakers = breakers or InProcessBreakers(BreakerSettings())
        self._cache = cache or InMemoryResponseCache()
        self._cache_seconds = cache_seconds

    async def complete(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        params: CompletionParams = DEFAULT_PARAMS,
        idempotency_key: str = "",
        *,
        tenant: str = "",
        cache: CacheRequest = NO_CACHE,
        deadline: float | None = None,
    ) -> Completion:
        """Answer the conversation; a repeated `idempotency_key` gets the recorded answer
        (or joins the call in flight), marked `replayed`.

        `deadline` is a `time.monotonic()` instant after which no wait is started. Raises
        ModelNotFound, IdempotencyConflict, or the last deployment's error once every
        deployment failed (ProviderUnavailable, ProviderTimeout, RateLimited), or at once
        (ProviderRejected).
        """
        plan = self._catalog.plan(model)
        messages, tools = _checked(messages), tuple(tools)
        cached = cache.applies_to(params)
        if not idempotency_key and not cached:
            # Neither the tracker nor the cache needs the request's fingerprint: the
            # plain call, the common one, skips hashing the whole conversation.
            return await self._routed_complete(model, plan, messages, tools, params, deadline)
        fingerprint = request_fingerprint(model, messages, tools, params)

        async def fresh() -> Completion:
            return await self._routed_complete(model, plan, messages, tools, params, deadline)

        async def call() -> Completion:
            if not cached:
                return await fresh()
            return await self._through_cache(model, cache_key(tenant, fingerprint), cache, fresh)

        if not idempotency_key:
            return await call()
        return await self._tracker.run(idempotency_key, fingerprint, call)

    def stream(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        params: CompletionParams = DEFAULT_PARAMS,
        idempotency_key: str = "",
        *,
        tenant: str = "",
        cache: CacheRequest = NO_CACHE,
        deadline: float | None = None,
    ) -> AsyncGenerator[CompletionChunk, None]:
        """Answer the conversation in chunks; the last one carries finish reason, usage,
        the model and deployment that answered, and every attempt.

        The model is resolved at once (ModelNotFound is raised here, not when iterating).
        Deployments are fallen over only until the first chunk has been yielded. Closing
        the iterator or cancelling its consumer closes the provider's request at once. With
        an `idempotency_key`, a recorded answer is replayed as one chunk, and a stream in
        flight with that key is joined: the same deltas, then the same end.
        """
        plan = self._catalog.plan(model)
        messages, tools = _checked(messages), tuple(tools)
        cached = cache.applies_to(params)
        if not idempotency_key and not cached:
            return self._routed_stream(model, plan, messages, tools, params, deadline)
        fingerprint = request_fingerprint(model, messages, tools, params)

        def open_stream() -> AsyncGenerator[CompletionChunk, None]:
            chunks = self._routed_stream(model, plan, messages, tools, params, deadline)
            if not cached:
                return chunks
            return self._stream_through_cache(model, cache_key(tenant, fingerprint), cache, chunks)

        if not idempotency_key:
            return open_stream()
        return self._tracker.stream(idempotency_key, fingerprint, open_stream)

    async def list_models(self) -> list[ModelInfo]:
        """Every model the engine can route to, sorted by id."""
        return self._catalog.models()

    async def deployments(self, model: str) -> list[DeploymentStatus]:
        """The deployments serving `model` in priority order, with their breakers' state."""
        routes = self._catalog.routes(model)
        states = await asyncio.gather(*(self._breakers.state(r.provider.name) for r in routes))
        return [DeploymentStatus(route, state) for route, state in zip(routes, states, strict=True)]

    async def _through_cache(
        self,
        model: str,
        key: str,
        cache: CacheRequest,
        fresh: Callable[[], Awaitable[Completion]],
    ) -> Completion:
        hit = await self._cache.get(key)
        count_cache_lookup(model, self._cache.store, hit is not None)
        if hit is not None:
            return _as_cache_hit(hit)
        completion = await fresh()
        await self._cache.put(key, completion, cache.ttl_seconds or self._cache_seconds)
        return completion

    async def _stream_through_cache(
        self,
        model: str,
        key: str,
        cache: CacheRequest,
        chunks: AsyncGenerator[CompletionChunk, None],
    ) -> AsyncGenerator[CompletionChunk, None]:
        async with aclosing(chunks):
            hit = await self._cache.get(key)
            count_cache_lookup(model, self._cache.store, hit is not None)
            if hit is not None:
                yield closing_chunk(_as_cache_hit(hit))
                return
            text: list[str] = []
            async for chunk in chunks:
                text.append(chunk.text_delta)
                if chunk.finish_reason:
                    completion = completion_of(chunk, "".join(text))
                    await self._cache.put(key, completion, cache.ttl_seconds or self._cache_seconds)
                yield chunk

    async def _routed_complete(
        self,
        model: str,
        plan: list[Route],
        messages: tuple[ChatMessage, ...],
        tools: tuple[ToolSpec, ...],
        params: CompletionParams,
        deadline: float | None,
    ) -> Completion:
        async def attempt(route: Route) -> Completion:
            return await route.provider.complete(route.model, messages, tools, params)

        completion, route, attempts = await self._route(model, plan, deadline, attempt)
        return replace(
            completion, model=route.model, provider=route.provider.name, attempts=attempts
        )

    async def _routed_stream(
        self,
        model: str,
        plan: list[Route],
        messages: tuple[ChatMessage, ...],
        tools: tuple[ToolSpec, ...],
        params: CompletionParams,
        deadline: float | None,
    ) -> AsyncGenerator[CompletionChunk, None]:
        async def attempt(
            route: Route,
        ) -> tuple[AsyncGenerator[CompletionChunk, None], CompletionChunk]:
            chunks = route.provider.stream(route.model, messages, tools, params)
            try:
                return chunks, await anext(chunks)
            except BaseException:
                await chunks.aclose()
                raise

        (chunks, first), route, attempts = await self._route(model, plan, deadline, attempt)
        async with aclosing(chunks):
            chunk: CompletionChunk | None = first
            while chunk is not None:
                if chunk.finish_reason:
                    chunk = replace(
                        chunk, model=route.model, provider=route.provider.name, attempts=attempts
                    )
                yield chunk
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    chunk = None
                except EngineError as error:
                    if error.retryable:
                        await self._breakers.failed(route.provider.name)
                    raise

    async def _route(
        self,
        model: str,
        plan: list[Route],
        deadline: float | None,
        attempt: Callable[[Route], Awaitable[_T]],
    ) -> tuple[_T, Route, tuple[Attempt, ...]]:
        """The first answer of the planned deployments, which route gave it, and every try."""
        attempts: list[Attempt] = []
        span = trace.get_current_span()
        for round_number in range(1, self._max_attempts + 1):
            failures: list[EngineError] = []
            for route in plan:
                name = route.provider.name
                admission = await self._breakers.acquire(name)
                if admission == "refused":
                    attempts.append(_attempt(span, route, "breaker_open", 0.0))
                    continue
                started = time.monotonic()
                try:
                    result = await attempt(route)
                except EngineError as error:
                    elapsed = time.monotonic() - started
                    attempts.append(_attempt(span, route, _outcome(error), elapsed, str(error)))
                    if not error.retryable:
                        # The deployment is up; it refused this request.
                        if admission != "clean":
                            await self._breakers.succeeded(name)
                        raise
                    await self._breakers.failed(name)
                    failures.append(error)
                    continue
                except BaseException:
                    # Cancelled mid-try: no outcome to count, but a probe must not hold
                    # its slot until it expires.
                    if admission == "admitted":
                        await asyncio.shield(self._breakers.released(name))
                    raise
                if admission != "clean":
                    await self._breakers.succeeded(name)
                attempts.append(_attempt(span, route, "ok", time.monotonic() - started))
                return result, route, tuple(attempts)
            if not failures:
                raise ProviderUnavailable(
                    model, "every deployment serving it has its circuit breaker open"
                )
            await self._wait_before_round(model, round_number, failures, deadline)
        raise AssertionError("the last round raises its error")

    async def _wait_before_round(
        self, model: str, round_number: int, failures: list[EngineError], deadline: float | None
    ) -> None:
        """Sleep before the next round, or re-raise the last failure when none is due."""
        error = failures[-1]
        if round_number >= self._max_attempts:
            raise error
        ceiling = self._backoff_base * 2 ** (round_number - 1)
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        asked = [f.retry_after for f in failures if isinstance(f, RateLimited)]
        if asked and len(asked) == len(failures) and None not in asked:
            # Every deployment asked for a wait: the shortest one is when one can serve.
            delay = max(delay, min(a for a in asked if a is not None))
            if delay > self._max_retry_wait:
                raise error
        if deadline is not None and time.monotonic() + delay >= deadline:
            raise error
        _log.info(
            "model %s: round %d of %d failed on every deployment (%s); retrying in %.2f s",
            model,
            round_number,
            self._max_attempts,
            error,
            delay,
        )
        await asyncio.sleep(delay)


def _outcome(error: EngineError) -> AttemptOutcome:
    if isinstance(error, RateLimited):
        return "rate_limited"
    if isinstance(error, ProviderTimeout):
        return "timeout"
    if isinstance(error, ProviderRejected):
        return "rejected"
    return "unavailable"


def _attempt(
    span: trace.Span, route: Route, outcome: AttemptOutcome, seconds: float, error: str = ""
) -> Attempt:
    """The record of one try, also added to the call's span as an event."""
    tried = Attempt(route.provider.name, route.model, outcome, seconds, error)
    span.add_event(
        "engine.attempt",
        {
            "agentrt.deployment": tried.deployment,
            "gen_ai.request.model": tried.model,
            "agentrt.attempt.outcome": outcome,
            "agentrt.attempt.duration_ms": round(seconds * 1000, 3),
            "agentrt.attempt.error": error,
        },
    )
    return tried


def _as_cache_hit(completion: Completion) -> Completion:
    # No provider was called: the call counts no tokens, so the ledger charges nothing.
    return replace(completion, usage=_NO_USAGE, attempts=(), replayed=False, cache_hit=True)


def request_fingerprint(
    model: str,
    messages: Sequence[ChatMessage],
    tools: Sequence[ToolSpec],
    params: CompletionParams,
) -> str:
    """A stable hash of everything that determines a completion request."""
    request = {
        "model": model,
        "messages": [asdict(message) for message in messages],
        "tools": [[tool.name, tool.description, tool.parameters] for tool in tools],
        "params": asdict(params),
    }
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _plain(value: object) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot fingerprint a {type(value).__name__}")


def _checked(messages: Sequence[ChatMessage]) -> tuple[ChatMessage, ...]:
    if not messages:
        raise ValueError("a completion needs at least one message")
    return tuple(messages)
