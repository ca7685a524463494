"""The agent loop with tools, policy, actions and budgets, against the real jobs, engine,
policy and ledger services in-process, with the local model (which calls the tools named
on `call <tool> <arguments>` lines of the prompt)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2
from agentrt.policy.v1 import policy_pb2, policy_pb2_grpc

from services.kit.events import is_terminal
from services.kit.interceptors import request_log
from services.orchestrator.policy import open_policy_guard
from services.orchestrator.spend import open_spend_guard
from services.orchestrator.tools.base import ToolInvocation, ToolOutput
from services.orchestrator.tools.builtin import BuiltinTools
from services.orchestrator.tools.runner import ToolRunner, static_sources
from services.orchestrator.waits import struct

from .conftest import TENANT, WAIT, System

E = common_pb2
Action = jobs_pb2.Action
POLICY = "loop-tests"


class CountingTools:
    """A tool source whose runs are counted: `bump` answers at once; the first run of
    `hold` waits until `release` is set (a tool cut by a crash)."""

    def __init__(self, idempotent: bool = False) -> None:
        self.idempotent = idempotent
        self.runs: Counter[str] = Counter()
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    @property
    def name(self) -> str:
        return "plugins/counting"

    async def list_tools(self) -> Sequence[E.ToolSpec]:
        return [
            E.ToolSpec(
                name=name,
                description=f"{name} a counter",
                parameters=struct({}),
                idempotent=self.idempotent,
            )
            for name in ("bump", "hold")
        ]

    async def call(self, invocation: ToolInvocation, timeout: float | None) -> ToolOutput:
        name = invocation.call.name
        self.runs[name] += 1
        if name == "hold" and self.runs[name] == 1:
            self.holding.set()
            await self.release.wait()
        return ToolOutput(f"{name} run {self.runs[name]}")


def runner(tools: CountingTools) -> ToolRunner:
    return ToolRunner(static_sources(BuiltinTools(), tools))


async def create_policy(system: System, *rules: policy_pb2.Rule) -> None:
    stub = policy_pb2_grpc.PolicyServiceStub(system.infra.channel("policy"))
    await stub.CreatePolicySet(
        policy_pb2.CreatePolicySetRequest(
            policy_set_id=POLICY, policy_set=policy_pb2.PolicySet(rules=rules)
        )
    )


def tool_rule(rule_id: str, pattern: str, verdict: policy_pb2.Verdict.ValueType) -> policy_pb2.Rule:
    return policy_pb2.Rule(
        id=rule_id,
        description=f"{rule_id} says so",
        tool=policy_pb2.ToolRule(patterns=[pattern], verdict=verdict),
    )


async def job_with_tools(system: System, prompt: str, *tools: E.ToolSpec, **spec: Any) -> str:
    job = await system.create_job(
        prompt=prompt,
        model="local",
        tools=list(tools) or [E.ToolSpec(name="bump"), E.ToolSpec(name="hold")],
        policy=E.PolicyRef(name=POLICY),
        **spec,
    )
    return job.name


async def pending_action(system: System, job: str) -> Action:
    """The job's one pending action, once the job waits on it."""
    await system.first_event(job, lambda event: event.type == E.EVENT_TYPE_JOB_WAITING)
    listed = await system.jobs.ListActions(
        jobs_pb2.ListActionsRequest(tenant=TENANT, parent=job, states=[Action.State.STATE_PENDING])
    )
    [action] = listed.actions
    return action


async def resolve(system: System, action: Action, **outcome: object) -> None:
    await system.jobs.ResolveAction(
        jobs_pb2.ResolveActionRequest(
            tenant=TENANT, principal="alice", name=action.name, outcome=struct(outcome)
        )
    )


async def tool_messages(system: System, job: str) -> list[E.Message]:
    done = await system.get_job(job)
    return [m for m in done.result.messages if m.role == E.ROLE_TOOL]


