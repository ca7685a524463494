"""Domain errors every service raises; the server interceptor maps them to gRPC statuses.

Each error carries the gRPC status code by name (`code`), an ErrorReason and ErrorInfo
metadata, so that domain code stays free of grpc. The interceptor turns them into a
`google.rpc.Status` whose ErrorInfo has domain "agentrt.dev" and reason `reason_name`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, TypeAlias

from agentrt.common.v1.common_pb2 import ErrorReason

Reason: TypeAlias = ErrorReason.ValueType

ERROR_DOMAIN = "agentrt.dev"

IDEMPOTENCY_HOOKS = "idempotency_hooks"
"""The ErrorInfo metadata key under which the engine names a failed model call's
idempotency hooks, comma-separated (engine.proto, IdempotencyHook)."""


class AgentrtError(Exception):
    """Base of the errors that reach a caller as a gRPC status with an ErrorInfo."""

    code: ClassVar[str] = "INTERNAL"
    """The gRPC status code's name, e.g. "INVALID_ARGUMENT"."""
    default_reason: ClassVar[Reason] = ErrorReason.ERROR_REASON_INTERNAL

    def __init__(
        self,
        message: str,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason: Reason = self.default_reason if reason is None else reason
        self.metadata: dict[str, str] = dict(metadata or {})

    @property
    def reason_name(self) -> str:
        """The ErrorInfo reason: the ErrorReason's name without "ERROR_REASON_"."""
        return ErrorReason.Name(self.reason).removeprefix("ERROR_REASON_")


class InvalidArgument(AgentrtError):
    """The request is malformed, whatever the state of the system."""

    code = "INVALID_ARGUMENT"
    default_reason = ErrorReason.ERROR_REASON_FIELD_INVALID


class FieldRequired(InvalidArgument):
    """A required field is empty."""

    def __init__(self, field: str) -> None:
        super().__init__(
            f"{field} is required", ErrorReason.ERROR_REASON_FIELD_REQUIRED, {"field": field}
        )
        self.field = field


class FieldInvalid(InvalidArgument):
    """A field has a value that is not allowed; `why` says what is allowed."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field} is invalid: {why}", metadata={"field": field})
        self.field = field


class NameInvalid(InvalidArgument):
    """A resource name does not have its documented form."""

    def __init__(self, field: str, value: str, expected: str = "") -> None:
        form = f", expected {expected}" if expected else ""
        super().__init__(
            f"{field} is not a valid resource name: {value[:200]!r}{form}",
            ErrorReason.ERROR_REASON_NAME_INVALID,
            {"field": field},
        )
        self.field = field


class MessageTooLarge(InvalidArgument):
    """A field (or the whole request) is larger than allowed."""

    def __init__(self, field: str, size: int, limit: int) -> None:
        super().__init__(
            f"{field} is {size} bytes, more than the limit of {limit}",
            ErrorReason.ERROR_REASON_MESSAGE_TOO_LARGE,
            {"field": field, "size": str(size), "limit": str(limit)},
        )


class RequestIdReused(InvalidArgument):
    """A request_id was sent again with a different request body."""

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"request_id {request_id!r} was already used with a different request",
            ErrorReason.ERROR_REASON_REQUEST_ID_REUSED,
            {"request_id": request_id},
        )


class NotFound(AgentrtError):
    """The resource does not exist, or belongs to someone the caller may not see."""

    code = "NOT_FOUND"
    default_reason = ErrorReason.ERROR_REASON_NOT_FOUND


class JobNotFound(NotFound):
    """The job does not exist or belongs to another tenant."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"job {name} not found", ErrorReason.ERROR_REASON_JOB_NOT_FOUND, {"name": name}
        )


class FailedPrecondition(AgentrtError):
    """The resource's current state does not allow the operation."""

    code = "FAILED_PRECONDITION"


class IllegalTransition(FailedPrecondition):
    """The operation is not allowed in the resource's current state (a state name)."""

    def __init__(self, current_state: str, action: str) -> None:
        super().__init__(
            f"cannot {action} in state {current_state}",
            ErrorReason.ERROR_REASON_ILLEGAL_TRANSITION,
            {"state": current_state},
        )
        self.current_state = current_state


class LeaseLost(FailedPrecondition):
    """The worker's lease is no longer the job's current one; `state` is the job's state."""

    def __init__(self, state: str) -> None:
        super().__init__(
            f"the lease is no longer held; the job is {state}",
            ErrorReason.ERROR_REASON_LEASE_LOST,
            {"state": state},
        )
        self.state = state


class AlreadyExists(AgentrtError):
    """The resource to create exists already."""

    code = "ALREADY_EXISTS"
    default_reason = ErrorReason.ERROR_REASON_ALREADY_EXISTS


class Aborted(AgentrtError):
    """A concurrent change won a race (e.g. an etag mismatch); retrying may succeed."""

    code = "ABORTED"
    default_reason = ErrorReason.ERROR_REASON_ETAG_MISMATCH


class PermissionDenied(AgentrtError):
    """The caller is authenticated but may not do this."""

    code = "PERMISSION_DENIED"
    default_reason = ErrorReason.ERROR_REASON_PERMISSION_DENIED


class Unauthenticated(AgentrtError):
    """The caller sent no credential, or one that is unknown, revoked or malformed."""

    code = "UNAUTHENTICATED"
    default_reason = ErrorReason.ERROR_REASON_API_KEY_INVALID


class ResourceExhausted(AgentrtError):
    """A budget or a limit would be exceeded."""

    code = "RESOURCE_EXHAUSTED"
    default_reason = ErrorReason.ERROR_REASON_BUDGET_EXCEEDED


class Unavailable(AgentrtError):
    """A dependency is unreachable; retrying later may succeed."""

    code = "UNAVAILABLE"
    default_reason = ErrorReason.ERROR_REASON_DEPENDENCY_UNAVAILABLE


class DeadlineExceeded(AgentrtError):
    """The operation ran past its deadline."""

    code = "DEADLINE_EXCEEDED"
    default_reason = ErrorReason.ERROR_REASON_DEADLINE_EXCEEDED
