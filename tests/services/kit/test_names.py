"""Resource names of jobs and actions."""

from __future__ import annotations

import pytest
from agentrt.common.v1.common_pb2 import ErrorReason

from services.kit.errors import NameInvalid
from services.kit.ids import new_id
from services.kit.names import action_name, job_name, parse_action_name, parse_job_name


def test_names_round_trip() -> None:
    job_id, action_id = new_id(), new_id()

    assert job_name(job_id) == f"jobs/{job_id}"
    assert parse_job_name(job_name(job_id)) == job_id
    assert action_name(job_id, action_id) == f"jobs/{job_id}/actions/{action_id}"
    assert parse_action_name(action_name(job_id, action_id)) == (job_id, action_id)


@pytest.mark.parametrize(
    "name",
    ["", "jobs/", "jobs/abc", "job/{id}", "jobs/{id}/", "/jobs/{id}", "jobs/{id}/actions/{id}"],
)
def test_a_malformed_job_name_is_refused_naming_the_field(name: str) -> None:
    with pytest.raises(NameInvalid) as raised:
        parse_job_name(name.replace("{id}", new_id()), "parent")

    assert raised.value.reason == ErrorReason.ERROR_REASON_NAME_INVALID
    assert raised.value.code == "INVALID_ARGUMENT"
    assert raised.value.metadata == {"field": "parent"}


@pytest.mark.parametrize(
    "name", ["jobs/{id}", "jobs/{id}/actions/", "jobs/{id}/action/{id}", "jobs/x/actions/{id}"]
)
def test_a_malformed_action_name_is_refused(name: str) -> None:
    with pytest.raises(NameInvalid):
        parse_action_name(name.replace("{id}", new_id()))
