"""A JWT's admin claim reaches the admin APIs a gateway forwards, as an admin key does."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from agentrt.policy.v1 import policy_pb2, policy_pb2_grpc

from services.dev import LocalSystem
from tests.identity import AUDIENCE, ISSUER, Issuer
from tests.services.gateway.conftest import TIMEOUT, bearer, refused
from tests.services.gateway.forwarding import forwarding_gateway


async def test_only_a_token_with_the_admin_claim_calls_the_admin_apis(
    system: LocalSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issuer = Issuer()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    for name, value in {
        "AGENTRT_JWT_JWKS": str(jwks),
        "AGENTRT_JWT_ISSUER": ISSUER,
        "AGENTRT_JWT_AUDIENCE": AUDIENCE,
        "AGENTRT_JWT_ADMIN_CLAIM": "roles",
        "AGENTRT_JWT_ADMIN_VALUE": "agentrt-admin",
    }.items():
        monkeypatch.setenv(name, value)
    async with (
        forwarding_gateway(system) as endpoint,
        grpc.aio.insecure_channel(endpoint) as channel,
    ):
        policy = policy_pb2_grpc.PolicyServiceStub(channel)
        request = policy_pb2.ListPolicySetsRequest()
        operator = bearer(issuer.token(roles=["agentrt-admin"]))
        await policy.ListPolicySets(request, metadata=operator, timeout=TIMEOUT)

        member = bearer(issuer.token(roles=["member"], agentrt_admin=True))
        code, info = await refused(policy.ListPolicySets(request, metadata=member, timeout=TIMEOUT))
        assert (code, info.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")

        expired = bearer(issuer.token(roles=["agentrt-admin"], exp=1))
        code, info = await refused(
            policy.ListPolicySets(request, metadata=expired, timeout=TIMEOUT)
        )
        assert (code, info.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
