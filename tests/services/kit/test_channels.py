"""The kit's channels give streams the same deadline rule as unary calls."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc

from services.kit.channels import open_channel
from services.kit.interceptors import LONG_LIVED

STREAM = "/test.Deadline/Remaining"


async def _remaining(request: bytes, context: Any) -> AsyncIterator[bytes]:
    """The seconds the call has left, as the server sees them (-1 for no deadline)."""
    left = context.time_remaining()
    yield struct.pack("!d", -1.0 if left is None else left)


class _Handler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def service(self, details: grpc.HandlerCallDetails) -> Any:
        if details.method == STREAM:
            return grpc.unary_stream_rpc_method_handler(_remaining)
        return None


async def test_a_stream_gets_the_default_deadline_unless_long_lived() -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers([_Handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = open_channel(f"127.0.0.1:{port}", 3.0)
    try:
        stream = channel.unary_stream(STREAM, None, None)

        async def left(**options: Any) -> float:
            [answer] = [message async for message in stream(b"", **options)]
            return float(struct.unpack("!d", answer)[0])

        assert 0 < await left() <= 3.1  # grpc rounds the deadline up a little
        assert 0 < await left(timeout=60) <= 3.1  # the shortest wins
        assert 3.1 < await left(timeout=60, metadata=LONG_LIVED) <= 60.1
        assert await left(timeout=None, metadata=LONG_LIVED) == -1.0
    finally:
        await channel.close(None)
        await server.stop(None)
