"""The gRPC model port against the real engine service: deltas, the last chunk, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2

from services.dev import local_config
from services.kit.infra import open_infrastructure
from services.kit.server import Server
from services.orchestrator.ports import GrpcModelPort, ModelCallFailed, model_call_failed
from services.units import create_unit


@pytest.fixture
async def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[GrpcModelPort]:
    monkeypatch.setenv("AGENTRT_LOCAL_SLOW_CHUNK_DELAY", "0.02")
    server = Server("127.0.0.1:0", "engine")
    infra = await open_infrastructure(local_config(tmp_path, server.port))
    try:
        await server.start([await create_unit("engine", infra)])
        try:
            yield GrpcModelPort(infra.channel("engine"))
        finally:
            await server.stop(grace=1.0)
    finally:
        await infra.close()


def request(model: str, prompt: str, key: str = "") -> engine_pb2.CompleteRequest:
    return engine_pb2.CompleteRequest(
        model=model,
        messages=[common_pb2.Message(role=common_pb2.ROLE_USER, content=prompt)],
        idempotency_key=key,
    )


class Hooks:
    """The idempotency hooks a call reported, with the error of a failed one."""

    def __init__(self) -> None:
        self.seen: list[tuple[list[str], str]] = []

    async def __call__(
        self, hooks: Sequence[engine_pb2.IdempotencyHook.ValueType], error: str
    ) -> None:
        self.seen.append(([engine_pb2.IdempotencyHook.Name(hook) for hook in hooks], error))


async def no_text(piece: str) -> None:
    pass


async def test_deltas_arrive_in_order_and_the_last_chunk_is_returned(
    model: GrpcModelPort,
) -> None:
    pieces: list[str] = []

    async def collect(piece: str) -> None:
        pieces.append(piece)

    hooks = Hooks()
    final = await model.stream(request("local-slow", "hi"), 10.0, collect, hooks)
    assert hooks.seen == []  # no idempotency key, no hooks
    text = "".join(pieces)
    assert len(pieces) > 1
    assert 'You said: "hi"' in text
    assert final.finish_reason == engine_pb2.FINISH_REASON_STOP
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


async def test_an_unknown_model_is_not_retryable(model: GrpcModelPort) -> None:
    async def ignore(piece: str) -> None:
        raise AssertionError("no text expected")

    with pytest.raises(ModelCallFailed) as failed:
        await model.stream(request("no-such-model", "hi"), 10.0, ignore, Hooks())
    assert failed.value.reason == common_pb2.ERROR_REASON_MODEL_NOT_FOUND
    assert not failed.value.retryable
    assert "no-such-model" in failed.value.message


async def test_the_time_left_bounds_the_call(model: GrpcModelPort) -> None:
    pieces: list[str] = []

    async def collect(piece: str) -> None:
        pieces.append(piece)

    prompt = " ".join(["word"] * 100)  # about 2 s of chunks
    with pytest.raises(ModelCallFailed) as failed:
        await model.stream(request("local-slow", prompt), 0.3, collect, Hooks())
    assert failed.value.reason == common_pb2.ERROR_REASON_DEADLINE_EXCEEDED
    assert 0 < len(pieces) < 100


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        # An engine shutting down (SIGTERM) cancels the calls it had not started yet.
        (grpc.StatusCode.CANCELLED, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.NOT_FOUND, False),
    ],
)
def test_which_engine_statuses_the_loop_retries(code: grpc.StatusCode, retryable: bool) -> None:
    error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "why", None)
    assert model_call_failed(error).retryable is retryable


async def test_the_engines_idempotency_hooks_arrive_as_they_fire(model: GrpcModelPort) -> None:
    made, again, conflict = Hooks(), Hooks(), Hooks()

    await model.stream(request("local-slow", "hi", key="job:1:0"), 10.0, no_text, made)
    await model.stream(request("local-slow", "hi", key="job:1:0"), 10.0, no_text, again)
    with pytest.raises(ModelCallFailed) as failed:
        await model.stream(request("local-slow", "bye", key="job:1:0"), 10.0, no_text, conflict)

    start, complete = ["IDEMPOTENCY_HOOK_START"], ["IDEMPOTENCY_HOOK_COMPLETE"]
    assert made.seen == [(start, ""), (complete, "")]  # on the first chunk, and the last
    assert again.seen == [(["IDEMPOTENCY_HOOK_HIT"], "")]
    assert conflict.seen == [(["IDEMPOTENCY_HOOK_CONFLICT"], failed.value.message)]
    assert "job:1:0" in failed.value.message
