"""The job state machine's transition table."""

from __future__ import annotations

import itertools

import pytest
from agentrt.common.v1.common_pb2 import ErrorReason, JobState

from services.jobs import states
from services.kit.errors import IllegalTransition

Q, R, W = states.QUEUED, states.RUNNING, states.WAITING
S, F, C, T = states.SUCCEEDED, states.FAILED, states.CANCELLED, states.TIMED_OUT

ALLOWED = {
    (Q, R), (Q, C), (Q, T),
    (R, Q), (R, W), (R, S), (R, F), (R, C), (R, T),
    (W, Q), (W, C), (W, T), (W, F),
}  # fmt: skip

EVERY_STATE = list(JobState.values())


@pytest.mark.parametrize(("current", "target"), sorted(ALLOWED))
def test_allowed_transitions_pass(current: states.State, target: states.State) -> None:
    assert states.can_transition(current, target)
    states.check_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [pair for pair in itertools.product(EVERY_STATE, repeat=2) if pair not in ALLOWED],
)
def test_every_other_transition_is_illegal(current: states.State, target: states.State) -> None:
    assert not states.can_transition(current, target)
    with pytest.raises(IllegalTransition) as raised:
        states.check_transition(current, target)
    assert raised.value.code == "FAILED_PRECONDITION"
    assert raised.value.reason == ErrorReason.ERROR_REASON_ILLEGAL_TRANSITION
    assert raised.value.metadata == {"state": JobState.Name(current)}


def test_terminal_states_are_the_four_endings() -> None:
    assert {S, F, C, T} == states.TERMINAL
    assert {Q, R, W} == states.ACTIVE
