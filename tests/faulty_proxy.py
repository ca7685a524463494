"""A real gRPC server between a client and a gateway that forwards every unary call and,
as a test tells it, fails some of them: refused before they reach the gateway, or
forwarded and their answer lost on the way back (the outcome a client cannot know)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc


@dataclass(frozen=True)
class Fault:
    """What happens to one call: it fails with `code`, after reaching the gateway (its
    answer lost; a stream's after `after_messages` messages) when `reaches_gateway`,
    else without reaching it."""

    code: grpc.StatusCode
    reaches_gateway: bool = True
    details: str = "the answer was lost on the way"
    after_messages: int = 0


STREAMING = ("/StreamComplete",)
"""The endings of the methods that answer with a stream."""


@dataclass
class FaultyProxy(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Forwards unary calls, and those of STREAMING, to `upstream`; the i-th call of a
    method meets the i-th entry of `faults[method]` (None, or past the list's end:
    forwarded as it is)."""

    upstream: grpc.aio.Channel
    faults: Mapping[str, Iterable[Fault | None]] = field(default_factory=dict)
    calls: dict[str, list[bytes]] = field(default_factory=dict)
    """The requests of each method ("/pkg.Service/Method") as sent, in order."""

    def __post_init__(self) -> None:
        self._faults = {method: iter(plan) for method, plan in self.faults.items()}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = details.method
        if method.endswith(STREAMING):
            return grpc.unary_stream_rpc_method_handler(functools.partial(self._stream, method))
        return grpc.unary_unary_rpc_method_handler(functools.partial(self._unary, method))

    async def _unary(self, method: str, request: bytes, context: Context) -> bytes:
        fault = await self._begin(method, request, context)
        send = self.upstream.unary_unary(method, None, None)  # bytes as they are
        try:
            answer: bytes = await send(request, **_forwarded(context))
        except grpc.aio.AioRpcError as error:
            await _relay(error, context)
        if fault is not None:
            await context.abort(fault.code, fault.details)
        return answer

    async def _stream(self, method: str, request: bytes, context: Context) -> AsyncIterator[bytes]:
        fault = await self._begin(method, request, context)
        call = self.upstream.unary_stream(method, None, None)(request, **_forwarded(context))
        sent = 0
        try:
            async for message in call:
                if fault is not None and sent == fault.after_messages:
                    await context.abort(fault.code, fault.details)
                yield message
                sent += 1
        except grpc.aio.AioRpcError as error:
            await _relay(error, context)
        if fault is not None:
            await context.abort(fault.code, fault.details)

    async def _begin(self, method: str, request: bytes, context: Context) -> Fault | None:
        """Records the call and takes its fault; refuses it when the fault says so."""
        self.calls.setdefault(method, []).append(request)
        fault = next(self._faults.get(method, iter(())), None)
        if fault is not None and not fault.reaches_gateway:
            await context.abort(fault.code, fault.details)
        return fault


Context = grpc.aio.ServicerContext[Any, Any]


def _forwarded(context: Context) -> dict[str, Any]:
    """The caller's metadata and what is left of its deadline, for the upstream call."""
    metadata = [
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if not key.startswith((":", "grpc-"))
    ]
    return {"metadata": metadata, "timeout": context.time_remaining()}


async def _relay(error: grpc.aio.AioRpcError, context: Context) -> None:
    """Ends the call with the upstream's status, its details too."""
    # The server wants the trailers as a tuple, not Metadata.
    trailers: Any = tuple(error.trailing_metadata() or ())
    await context.abort(error.code(), error.details() or "", trailers)


@asynccontextmanager
async def proxying(
    gateway: str, faults: Mapping[str, Iterable[Fault | None]]
) -> AsyncIterator[tuple[str, FaultyProxy]]:
    """The address of a proxy to the gateway at `gateway` that fails calls as `faults`
    says, and the proxy (to read the calls it saw)."""
    async with grpc.aio.insecure_channel(gateway) as upstream:
        proxy = FaultyProxy(upstream, faults)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([proxy])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            yield f"127.0.0.1:{port}", proxy
        finally:
            await server.stop(None)
