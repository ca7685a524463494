"""The in-process channel answers as the network does: results, statuses, deadlines,
cancellation, metadata, traces, and the server's drain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2, engine_pb2_grpc
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from services.dev import LocalSystem
from services.engine.server import EngineConfig, EngineUnit
from services.kit import local_channel
from services.kit.interceptors import LONG_LIVED, remaining_time
from services.kit.local_channel import LocalChannel, LocalServer
from services.kit.server import Server
from services.units import SERVICES
from tests.services.kit.status import error_info

ENGINE = "/agentrt.engine.v1.EngineService"
ENGINE_SERVICE = "agentrt.engine.v1.EngineService"
CHUNK_DELAY = 0.2
"""Seconds between chunks of `local-slow`: its answer would take seconds to stream."""
USER = common_pb2.Message(role=common_pb2.ROLE_USER, content="hello there")


def completion(model: str = "local") -> engine_pb2.CompleteRequest:
    return engine_pb2.CompleteRequest(model=model, messages=[USER])


class ProbeUnit:
    """A service whose one method records what its handler sees, and echoes the request."""

    name = "probe"
    service_names = ("test.Probe",)

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def register(self, server: grpc.aio.Server) -> None:
        echo = grpc.unary_unary_rpc_method_handler(self._echo)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("test.Probe", {"Echo": echo})]
        )

    async def _echo(self, request: bytes, context: Any) -> bytes:
        span = trace.get_current_span()
        self.seen.append(
            {
                "metadata": tuple(context.invocation_metadata()),
                "time_remaining": context.time_remaining(),
                "deadline": remaining_time(),
                "peer": context.peer(),
                "span": span.get_span_context(),
                "parent": getattr(span, "parent", None),
            }
        )
        return request

    async def start(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        """Nothing to stop."""

    async def close(self) -> None:
        """Nothing to close."""


class EndedSpans(SpanProcessor):
    """Collects the spans that end while a test runs, and lets it await one."""

    def __init__(self) -> None:
        self.active = True
        self.spans: list[ReadableSpan] = []
        self._ended = asyncio.Event()

    def on_end(self, span: ReadableSpan) -> None:
        if self.active:
            self.spans.append(span)
            self._ended.set()

    async def wait_for(self, name: str, timeout: float) -> ReadableSpan:
        """The first span of an in-process call named `name` to end."""
        async with asyncio.timeout(timeout):
            while True:
                for span in self.spans:
                    scope = span.instrumentation_scope
                    if span.name == name and scope and scope.name == local_channel.__name__:
                        return span
                self._ended.clear()
                await self._ended.wait()


@dataclass
class Paths:
    """One server, reached over the network and in-process."""

    server: Server
    probe: ProbeUnit
    network: grpc.aio.Channel
    local: LocalChannel


@pytest.fixture
async def paths() -> AsyncIterator[Paths]:
    server = Server("127.0.0.1:0", "engine")
    probe = ProbeUnit()
    config = EngineConfig.from_env({"AGENTRT_LOCAL_SLOW_CHUNK_DELAY": str(CHUNK_DELAY)})
    await server.start([EngineUnit(config), probe])
    network = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    local = server.local_channel(default_timeout=10.0)
    yield Paths(server, probe, network, local)
    await local.close()
    await network.close(None)
    await server.stop(grace=1.0)


@pytest.fixture
def spans(paths: Paths) -> Any:
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    ended = EndedSpans()
    provider.add_span_processor(ended)
    yield ended
    ended.active = False


async def failure(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


def first_chunk(message: object) -> engine_pb2.CompleteChunk:
    assert isinstance(message, engine_pb2.CompleteChunk)
    return message


async def drained(call: Any) -> list[Any]:
    return [message async for message in call]


async def test_answers_equal_the_network_ones(paths: Paths) -> None:
    answers = []
    for channel in (paths.network, paths.local):
        engine = engine_pb2_grpc.EngineServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        answers.append(
            (
                await engine.Complete(completion()),
                await drained(engine.StreamComplete(completion())),
                await engine.ListModels(engine_pb2.ListModelsRequest()),
                await health.Check(health_pb2.HealthCheckRequest(service=ENGINE_SERVICE)),
            )
        )
    for answer in answers:
        # How long each attempt took is the one thing that may differ between the paths.
        for attempt in [*answer[0].attempts, *answer[1][-1].attempts]:
            attempt.ClearField("duration")
    network, local = answers
    assert local == network
    assert local[0].message.content and len(local[1]) > 1 and local[2].models


async def test_the_caller_and_the_handler_never_share_a_message(paths: Paths) -> None:
    request = completion()
    call = engine_pb2_grpc.EngineServiceStub(paths.local).Complete(request)
    request.model = "changed after the call"
    answer = await call
    assert answer.model == "local"
    answer.message.content = "changed by the caller"
    again = await call
    assert again.message.content == "changed by the caller"  # the caller's own copy
    assert (await engine_pb2_grpc.EngineServiceStub(paths.local).Complete(completion())) != again


async def test_errors_carry_the_same_status_and_error_info_over_both_paths(paths: Paths) -> None:
    def failing_calls(channel: grpc.aio.Channel) -> list[Awaitable[Any]]:
        engine = engine_pb2_grpc.EngineServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        return [
            engine.Complete(completion("no-such-model")),
            engine.Complete(engine_pb2.CompleteRequest(model="local")),
            drained(engine.StreamComplete(completion("no-such-model"))),
            health.Check(health_pb2.HealthCheckRequest(service="agentrt.nope.v1.X")),
        ]

    for over_network, in_process in zip(
        failing_calls(paths.network), failing_calls(paths.local), strict=True
    ):
        expected, error = await failure(over_network), await failure(in_process)
        assert isinstance(error, grpc.aio.AioRpcError)
        assert (error.code(), error.details()) == (expected.code(), expected.details())
        assert error.trailing_metadata() == expected.trailing_metadata()
    local_engine = engine_pb2_grpc.EngineServiceStub(paths.local)
    missing = await failure(local_engine.Complete(completion("no-such-model")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(missing)
    assert (info.reason, info.domain, info.metadata["model"]) == (
        "MODEL_NOT_FOUND",
        "agentrt.dev",
        "no-such-model",
    )


async def test_an_unknown_method_is_unimplemented(paths: Paths) -> None:
    for channel in (paths.network, paths.local):
        error = await failure(channel.unary_unary(f"{ENGINE}/Nope", None, None)(b""))
        assert (error.code(), error.details()) == (
            grpc.StatusCode.UNIMPLEMENTED,
            "Method not found!",
        )


async def test_an_error_no_interceptor_maps_is_unknown_as_over_the_network() -> None:
    async def broken(request: bytes, context: Any) -> bytes:
        raise ValueError("broken handler")

    server = LocalServer(grpc.aio.server(), interceptors=[])
    handlers = {"Broken": grpc.unary_unary_rpc_method_handler(broken)}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.T", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    network = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    local = LocalChannel(server, default_timeout=5.0)
    try:
        errors = [
            await failure(channel.unary_unary("/test.T/Broken", None, None)(b""))
            for channel in (network, local)
        ]
        assert errors[0].code() == errors[1].code() == grpc.StatusCode.UNKNOWN
        assert (
            errors[0].details()
            == errors[1].details()
            == ("Unexpected <class 'ValueError'>: broken handler")
        )
        with pytest.raises(NotImplementedError, match="client streaming"):
            local.stream_unary("/test.T/Upload", None, None)(iter([b""]))
    finally:
        await network.close(None)
        await server.stop(None)


async def test_cancelling_a_stream_cancels_its_handler(paths: Paths, spans: EndedSpans) -> None:
    call = engine_pb2_grpc.EngineServiceStub(paths.local).StreamComplete(
        completion("local-slow"), metadata=LONG_LIVED
    )
    assert first_chunk(await call.read()).text_delta
    assert call.cancel()
    cancelled_ns = time.time_ns()
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    assert call.cancelled() and await call.code() == grpc.StatusCode.CANCELLED
    # The rest of the answer would take seconds; the handler's span ends at once.
    span = await spans.wait_for(f"{ENGINE}/StreamComplete", timeout=CHUNK_DELAY)
    assert span.attributes is not None and span.end_time is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert span.kind == trace.SpanKind.SERVER
    assert span.end_time - cancelled_ns < CHUNK_DELAY * 1e9


async def test_a_caller_cancelled_while_waiting_cancels_the_call(paths: Paths) -> None:
    call = engine_pb2_grpc.EngineServiceStub(paths.local).Complete(completion("local-slow"))
    waiting = asyncio.create_task(asyncio.wait_for(call, timeout=CHUNK_DELAY / 4))
    with pytest.raises(TimeoutError):
        await waiting
    assert call.cancelled() and await call.code() == grpc.StatusCode.CANCELLED


async def test_a_timeout_ends_the_call_with_deadline_exceeded(
    paths: Paths, spans: EndedSpans
) -> None:
    for channel in (paths.network, paths.local):
        engine = engine_pb2_grpc.EngineServiceStub(channel)
        request = completion("local-slow")
        unary = await failure(engine.Complete(request, timeout=0.05))
        stream = await failure(drained(engine.StreamComplete(request, timeout=0.05)))
        assert unary.code() == stream.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    span = await spans.wait_for(f"{ENGINE}/Complete", timeout=CHUNK_DELAY)
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


async def test_calls_follow_the_kits_deadline_rule(paths: Paths) -> None:
    hasty = paths.server.local_channel(default_timeout=0.05)
    engine = engine_pb2_grpc.EngineServiceStub(hasty)
    error = await failure(engine.Complete(completion("local-slow")))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    follow = engine.StreamComplete(completion("local-slow"), metadata=LONG_LIVED)
    assert first_chunk(await follow.read()).text_delta  # after CHUNK_DELAY, past the default
    assert follow.time_remaining() is None
    follow.cancel()
    await hasty.close()


async def test_metadata_deadline_and_trace_reach_the_handler(paths: Paths) -> None:
    echo = paths.local.unary_unary("/test.Probe/Echo")
    sent = (("x-caller", "tests"), ("x-blob-bin", b"\x00\x01"))
    tracer = trace.get_tracer(__name__)
    with tracer.start_as_current_span("caller") as caller:
        assert await echo(b"ping", timeout=5.0, metadata=sent) == b"ping"
    seen = paths.probe.seen[-1]
    assert seen["metadata"] == sent
    assert seen["peer"] == "local"
    assert 4.0 < seen["time_remaining"] <= 5.0
    assert seen["deadline"] == pytest.approx(seen["time_remaining"], abs=0.5)
    assert remaining_time() is None  # the handler's deadline stayed in its own task
    assert seen["span"].trace_id == caller.get_span_context().trace_id
    assert seen["parent"].span_id == caller.get_span_context().span_id


async def test_stopping_the_server_drains_local_calls_too(paths: Paths) -> None:
    health = health_pb2_grpc.HealthStub(paths.local)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=ENGINE_SERVICE))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    stopping = asyncio.create_task(paths.server.stop(grace=0.1))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as cut:
        await watch.read()  # the watch never ends by itself: the grace cuts it
    assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
    await stopping
    refused = await failure(health.Check(health_pb2.HealthCheckRequest()))
    assert refused.code() == grpc.StatusCode.UNAVAILABLE


async def test_closing_the_channel_cancels_its_calls_and_refuses_new_ones(paths: Paths) -> None:
    channel = paths.server.local_channel(default_timeout=10.0)
    engine = engine_pb2_grpc.EngineServiceStub(channel)
    call = engine.Complete(completion("local-slow"))
    await channel.close()
    assert call.cancelled()
    assert channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN
    with pytest.raises(grpc.aio.UsageError):
        engine.Complete(completion())


async def test_the_local_system_calls_its_services_in_process(system: LocalSystem) -> None:
    assert all(isinstance(system.infra.channel(name), LocalChannel) for name in SERVICES)
    gateway = gateway_pb2_grpc.RuntimeServiceStub(system.infra.channel("gateway"))
    auth = (("authorization", f"Bearer {system.api_key}"),)
    listed = await gateway.ListJobs(gateway_pb2.ListJobsRequest(), metadata=auth)
    assert list(listed.jobs) == []
    error = await failure(gateway.ListJobs(gateway_pb2.ListJobsRequest()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(error).reason == "API_KEY_MISSING"
