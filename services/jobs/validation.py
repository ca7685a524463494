"""Checks of what callers send to the jobs service, and the limits they are checked against."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta

from agentrt.common.v1.common_pb2 import Message, Role, ToolKind
from agentrt.jobs.v1.jobs_pb2 import Action, ActionKind, JobSpec, OrchestrationConfig
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct

from services.jobs.store import NewAction, NewJob
from services.kit import validate, workflows
from services.kit.errors import FieldInvalid, FieldRequired, MessageTooLarge
from services.kit.money import parse_amount
from services.kit.names import parse_job_name
from services.kit.tool_schema import schema_problem
from services.kit.workflows import validate_workflow


@dataclass(frozen=True)
class JobLimits:
    """Bounds and defaults of the jobs service."""

    max_message_bytes: int = 256 * 1024
    """Largest prompt, system prompt or message content, in UTF-8 bytes."""
    max_spec_bytes: int = 4 * 1024 * 1024
    """Largest serialized JobSpec."""
    default_max_turns: int = 8
    max_turns: int = 100
    default_timeout: timedelta = timedelta(minutes=10)
    max_timeout: timedelta = timedelta(hours=24)
    max_request_id_chars: int = 128
    max_session_chars: int = 128
    max_labels: int = 64
    max_label_chars: int = 63
    """Longest label key or value."""
    max_lease_jobs: int = 100
    default_lease_seconds: float = 30.0
    min_lease_seconds: float = 1.0
    max_lease_seconds: float = 600.0
    max_wait_seconds: float = 60.0
    poll_seconds: float = 1.0
    """How often a waiting LeaseJobs looks at the store even without a wake-up."""
    default_page_size: int = 50
    max_page_size: int = 500
    default_events_page_size: int = 100
    max_events_page_size: int = 1000
    deadline_batch: int = 500
    """Most jobs one deadline sweep times out."""
    max_action_bytes: int = 256 * 1024
    """Largest serialized action payload, timeout outcome or resolution outcome."""
    default_action_timeout: timedelta = timedelta(hours=1)
    max_action_timeout: timedelta = timedelta(days=7)
    max_resume_token_chars: int = 256
    """Longer tokens are refused as malformed before any lookup."""
    action_batch: int = 500
    """Most actions one expiry sweep expires."""
    max_tool_call_timeout: timedelta = timedelta(minutes=10)
    """Longest spec.tool_options.call_timeout."""
    max_tool_attempts: int = 10
    """Largest spec.tool_options.max_attempts."""
    max_node_chars: int = 128
    """Longest spec.node."""


_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_ROLES = frozenset(Role.values()) - {Role.ROLE_UNSPECIFIED}


def new_job(
    tenant: str,
    principal: str,
    spec: JobSpec,
    request_id: str,
    trace_id: str,
    limits: JobLimits,
) -> NewJob:
    """The job to create, with its spec normalized and hashed; raises InvalidArgument."""
    required(tenant, "tenant")
    required(principal, "principal")
    check_request_id(request_id, limits)
    if trace_id and not _TRACE_ID.fullmatch(trace_id):
        raise FieldInvalid("trace_id", "32 lowercase hexadecimal digits")
    normalized = normalize_spec(spec, limits)
    request_hash = hashlib.sha256(normalized.SerializeToString(deterministic=True)).digest()
    own_timeout = spec.HasField("timeout") and spec.timeout.ToNanoseconds() != 0
    return NewJob(tenant, principal, normalized, request_id, request_hash, trace_id, own_timeout)


def new_action(action: Action, timeout: Duration | None, limits: JobLimits) -> NewAction:
    """The action to require, checked; a missing or zero timeout means the default."""
    if action.kind == ActionKind.ACTION_KIND_UNSPECIFIED:
        raise FieldRequired("action.kind")
    if action.kind not in ActionKind.values():
        raise FieldInvalid("action.kind", "must be APPROVAL, TOOL_CALL or INPUT")
    check_struct(action.payload, "action.payload", limits)
    check_struct(action.timeout_outcome, "action.timeout_outcome", limits)
    if timeout is None or timeout.ToNanoseconds() == 0:
        duration = limits.default_action_timeout
    else:
        duration = validate.duration(timeout, "timeout", limits.max_action_timeout)
    return NewAction(action.kind, action.payload, action.timeout_outcome, duration)


def check_struct(value: Struct, field: str, limits: JobLimits) -> None:
    """Raise MessageTooLarge when the serialized Struct is over the action limit."""
    size = value.ByteSize()
    if size > limits.max_action_bytes:
        raise MessageTooLarge(field, size, limits.max_action_bytes)


def check_request_id(request_id: str, limits: JobLimits) -> None:
    """Raise FieldInvalid unless the idempotency key is short and printable."""
    if len(request_id) > limits.max_request_id_chars or not request_id.isprintable():
        raise FieldInvalid(
            "request_id", f"at most {limits.max_request_id_chars} printable characters"
        )


def normalize_spec(spec: JobSpec, limits: JobLimits) -> JobSpec:
    """A copy of the spec with defaults applied, after checking every field."""
    size = spec.ByteSize()
    if size > limits.max_spec_bytes:
        raise MessageTooLarge("spec", size, limits.max_spec_bytes)
    if not spec.prompt and not spec.messages:
        raise FieldRequired("spec.prompt")
    required(spec.model, "spec.model")
    _check_text(spec.prompt, "spec.prompt", limits)
    _check_text(spec.system_prompt, "spec.system_prompt", limits)
    for index, message in enumerate(spec.messages):
        _check_message(message, f"spec.messages[{index}]", limits)
    _check_tools(spec)
    _check_tool_options(spec, limits)
    _check_budget(spec)
    _check_labels(spec, limits)
    validate_workflow(spec)
    validate.text(spec.session, "spec.session", limits.max_session_chars)
    if spec.parent:
        parse_job_name(spec.parent, "spec.parent")
    _check_node(spec.node, limits)
    _check_orchestration(spec.orchestration, limits)
    normalized = JobSpec()
    normalized.CopyFrom(spec)
    normalized.max_turns = _max_turns(spec.max_turns, limits)
    normalized.timeout.FromTimedelta(_timeout(spec, limits))
    return normalized


def _check_node(node: str, limits: JobLimits) -> None:
    if len(node) > limits.max_node_chars or not node.isprintable():
        raise FieldInvalid("spec.node", f"at most {limits.max_node_chars} printable characters")


def _check_orchestration(config: OrchestrationConfig, limits: JobLimits) -> None:
    """Zero means the default everywhere, so only the ranges are checked."""
    field = "spec.orchestration"
    bounded(config.max_child_jobs, f"{field}.max_child_jobs", 0, workflows.MAX_CHILD_JOBS)
    bounded(config.max_depth, f"{field}.max_depth", 0, workflows.MAX_DEPTH)
    bounded(config.max_parallel, f"{field}.max_parallel", 0, workflows.MAX_PARALLEL)
    timeout = config.child_timeout
    if timeout.seconds < 0 or timeout.nanos < 0 or timeout.ToTimedelta() > limits.max_timeout:
        raise FieldInvalid(
            f"{field}.child_timeout", f"must be positive and at most {limits.max_timeout}"
        )
    if config.on_child_failure not in OrchestrationConfig.ChildFailure.values():
        raise FieldInvalid(f"{field}.on_child_failure", "must be FAIL_FAST or CONTINUE")


def _check_budget(spec: JobSpec) -> None:
    """The job's limits, checked here so that a malformed one is refused at creation
    instead of failing the job at its first model call."""
    budget = spec.budget
    for field in ("max_tokens", "max_tool_calls", "max_turns"):
        if budget.HasField(field) and getattr(budget, field) < 0:
            raise FieldInvalid(f"spec.budget.{field}", "must not be negative")
    if budget.HasField("max_cost"):
        parse_amount(budget.max_cost, "spec.budget.max_cost")
    validate.duration(budget.max_runtime, "spec.budget.max_runtime")


def required(value: object, field: str) -> None:
    """Raise FieldRequired when `value` is empty."""
    if not value:
        raise FieldRequired(field)


def bounded(value: float, field: str, low: float, high: float) -> None:
    """Raise FieldInvalid unless low <= value <= high."""
    if not low <= value <= high:
        raise FieldInvalid(field, f"must be from {low:g} to {high:g}")


def _check_text(text: str, field: str, limits: JobLimits) -> None:
    size = len(text.encode())
    if size > limits.max_message_bytes:
        raise MessageTooLarge(field, size, limits.max_message_bytes)


def _check_message(message: Message, field: str, limits: JobLimits) -> None:
    if message.role not in _ROLES:
        raise FieldInvalid(f"{field}.role", "must be SYSTEM, USER, ASSISTANT or TOOL")
    _check_text(message.content, f"{field}.content", limits)
    if message.role == Role.ROLE_TOOL:
        required(message.tool_call_id, f"{field}.tool_call_id")


def _check_tools(spec: JobSpec) -> None:
    names = set()
    for index, tool in enumerate(spec.tools):
        field = f"spec.tools[{index}].name"
        if not _TOOL_NAME.fullmatch(tool.name):
            raise FieldInvalid(field, "1 to 64 letters, digits, '_' or '-'")
        if tool.name in names:
            raise FieldInvalid(field, f"tool {tool.name!r} is offered twice")
        names.add(tool.name)
        if tool.kind not in ToolKind.values():
            raise FieldInvalid(f"spec.tools[{index}].kind", "must be BUILTIN, PLUGIN or CLIENT")
        if tool.kind == ToolKind.TOOL_KIND_CLIENT:
            # Built-in and plugin tools get their schema from where they are served; a
            # client tool's is the caller's, and a broken one is the caller's to fix.
            problem = schema_problem(tool.parameters)
            if problem:
                raise FieldInvalid(f"spec.tools[{index}].parameters", problem)


def _check_tool_options(spec: JobSpec, limits: JobLimits) -> None:
    """Unset fields mean the orchestrator's defaults, so only set ones are bounded."""
    options = spec.tool_options
    validate.duration(
        options.call_timeout, "spec.tool_options.call_timeout", limits.max_tool_call_timeout
    )
    bounded(options.max_attempts, "spec.tool_options.max_attempts", 0, limits.max_tool_attempts)
    if options.HasField("max_tool_calls") and options.max_tool_calls < 0:
        raise FieldInvalid("spec.tool_options.max_tool_calls", "must be 0 or more")


def _check_labels(spec: JobSpec, limits: JobLimits) -> None:
    if len(spec.labels) > limits.max_labels:
        raise FieldInvalid("spec.labels", f"at most {limits.max_labels} labels")
    for key, value in spec.labels.items():
        if not key or len(key) > limits.max_label_chars or len(value) > limits.max_label_chars:
            raise FieldInvalid(
                f"spec.labels[{key[:80]!r}]",
                f"keys of 1 to {limits.max_label_chars} characters, values of at most "
                f"{limits.max_label_chars}",
            )


def _max_turns(max_turns: int, limits: JobLimits) -> int:
    if max_turns == 0:
        return limits.default_max_turns
    bounded(max_turns, "spec.max_turns", 1, limits.max_turns)
    return max_turns


def _timeout(spec: JobSpec, limits: JobLimits) -> timedelta:
    if not spec.HasField("timeout") or spec.timeout.ToNanoseconds() == 0:
        return limits.default_timeout
    return validate.duration(spec.timeout, "spec.timeout", limits.max_timeout)
