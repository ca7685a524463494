"""Mapping failed calls to AgentrtError subclasses, from statuses as the services encode them."""

from __future__ import annotations

import grpc
from agentrt import (
    AgentrtError,
    FailedPreconditionError,
    InvalidArgumentError,
    JobNotFoundError,
    NotFoundError,
    UnauthenticatedError,
)
from agentrt.common.v1 import common_pb2
from agentrt.errors import STATUS_DETAILS_KEY, error_from_rpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]

from services.kit.interceptors import error_status


def failed_call(
    code: grpc.StatusCode, message: str, trailers: tuple[tuple[str, bytes], ...] = ()
) -> grpc.aio.AioRpcError:
    """A failed call as grpc.aio raises it when the server ends an RPC with this status."""
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), message, None
    )


def service_error(
    code: grpc.StatusCode,
    message: str,
    reason: common_pb2.ErrorReason.ValueType,
    metadata: dict[str, str] | None = None,
) -> AgentrtError:
    """What the client raises for a status encoded by the services' own interceptor."""
    details, trailers = error_status(code, message, reason, metadata)
    return error_from_rpc(failed_call(code, details, trailers))


def test_a_job_not_found_is_raised_as_job_not_found_with_its_reason_and_metadata() -> None:
    error = service_error(
        grpc.StatusCode.NOT_FOUND,
        "job jobs/x not found",
        common_pb2.ERROR_REASON_JOB_NOT_FOUND,
        {"name": "jobs/x"},
    )
    assert isinstance(error, JobNotFoundError)
    assert isinstance(error, NotFoundError)
    assert (error.code, error.reason, error.message) == (
        grpc.StatusCode.NOT_FOUND,
        "JOB_NOT_FOUND",
        "job jobs/x not found",
    )
    assert error.metadata == {"name": "jobs/x"}
    assert str(error) == "NOT_FOUND JOB_NOT_FOUND: job jobs/x not found"


def test_other_reasons_map_by_status_code() -> None:
    cases = [
        (grpc.StatusCode.NOT_FOUND, common_pb2.ERROR_REASON_MODEL_NOT_FOUND, NotFoundError),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            common_pb2.ERROR_REASON_FIELD_REQUIRED,
            InvalidArgumentError,
        ),
        (
            grpc.StatusCode.UNAUTHENTICATED,
            common_pb2.ERROR_REASON_API_KEY_MISSING,
            UnauthenticatedError,
        ),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            common_pb2.ERROR_REASON_ILLEGAL_TRANSITION,
            FailedPreconditionError,
        ),
    ]
    for code, reason, expected in cases:
        error = service_error(code, "refused", reason)
        assert type(error) is expected
        assert error.reason == common_pb2.ErrorReason.Name(reason).removeprefix("ERROR_REASON_")


def test_a_status_without_details_keeps_its_code_and_message_and_has_no_reason() -> None:
    error = error_from_rpc(failed_call(grpc.StatusCode.UNAUTHENTICATED, "no key"))
    assert type(error) is UnauthenticatedError
    assert (error.reason, error.message, error.metadata) == ("", "no key", {})
    assert str(error) == "UNAUTHENTICATED: no key"


def test_an_unmapped_code_gives_the_base_class() -> None:
    error = service_error(grpc.StatusCode.INTERNAL, "boom", common_pb2.ERROR_REASON_INTERNAL)
    assert type(error) is AgentrtError
    assert error.reason == "INTERNAL"


def test_an_error_info_of_another_domain_is_not_taken_for_agentrt_s() -> None:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason="JOB_NOT_FOUND", domain="example.com"))
    status = status_pb2.Status(code=5, message="gone", details=[detail])
    trailers = ((STATUS_DETAILS_KEY, status.SerializeToString()),)
    error = error_from_rpc(failed_call(grpc.StatusCode.NOT_FOUND, "gone", trailers))
    assert type(error) is NotFoundError
    assert error.reason == ""
