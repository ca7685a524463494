"""Who is calling: the API key in a call's metadata, checked against the gateway's keys."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from agentrt.common.v1.common_pb2 import ErrorReason, RequestContext

from services.gateway.keys import ApiKeys, Principal
from services.kit.errors import Unauthenticated
from services.kit.request_context import (
    annotate_current_span,
    new_request_id,
    set_request_context,
    update_request_context,
)
from services.kit.telemetry import current_trace_id

_BEARER = "bearer "


def api_key_from_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The key sent as `authorization: Bearer <key>` or `x-api-key: <key>`.

    Unauthenticated(API_KEY_MISSING) when neither is sent (or both are empty);
    Unauthenticated(API_KEY_INVALID) for another authorization scheme, a header sent
    twice, or two headers carrying different keys.
    """
    sent: dict[str, list[str]] = {}
    for key, value in metadata:
        if key in ("authorization", "x-api-key") and isinstance(value, str):
            sent.setdefault(key, []).append(value.strip())
    candidates = set()
    for header, values in sent.items():
        if len(values) > 1:
            raise _invalid(f"the {header} header was sent more than once")
        candidates.add(_credential(header, values[0]))
    candidates.discard("")
    if not candidates:
        raise Unauthenticated(
            "no API key: send `authorization: Bearer <key>` or `x-api-key: <key>`",
            ErrorReason.ERROR_REASON_API_KEY_MISSING,
        )
    if len(candidates) > 1:
        raise _invalid("authorization and x-api-key carry different keys")
    return candidates.pop()


def _credential(header: str, value: str) -> str:
    if header == "x-api-key" or not value:
        return value
    if value[: len(_BEARER)].lower() != _BEARER:
        raise _invalid("the authorization header must use the Bearer scheme")
    return value[len(_BEARER) :].strip()


def _invalid(message: str) -> Unauthenticated:
    return Unauthenticated(message, ErrorReason.ERROR_REASON_API_KEY_INVALID)


async def authenticate(
    context: grpc.aio.ServicerContext[Any, Any], keys: ApiKeys, request_id: str = ""
) -> Principal:
    """The caller of the RPC being served. The tenant and principal come from the key
    alone, never from the request."""
    return await authenticate_headers(context.invocation_metadata() or (), keys, request_id)


async def authenticate_headers(
    headers: Iterable[tuple[str, str | bytes]], keys: ApiKeys, request_id: str = ""
) -> Principal:
    """The caller who sent `headers` (gRPC metadata, or HTTP headers in lowercase).

    The request context of the call starts here, with `request_id` (a new one when
    empty), the trace and then the key's tenant and principal: a context the caller
    sent is dropped, since only calls inside the deployment may carry one."""
    set_request_context(
        RequestContext(request_id=request_id or new_request_id(), trace_id=current_trace_id())
    )
    caller = await keys.authenticate(api_key_from_metadata(headers))
    annotate_current_span(update_request_context(tenant=caller.tenant, principal=caller.principal))
    return caller
