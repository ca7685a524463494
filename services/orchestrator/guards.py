"""What the agent loop asks before it spends or acts: the policy and the budgets.

The loop asks `PolicyGuard` before every model call and every tool call, and
`SpendGuard` for a reservation before every model call (settled after it, released when
it fails) and before every tool call. The implementations talk to the policy and ledger
services; `AllowAll` and `NoBudgets` stand in where a deployment or a test has neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2
from agentrt.jobs.v1 import jobs_pb2
from agentrt.policy.v1 import policy_pb2


class BudgetExceeded(Exception):
    """A budget (the job's or its tenant's) does not allow the next call. The job ends
    FAILED with `failure` (reason BUDGET_EXCEEDED; the message names the budget and by how
    much it would be overrun)."""

    def __init__(self, failure: common_pb2.Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class PolicyGuard(Protocol):
    """The job's policy set, evaluated (and cached) for one call at a time."""

    async def check_model(
        self, job: jobs_pb2.Job, model: str, counts: policy_pb2.JobCounts
    ) -> policy_pb2.Decision:
        """The decision on calling `model` now, given what the job has done so far."""
        ...

    async def check_tool(
        self, job: jobs_pb2.Job, call: common_pb2.ToolCall, counts: policy_pb2.JobCounts
    ) -> policy_pb2.Decision:
        """The decision on running `call` now."""
        ...


@dataclass(frozen=True)
class Hold:
    """A reservation held for one model call, to settle or release."""

    reservation: str = ""
    """"reservations/{reservation}", or empty when no tenant budget applies."""
    amounts: dict[str, str] = field(default_factory=dict)
    """What was reserved, for logs."""


class SpendGuard(Protocol):
    """The job's BudgetSpec and its tenant's budgets in the ledger."""

    async def reserve_model_call(
        self, job: jobs_pb2.Job, spent: common_pb2.Usage, request: engine_pb2.CompleteRequest
    ) -> Hold:
        """Reserves the worst case of `request` (estimated input + max output tokens, at
        the model's price). Raises BudgetExceeded when the job's spec or a tenant budget
        does not allow it; `spent` is the job's usage so far. A caller cut meanwhile leaves
        nothing held."""
        ...

    async def settle_model_call(
        self, job: jobs_pb2.Job, hold: Hold, usage: common_pb2.Usage, record_id: str
    ) -> common_pb2.Usage:
        """Records what the call really used (idempotent by `record_id`) and settles the
        hold; returns `usage` with its cost filled in. A caller cut meanwhile is cut once
        the ledger answered."""
        ...

    async def release(self, hold: Hold, reason: str) -> None:
        """Gives back a hold whose call failed, even when the caller is cut meanwhile;
        never raises (a hold not given back expires)."""
        ...

    async def check_tool_call(
        self, job: jobs_pb2.Job, spent: common_pb2.Usage, hold: bool = True
    ) -> None:
        """Raises BudgetExceeded when the job may make no more tool calls; with `hold`
        (the call runs now) one tool call is held until record_tool_call settles it. A
        caller cut meanwhile leaves nothing held."""
        ...

    async def record_tool_call(
        self, job: jobs_pb2.Job, call: common_pb2.ToolCall, record_id: str
    ) -> None:
        """Records one tool call in the ledger (idempotent by `record_id`), settling the
        hold check_tool_call kept; a caller cut meanwhile is cut once the ledger answered."""
        ...

    async def open_tree(self, job: jobs_pb2.Job) -> None:
        """Before a job creates its first child: when it is the root of a tree that
        inherits budgets and its BudgetSpec limits tokens, cost or tool calls, makes (once)
        the one account the whole tree spends from. Raises LedgerUnavailable."""
        ...


ALLOW = policy_pb2.Decision(verdict=policy_pb2.VERDICT_ALLOW, reason="no policy applies")


class AllowAll:
    """A PolicyGuard that allows everything: for deployments without a policy service."""

    async def check_model(
        self, job: jobs_pb2.Job, model: str, counts: policy_pb2.JobCounts
    ) -> policy_pb2.Decision:
        return ALLOW

    async def check_tool(
        self, job: jobs_pb2.Job, call: common_pb2.ToolCall, counts: policy_pb2.JobCounts
    ) -> policy_pb2.Decision:
        return ALLOW


class NoBudgets:
    """A SpendGuard with no ledger: nothing is reserved or recorded."""

    async def reserve_model_call(
        self, job: jobs_pb2.Job, spent: common_pb2.Usage, request: engine_pb2.CompleteRequest
    ) -> Hold:
        return Hold()

    async def settle_model_call(
        self, job: jobs_pb2.Job, hold: Hold, usage: common_pb2.Usage, record_id: str
    ) -> common_pb2.Usage:
        return usage

    async def release(self, hold: Hold, reason: str) -> None:
        return None

    async def check_tool_call(
        self, job: jobs_pb2.Job, spent: common_pb2.Usage, hold: bool = True
    ) -> None:
        return None

    async def record_tool_call(
        self, job: jobs_pb2.Job, call: common_pb2.ToolCall, record_id: str
    ) -> None:
        return None

    async def open_tree(self, job: jobs_pb2.Job) -> None:
        return None
