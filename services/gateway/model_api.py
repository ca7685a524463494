"""Direct model calls for tenants: the policy's model rules, a budget hold, the engine, usage.

A call is checked, held and recorded exactly as the orchestrator does for a job's model
call, with the orchestrator's own guards (CachedPolicy and LedgerSpend) over a job-less
`Job` that carries only who calls and under which policy set: the same rules decide, the
same worst case is held against the same budgets, and the usage record names no job. The
answer is returned only once its usage is settled in the ledger, so an answer the caller
has is an answer that was counted. Both the gRPC ModelService and the OpenAI-compatible
HTTP endpoint run on this.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2, engine_pb2_grpc
from agentrt.gateway.v1 import models_pb2
from agentrt.jobs.v1 import jobs_pb2
from agentrt.policy.v1 import policy_pb2
from opentelemetry import trace

from services.gateway.keys import Principal
from services.gateway.models import ModelDirectory
from services.kit.errors import (
    FieldInvalid,
    FieldRequired,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from services.kit.interceptors import LONG_LIVED, remaining_time
from services.kit.paging import decode_offset, encode_offset, page_size
from services.kit.telemetry import current_trace_id
from services.kit.tool_schema import schema_problem
from services.kit.usage_attributes import usage_attributes
from services.orchestrator.guards import BudgetExceeded, Hold
from services.orchestrator.policy import (
    CachedPolicy,
    PolicyCheckFailed,
    PolicyUnavailable,
    policy_denied,
)
from services.orchestrator.spend import LedgerSpend, LedgerUnavailable

ErrorReason = common_pb2.ErrorReason
MODEL_PREFIX = "models/"
MAX_REQUEST_ID = 128
CALL_SECONDS = 600.0
"""How long a model call may take when its caller set no deadline (an HTTP client): a
long answer outlives the deployment's default deadline of internal calls."""


def _engine_call_options() -> dict[str, Any]:
    """The caller's remaining time, or CALL_SECONDS, kept as the engine call's own."""
    left = remaining_time()
    return {"timeout": CALL_SECONDS if left is None else left, "metadata": LONG_LIVED}


@dataclass(frozen=True)
class _Call:
    """One admitted call: its id, the engine request, and the hold it settles."""

    id: str
    job: jobs_pb2.Job
    request: engine_pb2.CompleteRequest
    hold: Hold


