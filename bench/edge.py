"""Benchmark of the edge: what Envoy and JSON add to a call, and what a JWT costs to check.

Runs every service in this process (SQLite, as `agentrt dev`) with the real Envoy in
front (`agentrt edge`), makes one job, then reads it with GetJob, one call at a time:

- gRPC straight to the gateway;
- gRPC through the edge;
- HTTP/JSON through the edge (`GET /v1/jobs/{job}`, transcoded).

Then it times the gateway's credential check alone, in this process: a (cached) API key,
an RS256 JWT and an ES256 JWT against a JWKS file.

The client shares the process and event loop with the services; the figures compare the
paths with each other, they are not a load test. Usage: python bench/edge.py [--calls N].
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import httpx
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from services.dev import local_system
from services.gateway.auth import KeysAndTokens
from services.gateway.keys import ApiKeys
from services.gateway.store import open_key_store
from services.gateway.tokens import JwtConfig, TokenVerifier
from services.kit.loop import run_main
from tests.e2e.edge import running_edge
from tests.identity import AUDIENCE, ISSUER, Issuer


async def timed(calls: int, call: Callable[[], Awaitable[object]]) -> list[float]:
    """Milliseconds of each of `calls` calls, after a tenth as many for warm-up."""
    for _ in range(max(calls // 10, 5)):
        await call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        times.append((time.perf_counter() - start) * 1000)
    return times


def row(label: str, times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[int(len(ordered) * 0.9)]
    p99 = ordered[min(int(len(ordered) * 0.99), len(ordered) - 1)]
    median = statistics.median(ordered)
    return f"| {label} | {median:.3f} ms | {p90:.3f} ms | {p99:.3f} ms |"


async def bench(calls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with (
            local_system(workdir / "data") as system,
            running_edge(system.endpoint, workdir / "edge") as edge,
            grpc.aio.insecure_channel(system.endpoint) as direct,
            grpc.aio.insecure_channel(edge.address) as proxied,
            httpx.AsyncClient(base_url=edge.url) as http,
        ):
            metadata = (("authorization", f"Bearer {system.api_key}"),)
            runtime = gateway_pb2_grpc.RuntimeServiceStub(direct)
            job = await runtime.Execute(
                gateway_pb2.ExecuteRequest(spec=jobs_pb2.JobSpec(prompt="hello")),
                metadata=metadata,
            )
            request = gateway_pb2.GetJobRequest(name=job.name)
            through = gateway_pb2_grpc.RuntimeServiceStub(proxied)
            headers = dict(metadata)
            print(f"GetJob, {calls} calls each, one at a time:\n")
            print("| path | p50 | p90 | p99 |\n|---|---|---|---|")
            for label, call in (
                (
                    "gRPC, straight to the gateway",
                    lambda: runtime.GetJob(request, metadata=metadata),
                ),
                ("gRPC through the edge", lambda: through.GetJob(request, metadata=metadata)),
                (
                    "HTTP/JSON through the edge",
                    lambda: http.get(f"/v1/{job.name}", headers=headers),
                ),
            ):
                print(row(label, await timed(calls, call)))

            issuer = Issuer()
            jwks = workdir / "jwks.json"
            jwks.write_text(json.dumps(issuer.jwks()))
            env = {"AGENTRT_JWT_JWKS": str(jwks), "AGENTRT_JWT_ISSUER": ISSUER}
            verifier = TokenVerifier(JwtConfig.from_env({**env, "AGENTRT_JWT_AUDIENCE": AUDIENCE}))
            store = await open_key_store(system.infra.storage("gateway"))
            try:
                credentials = KeysAndTokens(ApiKeys(store), verifier)
                checks = calls * 10
                print(f"\nThe credential check alone, {checks} checks each:\n")
                print("| credential | p50 | p90 | p99 |\n|---|---|---|---|")
                for label, credential in (
                    ("API key (cached)", system.api_key),
                    ("JWT, RS256 (2048-bit key)", issuer.token("rsa-1")),
                    ("JWT, ES256", issuer.token("ec-1")),
                ):

                    async def check(credential: str = credential) -> object:
                        return await credentials.authenticate(credential)

                    print(row(label, await timed(checks, check)))
            finally:
                await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    # The first job's policy and price look-ups are NOT_FOUND by design; not worth a line.
    logging.getLogger("agentrt.requests").setLevel(logging.ERROR)
    run_main(bench(args.calls))


if __name__ == "__main__":
    main()
