"""In-process calls: a channel to services hosted in this process that skips the network
(like grpc-java's InProcessChannel) but keeps its serialization, interceptors and statuses."""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc
from opentelemetry import trace

from services.kit.interceptors import outgoing_timeout
from services.kit.request_context import with_context_header

tracer = trace.get_tracer(__name__)

Metadata = tuple[tuple[str, str | bytes], ...]
Status = tuple[grpc.StatusCode, str, Metadata]
Codec = Callable[[Any], Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"
C = TypeVar("C", bound="_Call")

_WINDOW = 32
"""Messages a stream may run ahead of its reader: the in-process stand-in for flow control."""
_SERVER_ERRORS = frozenset(
    grpc.StatusCode[name]
    for name in ("UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE")
)
"""The codes that mark a server span as failed (OpenTelemetry's RPC conventions)."""


def _same(value: Any) -> Any:
    return value


class _Responses:
    """Serialized answers from the handler to the caller, in order."""

    def __init__(self) -> None:
        self._messages: deque[bytes] = deque()
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()

    async def put(self, message: bytes) -> None:
        while len(self._messages) >= _WINDOW:
            self._writable.clear()
            await self._writable.wait()
        self._messages.append(message)
        self._readable.set()

    def close(self) -> None:
        self._closed = True
        self._readable.set()

    async def get(self) -> bytes | None:
        """The next answer, or None once the call has ended and all were read."""
        while not self._messages:
            if self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        self._writable.set()
        return self._messages.popleft()


@dataclass(frozen=True)
class _CallDetails(grpc.HandlerCallDetails):
    method: str
    invocation_metadata: Metadata


class LocalServicerContext:
    """The part of grpc.aio.ServicerContext that handlers and interceptors use."""

    def __init__(self, metadata: Metadata, deadline: float | None, responses: _Responses) -> None:
        self._metadata = metadata
        self._deadline = deadline
        self._responses = responses
        self.serialize: Codec = _same
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: Metadata = ()
        self._aborted = self._cancelled = self._done = False

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)

    def peer(self) -> str:
        return "local"

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Metadata:
        return self._trailing

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def set_trailing_metadata(self, trailing_metadata: Iterable[tuple[str, str | bytes]]) -> None:
        self._trailing = tuple(trailing_metadata)

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._done

    async def write(self, message: Any) -> None:
        await self._responses.put(self.serialize(message))

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()
    ) -> NoReturn:
        if self._aborted:
            raise grpc.aio.UsageError("Abort already called!")
        self._aborted = self._done = True
        self._code, self._details = code, details
        self._trailing = tuple(trailing_metadata) or self._trailing
        raise grpc.aio.AbortError("Locally aborted.")

    def end(self, cancelled_with: grpc.StatusCode | None = None) -> Status:
        """Marks the handler done (or cancelled, with the code the caller sees)."""
        self._done = True
        if cancelled_with is not None:
            self._cancelled, self._code = True, cancelled_with
        return self._code or grpc.StatusCode.OK, self._details, self._trailing


