"""Domain errors carry what the interceptor needs: status code, reason and metadata."""

from __future__ import annotations

import pytest
from agentrt.common.v1.common_pb2 import ErrorReason

from services.kit import errors


@pytest.mark.parametrize(
    ("error", "code", "reason", "metadata"),
    [
        (errors.FieldRequired("spec.model"), "INVALID_ARGUMENT", "FIELD_REQUIRED",
         {"field": "spec.model"}),
        (errors.FieldInvalid("page_size", "too big"), "INVALID_ARGUMENT", "FIELD_INVALID",
         {"field": "page_size"}),
        (errors.NameInvalid("name", "jobs/x"), "INVALID_ARGUMENT", "NAME_INVALID",
         {"field": "name"}),
        (errors.MessageTooLarge("spec.prompt", 10, 5), "INVALID_ARGUMENT", "MESSAGE_TOO_LARGE",
         {"field": "spec.prompt", "size": "10", "limit": "5"}),
        (errors.RequestIdReused("r1"), "INVALID_ARGUMENT", "REQUEST_ID_REUSED",
         {"request_id": "r1"}),
        (errors.JobNotFound("jobs/x"), "NOT_FOUND", "JOB_NOT_FOUND", {"name": "jobs/x"}),
        (errors.NotFound("no such price"), "NOT_FOUND", "NOT_FOUND", {}),
        (errors.IllegalTransition("JOB_STATE_SUCCEEDED", "cancel a job"), "FAILED_PRECONDITION",
         "ILLEGAL_TRANSITION", {"state": "JOB_STATE_SUCCEEDED"}),
        (errors.LeaseLost("JOB_STATE_CANCELLED"), "FAILED_PRECONDITION", "LEASE_LOST",
         {"state": "JOB_STATE_CANCELLED"}),
        (errors.AlreadyExists("exists"), "ALREADY_EXISTS", "ALREADY_EXISTS", {}),
        (errors.Aborted("raced"), "ABORTED", "ETAG_MISMATCH", {}),
        (errors.PermissionDenied("no"), "PERMISSION_DENIED", "PERMISSION_DENIED", {}),
        (errors.Unauthenticated("no key", ErrorReason.ERROR_REASON_API_KEY_MISSING),
         "UNAUTHENTICATED", "API_KEY_MISSING", {}),
        (errors.ResourceExhausted("over", metadata={"budget": "b1"}), "RESOURCE_EXHAUSTED",
         "BUDGET_EXCEEDED", {"budget": "b1"}),
        (errors.Unavailable("down"), "UNAVAILABLE", "DEPENDENCY_UNAVAILABLE", {}),
        (errors.DeadlineExceeded("late"), "DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", {}),
    ],
)  # fmt: skip
def test_each_error_maps_to_its_status_and_reason(
    error: errors.AgentrtError, code: str, reason: str, metadata: dict[str, str]
) -> None:
    assert isinstance(error, errors.AgentrtError)
    assert (error.code, error.reason_name, error.metadata) == (code, reason, metadata)
    assert str(error) == error.message and error.message
