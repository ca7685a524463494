"""Errors of the engine's domain, each saying whether trying again may help."""

from __future__ import annotations

from services.engine.model import IdempotencyHook


class EngineError(Exception):
    """Base of the engine's errors."""

    retryable: bool = False
    """True when the same call may succeed if tried again later."""
    idempotency_hooks: tuple[IdempotencyHook, ...] = ()
    """The idempotency hooks the failed call fired that no chunk carried."""


class ModelNotFound(EngineError):
    """No provider in the catalog serves the requested model."""

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} is not served by any configured provider")
        self.model = model


class ProviderUnavailable(EngineError):
    """The provider could not be reached or failed on its side (connection, 5xx, timeout)."""

    retryable = True

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(f"provider {provider!r} is unavailable: {message}")
        self.provider = provider
        self.message = message


class ProviderTimeout(ProviderUnavailable):
    """The provider did not answer, or send the next piece of a stream, in time."""


class RateLimited(EngineError):
    """The provider answered 429: too many requests or tokens for now."""

    retryable = True

    def __init__(self, provider: str, message: str, retry_after: float | None = None) -> None:
        wait = f" (retry after {retry_after:g} s)" if retry_after is not None else ""
        super().__init__(f"provider {provider!r} is rate limiting: {message}{wait}")
        self.provider = provider
        self.message = message
        self.retry_after = retry_after
        """Seconds the provider asked us to wait, when it said."""


class ProviderRejected(EngineError):
    """The provider refused the request (4xx other than 429): bad request, auth, unknown model."""

    def __init__(self, provider: str, status: int, message: str) -> None:
        super().__init__(f"provider {provider!r} rejected the request ({status}): {message}")
        self.provider = provider
        self.status = status
        self.message = message


class IdempotencyConflict(EngineError):
    """An idempotency key was reused for a different request."""

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used for a different request")
        self.key = key
