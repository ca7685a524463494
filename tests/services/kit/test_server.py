"""The service bootstrap: health, reflection, error mapping, ports, draining."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2, engine_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.engine.server import EngineConfig, EngineUnit
from services.kit.server import Server
from tests.services.kit.status import error_info

ENGINE = "agentrt.engine.v1.EngineService"


@pytest.fixture
async def engine_server() -> AsyncIterator[Server]:
    server = Server("127.0.0.1:0", "engine")
    await server.start([EngineUnit(EngineConfig.from_env({}))])
    yield server
    await server.stop(grace=1.0)


def health_of(channel: grpc.aio.Channel, service: str) -> Any:
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )


async def test_health_answers_for_the_server_and_each_service(engine_server: Server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{engine_server.port}") as channel:
        for service in ("", ENGINE):
            reply = await health_of(channel, service)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health_of(channel, "agentrt.nope.v1.Nothing")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_is_not_serving_while_draining() -> None:
    server = Server("127.0.0.1:0", "engine")
    await server.start([EngineUnit(EngineConfig.from_env({}))])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=ENGINE)
        )
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        await server.stop(grace=1.0)
        statuses = []
        try:
            while (reply := await watch.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
                statuses.append(reply.status)
        except grpc.aio.AioRpcError:
            pass
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses


async def test_reflection_lists_the_services(engine_server: Server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{engine_server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in stub.ServerReflectionInfo(iter([request])):
            names = {s.name for s in reply.list_services_response.service}
            break
    assert {ENGINE, "grpc.health.v1.Health"} <= names


async def test_a_taken_port_fails_loudly(engine_server: Server) -> None:
    with pytest.raises(OSError, match="taken"):
        Server(f"127.0.0.1:{engine_server.port}", "engine")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(OSError):
            Server(f"127.0.0.1:{sock.getsockname()[1]}", "engine")


async def test_domain_errors_become_statuses_with_error_info(engine_server: Server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{engine_server.port}") as channel:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        user = common_pb2.Message(role=common_pb2.ROLE_USER, content="hi")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.Complete(engine_pb2.CompleteRequest(model="no-such-model", messages=[user]))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        info = error_info(missing.value)
        assert (info.reason, info.domain) == ("MODEL_NOT_FOUND", "agentrt.dev")
        assert info.metadata["model"] == "no-such-model"
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await stub.Complete(engine_pb2.CompleteRequest(model="local"))
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(empty.value).reason == "FIELD_REQUIRED"
        assert error_info(empty.value).metadata["field"] == "messages"


async def test_an_oversized_message_is_refused_by_the_transport(engine_server: Server) -> None:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{engine_server.port}", options=[("grpc.max_send_message_length", -1)]
    ) as channel:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        huge = common_pb2.Message(role=common_pb2.ROLE_USER, content="x" * (5 * 1024 * 1024))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Complete(engine_pb2.CompleteRequest(model="local", messages=[huge]))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_streams_answer_and_report_usage(engine_server: Server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{engine_server.port}") as channel:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        user = common_pb2.Message(role=common_pb2.ROLE_USER, content="hello there")
        chunks = [
            chunk
            async for chunk in stub.StreamComplete(
                engine_pb2.CompleteRequest(model="local", messages=[user], idempotency_key="k1")
            )
        ]
        assert chunks[-1].finish_reason == engine_pb2.FINISH_REASON_STOP
        assert chunks[-1].usage.total_tokens > 0
        text = "".join(chunk.text_delta for chunk in chunks)
        again = await stub.Complete(
            engine_pb2.CompleteRequest(model="local", messages=[user], idempotency_key="k1")
        )
        assert again.replayed
        assert again.message.content == text


async def test_an_error_quoting_a_huge_value_keeps_its_status(engine_server: Server) -> None:
    """A message or metadata that quotes what the caller sent is clipped: whole, it would
    overflow the transport's header limit and the caller would get RESOURCE_EXHAUSTED."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{engine_server.port}") as channel:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        user = common_pb2.Message(role=common_pb2.ROLE_USER, content="hi")
        model = "\u00e9\x00" * 20_000
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.Complete(engine_pb2.CompleteRequest(model=model, messages=[user]))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        details = missing.value.details() or ""
        assert details.startswith("model '\u00e9\\x00") and details.endswith("…")
        assert len(details) <= 300
        info = error_info(missing.value)
        assert info.reason == "MODEL_NOT_FOUND"
        assert model.startswith(info.metadata["model"].removesuffix("…"))
        assert len(info.metadata["model"]) <= 100
