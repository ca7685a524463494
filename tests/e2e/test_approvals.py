"""End to end: a tool call that needs approval, with each service its own process on
PostgreSQL and Redis. The job waits holding no worker, survives a SIGKILL of the
orchestrator, and after approval runs the tool exactly once."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from agentrt.common.v1 import common_pb2
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2
from agentrt.policy.v1 import policy_pb2, policy_pb2_grpc
from google.protobuf.struct_pb2 import Struct

from tests.e2e.conftest import create_key
from tests.e2e.processes import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

E = common_pb2
WAIT = 30.0


async def require_approval_of_calculations(policy_address: str) -> None:
    async with grpc.aio.insecure_channel(policy_address) as channel:
        rule = policy_pb2.Rule(
            id="calc",
            description="a person checks every calculation",
            tool=policy_pb2.ToolRule(
                patterns=["calculator"], verdict=policy_pb2.VERDICT_REQUIRE_APPROVAL
            ),
        )
        await policy_pb2_grpc.PolicyServiceStub(channel).CreatePolicySet(
            policy_pb2.CreatePolicySetRequest(
                policy_set_id="approvals", policy_set=policy_pb2.PolicySet(rules=[rule])
            ),
            timeout=10,
        )


async def test_an_approval_survives_an_orchestrator_sigkill_and_the_tool_runs_once(
    processes: Cluster,
) -> None:
    await require_approval_of_calculations(processes.address("policy"))
    key = create_key(processes, "acme", "alice")
    auth = (("authorization", f"Bearer {key}"),)
    spec = jobs_pb2.JobSpec(
        prompt='call calculator {"expression": "6 * 7"}',
        model="local",
        tools=[E.ToolSpec(name="calculator")],
        policy=E.PolicyRef(name="approvals"),
    )
    async with grpc.aio.insecure_channel(processes.address("gateway")) as channel:
        stub = gateway_pb2_grpc.RuntimeServiceStub(channel)
        job = await stub.Execute(gateway_pb2.ExecuteRequest(spec=spec), metadata=auth, timeout=10)
        watch = stub.WatchJob(gateway_pb2.WatchJobRequest(name=job.name), metadata=auth)
        async with asyncio.timeout(WAIT):
            async for event in watch:
                if event.type == E.EVENT_TYPE_JOB_WAITING:
                    break
        watch.cancel()

        processes.kill("orchestrator")
        processes.start("orchestrator", name="orchestrator-2")
        listed = await stub.ListActions(
            gateway_pb2.ListActionsRequest(parent=job.name), metadata=auth, timeout=10
        )
        [action] = listed.actions
        assert action.state == jobs_pb2.Action.State.STATE_PENDING
        assert action.payload["tool"] == "calculator"
        outcome = Struct()
        outcome.update({"approved": True})
        await stub.ResolveAction(
            gateway_pb2.ResolveActionRequest(name=action.name, outcome=outcome),
            metadata=auth,
            timeout=10,
        )

        async with asyncio.timeout(WAIT):
            history = [
                event
                async for event in stub.WatchJob(
                    gateway_pb2.WatchJobRequest(name=job.name), metadata=auth
                )
            ]
        done = await stub.GetJob(gateway_pb2.GetJobRequest(name=job.name), metadata=auth)

    assert done.state == E.JOB_STATE_SUCCEEDED
    called = [e.tool_called for e in history if e.type == E.EVENT_TYPE_TOOL_CALLED]
    assert [(c.ok, c.output) for c in called] == [(True, "42")]
    replies = [m for m in done.result.messages if m.role == E.ROLE_TOOL]
    assert [m.content for m in replies] == ["42"]
    assert done.usage.tool_calls == 1
    types = [e.type for e in history]
    assert types.count(E.EVENT_TYPE_ACTION_RESOLVED) == 1
