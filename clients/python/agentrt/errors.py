"""The exceptions the agentrt client raises for a failed call, one class per status code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import grpc
from google.rpc import (  # type: ignore[import-untyped, unused-ignore]
    error_details_pb2,
    status_pb2,
)

STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""The trailing metadata entry that carries a serialized google.rpc.Status."""
ERROR_DOMAIN = "agentrt.dev"
"""The domain of the google.rpc.ErrorInfo that agentrt services attach to their errors."""


class AgentrtError(Exception):
    """A call to agentrt failed.

    `code` is the gRPC status code, `reason` the machine-readable reason from the status's
    ErrorInfo (an `agentrt.common.v1.ErrorReason` name without its prefix, such as
    "JOB_NOT_FOUND"; empty when the server sent none, e.g. when it could not be reached),
    `message` the human-readable explanation and `metadata` the ErrorInfo's details (such
    as the invalid field's name in metadata["field"]).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(" ".join(filter(None, (code.name, reason))) + f": {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgumentError(AgentrtError):
    """The request was malformed; `metadata["field"]` usually names the field."""


class NotFoundError(AgentrtError):
    """The resource does not exist, or belongs to another tenant."""


class JobNotFoundError(NotFoundError):
    """The job does not exist, or belongs to another tenant."""


class AlreadyExistsError(AgentrtError):
    """The resource already exists."""


class FailedPreconditionError(AgentrtError):
    """The resource's state does not allow the call, e.g. cancelling a finished job."""


class AbortedError(AgentrtError):
    """The call lost a race with another one; it may be retried."""


class PermissionDeniedError(AgentrtError):
    """The caller is authenticated but not allowed to do this."""


class UnauthenticatedError(AgentrtError):
    """The API key is missing, unknown, revoked or malformed."""


class ResourceExhaustedError(AgentrtError):
    """A budget or a limit would be exceeded."""


class DeadlineExceededError(AgentrtError):
    """The call ran past its deadline."""


class UnavailableError(AgentrtError):
    """The gateway, or a service behind it, cannot be reached; the call may be retried."""


_BY_REASON: Mapping[str, type[AgentrtError]] = {"JOB_NOT_FOUND": JobNotFoundError}
_BY_CODE: Mapping[grpc.StatusCode, type[AgentrtError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


def error_from_rpc(error: grpc.aio.AioRpcError) -> AgentrtError:
    """The AgentrtError that describes a failed call, its reason read from the status details."""
    code = error.code()
    message = error.details() or ""
    info = _error_info(error)
    reason = info.reason if info is not None else ""
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code, AgentrtError)
    return cls(code, reason, message, dict(info.metadata) if info is not None else None)


def _error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    # grpc-stubs types these trailers as the sync API's; an AioRpcError holds aio Metadata.
    trailers = cast("grpc.aio.Metadata | None", error.trailing_metadata())
    for value in trailers.get_all(STATUS_DETAILS_KEY) if trailers is not None else ():
        if not isinstance(value, bytes):
            continue
        for detail in status_pb2.Status.FromString(value).details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                return info
    return None
