"""The interface every model provider implements."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Protocol

from services.engine.model import (
    ChatMessage,
    Completion,
    CompletionChunk,
    CompletionParams,
    ModelInfo,
    ToolSpec,
)


class Provider(Protocol):
    """A source of completions: a remote API or the built-in local model.

    Failures are raised as `services.engine.errors.EngineError` subclasses, so that callers
    can tell a retryable outage from a rejected request without knowing the transport.
    """

    @property
    def name(self) -> str:
        """The provider's name in the catalog, reported in `Completion.provider`."""
        ...

    async def list_models(self) -> list[ModelInfo]:
        """The models this provider serves now."""
        ...

    async def complete(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        params: CompletionParams,
    ) -> Completion:
        """Answer the conversation in one piece."""
        ...

    def stream(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        params: CompletionParams,
    ) -> AsyncGenerator[CompletionChunk, None]:
        """Answer the conversation in chunks; the last chunk carries finish reason and usage.

        An async generator (an `async def` with `yield`), so that callers can `aclose` it:
        closing it early, or cancelling its consumer, must release the request at once.
        Connection and status failures come before the first chunk, so they can be retried.
        """
        ...

    async def aclose(self) -> None:
        """Release connections; the provider is not used afterwards."""
        ...
