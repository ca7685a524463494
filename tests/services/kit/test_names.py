"""Resource names of jobs and actions."""

from __future__ import annotations

import pytest
from agentrt.common.v1.common_pb2 import ErrorReason

from services.kit.errors import FieldInvalid, NameInvalid
from services.kit.ids import new_id
from services.kit.names import (
    ChosenIdCollection,
    action_name,
    job_name,
    parse_action_name,
    parse_job_name,
)


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


WIDGETS = ChosenIdCollection("widgets", "widget_id", "widgets/{widget}")


def test_a_chosen_id_collection_names_and_parses_its_resources() -> None:
    assert WIDGETS.name("blue-1") == "widgets/blue-1"
    assert WIDGETS.parse("widgets/blue-1") == "blue-1"
    assert WIDGETS.check_id("a" * 63) == "a" * 63


@pytest.mark.parametrize("resource_id", ["", "1st", "Blue", "a_b", "a" * 64, "a/b"])
def test_a_malformed_chosen_id_is_refused_naming_the_field(resource_id: str) -> None:
    with pytest.raises(FieldInvalid) as raised:
        WIDGETS.check_id(resource_id)
    assert raised.value.metadata["field"] == "widget_id"
    with pytest.raises(NameInvalid) as named:
        WIDGETS.parse(f"widgets/{resource_id}", "spec.widget")
    assert named.value.metadata["field"] == "spec.widget"


@pytest.mark.parametrize("name", ["gadgets/blue", "widgets", "widgets/blue/extra", "blue"])
def test_a_name_of_another_shape_is_refused(name: str) -> None:
    with pytest.raises(NameInvalid):
        WIDGETS.parse(name)
