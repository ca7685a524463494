"""The model API from the Python client and the CLI, against the whole system in-process."""

from __future__ import annotations

import json

import pytest
from agentrt import Client, PermissionDeniedError, ResourceExhaustedError
from agentrt.engine.v1 import engine_pb2
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from agentrt.ledger.v1.ledger_pb2 import Amounts, Budget

from services.dev import LocalSystem
from tests.clients.python.test_cli_admin import cli
from tests.services.gateway.model_api_support import deny_model


async def test_the_client_lists_models_and_calls_one(system: LocalSystem) -> None:
    async with Client(system.endpoint, system.api_key) as client:
        names = [model.name for model in await client.list_models()]
        answer = await client.complete("hello", model="local")
        chunks = [chunk async for chunk in client.stream_complete("hello", model="local")]
    assert names == ["models/local", "models/local-slow"]
    assert "hello" in answer.message.content
    assert answer.usage.output_tokens > 0
    assert "".join(chunk.text_delta for chunk in chunks) == answer.message.content
    assert chunks[-1].finish_reason == engine_pb2.FINISH_REASON_STOP


async def test_a_budget_refusal_is_a_typed_error(system: LocalSystem) -> None:
    ledger = ledger_pb2_grpc.LedgerServiceStub(system.infra.channel("ledger"))
    budget = Budget(tenant="dev", period=Budget.PERIOD_DAY, limits=Amounts(tokens=10))
    await ledger.CreateBudget(ledger_pb2.CreateBudgetRequest(budget_id="tiny", budget=budget))
    async with Client(system.endpoint, system.api_key) as client:
        with pytest.raises(ResourceExhaustedError) as refused:
            await client.complete("hello", model="local", max_output_tokens=64)
    assert refused.value.reason == "BUDGET_EXCEEDED"


async def test_the_cli_lists_models_and_streams_a_call_with_its_usage(
    system: LocalSystem,
) -> None:
    async with Client(system.endpoint, system.api_key) as client:
        code, out, _ = await cli(client, "models", "list")
        assert code == 0
        assert [line.split()[0] for line in out.splitlines()] == ["MODEL", "local", "local-slow"]

        code, out, err = await cli(client, "models", "call", "hello", "--max-tokens", "32")
        assert code == 0 and "hello" in out
        assert "local:" in err and "tokens" in err

        code, out, _ = await cli(client, "models", "call", "hello", "--json")
        assert json.loads(out)["finishReason"] == "FINISH_REASON_STOP"


async def test_a_call_names_its_policy_set_from_the_client_and_the_cli(
    system: LocalSystem,
) -> None:
    await deny_model(system, policy_set="strict", tenant="dev")
    async with Client(system.endpoint, system.api_key) as client:
        with pytest.raises(PermissionDeniedError) as refused:
            await client.complete("hello", model="local", policy="strict")
        assert refused.value.reason == "POLICY_DENIED"
        assert (await client.complete("hello", model="local")).message.content  # default set

        with pytest.raises(PermissionDeniedError):
            await cli(client, "models", "call", "hello", "--policy", "strict")
        code, out, _ = await cli(client, "models", "call", "hello", "--policy", "default")
        assert code == 0 and "hello" in out
