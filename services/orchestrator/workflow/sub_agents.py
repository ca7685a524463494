"""The built-in `run_agent` tool: a model starts one of its job's named agents as a child
job and gets the child's answer as the tool's result.

The child is created with a request_id derived from (parent, turn, call), so answering
the same call again (after a takeover, or on resuming from the wait) finds the child it
created. While the child runs the parent waits WAITING on it (AwaitChildren), holding no
worker; the child's end queues the parent, which answers the call from the child's result.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from agentrt.client import TERMINAL_STATES
from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2

from services.orchestrator.ports import TreePort

RUN_AGENT = "run_agent"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def run_agent_spec() -> common_pb2.ToolSpec:
    """What the model is shown. The loop answers the calls itself (they start child jobs);
    a call repeated after a crash finds the child made before, hence idempotent."""
    spec = common_pb2.ToolSpec(
        name=RUN_AGENT,
        description=(
            "Starts one of the named agents of this job on a task and returns its final "
            "answer. Use it to hand a self-contained sub-task to a specialist."
        ),
        kind=common_pb2.TOOL_KIND_BUILTIN,
        idempotent=True,
    )
    spec.parameters.update(
        {
            "type": "object",
            "properties": {
                "agent": {"type": "string", "description": "the agent's name"},
                "prompt": {"type": "string", "description": "the task, in full"},
            },
            "required": ["agent", "prompt"],
            "additionalProperties": False,
        }
    )
    return spec


@dataclass(frozen=True)
class SubAgentReply:
    """The tool's answer: the child's final answer, or why there is none."""

    text: str
    ok: bool


def sub_agent_label(turn: int, call_id: str) -> str:
    """The child's JobSpec.node: "run_agent.{turn}.{call}" (unsafe characters as '_')."""
    return f"{RUN_AGENT}.{turn}.{_UNSAFE.sub('_', call_id)[:64]}"


def agent_spec(parent: jobs_pb2.Job, agent_name: str, prompt: str, node: str) -> jobs_pb2.JobSpec:
    """A child that runs one of the parent's named agents on `prompt`."""
    spec = parent.spec
    agent = spec.agents[agent_name]
    child = jobs_pb2.JobSpec(
        prompt=prompt or "(empty input)",
        parent=parent.name,
        node=node,
        orchestration=spec.orchestration,
        model=agent.model or spec.model,
        system_prompt=agent.system_prompt,
        tools=agent.tools,
        params=agent.params,
        budget=agent.budget,
        max_turns=agent.max_turns,
    )
    child.labels.update(spec.labels)
    if spec.orchestration.HasField("child_timeout"):
        child.timeout.CopyFrom(spec.orchestration.child_timeout)
    child.policy.CopyFrom(agent.policy if agent.HasField("policy") else spec.policy)
    child.tool_options.CopyFrom(
        agent.tool_options if agent.HasField("tool_options") else spec.tool_options
    )
    return child


def reply_of(child: jobs_pb2.Job) -> SubAgentReply:
    """What an ended child tells the model."""
    if child.state == common_pb2.JOB_STATE_SUCCEEDED:
        return SubAgentReply(child.result.output, True)
    state = common_pb2.JobState.Name(child.state).removeprefix("JOB_STATE_").lower()
    return SubAgentReply(f"Error: the agent {state}: {child.failure.message}", False)


async def answer_run_agent(
    tree: TreePort,
    parent: jobs_pb2.Job,
    lease_id: str,
    call: common_pb2.ToolCall,
    arguments: Mapping[str, Any],
    turn: int,
    checkpoint: jobs_pb2.Checkpoint,
) -> SubAgentReply | None:
    """The answer to a run_agent call, or None when the parent now waits on the child
    (its lease is given up with `checkpoint`)."""
    name = str(arguments.get("agent", ""))
    if name not in parent.spec.agents:
        known = ", ".join(sorted(parent.spec.agents)) or "none"
        return SubAgentReply(f"Error: there is no agent {name!r}; the agents are: {known}.", False)
    label = sub_agent_label(turn, call.id)
    spec = agent_spec(parent, name, str(arguments.get("prompt", "")), label)
    request_id = f"{parent.name.removeprefix('jobs/')}/{label}"[:128]
    try:
        child = await tree.create_child(parent, spec, request_id)
    except grpc.aio.AioRpcError as error:
        if error.code() not in (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.INVALID_ARGUMENT,
        ):
            raise
        return SubAgentReply(f"Error: the agent could not be started: {error.details()}", False)
    if child.state not in TERMINAL_STATES:
        if await tree.await_children(parent.name, lease_id, [child.name], checkpoint):
            return None
        child = await tree.get_job(parent.tenant, child.name)
    return reply_of(child)
