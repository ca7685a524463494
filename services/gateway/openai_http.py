"""The OpenAI-compatible HTTP endpoint of the gateway: /v1/chat/completions and /v1/models.

It serves the model API (services/gateway/model_api.py) to code that speaks OpenAI's
API, authenticated with `Authorization: Bearer <agentrt key>`: the same key, policy,
budgets and usage records as the gRPC ModelService. Errors have OpenAI's JSON shape and
the HTTP status of their gRPC status; refusals that a retry cannot cure (budget, policy)
also say `x-should-retry: false`, which the OpenAI SDKs obey instead of retrying a 429.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import grpc
from agentrt.errors import error_from_rpc
from agentrt.gateway.v1 import models_pb2
from aiohttp import web
from opentelemetry import propagate, trace

from services.gateway.auth import Credentials, authenticate_headers
from services.gateway.keys import Principal
from services.gateway.model_api import ModelApi
from services.gateway.openai_wire import (
    ChunkWriter,
    completion_body,
    error_body,
    model_body,
    models_body,
    parse_chat_request,
)
from services.kit.config import ConfigError
from services.kit.errors import AgentrtError, FieldInvalid, NotFound
from services.kit.telemetry import current_trace_id

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_FINAL = frozenset({"BUDGET_EXCEEDED", "POLICY_DENIED"})
"""Reasons after which the same request is refused again."""
MAX_BODY_BYTES = 4 * 1024 * 1024


def parse_listen_address(variable: str, address: str) -> tuple[str, int]:
    """`host:port` (IPv6 hosts in brackets) from a variable; ConfigError naming it."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{variable}: expected host:port, got {address!r}")
    return host.strip("[]"), int(port)


class OpenAIHttp:
    """The HTTP listener; `start` binds it, `url` then says where it is."""

    def __init__(self, credentials: Credentials, api: ModelApi, host: str, port: int) -> None:
        self._credentials = credentials
        self._api = api
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.url = ""
        """`http://host:port` once started."""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_traced, _errors])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model:.+}", self._model)
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_port=False)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise OSError(f"cannot listen on {self._host}:{self._port}: {error}") from error
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        log.info("OpenAI-compatible API on %s/v1", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _caller(self, request: web.Request, request_id: str = "") -> Principal:
        headers = [(key.lower(), value) for key, value in request.headers.items()]
        return await authenticate_headers(headers, self._credentials, request_id)

    async def _models(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        listed = await self._api.list_models(caller, 1000)
        models = list(listed.models)
        while listed.next_page_token:
            listed = await self._api.list_models(caller, 1000, listed.next_page_token)
            models.extend(listed.models)
        return web.json_response(models_body(models))

    async def _model(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        wanted = f"models/{request.match_info['model']}"
        listed = await self._api.list_models(caller, 1000)
        for model in listed.models:
            if model.name == wanted:
                return web.json_response(model_body(model))
        raise NotFound(
            f"model {request.match_info['model']!r} is not served",
            metadata={"model": request.match_info["model"]},
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        request_id = request.headers.get("Idempotency-Key", "")
        caller = await self._caller(request, request_id)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise FieldInvalid("body", "a JSON object") from None
        call, stream, include_usage = parse_chat_request(body)
        call.request_id = request_id
        if not stream:
            answer = await self._api.complete(caller, call)
            return web.json_response(completion_body(answer))
        chunks = self._api.stream(caller, call)
        return await self._stream(request, chunks, call.model, include_usage)

    async def _stream(
        self,
        request: web.Request,
        chunks: AsyncGenerator[models_pb2.CompleteChunk, None],
        model: str,
        include_usage: bool,
    ) -> web.StreamResponse:
        """Server-sent events. A failure before the first chunk is a plain error response
        (its status tells the client); one after it is an `error` event, then the end."""
        writer = ChunkWriter(model, include_usage)
        try:
            first = await anext(chunks, None)
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            try:
                if first is not None:
                    await _send(response, writer.events(first))
                async for chunk in chunks:
                    await _send(response, writer.events(chunk))
            except (AgentrtError, grpc.aio.AioRpcError) as error:
                _, body, _ = _failure(error)
                await _send(response, [body])
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            await chunks.aclose()


async def _send(response: web.StreamResponse, events: list[dict[str, Any]]) -> None:
    for event in events:
        await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")


@web.middleware
async def _traced(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A server span for every request, in the caller's trace when it sends a
    `traceparent`, so that the calls it makes and its usage record share the trace."""
    route = request.match_info.route.resource
    name = f"{request.method} {route.canonical if route is not None else request.path}"
    with tracer.start_as_current_span(
        name,
        context=propagate.extract(request.headers),
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": request.method, "url.path": request.path},
    ) as span:
        response = await handler(request)
        span.set_attribute("http.response.status_code", response.status)
        if response.status >= 500:
            span.set_status(trace.StatusCode.ERROR)
        return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as OpenAI's error object with the status of its gRPC status."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = "NOT_FOUND" if error.status == 404 else "INVALID_ARGUMENT"
        status, body = error_body(code, error.reason, "")
        return web.json_response(body, status=error.status if status == 400 else status)
    except (AgentrtError, grpc.aio.AioRpcError) as failure:
        status, body, final = _failure(failure)
        headers = {"x-should-retry": "false"} if final else {}
        return web.json_response(body, status=status, headers=headers)
    except Exception:
        trace_id = current_trace_id()
        log.exception("unexpected error (trace %s)", trace_id)
        status, body = error_body("INTERNAL", f"internal error; trace id {trace_id}", "INTERNAL")
        return web.json_response(body, status=status)


def _failure(error: AgentrtError | grpc.aio.AioRpcError) -> tuple[int, dict[str, Any], bool]:
    """The HTTP status and body of a failure, and whether a retry is futile."""
    if isinstance(error, AgentrtError):
        code, message, reason = error.code, error.message, error.reason_name
        field = error.metadata.get("field", "")
    else:
        relayed = error_from_rpc(error)  # another service's status, with its ErrorInfo
        code, message, reason = relayed.code.name, relayed.message, relayed.reason
        field = relayed.metadata.get("field", "")
        if relayed.code == grpc.StatusCode.UNAVAILABLE and not reason:
            reason = "DEPENDENCY_UNAVAILABLE"
    status, body = error_body(code, message, reason, field)
    return status, body, reason in _FINAL