async def tool_events(system: System, job: str) -> list[E.ToolCalled]:
    history = await system.history(job)
    return [e.tool_called for e in history if e.type == E.EVENT_TYPE_TOOL_CALLED]


async def test_an_approved_tool_call_waits_holding_no_worker_then_runs_once(
    system: System,
) -> None:
    await create_policy(system, tool_rule("bumps", "bump", policy_pb2.VERDICT_REQUIRE_APPROVAL))
    tools = CountingTools()
    pool = system.pool("worker-a", tools=runner(tools), policy=open_policy_guard(system.infra))
    await pool.start()
    job = await job_with_tools(system, 'call bump {"n": 1}')

    action = await pending_action(system, job)

    assert (await system.get_job(job)).state == E.JOB_STATE_WAITING
    # The run ends right after RequireAction: the waiting job holds no worker.
    await asyncio.wait_for(pool.wait_idle(), WAIT)
    assert pool.status().in_flight_jobs == ()
    assert action.kind == jobs_pb2.ACTION_KIND_APPROVAL
    payload = action.payload
    assert (payload["tool"], payload["rule"]) == ("bump", f"policySets/{POLICY}/rules/bumps")
    assert "bumps says so" in str(payload["reason"])
    assert payload["arguments"] == struct({"n": 1})
    assert tools.runs["bump"] == 0

    await resolve(system, action, approved=True)

    assert (await system.end(job)).type == E.EVENT_TYPE_JOB_SUCCEEDED
    assert tools.runs["bump"] == 1
    [reply] = await tool_messages(system, job)
    assert reply.content == "bump run 1"
    [called] = await tool_events(system, job)
    assert (called.ok, called.output, called.call.name) == (True, "bump run 1", "bump")
    assert (await system.get_job(job)).usage.tool_calls == 1


async def test_a_rejected_tool_call_never_runs_and_the_model_is_told_why(
    system: System,
) -> None:
    await create_policy(system, tool_rule("bumps", "bump", policy_pb2.VERDICT_REQUIRE_APPROVAL))
    tools = CountingTools()
    policy = open_policy_guard(system.infra)
    await system.pool("worker-a", tools=runner(tools), policy=policy).start()
    job = await job_with_tools(system, "call bump {}")

    await resolve(system, await pending_action(system, job), approved=False, reason="not today")

    assert (await system.end(job)).type == E.EVENT_TYPE_JOB_SUCCEEDED
    assert tools.runs["bump"] == 0
    [reply] = await tool_messages(system, job)
    assert "rejected by alice: not today" in reply.content
    assert "not today" in (await system.get_job(job)).result.output
    [called] = await tool_events(system, job)
    assert not called.ok
    assert (await system.get_job(job)).usage.tool_calls == 0


async def test_a_resume_reads_the_action_it_waited_on_without_listing_the_jobs_actions(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=request_log.name)
    await create_policy(system, tool_rule("bumps", "bump", policy_pb2.VERDICT_REQUIRE_APPROVAL))
    tools = CountingTools()
    policy = open_policy_guard(system.infra)
    await system.pool("worker-a", tools=runner(tools), policy=policy).start()
    calls = 8
    job = await job_with_tools(system, "\n".join(f'call bump {{"n": {n}}}' for n in range(calls)))

    # Each call waits on an approval of its own; every resume finds more actions listed.
    ended = None
    async with asyncio.timeout(WAIT * 2):
        async for _, event in system.infra.events.follow_job(job, "0"):
            if event.type == E.EVENT_TYPE_ACTION_REQUIRED:
                await resolve(system, Action(name=event.action.action), approved=True)
            if is_terminal(event.type):
                ended = event.type
                break

    assert ended == E.EVENT_TYPE_JOB_SUCCEEDED
    assert tools.runs["bump"] == calls
    served = Counter(
        str(record.args[0]).rsplit("/", 1)[-1]
        for record in caplog.records
        if record.name == request_log.name and isinstance(record.args, tuple)
    )
    assert served["ListActions"] == 0
    assert served["GetAction"] == calls
    assert served["ResolveAction"] == calls


