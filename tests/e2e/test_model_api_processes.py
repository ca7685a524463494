"""End to end with each service its own process: the request context crosses every network
hop into the jobs and engine logs, and the OpenAI SDK calls a model through the gateway's
HTTP endpoint, recorded by the ledger process."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import openai
import pytest
from agentrt.common.v1 import common_pb2
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc

from tests.e2e.conftest import create_key
from tests.e2e.processes import Cluster, cluster, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture
def running(pg_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Cluster]:
    http = f"127.0.0.1:{free_port()}"
    with cluster(
        pg_dsn, redis_url, redis_prefix, tmp_path, extra={"AGENTRT_HTTP_LISTEN_ADDRESS": http}
    ) as started:
        yield started


def log_lines(running: Cluster, service: str, method: str) -> list[str]:
    """The request-log lines of `method` in the service's log, waited for briefly (a
    line is written when its RPC ends, which may be just after the client saw it)."""
    deadline = time.monotonic() + 5
    while True:
        text = (running.logs / f"{service}.log").read_text()
        lines = [line for line in text.splitlines() if f"method={method} " in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


async def test_the_gateways_context_is_in_the_logs_of_jobs_and_engine(running: Cluster) -> None:
    key = create_key(running, "acme", "alice")
    auth = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(running.address("gateway")) as channel:
        stub = gateway_pb2_grpc.RuntimeServiceStub(channel)
        request = gateway_pb2.ExecuteRequest(
            spec=jobs_pb2.JobSpec(prompt="hello", session="chat-9"), request_id="order-7"
        )
        events = [e async for e in stub.ExecuteStream(request, metadata=auth, timeout=30)]
    assert events[-1].type == common_pb2.EVENT_TYPE_JOB_SUCCEEDED
    job = events[0].job

    [created] = log_lines(running, "jobs", "/agentrt.jobs.v1.JobService/CreateJob")
    assert " request_id=order-7 " in created
    assert " tenant=acme principal=alice session=chat-9" in created
    [model_call] = log_lines(running, "engine", "/agentrt.engine.v1.EngineService/StreamComplete")
    assert re.search(
        rf" request_id=order-7 trace_id={events[0].trace_id} tenant=acme principal=alice "
        rf"session=chat-9 job={job}$",
        model_call,
    ), model_call


async def test_the_openai_sdk_calls_a_model_through_the_gateway(running: Cluster) -> None:
    key = create_key(running, "acme", "alice")
    base = f"http://{running.env['AGENTRT_HTTP_LISTEN_ADDRESS']}/v1"
    async with openai.AsyncOpenAI(base_url=base, api_key=key) as client:
        chat = await client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "hello"}]
        )
        stream = await client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "hello"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == chat.choices[0].message.content

    async with grpc.aio.insecure_channel(running.address("ledger")) as channel:
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        listed = await ledger.ListUsageRecords(
            ledger_pb2.ListUsageRecordsRequest(tenant="acme"), timeout=10
        )
    assert len(listed.usage_records) == 2
    assert {r.principal for r in listed.usage_records} == {"alice"}
    assert f"usageRecords/{chat.id}" in {r.name for r in listed.usage_records}
