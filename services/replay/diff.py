"""Comparing re-executed events with recorded ones: which events count, and how they differ.

Only what the agent decides is compared: turns, tool calls, actions required and how the
job ended. The jobs service's own bookkeeping (created, started, requeued, waiting, action
resolutions) and the parts of an event that change with every run (ids, times, trace ids,
job and action names, durations, usage, the model that answered) are left out.
"""

from __future__ import annotations

from typing import Any

from agentrt.common.v1.common_pb2 import EventType, RuntimeEvent
from agentrt.replay.v1.replay_pb2 import Divergence
from google.protobuf import json_format

from services.kit.events import event_type_name

COMPARED_TYPES = frozenset(
    {
        EventType.EVENT_TYPE_TURN_COMPLETED,
        EventType.EVENT_TYPE_TOOL_CALLED,
        EventType.EVENT_TYPE_ACTION_REQUIRED,
        EventType.EVENT_TYPE_JOB_SUCCEEDED,
        EventType.EVENT_TYPE_JOB_FAILED,
        EventType.EVENT_TYPE_JOB_CANCELLED,
        EventType.EVENT_TYPE_JOB_TIMED_OUT,
    }
)

Kind = Divergence.Kind


def is_compared(event: RuntimeEvent) -> bool:
    return event.type in COMPARED_TYPES


def comparable_form(event: RuntimeEvent) -> dict[str, Any]:
    """The event's type and payload without the parts that change with every run."""
    kept = RuntimeEvent(type=event.type)
    which = event.WhichOneof("payload")
    if which is not None:
        getattr(kept, which).CopyFrom(getattr(event, which))
    if which == "turn_completed":
        # The model that answered is what the run ran on (the recording's metadata),
        # not what the agent decided; a what-if with another model differs there.
        kept.turn_completed.ClearField("usage")
        kept.turn_completed.ClearField("model")
    if which == "tool_called":
        kept.tool_called.ClearField("duration")
    if which == "action":
        kept.action.ClearField("action")
    if which == "job_succeeded":
        kept.job_succeeded.ClearField("usage")
    form: dict[str, Any] = json_format.MessageToDict(kept)
    return form


def first_difference(recorded: Any, new: Any, path: str = "") -> str | None:
    """The proto3 JSON path of the first field that differs, e.g. "toolCalled.output";
    None when both are equal."""
    if isinstance(recorded, dict) and isinstance(new, dict):
        for key in [*recorded, *(key for key in new if key not in recorded)]:
            found = first_difference(recorded.get(key), new.get(key), f"{path}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(recorded, list) and isinstance(new, list):
        for index in range(max(len(recorded), len(new))):
            left = recorded[index] if index < len(recorded) else None
            right = new[index] if index < len(new) else None
            found = first_difference(left, right, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    return None if recorded == new else path.lstrip(".")


def divergence(
    position: int, recorded: RuntimeEvent | None, new: RuntimeEvent | None
) -> Divergence | None:
    """How the re-executed event departs from the recorded one at `position`; None when
    they match. A missing side makes a MISSING (no new event) or an EXTRA divergence."""
    if recorded is None and new is None:
        return None
    if recorded is None:
        assert new is not None
        return Divergence(
            kind=Kind.KIND_EXTRA,
            position=position,
            reexecuted=new,
            description=f"{_what(new)} happened, which the recording does not have",
        )
    if new is None:
        return Divergence(
            kind=Kind.KIND_MISSING,
            position=position,
            recorded=recorded,
            description=f"{_what(recorded)} did not happen",
        )
    if recorded.type != new.type:
        return Divergence(
            kind=Kind.KIND_TYPE,
            position=position,
            recorded=recorded,
            reexecuted=new,
            description=f"{_account(new)} instead of {_what(recorded)}",
        )
    field = first_difference(comparable_form(recorded), comparable_form(new))
    if field is None:
        return None
    return Divergence(
        kind=Kind.KIND_PAYLOAD,
        position=position,
        recorded=recorded,
        reexecuted=new,
        field=field,
        description=_payload_account(recorded, new, field),
    )


def _what(event: RuntimeEvent) -> str:
    if event.type == EventType.EVENT_TYPE_TOOL_CALLED:
        return f"a call of tool {event.tool_called.call.name}"
    if event.type == EventType.EVENT_TYPE_ACTION_REQUIRED:
        return f"an action ({event.action.kind or 'unknown kind'})"
    if event.type == EventType.EVENT_TYPE_TURN_COMPLETED:
        return f"turn {event.turn_completed.turn}"
    return event_type_name(event.type)


DENIED_PREFIX = "Error: denied by policy: "


def _account(event: RuntimeEvent) -> str:
    """What the re-executed event did, saying so when policy denied a tool."""
    called = event.tool_called
    if event.type == EventType.EVENT_TYPE_TOOL_CALLED and called.output.startswith(DENIED_PREFIX):
        why = called.output.removeprefix(DENIED_PREFIX)
        return f"tool {called.call.name} was denied by policy ({why})"
    return _what(event)


def _payload_account(recorded: RuntimeEvent, new: RuntimeEvent, field: str) -> str:
    if new.type == EventType.EVENT_TYPE_TOOL_CALLED:
        if new.tool_called.output.startswith(DENIED_PREFIX):
            return f"{_account(new)} instead of called"
        return f"tool {new.tool_called.call.name}: {field} differs"
    return f"{_what(new)}: {field} differs"
