"""End to end through the real Envoy: HTTP/JSON (as curl sends it), gRPC-Web, gRPC, TLS."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from agentrt.common.v1.common_pb2 import EventType, JobState, RuntimeEvent
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2

from services.dev import LocalSystem
from tests.certificates import self_signed
from tests.e2e.edge import Edge, grpc_web_frame, grpc_web_frames, json_lines, running_edge
from tests.e2e.processes import free_port

pytestmark = pytest.mark.e2e

TIMEOUT = 20.0
LIMIT = 64 * 1024
"""The edge's request size limit in these tests."""
APP = "http://app.example"
"""The one origin whose pages may call the edge in these tests."""


@pytest.fixture
async def edge(system: LocalSystem, tmp_path: Path) -> AsyncIterator[Edge]:
    settings = {"AGENTRT_EDGE_MAX_REQUEST_BYTES": str(LIMIT), "AGENTRT_EDGE_CORS_ORIGINS": APP}
    async with running_edge(system.endpoint, tmp_path / "edge", settings) as running:
        yield running


def bearer(system: LocalSystem) -> dict[str, str]:
    return {"authorization": f"Bearer {system.api_key}"}


async def test_a_job_runs_over_http_json_with_its_event_stream(
    system: LocalSystem, edge: Edge
) -> None:
    async with httpx.AsyncClient(
        base_url=edge.url, headers=bearer(system), timeout=TIMEOUT
    ) as http:
        started = await http.post("/v1/jobs:execute", json={"spec": {"prompt": "hello"}})
        assert started.status_code == 200, started.text
        job = started.json()
        assert job["state"] == "JOB_STATE_QUEUED" and job["tenant"] == "dev"

        async with http.stream("GET", f"/v1/{job['name']}:watch") as watched:
            assert watched.status_code == 200
            events = await json_lines(watched)
        types = [event["type"] for event in events]
        assert types[0] == "EVENT_TYPE_JOB_CREATED" and types[-1] == "EVENT_TYPE_JOB_SUCCEEDED"
        assert "EVENT_TYPE_OUTPUT_DELTA" in types
        assert all(event["job"] == job["name"] for event in events)

        # Resuming after the next-to-last event gives the last one only.
        async with http.stream(
            "GET", f"/v1/{job['name']}:watch", params={"afterEventId": events[-2]["id"]}
        ) as resumed:
            assert [event["id"] for event in await json_lines(resumed)] == [events[-1]["id"]]

        result = (await http.get(f"/v1/{job['name']}")).json()
        assert result["state"] == "JOB_STATE_SUCCEEDED"
        assert 'You said: "hello"' in result["result"]["output"]

        listed = (await http.get("/v1/jobs", params={"pageSize": 10})).json()
        assert [listed_job["name"] for listed_job in listed["jobs"]] == [job["name"]]
        assert (await http.get(f"/v1/{job['name']}/actions")).json().get("actions", []) == []

        # Both routes of ResolveAction reach it: by resume token and by name.
        by_token = await http.post(
            "/v1/actions:resolve", json={"resumeToken": "x" * 43, "outcome": {"approved": True}}
        )
        assert by_token.json()["details"][0]["reason"] == "RESUME_TOKEN_INVALID", by_token.text
        by_name = await http.post(
            f"/v1/{job['name']}/actions/01m8vj8603e38nezqj1zxwxb50:resolve",
            json={"outcome": {"approved": True}},
        )
        assert by_name.status_code == 404, by_name.text

        # A finished job cannot be cancelled: the gateway's status, as JSON.
        refused = await http.post(f"/v1/{job['name']}:cancel", json={"reason": "late"})
        assert refused.status_code == 400
        assert refused.json()["details"][0]["reason"] == "ILLEGAL_TRANSITION"


async def test_execute_stream_sends_each_event_as_a_json_line(
    system: LocalSystem, edge: Edge
) -> None:
    async with (
        httpx.AsyncClient(base_url=edge.url, headers=bearer(system), timeout=TIMEOUT) as http,
        http.stream("POST", "/v1/jobs:executeStream", json={"spec": {"prompt": "hi"}}) as stream,
    ):
        assert stream.status_code == 200
        events = await json_lines(stream)
    assert events[0]["type"] == "EVENT_TYPE_JOB_CREATED"
    assert events[-1]["type"] == "EVENT_TYPE_JOB_SUCCEEDED"
    text = "".join(e["outputDelta"]["text"] for e in events if "outputDelta" in e)
    assert 'You said: "hi"' in text


