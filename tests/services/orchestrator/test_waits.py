"""The loop's resume state and how it reads the actions a job waited on."""

from __future__ import annotations

from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2
from agentrt.policy.v1 import policy_pb2

from services.orchestrator.waits import (
    APPROVAL,
    CLIENT_TOOL,
    MODEL_APPROVAL,
    Awaiting,
    LoopState,
    approval_refusal,
    awaited_action,
    client_answer,
    model_action,
    struct,
    tool_action,
    unanswered_calls,
)

Action = jobs_pb2.Action
CALL = common_pb2.ToolCall(id="call_2_0", name="send_email", arguments='{"to": "a@b.c"}')
DECISION = policy_pb2.Decision(
    verdict=policy_pb2.VERDICT_REQUIRE_APPROVAL,
    matched_rule=policy_pb2.RuleRef(policy_set="policySets/production", rule_id="mail"),
    reason="mail leaves the company",
)


def ended(action: Action, state: Action.State.ValueType, **outcome: object) -> Action:
    done = Action()
    done.CopyFrom(action)
    done.state = state
    if outcome:
        done.outcome.CopyFrom(struct(outcome))
    return done


def test_the_state_round_trips_and_empty_bytes_are_the_empty_state() -> None:
    state = LoopState({"calculator": 2}, Awaiting(APPROVAL, "call_2_0", 3))
    assert LoopState.decode(state.encode()) == state
    assert LoopState.decode(b"") == LoopState()


def test_unanswered_calls_are_those_of_the_last_assistant_message_without_a_reply() -> None:
    calls = [CALL, common_pb2.ToolCall(id="call_2_1", name="calculator")]
    messages = [
        common_pb2.Message(role=common_pb2.ROLE_USER, content="hi"),
        common_pb2.Message(role=common_pb2.ROLE_ASSISTANT, tool_calls=calls),
        common_pb2.Message(role=common_pb2.ROLE_TOOL, tool_call_id="call_2_0", content="ok"),
    ]
    assert [c.id for c in unanswered_calls(messages)] == ["call_2_1"]
    assert unanswered_calls(messages[:1]) == []
    assert unanswered_calls([*messages, messages[-1]][:2]) == calls


def test_an_approval_action_carries_the_call_the_rule_and_the_reason() -> None:
    action = tool_action(Awaiting(APPROVAL, CALL.id, 1), CALL, {"to": "a@b.c"}, DECISION)
    assert action.kind == jobs_pb2.ACTION_KIND_APPROVAL
    assert dict(action.payload) == {
        "tool": "send_email",
        "call_id": CALL.id,
        "arguments": struct({"to": "a@b.c"}),
        "turn": 1.0,
        "rule": "policySets/production/rules/mail",
        "reason": "mail leaves the company",
    }
    assert action.timeout_outcome == struct({"approved": False})
    client = tool_action(Awaiting(CLIENT_TOOL, CALL.id, 1), CALL, {})
    assert client.kind == jobs_pb2.ACTION_KIND_TOOL_CALL
    assert "rule" not in client.payload.fields
    assert "error" in client.timeout_outcome.fields


def test_the_awaited_action_is_the_latest_ended_one_of_its_call_and_turn() -> None:
    awaiting = Awaiting(APPROVAL, CALL.id, 1)
    older = ended(tool_action(awaiting, CALL, {}, DECISION), Action.State.STATE_EXPIRED)
    newer = ended(
        tool_action(awaiting, CALL, {}, DECISION), Action.State.STATE_RESOLVED, approved=True
    )
    newer.name = "jobs/j/actions/b"
    other_turn = ended(
        tool_action(Awaiting(APPROVAL, CALL.id, 2), CALL, {}, DECISION), Action.State.STATE_RESOLVED
    )
    pending = tool_action(awaiting, CALL, {}, DECISION)
    pending.state = Action.State.STATE_PENDING
    model = ended(
        model_action(Awaiting(MODEL_APPROVAL, turn=1), "local", DECISION),
        Action.State.STATE_RESOLVED,
    )
    found = awaited_action([older, newer, other_turn, pending, model], awaiting)
    assert found is not None and found.name == "jobs/j/actions/b"
    assert awaited_action([older, model], Awaiting(MODEL_APPROVAL, turn=1)) == model
    assert awaited_action([pending], awaiting) is None


def test_what_an_approval_outcome_means() -> None:
    action = tool_action(Awaiting(APPROVAL, CALL.id, 1), CALL, {}, DECISION)
    approved = ended(action, Action.State.STATE_RESOLVED, approved=True)
    rejected = ended(action, Action.State.STATE_RESOLVED, approved=False, reason="not today")
    rejected.resolved_by = "alice"
    expired = ended(action, Action.State.STATE_EXPIRED, approved=False)
    cancelled = ended(action, Action.State.STATE_CANCELLED)
    assert approval_refusal(approved) is None
    assert approval_refusal(rejected) == "rejected by alice: not today"
    assert approval_refusal(expired) == "the approval request expired without an answer"
    assert approval_refusal(cancelled) == "the approval request was cancelled"
    # Anything but an explicit true is a refusal: fail closed.
    assert approval_refusal(ended(action, Action.State.STATE_RESOLVED, approved="yes"))


def test_what_a_client_tool_outcome_means() -> None:
    action = tool_action(Awaiting(CLIENT_TOOL, CALL.id, 1), CALL, {})
    output = client_answer(ended(action, Action.State.STATE_RESOLVED, output="sent"))
    structured = client_answer(ended(action, Action.State.STATE_RESOLVED, output={"n": 1}))
    error = client_answer(ended(action, Action.State.STATE_RESOLVED, error="no network"))
    empty = client_answer(ended(action, Action.State.STATE_RESOLVED, other=1))
    expired = client_answer(
        ended(action, Action.State.STATE_EXPIRED, error="the client did not answer in time")
    )
    assert (output.text, output.ok, output.answered) == ("sent", True, True)
    assert (structured.text, structured.ok) == ('{"n": 1.0}', True)
    assert (error.text, error.ok, error.answered) == ("Error: no network", False, True)
    assert not empty.ok and "neither" in empty.text
    assert (expired.ok, expired.answered) == (False, False)
    cancelled = client_answer(ended(action, Action.State.STATE_CANCELLED))
    assert (cancelled.ok, cancelled.answered) == (False, False)
