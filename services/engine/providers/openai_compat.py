"""A provider for servers speaking OpenAI's chat API: OpenAI, vLLM, Ollama, llama.cpp."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.engine.errors import ProviderTimeout, ProviderUnavailable
from services.engine.model import (
    ChatMessage,
    Completion,
    CompletionChunk,
    CompletionParams,
    ModelInfo,
    ToolSpec,
)
from services.engine.providers.openai_wire import (
    SseDecoder,
    StreamAssembly,
    finish_reason,
    http_error,
    parse_message,
    request_body,
)
from services.engine.tokens import estimate_usage

_MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError)


@dataclass(frozen=True)
class OpenAICompatConfig:
    """Where and how to reach one OpenAI-compatible server."""

    base_url: str
    """API root including the version, e.g. `http://127.0.0.1:8000/v1`."""
    api_key: str = field(default="", repr=False)
    """Sent as a bearer token when set; local servers usually need none. Kept out of repr."""
    models: tuple[str, ...] = ()
    """Model ids to serve; empty serves whatever the server lists (`GET /models`), which for
    OpenAI itself includes models that cannot chat."""
    timeout_seconds: float = 60.0
    """Longest wait for the server to answer, or to send the next piece of a stream."""
    connect_timeout_seconds: float = 10.0
    """Longest wait to open a connection, kept short so that an outage is noticed fast."""
    name: str = "openai"
    """The provider's name in the catalog."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        if self.timeout_seconds <= 0 or self.connect_timeout_seconds <= 0:
            raise ValueError("timeouts must be positive")
        if not self.name:
            raise ValueError("the provider needs a name")


class OpenAICompatProvider:
    """Completions from an OpenAI-compatible HTTP server, over one pooled HTTP client."""

    def __init__(self, config: OpenAICompatConfig) -> None:
        self._config = config
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._client = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(config.timeout_seconds, connect=config.connect_timeout_seconds),
        )

    @property
    def name(self) -> str:
        return self._config.name

    async def list_models(self) -> list[ModelInfo]:
        if self._config.models:
            return [self._model_info(model_id, {}) for model_id in self._config.models]
        body = await self._request_json("GET", "models")
        with self._malformed_response("model list"):
            return [self._model_info(str(entry["id"]), entry) for entry in body["data"]]

    async def complete(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        params: CompletionParams,
    ) -> Completion:
        payload = request_body(model, messages, tools, params, stream=False)
        body = await self._request_json("POST", "chat/completions", payload)
        with self._malformed_response("completion"):
            message, raw_reason, usage = parse_message(body)
        return Completion(
            message=message,
            finish_reason=finish_reason(raw_reason, bool(message.tool_calls)),
            usage=usage or estimate_usage(messages, tools, message),
            model=model,
            provider=self.name,
        )

    async def stream(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        params: CompletionParams,
    ) -> AsyncGenerator[CompletionChunk, None]:
        payload = request_body(model, messages, tools, params, stream=True)
        assembly = StreamAssembly(self.name)
        sse = SseDecoder()
        with self._transport_errors():
            # Leaving this block for any reason, including the consumer's aclose or
            # cancellation, closes the response and with it the connection.
            async with self._client.stream("POST", "chat/completions", json=payload) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise http_error(
                        self.name, response.status_code, response.headers, response.text
                    )
                # Read to the end of the body, past [DONE], so the connection can be reused.
                async for line in response.aiter_lines():
                    text = assembly.feed(sse.line(line))
                    if text:
                        yield CompletionChunk(text_delta=text)
                text = assembly.feed(sse.flush())
                if text:
                    yield CompletionChunk(text_delta=text)
        if not assembly.finished:
            raise ProviderUnavailable(self.name, "the stream ended before the model finished")
        yield assembly.last_chunk(messages, tools)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _model_info(self, model_id: str, entry: Mapping[str, Any]) -> ModelInfo:
        # vLLM reports the context length; the other servers do not.
        context = entry.get("max_model_len")
        return ModelInfo(
            id=model_id,
            provider=self.name,
            context_window=context if isinstance(context, int) else 0,
            supports_tools=True,
            supports_streaming=True,
        )

    async def _request_json(
        self, method: str, path: str, payload: Mapping[str, Any] | None = None
    ) -> Mapping[str, Any]:
        with self._transport_errors():
            response = await self._client.request(method, path, json=payload)
        if response.status_code >= 400:
            raise http_error(self.name, response.status_code, response.headers, response.text)
        with self._malformed_response(f"{method} {path} response"):
            body = response.json()
            if not isinstance(body, Mapping):
                raise TypeError(f"expected a JSON object, got {type(body).__name__}")
            return body

    def _transport_errors(self) -> AbstractContextManager[None]:
        return transport_errors(self.name, self._config.base_url)

    @contextmanager
    def _malformed_response(self, what: str) -> Iterator[None]:
        # A server that answers 200 with garbage is failing, not refusing: worth another try.
        try:
            yield
        except _MALFORMED as exc:
            raise ProviderUnavailable(self.name, f"malformed {what}: {exc!r}") from exc


@contextmanager
def transport_errors(provider: str, base_url: str) -> Iterator[None]:
    """Turns httpx's connection and timeout failures into the engine's retryable errors."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ProviderTimeout(
            provider, f"{type(exc).__name__} after waiting on {base_url}"
        ) from exc
    except httpx.TransportError as exc:
        raise ProviderUnavailable(
            provider, f"{type(exc).__name__} talking to {base_url}: {exc}"
        ) from exc
