"""Who is calling: the API key (or JWT) in a call's metadata, checked by the gateway."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import grpc
from agentrt.common.v1.common_pb2 import ErrorReason, RequestContext

from services.gateway.keys import KEY_PREFIX, ApiKeys, Principal
from services.gateway.tokens import TokenVerifier, looks_like_jwt
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


class Credentials(Protocol):
    """What recognises a credential sent as a bearer token."""

    async def authenticate(self, credential: str, /) -> Principal: ...


class KeysAndTokens:
    """API keys, and JWTs of the configured identity provider when there is one.

    A credential that reads as an API key (`agk_...`) is checked as one; any other that
    has the form of a JWT goes to the token verifier. With no verifier, a JWT is just an
    invalid API key."""

    def __init__(self, keys: ApiKeys, tokens: TokenVerifier | None = None) -> None:
        self._keys = keys
        self._tokens = tokens

    async def authenticate(self, credential: str) -> Principal:
        if (
            self._tokens is not None
            and not credential.startswith(KEY_PREFIX)
            and looks_like_jwt(credential)
        ):
            return await self._tokens.authenticate(credential)
        return await self._keys.authenticate(credential)


async def authenticate(
    context: grpc.aio.ServicerContext[Any, Any], credentials: Credentials, request_id: str = ""
) -> Principal:
    """The caller of the RPC being served. The tenant and principal come from the
    credential alone, never from the request."""
    return await authenticate_headers(context.invocation_metadata() or (), credentials, request_id)


async def authenticate_headers(
    headers: Iterable[tuple[str, str | bytes]], credentials: Credentials, request_id: str = ""
) -> Principal:
    """The caller who sent `headers` (gRPC metadata, or HTTP headers in lowercase).

    The request context of the call starts here, with `request_id` (a new one when
    empty), the trace and then the credential's tenant and principal: a context the
    caller sent is dropped, since only calls inside the deployment may carry one."""
    set_request_context(
        RequestContext(request_id=request_id or new_request_id(), trace_id=current_trace_id())
    )
    caller = await credentials.authenticate(api_key_from_metadata(headers))
    annotate_current_span(update_request_context(tenant=caller.tenant, principal=caller.principal))
    return caller
