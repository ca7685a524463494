"""Event type names, terminal types, event and job names, and cursors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from agentrt.common.v1.common_pb2 import EventType, RuntimeEvent

from services.kit.events import (
    event_type_name,
    is_terminal,
    is_transient,
    job_id_of,
    parse_cursor,
    retry_delay,
)

COMMON_PROTO = Path(__file__).parents[4] / "protos/agentrt/common/v1/common.proto"


def documented_type_names() -> dict[str, str]:
    """The dotted name that common.proto's comment gives each EventType value."""
    documented = re.findall(
        r'// "([a-z_.]+)"[^\n]*\n(?:\s*//[^\n]*\n)*\s*(EVENT_TYPE_\w+) =', COMMON_PROTO.read_text()
    )
    return {value: name for name, value in documented}


def test_every_event_type_has_the_name_common_proto_documents() -> None:
    documented = documented_type_names()
    values = [v for v in EventType.values() if v != EventType.EVENT_TYPE_UNSPECIFIED]
    assert {EventType.Name(v): event_type_name(v) for v in values} == documented


def test_unspecified_has_no_name() -> None:
    with pytest.raises(ValueError, match="has no name"):
        event_type_name(EventType.EVENT_TYPE_UNSPECIFIED)


def test_only_the_four_ends_are_terminal() -> None:
    terminal = {EventType.Name(v) for v in EventType.values() if is_terminal(v)}
    assert terminal == {
        "EVENT_TYPE_JOB_SUCCEEDED",
        "EVENT_TYPE_JOB_FAILED",
        "EVENT_TYPE_JOB_CANCELLED",
        "EVENT_TYPE_JOB_TIMED_OUT",
    }


def test_history_and_transient_event_ids_are_told_apart() -> None:
    assert not is_transient(RuntimeEvent(id="j.k.7", job="jobs/j.k"))
    assert is_transient(RuntimeEvent(id="j.k.7.2", job="jobs/j.k"))


def test_job_ids_come_from_job_names_only() -> None:
    assert job_id_of("jobs/abc") == "abc"
    for bad in ("abc", "jobs/", "jobs/a/actions/b", "tenants/x"):
        with pytest.raises(ValueError, match="invalid job name"):
            job_id_of(bad)


def test_cursors_order_like_redis_entry_ids() -> None:
    assert parse_cursor("0") == (0, 0)
    assert parse_cursor("1700000000000-12") == (1700000000000, 12)
    assert parse_cursor("9-0") < parse_cursor("10-0") < parse_cursor("10-1")
    for bad in ("", "-1", "1-", "a-1", "1-2-3", " 1", "\u0661"):
        with pytest.raises(ValueError, match="invalid cursor"):
            parse_cursor(bad)


def test_retry_delays_grow_to_a_bound() -> None:
    delays = [retry_delay(n) for n in range(1, 12)]
    assert delays == sorted(delays)
    assert delays[0] == pytest.approx(0.1)
    assert delays[-1] == 5.0
