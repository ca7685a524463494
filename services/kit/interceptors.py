"""Server and client interceptors: error mapping, deadlines, the request context and the
request log."""

from __future__ import annotations

import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, NoReturn

import grpc
from agentrt.common.v1 import common_pb2
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from services.kit.errors import ERROR_DOMAIN, AgentrtError
from services.kit.metrics import meter
from services.kit.request_context import (
    annotate_current_span,
    read_context_header,
    set_request_context,
    with_context_header,
)
from services.kit.telemetry import current_trace_id

request_log = logging.getLogger("agentrt.requests")
_rpc_count = meter().create_counter(
    "agentrt.rpc.server.requests", unit="{request}", description="RPCs served, by method and code"
)
_rpc_duration = meter().create_histogram(
    "agentrt.rpc.server.duration", unit="s", description="Time to serve an RPC, to its end"
)
log = logging.getLogger(__name__)

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "agentrt_deadline", default=None
)
"""The monotonic time by which the RPC being served must answer, if it has a deadline."""


def remaining_time() -> float | None:
    """Seconds left before the deadline of the RPC being served, or None without one."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


MAX_ERROR_MESSAGE_CHARS = 300
MAX_ERROR_METADATA_CHARS = 100
"""Errors quote what the caller sent; clipped so, a status stays within the transport's
8 KiB header limit (the message travels twice, percent-encoded and in the details), which
a whole 70,000-character value would overflow, turning the status into RESOURCE_EXHAUSTED."""


def error_status(
    code: grpc.StatusCode,
    message: str,
    reason: common_pb2.ErrorReason.ValueType,
    metadata: dict[str, str] | None = None,
) -> tuple[str, tuple[tuple[str, bytes], ...]]:
    """The details string and trailing metadata of a google.rpc.Status with ErrorInfo,
    long texts clipped."""
    status = rpc_status(code, message, reason, metadata)
    return status.message, (("grpc-status-details-bin", status.SerializeToString()),)


def rpc_status(
    code: grpc.StatusCode,
    message: str,
    reason: common_pb2.ErrorReason.ValueType,
    metadata: dict[str, str] | None = None,
) -> status_pb2.Status:
    """A google.rpc.Status whose details hold one ErrorInfo of the agentrt domain, its
    message and metadata values clipped to what fits in a call's trailers."""
    message = _clipped(message, MAX_ERROR_MESSAGE_CHARS)
    info = error_details_pb2.ErrorInfo(
        reason=common_pb2.ErrorReason.Name(reason).removeprefix("ERROR_REASON_"),
        domain=ERROR_DOMAIN,
        metadata={
            key: _clipped(value, MAX_ERROR_METADATA_CHARS)
            for key, value in (metadata or {}).items()
        },
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=code.value[0], message=message, details=[detail])


def status_of_error(error: AgentrtError) -> status_pb2.Status:
    """The google.rpc.Status the server interceptor ends a call with for `error`."""
    code = getattr(grpc.StatusCode, error.code)
    return rpc_status(code, error.message, error.reason, error.metadata)


def _clipped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> NoReturn:
    """Ends the RPC with the status that describes `error`."""
    if isinstance(error, AgentrtError):
        code = getattr(grpc.StatusCode, error.code)
        message, trailers = error_status(code, error.message, error.reason, error.metadata)
    elif isinstance(error, grpc.aio.AioRpcError):
        code, message, trailers = _downstream_status(error)
    elif isinstance(error, NotImplementedError):
        # A generated servicer's default method: the contract has it, this release not yet.
        code, message, trailers = grpc.StatusCode.UNIMPLEMENTED, "method not implemented", ()
    else:
        trace_id = current_trace_id()
        log.exception("unexpected error (trace %s)", trace_id)
        code = grpc.StatusCode.INTERNAL
        message, trailers = error_status(
            code,
            f"internal error; trace id {trace_id}" if trace_id else "internal error",
            common_pb2.ERROR_REASON_INTERNAL,
        )
    await context.abort(code, message, trailing_metadata=trailers)


