"""End to end: JWTs of a test identity provider, through the real Envoy, to the gateway."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.dev import LocalSystem, local_system
from tests.certificates import self_signed
from tests.e2e.edge import Edge, running_edge
from tests.e2e.processes import AGENTRT
from tests.identity import AUDIENCE, ISSUER, Issuer, serving_jwks

pytestmark = pytest.mark.e2e

TIMEOUT = 20.0


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


def write_jwks(issuer: Issuer, path: Path) -> str:
    path.write_text(json.dumps(issuer.jwks()))
    return str(path)


@pytest.fixture(params=["file", "url"])
async def system(
    request: pytest.FixtureRequest,
    issuer: Issuer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[LocalSystem]:
    """Every service in this process, its gateway trusting the issuer's JWKS (a file or
    a URL), as configured by AGENTRT_JWT_* variables."""
    monkeypatch.setenv("AGENTRT_JWT_ISSUER", ISSUER)
    monkeypatch.setenv("AGENTRT_JWT_AUDIENCE", AUDIENCE)
    async with serving_jwks(issuer) as url:
        jwks = write_jwks(issuer, tmp_path / "jwks.json") if request.param == "file" else url
        monkeypatch.setenv("AGENTRT_JWT_JWKS", jwks)
        async with local_system(tmp_path / "data") as running:
            yield running


@pytest.fixture
async def edge(system: LocalSystem, tmp_path: Path) -> AsyncIterator[Edge]:
    async with running_edge(system.endpoint, tmp_path / "edge") as running:
        yield running


def bearer(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


async def run_job(http: httpx.AsyncClient, credential: str) -> dict[str, Any]:
    """Executes a job over HTTP/JSON, follows its events to the end, returns the result."""
    started = await http.post(
        "/v1/jobs:execute", json={"spec": {"prompt": "hello"}}, headers=bearer(credential)
    )
    assert started.status_code == 200, started.text
    name = started.json()["name"]
    async with http.stream("GET", f"/v1/{name}:watch", headers=bearer(credential)) as watched:
        last = [line async for line in watched.aiter_lines() if line.strip()][-1]
    assert json.loads(last)["type"] == "EVENT_TYPE_JOB_SUCCEEDED"
    result: dict[str, Any] = (await http.get(f"/v1/{name}", headers=bearer(credential))).json()
    return result


async def test_a_token_runs_a_job_as_the_tenant_in_its_claim(
    system: LocalSystem, edge: Edge, issuer: Issuer
) -> None:
    async with httpx.AsyncClient(base_url=edge.url, timeout=TIMEOUT) as http:
        for kid in ("rsa-1", "ec-1"):
            job = await run_job(http, issuer.token(kid))
            assert (job["tenant"], job["principal"]) == ("acme", "alice@example.test")
            assert job["state"] == "JOB_STATE_SUCCEEDED"

        # API keys still work beside tokens, and each sees its own tenant's jobs only.
        dev_job = await run_job(http, system.api_key)
        assert dev_job["tenant"] == "dev"
        hidden = await http.get(f"/v1/{dev_job['name']}", headers=bearer(issuer.token()))
        assert hidden.status_code == 404
        listed = await http.get("/v1/jobs", headers=bearer(issuer.token(tenant="globex")))
        assert listed.json().get("jobs", []) == []

        # The body cannot choose another tenant (the edge drops fields the request has not).
        smuggled = await http.post(
            "/v1/jobs:execute",
            json={"spec": {"prompt": "hi"}, "tenant": "globex"},
            headers=bearer(issuer.token()),
        )
        assert smuggled.status_code == 200 and smuggled.json()["tenant"] == "acme"


BAD_TOKENS: dict[str, Callable[[Issuer], str]] = {
    "expired": lambda i: i.token(exp=int(time.time()) - 120),
    "issuer": lambda i: i.token(iss="https://elsewhere.example/"),
    "audience": lambda i: i.token(aud="not-agentrt"),
    "signature": lambda i: i.token(signer=Issuer().keys["rsa-1"][1]),
    "unsigned": lambda i: i.unsigned(),
}


async def test_bad_tokens_are_unauthenticated(
    system: LocalSystem, edge: Edge, issuer: Issuer
) -> None:
    async with httpx.AsyncClient(base_url=edge.url, timeout=TIMEOUT) as http:
        for problem, make in BAD_TOKENS.items():
            refused = await http.post(
                "/v1/jobs:execute", json={"spec": {"prompt": "hi"}}, headers=bearer(make(issuer))
            )
            assert refused.status_code == 401, problem
            status = refused.json()
            assert status["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
            assert status["details"][0]["reason"] == "TOKEN_INVALID"
            assert status["details"][0]["metadata"] == {"problem": problem}

    async with grpc.aio.insecure_channel(edge.address) as channel:
        runtime = gateway_pb2_grpc.RuntimeServiceStub(channel)
        for problem, make in BAD_TOKENS.items():
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await runtime.ListJobs(
                    gateway_pb2.ListJobsRequest(),
                    metadata=tuple(bearer(make(issuer)).items()),
                    timeout=TIMEOUT,
                )
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED, problem
        # None of the refused calls made a job.
        listed = await runtime.ListJobs(
            gateway_pb2.ListJobsRequest(),
            metadata=tuple(bearer(issuer.token()).items()),
            timeout=TIMEOUT,
        )
        assert list(listed.jobs) == []


async def test_a_token_over_tls(system: LocalSystem, issuer: Issuer, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    trust = ssl.create_default_context(cafile=str(cert))
    tls = {"AGENTRT_EDGE_TLS_CERT_FILE": str(cert), "AGENTRT_EDGE_TLS_KEY_FILE": str(key)}
    async with (
        running_edge(system.endpoint, tmp_path / "tls-edge", tls, verify=trust) as edge,
        httpx.AsyncClient(base_url=edge.url, verify=trust, timeout=TIMEOUT) as https,
    ):
        job = await run_job(https, issuer.token("ec-1"))
    assert job["tenant"] == "acme"


async def test_the_cli_runs_a_job_with_a_token_through_the_edge_over_tls(
    system: LocalSystem, issuer: Issuer, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path / "tls")
    tls = {"AGENTRT_EDGE_TLS_CERT_FILE": str(cert), "AGENTRT_EDGE_TLS_KEY_FILE": str(key)}
    trust = ssl.create_default_context(cafile=str(cert))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AGENTRT_")},
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(cert),
        "AGENTRT_API_KEY": issuer.token(),
    }
    async with running_edge(system.endpoint, tmp_path / "edge", tls, verify=trust) as edge:
        cli = await asyncio.create_subprocess_exec(
            AGENTRT,
            "run",
            "hello",
            "--endpoint",
            edge.address,
            "--tls",
            "--json",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(cli.communicate(), TIMEOUT)
    assert cli.returncode == 0, err.decode()
    job = json.loads(out)
    assert (job["tenant"], job["state"]) == ("acme", "JOB_STATE_SUCCEEDED")