async def test_errors_come_back_as_json_statuses(system: LocalSystem, edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=edge.url, timeout=TIMEOUT) as http:
        anonymous = await http.post("/v1/jobs:execute", json={"spec": {"prompt": "hi"}})
        assert anonymous.status_code == 401
        assert anonymous.json()["details"][0]["reason"] == "API_KEY_MISSING"

        bad_name = await http.get("/v1/jobs/nope", headers=bearer(system))
        assert bad_name.status_code == 400
        assert bad_name.json()["details"][0]["reason"] == "NAME_INVALID"

        # A stream that fails before its first event is a plain JSON error too.
        missing = await http.get(
            "/v1/jobs/01m8vj8603e38nezqj1zxwxb50:watch", headers=bearer(system)
        )
        assert missing.status_code == 404
        assert missing.json()["details"][0]["reason"] == "JOB_NOT_FOUND"

        unknown = await http.get("/v1/jobs", params={"tenant": "other"}, headers=bearer(system))
        assert unknown.status_code == 400, "a tenant in the query is refused, not ignored"

        # The internal services are not reachable through the edge.
        internal = await http.post(
            "/agentrt.jobs.v1.JobService/ListJobs",
            content=grpc_web_frame(b""),
            headers={"content-type": "application/grpc-web+proto"},
        )
        assert internal.status_code == 404


async def test_a_job_runs_over_grpc_web(system: LocalSystem, edge: Edge) -> None:
    headers = {
        **bearer(system),
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "origin": APP,
    }
    request = gateway_pb2.ExecuteRequest(spec=jobs_pb2.JobSpec(prompt="from a browser"))
    async with httpx.AsyncClient(base_url=edge.url, headers=headers, timeout=TIMEOUT) as http:
        reply = await http.post(
            "/agentrt.gateway.v1.RuntimeService/ExecuteStream",
            content=grpc_web_frame(request.SerializeToString()),
        )
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/grpc-web")
    messages, trailers = grpc_web_frames(reply.content)
    assert trailers["grpc-status"] == "0"
    events = [RuntimeEvent.FromString(message) for message in messages]
    assert events[0].type == EventType.EVENT_TYPE_JOB_CREATED
    assert events[-1].type == EventType.EVENT_TYPE_JOB_SUCCEEDED
    assert events[0].tenant == "dev"
    assert reply.headers["access-control-allow-origin"] == APP
    assert "grpc-status" in reply.headers["access-control-expose-headers"]


@pytest.mark.parametrize(("origin", "allowed"), [(APP, True), ("http://evil.example", False)])
async def test_browsers_of_the_allowed_origins_pass_the_preflight(
    edge: Edge, origin: str, allowed: bool
) -> None:
    async with httpx.AsyncClient(base_url=edge.url, timeout=TIMEOUT) as http:
        preflight = await http.options(
            "/agentrt.gateway.v1.RuntimeService/Execute",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type, x-grpc-web",
            },
        )
    assert (preflight.headers.get("access-control-allow-origin") == origin) is allowed
    if allowed:
        assert "authorization" in preflight.headers["access-control-allow-headers"]


async def test_the_edge_refuses_an_oversized_request(system: LocalSystem, edge: Edge) -> None:
    big = "x" * (LIMIT + 1)
    async with httpx.AsyncClient(
        base_url=edge.url, headers=bearer(system), timeout=TIMEOUT
    ) as http:
        refused = await http.post("/v1/jobs:execute", json={"spec": {"prompt": big}})
        assert refused.status_code == 413
        assert refused.json() == {
            "code": 8,
            "message": f"the request is larger than the edge's limit of {LIMIT} bytes",
        }
        web = await http.post(
            "/agentrt.gateway.v1.RuntimeService/Execute",
            content=grpc_web_frame(
                gateway_pb2.ExecuteRequest(spec=jobs_pb2.JobSpec(prompt=big)).SerializeToString()
            ),
            headers={"content-type": "application/grpc-web+proto"},
        )
        assert web.status_code == 413 and web.headers["grpc-status"] == "8"

    async with grpc.aio.insecure_channel(edge.address) as channel:
        runtime = gateway_pb2_grpc.RuntimeServiceStub(channel)
        metadata = tuple(bearer(system).items())
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await runtime.Execute(
                gateway_pb2.ExecuteRequest(spec=jobs_pb2.JobSpec(prompt=big)),
                metadata=metadata,
                timeout=TIMEOUT,
            )
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"limit of {LIMIT} bytes" in (error.value.details() or "")
        # None of them reached the gateway: no job was made.
        listed = await runtime.ListJobs(
            gateway_pb2.ListJobsRequest(), metadata=metadata, timeout=TIMEOUT
        )
        assert list(listed.jobs) == []


