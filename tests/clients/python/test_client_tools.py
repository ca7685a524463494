"""Tools through the Python client against the whole system in-process (as `agentrt dev`):
a built-in tool, a client tool round trip, and tool calls that need a person's approval.

The local model calls the tools named on `call <tool> <arguments>` lines of the prompt,
and then answers by quoting what the tools returned."""

from __future__ import annotations

import asyncio

from agentrt import Client
from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2
from agentrt.policy.v1 import policy_pb2
from google.protobuf.struct_pb2 import Struct

from services.dev import LocalSystem

E = common_pb2
Action = jobs_pb2.Action
WAIT = 30.0
CALCULATE = 'call calculator {"expression": "6 * 7"}'


def spec(prompt: str, *tools: E.ToolSpec, policy: str = "") -> jobs_pb2.JobSpec:
    return jobs_pb2.JobSpec(
        prompt=prompt, model="local", tools=tools, policy=E.PolicyRef(name=policy)
    )


async def waiting_action(client: Client, job: jobs_pb2.Job) -> Action:
    """The job's pending action, once the job waits on it."""
    async with asyncio.timeout(WAIT):
        async for event in client.events(job):
            if event.type == E.EVENT_TYPE_JOB_WAITING:
                break
    actions, _ = await client.list_actions(job, states=[Action.State.STATE_PENDING])
    [action] = actions
    return action


async def tool_events(client: Client, job: jobs_pb2.Job) -> list[E.ToolCalled]:
    async with asyncio.timeout(WAIT):
        return [
            event.tool_called
            async for event in client.events(job)
            if event.type == E.EVENT_TYPE_TOOL_CALLED
        ]


async def approvals_policy(client: Client) -> str:
    rule = policy_pb2.Rule(
        id="calc-approval",
        description="a person checks every calculation",
        tool=policy_pb2.ToolRule(
            patterns=["calculator"], verdict=policy_pb2.VERDICT_REQUIRE_APPROVAL
        ),
    )
    await client.create_policy_set("approvals", policy_pb2.PolicySet(rules=[rule]))
    return "approvals"


async def test_a_builtin_tool_runs_and_the_model_reads_its_result(system: LocalSystem) -> None:
    async with Client(system.endpoint, system.api_key) as client:
        job = await client.execute_spec(spec(CALCULATE, E.ToolSpec(name="calculator")))
        done = await client.result(job)
        [called] = await tool_events(client, job)
    assert done.state == E.JOB_STATE_SUCCEEDED
    assert "calculator returned: 42" in done.result.output
    assert (called.ok, called.output, called.call.name) == (True, "42", "calculator")
    assert done.usage.tool_calls == 1


async def test_a_client_tool_round_trip(system: LocalSystem) -> None:
    lookup = E.ToolSpec(name="lookup", kind=E.TOOL_KIND_CLIENT, description="a local file")
    lookup.parameters.update({"type": "object", "properties": {"path": {"type": "string"}}})
    async with Client(system.endpoint, system.api_key) as client:
        job = await client.execute_spec(spec('call lookup {"path": "notes.txt"}', lookup))
        action = await waiting_action(client, job)
        arguments = Struct()
        arguments.update({"path": "notes.txt"})
        assert action.kind == jobs_pb2.ACTION_KIND_TOOL_CALL
        assert (action.payload["tool"], action.payload["arguments"]) == ("lookup", arguments)

        await client.resolve_action({"output": "buy milk"}, name=action.name)
        done = await client.result(job)

    assert done.state == E.JOB_STATE_SUCCEEDED
    replies = [m for m in done.result.messages if m.role == E.ROLE_TOOL]
    assert [(m.name, m.content) for m in replies] == [("lookup", "buy milk")]
    assert "buy milk" in done.result.output


async def test_an_approved_call_runs_exactly_once(system: LocalSystem) -> None:
    async with Client(system.endpoint, system.api_key) as client:
        policy = await approvals_policy(client)
        job = await client.execute_spec(
            spec(CALCULATE, E.ToolSpec(name="calculator"), policy=policy)
        )
        action = await waiting_action(client, job)
        assert action.kind == jobs_pb2.ACTION_KIND_APPROVAL
        assert action.payload["tool"] == "calculator"

        await client.resolve_action({"approved": True}, name=action.name)
        done = await client.result(job)
        called = await tool_events(client, job)

    assert done.state == E.JOB_STATE_SUCCEEDED
    assert [(c.ok, c.output) for c in called] == [(True, "42")]
    assert "calculator returned: 42" in done.result.output


async def test_a_rejected_call_never_runs_and_the_model_is_told_why(
    system: LocalSystem,
) -> None:
    async with Client(system.endpoint, system.api_key) as client:
        policy = await approvals_policy(client)
        job = await client.execute_spec(
            spec(CALCULATE, E.ToolSpec(name="calculator"), policy=policy)
        )
        action = await waiting_action(client, job)

        await client.resolve_action(
            {"approved": False, "reason": "do it by hand"}, name=action.name
        )
        done = await client.result(job)
        [called] = await tool_events(client, job)

    assert done.state == E.JOB_STATE_SUCCEEDED
    assert not called.ok and "42" not in called.output
    assert "do it by hand" in called.output
    assert "do it by hand" in done.result.output
    assert done.usage.tool_calls == 0
