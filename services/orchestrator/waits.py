"""What the agent loop keeps between runs of one job, and how it reads the actions it waits on.

A job that waits on an action (a person's approval, a client tool's output) gives up its
worker. The loop's own resume state goes into `Checkpoint.state` as a small JSON object:

    {"v": 1, "tool_counts": {"<tool>": <calls run>}, "awaiting": {"kind": "...",
     "call_id": "...", "turn": <turn>}, "running": "<call id>"}

`running` names a call of a tool that is not idempotent, checkpointed just before it
runs: a worker that finds it with no answer knows the call was cut by a crash and does not
run it again. `awaiting` names what the job waits on: "approval" (of the tool call `call_id`),
"tool_call" (the client's output of `call_id`) or "model_approval" (of the model call of
turn `turn`). The action itself is found again by its payload, which carries the same
`call_id` and `turn`: the action's name is only known once RequireAction, which stores the
checkpoint, has returned.

Outcome shapes (docs/actions.md):
- approval: {"approved": true} or {"approved": false, "reason": "..."}; an expired
  approval applies its timeout outcome {"approved": false}.
- client tool: {"output": "..."} (any JSON value; not a string is sent as JSON text) or
  {"error": "..."}; an expired one applies {"error": "the client did not answer in time"}.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2
from agentrt.policy.v1 import policy_pb2
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

STATE_VERSION = 1

APPROVAL = "approval"
CLIENT_TOOL = "tool_call"
MODEL_APPROVAL = "model_approval"

Action = jobs_pb2.Action
_KINDS = {
    APPROVAL: jobs_pb2.ACTION_KIND_APPROVAL,
    MODEL_APPROVAL: jobs_pb2.ACTION_KIND_APPROVAL,
    CLIENT_TOOL: jobs_pb2.ACTION_KIND_TOOL_CALL,
}

APPROVAL_TIMEOUT_OUTCOME: Mapping[str, Any] = {"approved": False}
CLIENT_TIMEOUT_OUTCOME: Mapping[str, Any] = {"error": "the client did not answer in time"}


@dataclass(frozen=True)
class Awaiting:
    """The action a job waits on, as its checkpoint remembers it."""

    kind: str
    """APPROVAL, CLIENT_TOOL or MODEL_APPROVAL."""
    call_id: str = ""
    """The tool call's id; empty for a model approval."""
    turn: int = 0
    """The turn of the call (for a model approval: the turn about to be taken)."""


@dataclass
class LoopState:
    """The agent loop's part of a checkpoint."""

    tool_counts: dict[str, int] = field(default_factory=dict)
    """Tool calls run (or answered by a client) so far, by tool name: for policy limits."""
    awaiting: Awaiting | None = None
    running: str = ""
    """The id of a call of a non-idempotent tool that started and has no answer yet."""

    def encode(self) -> bytes:
        data: dict[str, Any] = {"v": STATE_VERSION, "tool_counts": self.tool_counts}
        if self.running:
            data["running"] = self.running
        if self.awaiting is not None:
            data["awaiting"] = {
                "kind": self.awaiting.kind,
                "call_id": self.awaiting.call_id,
                "turn": self.awaiting.turn,
            }
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> LoopState:
        """The state in a checkpoint; empty bytes (a checkpoint of an older worker, or
        none yet) is the empty state."""
        if not data:
            return cls()
        value = json.loads(data)
        awaiting = value.get("awaiting")
        return cls(
            tool_counts={str(k): int(v) for k, v in value.get("tool_counts", {}).items()},
            awaiting=None
            if awaiting is None
            else Awaiting(str(awaiting["kind"]), str(awaiting["call_id"]), int(awaiting["turn"])),
            running=str(value.get("running", "")),
        )


def unanswered_calls(messages: Sequence[common_pb2.Message]) -> list[common_pb2.ToolCall]:
    """The tool calls of the last assistant message that no tool message answers yet, in
    the order the model made them."""
    answered: set[str] = set()
    for message in reversed(messages):
        if message.role == common_pb2.ROLE_TOOL:
            answered.add(message.tool_call_id)
            continue
        if message.role == common_pb2.ROLE_ASSISTANT:
            return [call for call in message.tool_calls if call.id not in answered]
        return []
    return []