async def test_a_denied_tool_call_is_reported_to_the_model_and_not_run(system: System) -> None:
    await create_policy(system, tool_rule("no-bumps", "bump", policy_pb2.VERDICT_DENY))
    tools = CountingTools()
    policy = open_policy_guard(system.infra)
    await system.pool("worker-a", tools=runner(tools), policy=policy).start()
    job = await job_with_tools(system, "call bump {}")

    assert (await system.end(job)).type == E.EVENT_TYPE_JOB_SUCCEEDED
    assert tools.runs["bump"] == 0
    [reply] = await tool_messages(system, job)
    assert "denied by policy: rule no-bumps: no-bumps says so" in reply.content


async def test_a_denied_model_call_fails_the_job_with_the_rule(system: System) -> None:
    rule = policy_pb2.Rule(
        id="no-local",
        description="local is for tests",
        model=policy_pb2.ModelRule(patterns=["local"], verdict=policy_pb2.VERDICT_DENY),
    )
    await create_policy(system, rule)
    policy = open_policy_guard(system.infra)
    await system.pool("worker-a", policy=policy).start()
    job = await job_with_tools(system, "hello", E.ToolSpec(name="calculator"))

    assert (await system.end(job)).type == E.EVENT_TYPE_JOB_FAILED
    done = await system.get_job(job)
    assert done.failure.reason == E.ERROR_REASON_POLICY_DENIED
    assert done.failure.metadata["rule"] == "no-local"
    assert "local is for tests" in done.failure.message
    assert done.usage.model_calls == 0


async def test_a_client_tool_is_answered_through_its_action(system: System) -> None:
    await create_policy(system)
    ask = E.ToolSpec(
        name="ask_user",
        kind=E.TOOL_KIND_CLIENT,
        parameters=struct(
            {
                "type": "object",
                "properties": {"q": {"type": "string"}},
                "required": ["q"],
            }
        ),
    )
    await system.pool("worker-a").start()
    job = await job_with_tools(system, 'call ask_user {"q": "your name?"}', ask)

    action = await pending_action(system, job)
    assert action.kind == jobs_pb2.ACTION_KIND_TOOL_CALL
    assert action.payload["tool"] == "ask_user"
    assert action.payload["arguments"] == struct({"q": "your name?"})
    await resolve(system, action, output="Ada")

    assert (await system.end(job)).type == E.EVENT_TYPE_JOB_SUCCEEDED
    [reply] = await tool_messages(system, job)
    assert (reply.content, reply.name) == ("Ada", "ask_user")
    assert "Ada" in (await system.get_job(job)).result.output
    [called] = await tool_events(system, job)
    assert (called.ok, called.call.id) == (True, action.payload["call_id"])


async def test_bad_client_tool_arguments_are_told_to_the_model_without_an_action(
    system: System,
) -> None:
    await create_policy(system)
    ask = E.ToolSpec(
        name="ask_user",
        kind=E.TOOL_KIND_CLIENT,
        parameters=struct({"type": "object", "required": ["q"]}),
    )
    await system.pool("worker-a").start()
    job = await job_with_tools(system, 'call ask_user {"x": 1}', ask)

    assert (await system.end(job)).type == E.EVENT_TYPE_JOB_SUCCEEDED
    listed = await system.jobs.ListActions(jobs_pb2.ListActionsRequest(tenant=TENANT, parent=job))
    assert list(listed.actions) == []
    [reply] = await tool_messages(system, job)
    assert "q" in reply.content


async def test_a_spent_tool_budget_fails_the_job_keeping_its_usage(system: System) -> None:
    await create_policy(system)
    tools = CountingTools()
    spend = open_spend_guard(system.infra)
    await system.pool("worker-a", tools=runner(tools), spend=spend).start()
    job = await job_with_tools(
        system, "call bump {}\ncall bump {}", budget=E.BudgetSpec(max_tool_calls=1)
    )

    assert (await system.end(job)).type == E.EVENT_TYPE_JOB_FAILED
    done = await system.get_job(job)
    assert done.failure.reason == E.ERROR_REASON_BUDGET_EXCEEDED
    assert tools.runs["bump"] == 1
    assert (done.usage.model_calls, done.usage.tool_calls) == (1, 1)
    assert done.usage.input_tokens > 0


