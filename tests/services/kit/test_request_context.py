"""The request context: sent by the kit's channels, read back by its server interceptor,
over the network and in-process, and written into log records."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from agentrt.common.v1.common_pb2 import RequestContext

from services.kit.channels import open_channel
from services.kit.interceptors import ServerInterceptor
from services.kit.local_channel import (
    LocalChannel,
    LocalServer,
    LocalServicerContext,
    _Responses,
)
from services.kit.request_context import (
    HEADER,
    RequestContextFilter,
    current_request_context,
    set_request_context,
    update_request_context,
)

METHOD = "/test.Context/Echo"
STREAM = "/test.Context/EchoStream"


async def _echo(request: bytes, context: Any) -> bytes:
    """Answers with the request context the call arrived with (empty bytes for none)."""
    seen = current_request_context()
    return b"none" if seen is None else seen.SerializeToString()


async def _echo_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    """The context seen when the stream starts, and again after a pause."""
    yield await _echo(request, context)
    await asyncio.sleep(0)
    yield await _echo(request, context)


class _Echo(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def service(self, details: grpc.HandlerCallDetails) -> Any:
        if details.method == METHOD:
            return grpc.unary_unary_rpc_method_handler(_echo)
        if details.method == STREAM:
            return grpc.unary_stream_rpc_method_handler(_echo_stream)
        return None


@pytest.fixture
async def server() -> AsyncIterator[tuple[LocalServer, int]]:
    interceptor = ServerInterceptor()
    local = LocalServer(
        grpc.aio.server(interceptors=[interceptor], options=[("grpc.so_reuseport", 0)]),
        interceptors=[interceptor],
    )
    local.add_generic_rpc_handlers([_Echo()])
    port = local.add_insecure_port("127.0.0.1:0")
    await local.start()
    yield local, port
    await local.stop(None)


async def _call(channel: grpc.aio.Channel, metadata: Any = None) -> RequestContext | None:
    """The context a unary call and a streaming call arrive with (the same in both)."""
    answer = await channel.unary_unary(METHOD, None, None)(b"", metadata=metadata, timeout=5)
    stream = channel.unary_stream(STREAM, None, None)(b"", metadata=metadata, timeout=5)
    assert [message async for message in stream] == [answer, answer]
    return None if answer == b"none" else RequestContext.FromString(answer)


SENT = RequestContext(
    request_id="req_1",
    trace_id="ab" * 16,
    tenant="acme",
    principal="alice",
    session="s1",
    job="jobs/j1",
    parent_job="jobs/j0",
)


@pytest.mark.parametrize("kind", ["network", "in-process"])
async def test_the_current_context_arrives_with_the_call(
    server: tuple[LocalServer, int], kind: str
) -> None:
    local, port = server
    channel: grpc.aio.Channel = (
        open_channel(f"127.0.0.1:{port}", 5.0) if kind == "network" else LocalChannel(local, 5.0)
    )
    try:
        assert await _call(channel) is None
        set_request_context(SENT)
        assert await _call(channel) == SENT
        # A header already in the metadata is replaced by the current context.
        forged = RequestContext(tenant="other").SerializeToString()
        assert await _call(channel, ((HEADER, forged),)) == SENT
    finally:
        set_request_context(None)
        await channel.close(None)


async def test_a_call_takes_its_context_from_its_metadata_alone(
    server: tuple[LocalServer, int],
) -> None:
    local, _ = server
    # An in-process handler runs in a copy of its caller's contextvars; what it sees must
    # still be what the call was sent, as over the network.
    responses = _Responses()
    context = LocalServicerContext((), None, responses)
    set_request_context(SENT)
    try:
        await local.serve(METHOD, context, b"")
    finally:
        set_request_context(None)
    assert await responses.get() == b"none"


async def test_a_malformed_header_is_ignored(server: tuple[LocalServer, int]) -> None:
    _, port = server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert await _call(channel, ((HEADER, b"\xff\xff\xff"),)) is None
        assert await _call(channel, ((HEADER, SENT.SerializeToString()),)) == SENT


def test_log_records_carry_the_context() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    set_request_context(None)
    RequestContextFilter().filter(record)
    assert (record.request_context, record.tenant) == ("", "")  # type: ignore[attr-defined]
    update_request_context(tenant="acme", job="jobs/j1", session="")
    try:
        RequestContextFilter().filter(record)
    finally:
        set_request_context(None)
    assert record.request_context == " tenant=acme job=jobs/j1"  # type: ignore[attr-defined]
    assert (record.tenant, record.job, record.session) == ("acme", "jobs/j1", "")  # type: ignore[attr-defined]
