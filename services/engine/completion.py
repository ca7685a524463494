"""Model calls with routing, retries and idempotency: what the engine's RPC handlers call."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import asdict
from typing import Any

from services.engine.catalog import ModelCatalog
from services.engine.errors import EngineError, RateLimited
from services.engine.idempotency import IdempotencyTracker
from services.engine.model import (
    ChatMessage,
    Completion,
    CompletionChunk,
    CompletionParams,
    ModelInfo,
    ToolSpec,
)
from services.engine.providers.base import Provider

_log = logging.getLogger(__name__)

DEFAULT_PARAMS = CompletionParams()


class CompletionEngine:
    """Resolves the model, retries what may succeed on another try, and dedupes by key."""

    def __init__(
        self,
        catalog: ModelCatalog,
        tracker: IdempotencyTracker,
        max_attempts: int = 3,
        backoff_base: float = 0.2,
        max_retry_wait: float = 30.0,
    ) -> None:
        """Attempt `i` (from 1) waits about `backoff_base * 2**(i-1)` seconds, jittered,
        before trying again. A rate limit that asks for a wait beyond `max_retry_wait`
        seconds is passed on at once: the caller is better placed to wait that long."""
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if backoff_base < 0 or max_retry_wait < 0:
            raise ValueError("backoff_base and max_retry_wait must not be negative")
        self._catalog = catalog
        self._tracker = tracker
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._max_retry_wait = max_retry_wait

    async def complete(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        params: CompletionParams = DEFAULT_PARAMS,
        idempotency_key: str = "",
    ) -> Completion:
        """Answer the conversation; a repeated `idempotency_key` gets the recorded answer.

        Raises ModelNotFound, IdempotencyConflict, or the provider's last error once the
        attempts are spent (ProviderUnavailable, RateLimited) or at once (ProviderRejected).
        """
        provider, _ = self._catalog.resolve(model)
        messages, tools = _checked(messages), tuple(tools)

        async def call() -> Completion:
            return await self._with_retries(
                model, lambda: provider.complete(model, messages, tools, params)
            )

        if not idempotency_key:
            return await call()
        fingerprint = request_fingerprint(model, messages, tools, params)
        return await self._tracker.run(idempotency_key, fingerprint, call)

    def stream(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        params: CompletionParams = DEFAULT_PARAMS,
        idempotency_key: str = "",
    ) -> AsyncGenerator[CompletionChunk, None]:
        """Answer the conversation in chunks; the last one carries finish reason and usage.

        The model is resolved at once (ModelNotFound is raised here, not when iterating).
        Failures are retried only until the first chunk has been yielded. Closing the
        iterator or cancelling its consumer closes the provider's request at once. With an
        `idempotency_key`, a recorded answer is replayed as one chunk, and a stream that
        completes is recorded for the next call with the same key.
        """
        provider, _ = self._catalog.resolve(model)
        messages, tools = _checked(messages), tuple(tools)
        if not idempotency_key:
            return self._stream(provider, model, messages, tools, params)
        fingerprint = request_fingerprint(model, messages, tools, params)
        return self._recording(
            self._stream(provider, model, messages, tools, params),
            model,
            provider.name,
            idempotency_key,
            fingerprint,
        )

    async def _recording(
        self,
        chunks: AsyncGenerator[CompletionChunk, None],
        model: str,
        provider: str,
        key: str,
        fingerprint: str,
    ) -> AsyncGenerator[CompletionChunk, None]:
        recorded = await self._tracker.lookup(key, fingerprint)
        if recorded is not None:
            await chunks.aclose()
            async for chunk in _replay(recorded):
                yield chunk
            return
        text: list[str] = []
        async with aclosing(chunks):
            async for chunk in chunks:
                text.append(chunk.text_delta)
                if chunk.finish_reason and chunk.usage is not None:
                    message = ChatMessage("assistant", "".join(text), chunk.tool_calls)
                    completion = Completion(
                        message, chunk.finish_reason, chunk.usage, model, provider
                    )
                    await self._tracker.record(key, fingerprint, completion)
                yield chunk

    async def recorded(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        params: CompletionParams,
        idempotency_key: str,
    ) -> Completion | None:
        """The recorded answer of this call, when one with its key has completed."""
        fingerprint = request_fingerprint(model, _checked(messages), tuple(tools), params)
        return await self._tracker.lookup(idempotency_key, fingerprint)

    async def list_models(self) -> list[ModelInfo]:
        """Every model the engine can route to, sorted by id."""
        return self._catalog.models()

    async def _stream(
        self,
        provider: Provider,
        model: str,
        messages: tuple[ChatMessage, ...],
        tools: tuple[ToolSpec, ...],
        params: CompletionParams,
    ) -> AsyncGenerator[CompletionChunk, None]:
        attempt = 1
        while True:
            started = False
            try:
                async with aclosing(provider.stream(model, messages, tools, params)) as chunks:
                    async for chunk in chunks:
                        started = True
                        yield chunk
                return
            except EngineError as exc:
                if started:
                    raise
                await self._wait_before_retry(model, attempt, exc)
            attempt += 1

    async def _with_retries(
        self, model: str, attempt_call: Callable[[], Awaitable[Completion]]
    ) -> Completion:
        attempt = 1
        while True:
            try:
                return await attempt_call()
            except EngineError as exc:
                await self._wait_before_retry(model, attempt, exc)
            attempt += 1

    async def _wait_before_retry(self, model: str, attempt: int, error: EngineError) -> None:
        """Sleep before the next attempt, or re-raise `error` when no retry is due."""
        if not error.retryable or attempt >= self._max_attempts:
            raise error
        ceiling = self._backoff_base * 2 ** (attempt - 1)
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if isinstance(error, RateLimited) and error.retry_after is not None:
            if error.retry_after > self._max_retry_wait:
                raise error
            delay = max(delay, error.retry_after)
        _log.info(
            "model %s: attempt %d of %d failed (%s); retrying in %.2f s",
            model,
            attempt,
            self._max_attempts,
            error,
            delay,
        )
        await asyncio.sleep(delay)


async def _replay(completion: Completion) -> AsyncGenerator[CompletionChunk, None]:
    yield CompletionChunk(
        text_delta=completion.message.content,
        tool_calls=completion.message.tool_calls,
        finish_reason=completion.finish_reason,
        usage=completion.usage,
    )


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