async def test_tls_serves_json_and_grpc(system: LocalSystem, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    trust = ssl.create_default_context(cafile=str(cert))
    tls = {"AGENTRT_EDGE_TLS_CERT_FILE": str(cert), "AGENTRT_EDGE_TLS_KEY_FILE": str(key)}
    async with running_edge(system.endpoint, tmp_path / "edge", tls, verify=trust) as edge:
        assert edge.url.startswith("https://")
        async with httpx.AsyncClient(
            base_url=edge.url, headers=bearer(system), verify=trust, timeout=TIMEOUT
        ) as https:
            job = (await https.post("/v1/jobs:execute", json={"spec": {"prompt": "hello"}})).json()
            async with https.stream("GET", f"/v1/{job['name']}:watch") as watched:
                events = await json_lines(watched)
            assert events[-1]["type"] == "EVENT_TYPE_JOB_SUCCEEDED"
        async with httpx.AsyncClient(base_url=edge.url, timeout=TIMEOUT) as unverified:
            with pytest.raises(httpx.ConnectError):
                await unverified.get("/ready")
        # Plaintext is not served: the TLS listener drops the connection.
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            async with httpx.AsyncClient(timeout=TIMEOUT) as plain:
                await plain.get(f"http://{edge.address}/ready")

        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(edge.address, credentials) as channel:
            runtime = gateway_pb2_grpc.RuntimeServiceStub(channel)
            got = await runtime.GetJob(
                gateway_pb2.GetJobRequest(name=job["name"]),
                metadata=tuple(bearer(system).items()),
                timeout=TIMEOUT,
            )
        assert got.name == job["name"] and got.state == JobState.JOB_STATE_SUCCEEDED


async def slow_stream(edge: Edge, system: LocalSystem) -> list[dict[str, Any]]:
    """The events of a job of `local-slow` (a chunk every 0.1 s, about 2 s in all) as
    far as the edge lets the stream run."""
    events: list[dict[str, Any]] = []
    body = {"spec": {"prompt": "hello", "model": "local-slow"}}
    async with httpx.AsyncClient(
        base_url=edge.url, headers=bearer(system), timeout=TIMEOUT
    ) as http:
        try:
            async with http.stream("POST", "/v1/jobs:executeStream", json=body) as stream:
                async for line in stream.aiter_lines():
                    if line.strip():
                        events.append(json.loads(line))
        except (httpx.RemoteProtocolError, httpx.ReadError):
            pass  # the edge cut the stream: what arrived before counts
    return events


async def test_streams_have_their_own_timeout(system: LocalSystem, tmp_path: Path) -> None:
    short_unary = {"AGENTRT_EDGE_UNARY_TIMEOUT_SECONDS": "0.5"}
    async with running_edge(system.endpoint, tmp_path / "a", short_unary) as edge:
        events = await slow_stream(edge, system)
    assert events[-1]["type"] == "EVENT_TYPE_JOB_SUCCEEDED", "a stream outlives the unary timeout"

    short_stream = {"AGENTRT_EDGE_STREAM_TIMEOUT_SECONDS": "0.5"}
    async with running_edge(system.endpoint, tmp_path / "b", short_stream) as edge:
        events = await slow_stream(edge, system)
    assert events, "the stream started"
    assert events[-1]["type"] != "EVENT_TYPE_JOB_SUCCEEDED", "and was cut at its timeout"


async def test_the_edge_is_not_ready_while_no_gateway_answers(tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    async with (
        running_edge(nowhere, tmp_path / "edge", ready_path="admin:/ready") as edge,
        httpx.AsyncClient(timeout=TIMEOUT) as http,
    ):
        assert (await http.get(f"{edge.admin_url}/ready")).status_code == 200  # Envoy is live
        ready = await http.get(f"{edge.url}/ready")
        assert ready.status_code == 503, "but not ready: no gateway passes its health check"
        call = await http.get(f"{edge.url}/v1/jobs", headers={"authorization": "Bearer x"})
        assert call.status_code == 503
