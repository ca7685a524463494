"""A real gRPC server between a client and a gateway that forwards every unary call and,
as a test tells it, fails some of them: refused before they reach the gateway, or
forwarded and their answer lost on the way back (the outcome a client cannot know)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc


@dataclass(frozen=True)
class Fault:
    """What happens to one call: it fails with `code`, after reaching the gateway (its
    answer lost) when `reaches_gateway`, else without reaching it."""

    code: grpc.StatusCode
    reaches_gateway: bool = True
    details: str = "the answer was lost on the way"


@dataclass
class FaultyProxy(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Forwards unary calls to `upstream`; the i-th call of a method meets the i-th entry
    of `faults[method]` (None, or past the list's end: forwarded as it is)."""

    upstream: grpc.aio.Channel
    faults: Mapping[str, Iterable[Fault | None]] = field(default_factory=dict)
    calls: dict[str, list[bytes]] = field(default_factory=dict)
    """The requests of each method ("/pkg.Service/Method") as sent, in order."""

    def __post_init__(self) -> None:
        self._faults = {method: iter(plan) for method, plan in self.faults.items()}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = details.method

        async def forward(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            self.calls.setdefault(method, []).append(request)
            fault = next(self._faults.get(method, iter(())), None)
            if fault is not None and not fault.reaches_gateway:
                await context.abort(fault.code, fault.details)
            metadata = [
                (key, value)
                for key, value in context.invocation_metadata() or ()
                if not key.startswith((":", "grpc-"))
            ]
            try:
                send = self.upstream.unary_unary(method, None, None)  # bytes as they are
                answer: bytes = await send(
                    request, metadata=metadata, timeout=context.time_remaining()
                )
            except grpc.aio.AioRpcError as error:
                # The status details too; the server wants a tuple, not Metadata.
                trailers: Any = tuple(error.trailing_metadata() or ())
                await context.abort(error.code(), error.details() or "", trailers)
            if fault is not None:
                await context.abort(fault.code, fault.details)
            return answer

        return grpc.unary_unary_rpc_method_handler(forward)


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