class ModelApi:
    """The model API's logic, below the gRPC and HTTP handlers (see the module docstring)."""

    def __init__(
        self,
        engine: engine_pb2_grpc.EngineServiceAsyncStub,
        models: ModelDirectory,
        policy: CachedPolicy,
        spend: LedgerSpend,
    ) -> None:
        self._engine = engine
        self._models = models
        self._policy = policy
        self._spend = spend

    async def list_models(
        self, caller: Principal, size: int = 0, token: str = ""
    ) -> models_pb2.ListModelsResponse:
        """The engine's models that the default policy set does not deny the caller."""
        limit = page_size(size, 100, 1000)
        start = decode_offset(token)
        job = _caller_job(caller, common_pb2.PolicyRef())
        allowed = []
        for model in await self._engine_models():
            name = model.name.removeprefix(MODEL_PREFIX)
            decision = await self._decide(job, name)
            if decision.verdict != policy_pb2.VERDICT_DENY:
                allowed.append(model)
        page = allowed[start : start + limit]
        return models_pb2.ListModelsResponse(
            models=[
                models_pb2.Model(
                    name=model.name,
                    context_window=model.context_window,
                    supports_tools=model.supports_tools,
                    supports_streaming=model.supports_streaming,
                )
                for model in page
            ],
            next_page_token=encode_offset(start + limit) if start + limit < len(allowed) else "",
        )

    async def complete(
        self, caller: Principal, request: models_pb2.CompleteRequest
    ) -> models_pb2.CompleteResponse:
        """One call, answered whole once its usage is recorded."""
        call = await self._admit(caller, request)
        try:
            answer = await self._engine.Complete(call.request, **_engine_call_options())
        except BaseException:
            await self._spend.release(call.hold, "the model call failed")
            raise
        usage = await self._settle(call, answer.usage, answer.model)
        return models_pb2.CompleteResponse(
            id=call.id,
            message=answer.message,
            finish_reason=answer.finish_reason,
            usage=usage,
            model=answer.model,
            replayed=answer.replayed,
        )

    async def stream(
        self, caller: Principal, request: models_pb2.CompleteRequest
    ) -> AsyncGenerator[models_pb2.CompleteChunk, None]:
        """One call, streamed; the last chunk (finish reason, tool calls, usage) comes
        once the usage is recorded. A stream cut short releases the hold."""
        call = await self._admit(caller, request)
        settled = False
        chunks = self._engine.StreamComplete(call.request, **_engine_call_options())
        try:
            async for chunk in chunks:
                if chunk.finish_reason == engine_pb2.FINISH_REASON_UNSPECIFIED:
                    if chunk.text_delta:
                        yield models_pb2.CompleteChunk(id=call.id, text_delta=chunk.text_delta)
                    continue
                usage = await self._settle(call, chunk.usage, chunk.model)
                settled = True
                yield models_pb2.CompleteChunk(
                    id=call.id,
                    text_delta=chunk.text_delta,
                    finish_reason=chunk.finish_reason,
                    tool_calls=chunk.tool_calls,
                    usage=usage,
                    model=chunk.model,
                )
        finally:
            chunks.cancel()  # the caller went away: so does the provider's stream
            if not settled:
                await self._spend.release(call.hold, "the model call did not finish")

    async def _admit(self, caller: Principal, request: models_pb2.CompleteRequest) -> _Call:
        """Validates, checks the policy and holds the worst case; the call to make."""
        if not request.model:
            raise FieldRequired("model")
        if not request.messages:
            raise FieldRequired("messages")
        _check_request_id(request.request_id)
        for i, tool in enumerate(request.tools):
            problem = schema_problem(tool.parameters)
            if problem is not None:
                raise FieldInvalid(f"tools[{i}].parameters", problem)
        await self._models.require(request.model)
        job = _caller_job(caller, request.policy)
        job.spec.model = request.model
        if request.request_id:
            # A repeated call must send the very record its first one did, and its trace
            # is another one.
            job.trace_id = ""
        decision = await self._decide(job, request.model)
        _enforce(decision, request.model)
        call_id = _call_id(caller.tenant, request.request_id)
        engine_request = engine_pb2.CompleteRequest(
            model=request.model,
            messages=request.messages,
            tools=request.tools,
            params=request.params,
            # Scoped by tenant: two tenants' request ids never share a recorded answer.
            idempotency_key=f"api/{caller.tenant}/{request.request_id}"
            if request.request_id
            else "",
            tenant=caller.tenant,
        )
        try:
            hold = await self._spend.reserve_model_call(job, common_pb2.Usage(), engine_request)
        except BudgetExceeded as refused:
            raise _budget_error(refused) from None
        return _Call(call_id, job, engine_request, hold)

    async def _settle(
        self, call: _Call, usage: common_pb2.Usage, answered_by: str
    ) -> common_pb2.Usage:
        """Records the call's usage and settles its hold; the usage, priced, is also put on
        the span of the request (gRPC or HTTP), the one span a direct model call has."""
        try:
            settled = await self._spend.settle_model_call(call.job, call.hold, usage, call.id)
        except BudgetExceeded as failed:
            raise _budget_error(failed) from None
        settled.model_calls = 1
        trace.get_current_span().set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": call.request.model,
                "gen_ai.response.model": answered_by,
                **usage_attributes(settled),
            }
        )
        return settled

    async def _decide(self, job: jobs_pb2.Job, model: str) -> policy_pb2.Decision:
        try:
            return await self._policy.check_model(job, model, policy_pb2.JobCounts())
        except PolicyUnavailable as unavailable:
            failure = unavailable.failure
            raise Unavailable(failure.message, failure.reason, failure.metadata) from None
        except PolicyCheckFailed as failed:
            failure = failed.failure
            raise NotFound(failure.message, failure.reason, failure.metadata) from None

    async def _engine_models(self) -> list[engine_pb2.Model]:
        models: list[engine_pb2.Model] = []
        token = ""
        while True:
            page = await self._engine.ListModels(
                engine_pb2.ListModelsRequest(page_size=1000, page_token=token)
            )
            models.extend(page.models)
            token = page.next_page_token
            if not token:
                return models


def _caller_job(caller: Principal, policy: common_pb2.PolicyRef) -> jobs_pb2.Job:
    """The job-less Job the guards take: who calls, in which trace, under which set."""
    return jobs_pb2.Job(
        tenant=caller.tenant,
        principal=caller.principal,
        trace_id=current_trace_id(),
        spec=jobs_pb2.JobSpec(policy=policy),
    )


def _enforce(decision: policy_pb2.Decision, model: str) -> None:
    """PermissionDenied(POLICY_DENIED) unless the decision allows the call. A call that
    needs approval is refused too: a direct call has no job to wait in."""
    if decision.verdict == policy_pb2.VERDICT_ALLOW:
        return
    failure = policy_denied(decision)
    message = f"the call of model {model} was {failure.message}"
    if decision.verdict == policy_pb2.VERDICT_REQUIRE_APPROVAL:
        message = (
            f"the call of model {model} needs approval ({decision.reason}), which only a "
            "job can wait for: run it with Execute"
        )
    raise PermissionDenied(message, failure.reason, {**failure.metadata, "model": model})


def _budget_error(refused: BudgetExceeded) -> ResourceExhausted | Unavailable:
    failure = refused.failure
    if isinstance(refused, LedgerUnavailable):
        return Unavailable(failure.message, failure.reason, failure.metadata)
    return ResourceExhausted(failure.message, failure.reason, failure.metadata)


def _check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise FieldInvalid("request_id", f"up to {MAX_REQUEST_ID} printable characters")


def _call_id(tenant: str, request_id: str) -> str:
    """The call's id and usage record id: derived from the request id when there is one,
    so that a repeated call is recorded once."""
    if not request_id:
        return f"cmpl-{secrets.token_hex(12)}"
    digest = hashlib.sha256(f"{tenant}\n{request_id}".encode()).hexdigest()
    return f"cmpl-{digest[:24]}"
