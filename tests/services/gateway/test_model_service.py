"""ModelService through a real gRPC channel: calls under the tenant's key, policy and budgets,
each one recorded in the ledger; refusals that leave the ledger as it was."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2
from agentrt.gateway.v1 import models_pb2, models_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.dev import LocalSystem
from services.gateway.admin import create_api_key
from tests.services.gateway.conftest import (
    TIMEOUT,
    Metadata,
    bearer,
    eventually_served,
    refused,
)
from tests.services.gateway.model_api_support import (
    MODEL,
    deny_model,
    expect_usage_on,
    reserved_tokens,
    set_token_budget,
    spent_tokens,
    system,
    usage_records,
)

__all__ = ["system"]  # the fixture, for this module's tests
SERVICE = "agentrt.gateway.v1.ModelService"


@pytest.fixture
async def models(system: LocalSystem) -> AsyncIterator[models_pb2_grpc.ModelServiceAsyncStub]:
    async with grpc.aio.insecure_channel(system.endpoint) as channel:
        yield models_pb2_grpc.ModelServiceStub(channel)


def ask(text: str = "hello", model: str = MODEL, **fields: object) -> models_pb2.CompleteRequest:
    return models_pb2.CompleteRequest(
        model=model,
        messages=[common_pb2.Message(role=common_pb2.ROLE_USER, content=text)],
        params=common_pb2.ModelParams(max_output_tokens=64),
        **fields,  # type: ignore[arg-type]
    )


async def test_the_calls_span_carries_its_usage(
    models: models_pb2_grpc.ModelServiceAsyncStub, dev: Metadata, spans: InMemorySpanExporter
) -> None:
    answer = await models.Complete(ask(), metadata=dev, timeout=TIMEOUT)
    expect_usage_on(await eventually_served(spans, f"/{SERVICE}/Complete"), answer.usage)
    chunks = [chunk async for chunk in models.StreamComplete(ask(), metadata=dev, timeout=TIMEOUT)]
    streamed = await eventually_served(spans, f"/{SERVICE}/StreamComplete")
    expect_usage_on(streamed, chunks[-1].usage)


async def test_complete_answers_and_records_the_usage(
    models: models_pb2_grpc.ModelServiceAsyncStub, dev: Metadata, system: LocalSystem
) -> None:
    answer = await models.Complete(ask(), metadata=dev, timeout=TIMEOUT)

    assert answer.message.role == common_pb2.ROLE_ASSISTANT
    assert "hello" in answer.message.content
    assert answer.finish_reason == engine_pb2.FINISH_REASON_STOP
    assert answer.id.startswith("cmpl-")
    assert answer.usage.input_tokens > 0 and answer.usage.output_tokens > 0
    assert answer.usage.cost not in ("", "0")
    [record] = await usage_records(system)
    assert record.name == f"usageRecords/{answer.id}"
    assert (record.tenant, record.principal, record.model, record.job) == ("dev", "dev", MODEL, "")
    assert record.usage.input_tokens == answer.usage.input_tokens
    assert record.usage.output_tokens == answer.usage.output_tokens
    assert record.usage.cost == answer.usage.cost


async def test_stream_sends_text_then_a_last_chunk_with_the_recorded_usage(
    models: models_pb2_grpc.ModelServiceAsyncStub, dev: Metadata, system: LocalSystem
) -> None:
    chunks = [chunk async for chunk in models.StreamComplete(ask(), metadata=dev, timeout=TIMEOUT)]

    text = "".join(chunk.text_delta for chunk in chunks)
    assert "hello" in text
    last = chunks[-1]
    assert last.finish_reason == engine_pb2.FINISH_REASON_STOP
    assert {chunk.id for chunk in chunks} == {last.id}
    [record] = await usage_records(system)
    assert record.name == f"usageRecords/{last.id}"
    assert record.usage.output_tokens == last.usage.output_tokens > 0
    assert record.usage.cost == last.usage.cost != ""


async def test_the_model_may_call_the_tools_offered(
    models: models_pb2_grpc.ModelServiceAsyncStub, dev: Metadata
) -> None:
    request = ask('call calculator {"expression": "6*7"}')
    request.tools.append(common_pb2.ToolSpec(name="calculator", description="arithmetic"))

    answer = await models.Complete(request, metadata=dev, timeout=TIMEOUT)

    assert answer.finish_reason == engine_pb2.FINISH_REASON_TOOL_CALLS
    [call] = answer.message.tool_calls
    assert (call.name, call.arguments) == ("calculator", '{"expression": "6*7"}')


async def test_a_repeated_request_id_answers_the_same_and_is_recorded_once(
    models: models_pb2_grpc.ModelServiceAsyncStub, dev: Metadata, system: LocalSystem
) -> None:
    await set_token_budget(system, 1_000_000)
    first = await models.Complete(ask(request_id="r-1"), metadata=dev, timeout=TIMEOUT)
    again = await models.Complete(ask(request_id="r-1"), metadata=dev, timeout=TIMEOUT)

    assert (again.id, again.message, again.replayed) == (first.id, first.message, True)
    assert len(await usage_records(system)) == 1
    # Counted once against the budget, and the second call's hold given back.
    assert await spent_tokens(system) == first.usage.input_tokens + first.usage.output_tokens
    assert await reserved_tokens(system) == 0


async def test_a_budget_that_cannot_take_the_worst_case_refuses_the_call(
    models: models_pb2_grpc.ModelServiceAsyncStub, dev: Metadata, system: LocalSystem
) -> None:
    await set_token_budget(system, 50)  # below the call's worst case of 64 output tokens

    for call in (
        models.Complete(ask(), metadata=dev, timeout=TIMEOUT),
        _drain(models.StreamComplete(ask(), metadata=dev, timeout=TIMEOUT)),
    ):
        code, info = await refused(call)
        assert (code, info.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED")
        assert info.metadata["budget"] == "budgets/dev-daily"
    assert await usage_records(system) == []


async def test_a_policy_that_denies_the_model_refuses_it_and_hides_it(
    models: models_pb2_grpc.ModelServiceAsyncStub, dev: Metadata, system: LocalSystem
) -> None:
    await deny_model(system)

    code, info = await refused(models.Complete(ask(), metadata=dev, timeout=TIMEOUT))
    assert (code, info.reason) == (grpc.StatusCode.PERMISSION_DENIED, "POLICY_DENIED")
    assert (info.metadata["rule"], info.metadata["model"]) == ("no-local", MODEL)
    listed = await models.ListModels(models_pb2.ListModelsRequest(), metadata=dev, timeout=TIMEOUT)
    names = [model.name for model in listed.models]
    assert "models/local-slow" in names and "models/local" not in names
    assert await usage_records(system) == []


async def test_list_models_pages_through_the_engines_models(
    models: models_pb2_grpc.ModelServiceAsyncStub, dev: Metadata
) -> None:
    first = await models.ListModels(
        models_pb2.ListModelsRequest(page_size=1), metadata=dev, timeout=TIMEOUT
    )
    second = await models.ListModels(
        models_pb2.ListModelsRequest(page_size=1, page_token=first.next_page_token),
        metadata=dev,
        timeout=TIMEOUT,
    )
    assert [m.name for m in [*first.models, *second.models]] == [
        "models/local",
        "models/local-slow",
    ]
    assert first.models[0].supports_tools


INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("request_", "code", "reason"),
    [
        (ask(model="no-such-model"), grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND"),
        (
            models_pb2.CompleteRequest(model=MODEL),
            grpc.StatusCode.INVALID_ARGUMENT,
            "FIELD_REQUIRED",
        ),
        (ask(request_id="x" * 129), INVALID, "FIELD_INVALID"),
        (
            ask(policy=common_pb2.PolicyRef(name="nope")),
            grpc.StatusCode.NOT_FOUND,
            "NOT_FOUND",
        ),
    ],
    ids=["unknown-model", "no-messages", "long-request-id", "unknown-policy-set"],
)
async def test_bad_requests_are_refused_and_record_nothing(
    models: models_pb2_grpc.ModelServiceAsyncStub,
    dev: Metadata,
    system: LocalSystem,
    request_: models_pb2.CompleteRequest,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    got, info = await refused(models.Complete(request_, metadata=dev, timeout=TIMEOUT))
    assert (got, info.reason) == (code, reason)
    assert await usage_records(system) == []


async def test_calls_need_a_valid_key_and_are_recorded_for_its_tenant(
    models: models_pb2_grpc.ModelServiceAsyncStub, system: LocalSystem
) -> None:
    code, info = await refused(models.Complete(ask(), timeout=TIMEOUT))
    assert (code, info.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")
    bad = bearer("agk_" + "a" * 16 + "_" + "b" * 52)
    code, info = await refused(models.Complete(ask(), metadata=bad, timeout=TIMEOUT))
    assert (code, info.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")

    globex = bearer(await create_api_key(system.infra.storage("gateway"), "globex", "app"))
    await models.Complete(ask(), metadata=globex, timeout=TIMEOUT)
    assert await usage_records(system) == []
    [record] = await usage_records(system, "globex")
    assert record.principal == "app"


async def _drain(stream: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
    async for _ in stream:
        pass