def _downstream_status(
    error: grpc.aio.AioRpcError,
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """Relays another service's answer; its unreachability becomes UNAVAILABLE here."""
    code = error.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        message, trailers = error_status(
            grpc.StatusCode.UNAVAILABLE,
            f"a dependency is unavailable: {error.details()}",
            common_pb2.ERROR_REASON_DEPENDENCY_UNAVAILABLE,
        )
        return grpc.StatusCode.UNAVAILABLE, message, trailers
    trailing: Any = error.trailing_metadata() or ()
    kept = tuple(
        (key, value)
        for key, value in trailing
        if key == "grpc-status-details-bin" and isinstance(value, bytes)
    )
    return code, error.details() or "", kept


Behavior = Callable[..., Any]


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Maps errors to statuses, records the deadline and the request context the call
    carries (services/kit/request_context.py), and writes one log line per RPC."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            self._stream(method, handler.stream_stream),
            handler.request_deserializer,
            handler.response_serializer,
        )

    def _unary(self, method: str, behavior: Behavior) -> Behavior:
        async def serve(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = _enter(context)
            try:
                response = await behavior(request, context)
            except grpc.aio.AbortError:
                _finished(method, started, context.code())
                raise
            except Exception as error:
                _finished(method, started, _code_of(error, context))
                await abort_with(context, error)
            _finished(method, started, context.code() or grpc.StatusCode.OK)
            return response

        return serve

    def _stream(self, method: str, behavior: Behavior) -> Behavior:
        async def serve(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started = _enter(context)
            try:
                responses = behavior(request, context)
                if inspect.isawaitable(responses):  # a handler that writes with context.write
                    await responses
                else:
                    async for response in responses:
                        yield response
            except grpc.aio.AbortError:
                _finished(method, started, context.code())
                raise
            except Exception as error:
                _finished(method, started, _code_of(error, context))
                await abort_with(context, error)
            _finished(method, started, context.code() or grpc.StatusCode.OK)

        return serve


def _enter(context: grpc.aio.ServicerContext[Any, Any]) -> float:
    now = time.monotonic()
    remaining = context.time_remaining()
    _deadline.set(None if remaining is None else now + remaining)
    # Always set, to None without a header: an in-process call must not inherit its
    # caller's context by way of the task it runs in, only by what it was sent.
    request_context = read_context_header(context.invocation_metadata() or ())
    set_request_context(request_context)
    if request_context is not None:
        annotate_current_span(request_context)
    return now


def _code_of(error: Exception, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    if isinstance(error, AgentrtError):
        return error.code
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code()
    return context.code() or grpc.StatusCode.INTERNAL


def _finished(method: str, started: float, code: Any) -> None:
    """Counts the RPC, records its latency, and writes its line of the request log."""
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    seconds = time.monotonic() - started
    attributes = {"rpc.method": method, "rpc.grpc.status_code": name}
    _rpc_count.add(1, attributes)
    _rpc_duration.record(seconds, attributes)
    level = logging.INFO if name in ("OK", "CANCELLED") else logging.WARNING
    if request_log.isEnabledFor(level):
        request_log.log(
            level,
            "rpc method=%s code=%s ms=%.2f trace_id=%s",
            method,
            name,
            seconds * 1000,
            current_trace_id() or "-",
        )


def outgoing_timeout(
    timeout: float | None, metadata: Iterable[tuple[str, Any]] | None, default: float
) -> float | None:
    """The timeout of an outgoing call: the shortest of its own, the incoming RPC's
    remaining time and `default`; a call with LONG_LIVED metadata keeps its own."""
    if metadata is not None and any(key == "x-agentrt-long-lived" for key, _ in metadata):
        return timeout
    candidates = [t for t in (timeout, remaining_time(), default) if t is not None]
    return max(min(candidates), 0.0)


class DeadlineClientInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
):
    """Gives every outgoing call a deadline: the caller's own, the incoming RPC's
    remaining time, or the default, whichever is shortest. Streams that follow a job
    pass `timeout=None` explicitly with `long_lived=True` in their metadata."""

    def __init__(self, default_timeout: float) -> None:
        self._default = default_timeout

    def _with_deadline(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(
            details.method,
            outgoing_timeout(details.timeout, details.metadata, self._default),
            details.metadata,
            details.credentials,
            details.wait_for_ready,
        )

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_deadline(details), request)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_deadline(details), request)


class RequestContextClientInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
):
    """Sends the current request context with every outgoing call, as the
    `agentrt-context-bin` header (services/kit/request_context.py)."""

    def _with_context(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        sent = with_context_header(details.metadata)
        if sent is None:
            return details
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*sent),
            details.credentials,
            details.wait_for_ready,
        )

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_context(details), request)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_context(details), request)


class _UnaryStreamPart(grpc.aio.UnaryStreamClientInterceptor):
    """The unary-stream half of an interceptor that implements both kinds: grpc.aio files
    an interceptor under the first kind it implements only, so such an interceptor given
    as it is would never see a stream."""

    def __init__(self, interceptor: grpc.aio.UnaryStreamClientInterceptor) -> None:
        self._interceptor = interceptor

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await self._interceptor.intercept_unary_stream(continuation, details, request)


def client_interceptors(default_timeout: float) -> list[Any]:
    """The kit's client interceptors, deadline then request context, for unary calls and
    for streams alike."""
    deadline = DeadlineClientInterceptor(default_timeout)
    context = RequestContextClientInterceptor()
    return [deadline, context, _UnaryStreamPart(deadline), _UnaryStreamPart(context)]


LONG_LIVED = (("x-agentrt-long-lived", "1"),)
"""Metadata for calls that follow a job as long as it runs and so take no default deadline."""
