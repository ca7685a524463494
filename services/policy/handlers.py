"""PolicyService: validates requests, delegates to the store and the rules."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from agentrt.policy.v1 import policy_pb2, policy_pb2_grpc
from google.protobuf.empty_pb2 import Empty

from services.kit import validate
from services.kit.errors import FieldInvalid, FieldRequired, NotFound
from services.kit.events import Wakeups
from services.kit.paging import page_size
from services.policy.names import (
    CHANGED_TOPIC,
    DEFAULT_POLICY_SET,
    check_policy_set_id,
    parse_policy_set_name,
    policy_set_name,
)
from services.policy.rules import Call, decide, validate_rules
from services.policy.store import NewPolicySet, PolicySetChange, PolicySetStore

Context = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_REQUEST_ID = 128
MUTABLE_PATHS = ("description", "rules")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    """Policy set CRUD for operators (through the gateway), decisions for workers.

    After every write it notifies `wakeups` on CHANGED_TOPIC, so that orchestrators drop
    their cached sets at once instead of at their next revalidation.
    """

    def __init__(
        self,
        store: PolicySetStore,
        clock: Callable[[], datetime] = _utc_now,
        wakeups: Wakeups | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._wakeups = wakeups

    async def CreatePolicySet(
        self, request: policy_pb2.CreatePolicySetRequest, context: Context
    ) -> policy_pb2.PolicySet:
        validate.no_nul(request)
        if not request.policy_set_id:
            raise FieldRequired("policy_set_id")
        policy_set_id = check_policy_set_id(request.policy_set_id)
        if not request.HasField("policy_set"):
            raise FieldRequired("policy_set")
        validate_rules(request.policy_set.rules)
        _check_request_id(request.request_id)
        policy_set = request.policy_set
        created, _ = await self._store.create(
            NewPolicySet(
                policy_set_id,
                policy_set.description,
                policy_set.rules,
                request.request_id,
                _request_hash(policy_set_id, policy_set),
            ),
            self._clock(),
        )
        await self._announce_change(created.name)
        return created

    async def GetPolicySet(
        self, request: policy_pb2.GetPolicySetRequest, context: Context
    ) -> policy_pb2.PolicySet:
        validate.no_nul(request)
        return await self._store.get(parse_policy_set_name(request.name))

    async def ListPolicySets(
        self, request: policy_pb2.ListPolicySetsRequest, context: Context
    ) -> policy_pb2.ListPolicySetsResponse:
        validate.no_nul(request)
        size = page_size(request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        policy_sets, token = await self._store.list(size, request.page_token)
        return policy_pb2.ListPolicySetsResponse(policy_sets=policy_sets, next_page_token=token)

    async def UpdatePolicySet(
        self, request: policy_pb2.UpdatePolicySetRequest, context: Context
    ) -> policy_pb2.PolicySet:
        validate.no_nul(request)
        if not request.HasField("policy_set"):
            raise FieldRequired("policy_set")
        policy_set = request.policy_set
        policy_set_id = parse_policy_set_name(policy_set.name, "policy_set.name")
        change = _change(policy_set, list(request.update_mask.paths))
        if change.rules is not None:
            validate_rules(change.rules)
        updated = await self._store.update(policy_set_id, change, policy_set.etag, self._clock())
        await self._announce_change(updated.name)
        return updated

    async def DeletePolicySet(
        self, request: policy_pb2.DeletePolicySetRequest, context: Context
    ) -> Empty:
        validate.no_nul(request)
        await self._store.delete(parse_policy_set_name(request.name), request.etag)
        await self._announce_change(request.name)
        return Empty()

    async def EvaluatePolicy(
        self, request: policy_pb2.EvaluatePolicyRequest, context: Context
    ) -> policy_pb2.EvaluatePolicyResponse:
        validate.no_nul(request)
        call = _call(request)
        policy_set_id = DEFAULT_POLICY_SET
        if request.policy_set:
            policy_set_id = parse_policy_set_name(request.policy_set, "policy_set")
        name = policy_set_name(policy_set_id)
        try:
            policy_set = await self._store.get(policy_set_id)
        except NotFound:
            if policy_set_id != DEFAULT_POLICY_SET:
                raise
            policy_set = policy_pb2.PolicySet(name=name)
        decision = decide(name, policy_set.rules, call)
        log.debug(
            "policy %s v%d for %s: %s %s (%s); arguments %.1000s",
            name,
            policy_set.version,
            request.job or "no job",
            call.tool or call.model,
            policy_pb2.Verdict.Name(decision.verdict),
            decision.reason,
            request.tool_call.arguments,
        )
        return policy_pb2.EvaluatePolicyResponse(
            decision=decision, policy_version=policy_set.version, policy_set=name
        )

    async def _announce_change(self, name: str) -> None:
        """Tells the orchestrators that a set changed. The change is committed already, so
        a failure to notify is only logged: orchestrators still see it at their next
        revalidation by version (AGENTRT_POLICY_REVALIDATE_SECONDS)."""
        if self._wakeups is None:
            return
        try:
            await self._wakeups.notify(CHANGED_TOPIC)
        except Exception as error:
            log.warning("could not announce the change of %s: %s", name, error)


def _check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise FieldInvalid("request_id", f"must be at most {MAX_REQUEST_ID} printable characters")


def _request_hash(policy_set_id: str, policy_set: policy_pb2.PolicySet) -> bytes:
    body = policy_pb2.PolicySet(description=policy_set.description, rules=policy_set.rules)
    digest = hashlib.sha256(policy_set_id.encode())
    digest.update(b"\0")
    digest.update(body.SerializeToString(deterministic=True))
    return digest.digest()


def _change(policy_set: policy_pb2.PolicySet, paths: list[str]) -> PolicySetChange:
    """What the update_mask (AIP-134) says to replace."""
    if paths == ["*"]:
        paths = list(MUTABLE_PATHS)
    elif not paths:
        present = {"description": bool(policy_set.description), "rules": bool(policy_set.rules)}
        paths = [path for path in MUTABLE_PATHS if present[path]]
        if not paths:
            raise FieldInvalid("update_mask", "is empty and policy_set sets no mutable field")
    for path in paths:
        if path not in MUTABLE_PATHS:
            raise FieldInvalid(
                "update_mask", f"path {path!r} is unknown or immutable; use description, rules or *"
            )
    return PolicySetChange(
        description=policy_set.description if "description" in paths else None,
        rules=list(policy_set.rules) if "rules" in paths else None,
    )


def _call(request: policy_pb2.EvaluatePolicyRequest) -> Call:
    if not request.tenant:
        raise FieldRequired("tenant")
    subject = request.WhichOneof("subject")
    if subject is None:
        raise FieldRequired("subject")
    if subject == "model" and not request.model:
        raise FieldRequired("model")
    if subject == "tool_call" and not request.tool_call.name:
        raise FieldRequired("tool_call.name")
    return Call(
        tenant=request.tenant,
        principal=request.principal,
        model=request.model,
        tool=request.tool_call.name,
        counts=request.counts,
    )
