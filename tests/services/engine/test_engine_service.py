"""The engine service over gRPC from a configuration file: aliases, attempts, breakers shown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis
from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2, engine_pb2_grpc

from services.engine.server import EngineConfig, EngineUnit
from services.kit.server import Server

from .openai_server import Failure
from .upstreams import Upstreams

pytestmark = pytest.mark.integration

CONFIG = """
deployments:
  - {{name: first, provider: openai, base_url: "{first}", api_key_env: KEY, models: [gpt-test],
     timeout_seconds: 0.5}}
  - {{name: second, provider: openai, base_url: "{second}", api_key_env: KEY, models: [gpt-test]}}
models:
  fast:
    - {{deployment: first, model: gpt-test}}
    - {{deployment: second, model: gpt-test, priority: 1}}
breaker: {{failure_threshold: 2, cooldown_seconds: 60}}
"""


@pytest.fixture
async def engine(
    upstreams: Upstreams, tmp_path: Path, redis_url: str, redis_prefix: str
) -> AsyncIterator[engine_pb2_grpc.EngineServiceAsyncStub]:
    path = tmp_path / "engine.yaml"
    path.write_text(CONFIG.format(first=upstreams.first.url, second=upstreams.second.url))
    env = {"AGENTRT_ENGINE_CONFIG": str(path), "KEY": upstreams.first.api_key}
    connection = redis.Redis.from_url(redis_url)
    server = Server("127.0.0.1:0", "engine")
    await server.start([EngineUnit(EngineConfig.from_env(env), connection, redis_prefix)])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    yield engine_pb2_grpc.EngineServiceStub(channel)
    await channel.close(None)
    await server.stop(grace=1.0)
    await connection.aclose()


def fast() -> engine_pb2.CompleteRequest:
    hello = common_pb2.Message(role=common_pb2.ROLE_USER, content="hello")
    return engine_pb2.CompleteRequest(model="fast", messages=[hello])


async def fast_model(engine: engine_pb2_grpc.EngineServiceAsyncStub) -> engine_pb2.Model:
    listing = await engine.ListModels(engine_pb2.ListModelsRequest(), timeout=5)
    [model] = [m for m in listing.models if m.name == "models/fast"]
    return model


async def test_an_alias_answers_with_its_attempts_and_lists_its_breakers(
    upstreams: Upstreams, engine: engine_pb2_grpc.EngineServiceAsyncStub
) -> None:
    model = await fast_model(engine)
    assert [
        (d.deployment, d.model, d.priority, d.weight, d.breaker) for d in model.deployments
    ] == [
        ("first", "gpt-test", 0, 1, engine_pb2.BREAKER_STATE_CLOSED),
        ("second", "gpt-test", 1, 1, engine_pb2.BREAKER_STATE_CLOSED),
    ]
    upstreams.first.fail_next(2, Failure(503))

    answers = [await engine.Complete(fast(), timeout=5) for _ in range(3)]

    assert [a.provider for a in answers] == ["second"] * 3
    assert [a.outcome for a in answers[0].attempts] == [
        engine_pb2.ATTEMPT_OUTCOME_UNAVAILABLE,
        engine_pb2.ATTEMPT_OUTCOME_OK,
    ]
    assert answers[0].attempts[0].error and answers[0].attempts[1].duration.ToNanoseconds() > 0
    assert [a.outcome for a in answers[2].attempts] == [
        engine_pb2.ATTEMPT_OUTCOME_BREAKER_OPEN,
        engine_pb2.ATTEMPT_OUTCOME_OK,
    ]
    assert len(upstreams.first.chat_requests) == 2
    model = await fast_model(engine)
    assert [d.breaker for d in model.deployments] == [
        engine_pb2.BREAKER_STATE_OPEN,
        engine_pb2.BREAKER_STATE_CLOSED,
    ]
    chunks = [c async for c in engine.StreamComplete(fast(), timeout=5)]
    assert chunks[-1].provider == "second"
    assert [a.deployment for a in chunks[-1].attempts] == ["first", "second"]


async def test_an_unknown_alias_is_model_not_found(
    engine: engine_pb2_grpc.EngineServiceAsyncStub,
) -> None:
    request = fast()
    request.model = "slow"
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await engine.Complete(request, timeout=5)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