def struct(values: Mapping[str, Any]) -> Struct:
    result = Struct()
    result.update(dict(values))
    return result


def rule_name(decision: policy_pb2.Decision) -> str:
    """ "policySets/{set}/rules/{rule}" of the rule that decided, or "" for none."""
    rule = decision.matched_rule
    if not rule.rule_id:
        return ""
    return f"{rule.policy_set}/rules/{rule.rule_id}"


def tool_action(
    awaiting: Awaiting,
    call: common_pb2.ToolCall,
    arguments: Mapping[str, Any],
    decision: policy_pb2.Decision | None = None,
) -> Action:
    """The action asking a person to approve `call` (with the decision that requires it),
    or the client to run it (without)."""
    payload: dict[str, Any] = {
        "tool": call.name,
        "call_id": call.id,
        "arguments": dict(arguments),
        "turn": awaiting.turn,
    }
    if decision is not None:
        payload["rule"] = rule_name(decision)
        payload["reason"] = decision.reason
    timeout_outcome = (
        APPROVAL_TIMEOUT_OUTCOME if awaiting.kind == APPROVAL else CLIENT_TIMEOUT_OUTCOME
    )
    return Action(
        kind=_KINDS[awaiting.kind], payload=struct(payload), timeout_outcome=struct(timeout_outcome)
    )


def model_action(awaiting: Awaiting, model: str, decision: policy_pb2.Decision) -> Action:
    """The action asking a person to approve the model call of turn `awaiting.turn`."""
    payload = {
        "model": model,
        "turn": awaiting.turn,
        "rule": rule_name(decision),
        "reason": decision.reason,
    }
    return Action(
        kind=jobs_pb2.ACTION_KIND_APPROVAL,
        payload=struct(payload),
        timeout_outcome=struct(APPROVAL_TIMEOUT_OUTCOME),
    )


def awaited_action(actions: Sequence[Action], awaiting: Awaiting) -> Action | None:
    """The latest ended action that `awaiting` refers to, if any."""
    found = None
    for action in actions:
        if action.kind != _KINDS[awaiting.kind] or action.state == Action.State.STATE_PENDING:
            continue
        payload = action.payload.fields
        if awaiting.kind == MODEL_APPROVAL:
            matches = "model" in payload and "call_id" not in payload
        else:
            matches = payload.get("call_id", None) is not None and (
                payload["call_id"].string_value == awaiting.call_id
            )
        if matches and "turn" in payload and int(payload["turn"].number_value) == awaiting.turn:
            found = action
    return found


def outcome_of(action: Action) -> dict[str, Any]:
    return json_format.MessageToDict(action.outcome) if action.HasField("outcome") else {}


def approval_refusal(action: Action) -> str | None:
    """None when the action approves; otherwise why not, for the model."""
    if action.state == Action.State.STATE_CANCELLED:
        return "the approval request was cancelled"
    outcome = outcome_of(action)
    if outcome.get("approved") is True:
        return None
    reason = outcome.get("reason")
    because = f": {reason}" if isinstance(reason, str) and reason else ""
    if action.state == Action.State.STATE_EXPIRED:
        return f"the approval request expired without an answer{because}"
    who = f" by {action.resolved_by}" if action.resolved_by else ""
    return f"rejected{who}{because}"


@dataclass(frozen=True)
class ClientAnswer:
    """What a client's resolution of a tool-call action says."""

    text: str
    ok: bool
    answered: bool
    """False when the client never answered (cancelled, or expired)."""


def client_answer(action: Action) -> ClientAnswer:
    """The tool message of a client tool's action, by its outcome."""
    if action.state == Action.State.STATE_CANCELLED:
        return ClientAnswer(
            "Error: the tool call was cancelled before the client answered.", False, False
        )
    outcome = outcome_of(action)
    answered = action.state == Action.State.STATE_RESOLVED
    if "error" in outcome:
        return ClientAnswer(f"Error: {_text(outcome['error'])}", False, answered)
    if "output" in outcome:
        return ClientAnswer(_text(outcome["output"]), True, answered)
    return ClientAnswer(
        "Error: the client's answer had neither 'output' nor 'error'.", False, answered
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