@pytest.mark.parametrize("idempotent", [True, False])
async def test_a_takeover_never_runs_a_finished_call_again_and_a_cut_one_by_idempotence(
    system: System, idempotent: bool
) -> None:
    await create_policy(system)
    tools = CountingTools(idempotent)
    first = system.pool("worker-a", tools=runner(tools))
    await first.start()
    job = await job_with_tools(system, "call bump {}\ncall hold {}")
    async with asyncio.timeout(WAIT):
        await tools.holding.wait()

    # The worker dies while `hold` runs: its lease is abandoned, not released.
    await first.stop(release=False)
    tools.release.set()
    await system.pool("worker-b", tools=runner(tools)).start()

    assert (await system.end(job)).type == E.EVENT_TYPE_JOB_SUCCEEDED
    done = await system.get_job(job)
    assert done.attempt == 2
    bump, hold = await tool_messages(system, job)
    assert bump.content == "bump run 1"
    if idempotent:  # at least once: the cut call runs again
        assert tools.runs == Counter({"bump": 1, "hold": 2})
        assert hold.content == "hold run 2"
    else:  # at most once: the model is told the effect is unknown
        assert tools.runs == Counter({"bump": 1, "hold": 1})
        assert "interrupted" in hold.content and "not run again" in hold.content
    assert [c.call.name for c in await tool_events(system, job)] == ["bump", "hold"]
    assert done.usage.tool_calls == 2


async def test_a_model_call_that_needs_approval_waits_then_runs_or_fails_the_job(
    system: System,
) -> None:
    rule = policy_pb2.Rule(
        id="ask-first",
        description="a person approves every model call",
        model=policy_pb2.ModelRule(patterns=["local"], verdict=policy_pb2.VERDICT_REQUIRE_APPROVAL),
    )
    await create_policy(system, rule)
    policy = open_policy_guard(system.infra)
    await system.pool("worker-a", policy=policy).start()
    approved = await job_with_tools(system, "hello", E.ToolSpec(name="calculator"))
    rejected = await job_with_tools(system, "hello", E.ToolSpec(name="calculator"))

    first = await pending_action(system, approved)
    assert (first.payload["model"], first.payload["turn"]) == ("local", 1)
    await resolve(system, first, approved=True)
    await resolve(system, await pending_action(system, rejected), approved=False)

    assert (await system.end(approved)).type == E.EVENT_TYPE_JOB_SUCCEEDED
    assert (await system.end(rejected)).type == E.EVENT_TYPE_JOB_FAILED
    failed = await system.get_job(rejected)
    assert failed.failure.reason == E.ERROR_REASON_POLICY_DENIED
    assert "rejected by alice" in failed.failure.message
    assert failed.usage.model_calls == 0


async def test_an_approval_that_expires_never_runs_the_tool(system: System) -> None:
    rule = tool_rule("bumps", "bump", policy_pb2.VERDICT_REQUIRE_APPROVAL)
    rule.tool.approval_timeout.FromMilliseconds(300)
    await create_policy(system, rule)
    tools = CountingTools()
    policy = open_policy_guard(system.infra)
    await system.pool("worker-a", tools=runner(tools), policy=policy).start()
    job = await job_with_tools(system, "call bump {}")

    action = await pending_action(system, job)
    lasts = action.expire_time.ToMilliseconds() - action.create_time.ToMilliseconds()

    assert lasts == 300
    assert (await system.end(job)).type == E.EVENT_TYPE_JOB_SUCCEEDED
    assert tools.runs["bump"] == 0
    [reply] = await tool_messages(system, job)
    assert "expired without an answer" in reply.content