class LocalServer(grpc.aio.Server):
    """A grpc.aio server that also answers in-process calls: it passes everything on to
    the network server and records the handlers registered on it, so that a LocalChannel
    can run them through the same interceptors. Stopping drains both kinds of call."""

    def __init__(
        self, server: grpc.aio.Server, interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]]
    ) -> None:
        self._server = server
        self._interceptors = interceptors
        self._generic: list[grpc.GenericRpcHandler[Any, Any]] = []
        self._registered: dict[str, Handler] = {}
        self._serving: set[asyncio.Task[None]] = set()
        self._stopping = False

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        handlers = list(generic_rpc_handlers)
        self._generic.extend(handlers)
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        self._registered.update({f"/{service}/{name}": h for name, h in handlers.items()})
        self._server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self._server.start()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self._server.wait_for_termination(timeout)

    async def stop(self, grace: float | None = None) -> None:
        """Refuses new calls, gives those in flight `grace` seconds, then cancels them."""
        self._stopping = True
        await asyncio.gather(self._server.stop(grace), self._drain(grace))

    async def _drain(self, grace: float | None) -> None:
        if self._serving and grace:
            await asyncio.wait(self._serving, timeout=grace)
        for task in self._serving:
            task.cancel()
        if self._serving:
            await asyncio.wait(self._serving)

    def spawn(self, serving: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Runs a call's handler in a task of its own, which copies the caller's context
        (its trace and deadline) as the network would carry them."""
        task = asyncio.create_task(serving)
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)
        return task

    async def serve(self, method: str, context: LocalServicerContext, request: bytes) -> None:
        """Runs the method's handler for an in-process call; the outcome is in `context`."""
        if self._stopping:
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details("Server shutting down")
            return
        with _server_span(method, context):
            handler = await self._handler(method, context)
            if handler is None:
                context.set_code(grpc.StatusCode.UNIMPLEMENTED)
                context.set_details("Method not found!")
            else:
                await _run(handler, context, request)

    async def _handler(self, method: str, context: LocalServicerContext) -> Handler | None:
        async def lookup(details: grpc.HandlerCallDetails) -> Handler | None:
            found = self._registered.get(details.method)
            for generic in self._generic:
                found = found or generic.service(details)
            return found

        continuation: Continuation = lookup
        for interceptor in reversed(self._interceptors):
            continuation = functools.partial(interceptor.intercept_service, continuation)
        return await continuation(_CallDetails(method, context.invocation_metadata()))


async def _run(handler: Handler, context: LocalServicerContext, request: bytes) -> None:
    context.serialize = handler.response_serializer or _same
    behavior: Callable[..., Any] | None = handler.unary_unary or handler.unary_stream
    assert behavior is not None, "a unary call reached a client-streaming method"
    responses = behavior((handler.request_deserializer or _same)(request), context)
    if inspect.isawaitable(responses):  # a unary answer, or a handler that writes itself
        response = await responses
        if not handler.response_streaming:
            await context.write(response)
        return
    async for response in responses:
        await context.write(response)


@contextmanager
def _server_span(method: str, context: LocalServicerContext) -> Iterator[None]:
    """The span the gRPC server instrumentation starts for a call, around the status
    grpc gives an error that no interceptor mapped."""
    service, _, name = method.lstrip("/").partition("/")
    with tracer.start_as_current_span(
        method,
        kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield
        except grpc.aio.AbortError:
            pass
        except Exception as error:
            context.set_code(grpc.StatusCode.UNKNOWN)
            context.set_details(f"Unexpected {type(error)}: {error}")
        finally:
            code = context.code() or grpc.StatusCode.OK
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in _SERVER_ERRORS:
                span.set_status(trace.StatusCode.ERROR, f"{code}:{context.details()}")


class _Call(grpc.aio.Call):
    """The caller's side of one in-process call."""

    def __init__(
        self,
        channel: LocalChannel,
        method: str,
        request: bytes,
        deserialize: Codec,
        timeout: float | None,
        metadata: Metadata,
    ) -> None:
        self._deserialize = deserialize
        self._responses = _Responses()
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._context = LocalServicerContext(metadata, self._deadline, self._responses)
        self._status: Status | None = None
        self._cancelled = False
        self._ended = asyncio.Event()
        self._callbacks: list[Callable[[Any], None]] = []
        self._response: Any = None
        channel.admit(self)
        self._timer = None
        if timeout is not None:
            self._timer = asyncio.get_running_loop().call_later(
                timeout, self._abandon, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"
            )
        self._task = channel.server.spawn(self._serve(channel.server, method, request))

    async def _serve(self, server: LocalServer, method: str, request: bytes) -> None:
        try:
            await server.serve(method, self._context, request)
        except asyncio.CancelledError:  # the server stopped (else the call has ended already)
            self._end((grpc.StatusCode.UNAVAILABLE, "Server shutting down", ()))
            raise
        self._end(self._context.end())

    def _abandon(self, code: grpc.StatusCode, details: str) -> None:
        """Ends the call from the caller's side, which cancels the handler."""
        self._end((code, details, ()))
        self._context.end(cancelled_with=code)
        self._task.cancel()

    def _end(self, status: Status) -> None:
        if self._status is not None:
            return
        self._status = status
        if self._timer is not None:
            self._timer.cancel()
        self._responses.close()
        self._ended.set()
        for callback in self._callbacks:
            callback(self)

    def _raise_for_status(self) -> None:
        assert self._status is not None
        code, details, trailing = self._status
        if self._cancelled:
            raise asyncio.CancelledError
        if code != grpc.StatusCode.OK:
            metadata = grpc.aio.Metadata(*trailing)
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), metadata, details, None)

    async def _wait(self) -> Status:
        try:
            await self._ended.wait()
        except asyncio.CancelledError:  # the caller gave up: so does the call, as over gRPC
            self.cancel()
            raise
        assert self._status is not None
        return self._status

    def cancel(self) -> bool:
        if self._status is not None:
            return False
        self._cancelled = True
        self._abandon(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
        return True

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._status is not None

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._status is None:
            self._callbacks.append(callback)
        else:
            callback(self)

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata(*(await self._wait())[2])

    async def code(self) -> grpc.StatusCode:
        return (await self._wait())[0]

    async def details(self) -> str:
        return (await self._wait())[1]

    async def wait_for_connection(self) -> None:
        """Nothing to connect in-process; raises as grpc does if the call already failed."""
        if self._status is not None:
            self._raise_for_status()


class _UnaryUnaryCall(_Call, grpc.aio.UnaryUnaryCall[Any, Any]):
    def __await__(self) -> Generator[Any, None, Any]:
        return self._answer().__await__()

    async def _answer(self) -> Any:
        await self._wait()
        self._raise_for_status()
        if self._response is None:
            self._response = self._deserialize(await self._responses.get())
        return self._response


class _UnaryStreamCall(_Call, grpc.aio.UnaryStreamCall[Any, Any]):
    async def __aiter__(self) -> AsyncIterator[Any]:
        while (response := await self.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
            yield response

    async def read(self) -> Any:
        try:
            message = await self._responses.get()
        except asyncio.CancelledError:
            self.cancel()
            raise
        if message is not None and not self._cancelled:
            return self._deserialize(message)
        self._raise_for_status()
        return grpc.aio.EOF  # type: ignore[attr-defined]


class _Method:
    """One method of a LocalChannel, as a generated stub holds it. Credentials,
    wait_for_ready and compression mean nothing in-process and are ignored."""

    def __init__(
        self, channel: LocalChannel, method: str, serialize: Codec | None, deserialize: Codec | None
    ) -> None:
        self._channel = channel
        self._method = method
        self._serialize = serialize or _same
        self._deserialize = deserialize or _same

    def _start(self, kind: type[C], request: Any, timeout: float | None, metadata: Any) -> C:
        sent = with_context_header(metadata) or tuple(metadata or ())
        timeout = outgoing_timeout(timeout, sent, self._channel.default_timeout)
        request = self._serialize(request)  # now: the caller may change its message after
        return kind(self._channel, self._method, request, self._deserialize, timeout, sent)


class _UnaryUnaryMethod(_Method, grpc.aio.UnaryUnaryMultiCallable[Any, Any]):
    def __call__(
        self, request: Any, timeout: float | None = None, metadata: Any = None, *_: Any, **__: Any
    ) -> _UnaryUnaryCall:
        return self._start(_UnaryUnaryCall, request, timeout, metadata)


class _UnaryStreamMethod(_Method, grpc.aio.UnaryStreamMultiCallable[Any, Any]):
    def __call__(
        self, request: Any, timeout: float | None = None, metadata: Any = None, *_: Any, **__: Any
    ) -> _UnaryStreamCall:
        return self._start(_UnaryStreamCall, request, timeout, metadata)


class _ClientStreamingMethod(
    grpc.aio.StreamUnaryMultiCallable[Any, Any], grpc.aio.StreamStreamMultiCallable[Any, Any]
):
    """No service calls another's client-streaming methods (replay's imports and steps
    come from clients over the network), so a LocalChannel does not carry them."""

    def __init__(self, method: str) -> None:
        self._method = method

    def __call__(self, *_: Any, **__: Any) -> NoReturn:
        raise NotImplementedError(f"{self._method}: client streaming is not carried in-process")


class LocalChannel(grpc.aio.Channel):
    """A channel to the services of a LocalServer in this process. Outgoing calls follow
    the kit's deadline rule, as those of `open_channel` do."""

    def __init__(self, server: LocalServer, default_timeout: float) -> None:
        self.server = server
        self.default_timeout = default_timeout
        self._calls: set[_Call] = set()
        self._closed = asyncio.Event()

    def unary_unary(
        self,
        method: str,
        request_serializer: Codec | None = None,
        response_deserializer: Codec | None = None,
        _registered_method: bool = False,
    ) -> _UnaryUnaryMethod:
        return _UnaryUnaryMethod(self, method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Codec | None = None,
        response_deserializer: Codec | None = None,
        _registered_method: bool = False,
    ) -> _UnaryStreamMethod:
        return _UnaryStreamMethod(self, method, request_serializer, response_deserializer)

    def stream_unary(self, method: str, *_: Any, **__: Any) -> _ClientStreamingMethod:
        return _ClientStreamingMethod(method)

    def stream_stream(self, method: str, *_: Any, **__: Any) -> _ClientStreamingMethod:
        return _ClientStreamingMethod(method)

    def admit(self, call: _Call) -> None:
        """Counts a new call among those that closing the channel ends."""
        if self._closed.is_set():
            raise grpc.aio.UsageError("Channel is closed.")
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)

    async def close(self, grace: float | None = None) -> None:
        """Refuses new calls; those in flight get `grace` seconds, then are cancelled."""
        self._closed.set()
        if self._calls and grace:
            await asyncio.wait(
                [asyncio.ensure_future(c.code()) for c in self._calls], timeout=grace
            )
        for call in list(self._calls):
            call.cancel()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        closed = self._closed.is_set()
        return grpc.ChannelConnectivity.SHUTDOWN if closed else grpc.ChannelConnectivity.READY

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Ready until closed: closing is the one change there is."""
        if last_observed_state == self.get_state():
            await self._closed.wait()

    async def channel_ready(self) -> None:
        """Ready at once: there is no connection to make."""

    async def __aenter__(self) -> LocalChannel:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close(None)
