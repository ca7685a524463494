"""Who is calling: the API key in a call's metadata, checked against the gateway's keys."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from agentrt.common.v1.common_pb2 import ErrorReason

from services.gateway.keys import ApiKeys, Principal
from services.kit.errors import Unauthenticated

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


async def authenticate(context: grpc.aio.ServicerContext[Any, Any], keys: ApiKeys) -> Principal:
    """The caller of the RPC being served. The tenant and principal come from the key
    alone, never from the request."""
    return await keys.authenticate(api_key_from_metadata(context.invocation_metadata() or ()))
