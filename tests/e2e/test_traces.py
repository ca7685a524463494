"""End to end: the services as processes, and `agentrt dev`, export their spans by OTLP/gRPC
to a receiver run by the test, and a job with an approved tool call and a child job is one
span tree."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from agentrt import workflows as wf
from agentrt.common.v1 import common_pb2
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2
from google.protobuf.struct_pb2 import Struct

from tests.e2e.conftest import create_key
from tests.e2e.otlp import Received, Receiver, span_tree
from tests.e2e.processes import AGENTRT, Cluster, cluster, free_port, wait_serving
from tests.e2e.test_approvals import require_approval_of_calculations

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

E = common_pb2
WAIT = 30.0
PROMPT = (
    'call calculator {"expression": "6 * 7"}\ncall run_agent {"agent": "helper", "prompt": "p"}'
)


@pytest.fixture
def traced(
    receiver: tuple[Receiver, int], pg_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> Iterator[Cluster]:
    with cluster(pg_dsn, redis_url, redis_prefix, tmp_path, extra=otel(receiver[1])) as running:
        yield running


def otel(port: int) -> dict[str, str]:
    """The variables that send a process's spans to the receiver on `port` at once."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }


async def run_job(gateway: str, policy: str, key: str) -> jobs_pb2.Job:
    """Runs PROMPT's job to its end, approving its calculation on the way; checks that
    WatchJob showed the usage of each of its turns."""
    await require_approval_of_calculations(policy)
    auth = (("authorization", f"Bearer {key}"),)
    spec = jobs_pb2.JobSpec(
        prompt=PROMPT,
        model="local",
        tools=[E.ToolSpec(name="calculator"), E.ToolSpec(name="run_agent")],
        policy=E.PolicyRef(name="approvals"),
    )
    spec.agents["helper"].CopyFrom(wf.agent("reply: helped with {input}"))
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = gateway_pb2_grpc.RuntimeServiceStub(channel)
        job = await stub.Execute(gateway_pb2.ExecuteRequest(spec=spec), metadata=auth, timeout=10)
        async with asyncio.timeout(WAIT):
            while True:
                listed = await stub.ListActions(
                    gateway_pb2.ListActionsRequest(parent=job.name), metadata=auth, timeout=10
                )
                if listed.actions:
                    break
                await asyncio.sleep(0.1)
        outcome = Struct()
        outcome.update({"approved": True})
        await stub.ResolveAction(
            gateway_pb2.ResolveActionRequest(name=listed.actions[0].name, outcome=outcome),
            metadata=auth,
            timeout=10,
        )
        watched = []
        async with asyncio.timeout(WAIT):
            async for event in stub.WatchJob(
                gateway_pb2.WatchJobRequest(name=job.name), metadata=auth
            ):
                watched.append(event)
        done: jobs_pb2.Job = await stub.GetJob(
            gateway_pb2.GetJobRequest(name=job.name), metadata=auth
        )
    recorded = [e.usage_recorded for e in watched if e.type == E.EVENT_TYPE_USAGE_RECORDED]
    assert [r.turn for r in recorded] == [1, 2], "one usage.recorded per turn"
    assert all(r.model == "local" and r.usage.total_tokens > 0 for r in recorded)
    assert sum(r.usage.output_tokens for r in recorded) == done.usage.output_tokens
    return done


async def spans_until(found: Receiver, names: dict[str, int]) -> list[Received]:
    """The spans received once at least names[n] spans of each name n are (the services
    export in batches)."""
    async with asyncio.timeout(WAIT):
        while True:
            counts = {n: sum(1 for s in found.spans if s.span.name == n) for n in names}
            if all(counts[n] >= names[n] for n in names):
                await asyncio.sleep(0.5)  # the rest of the last batches
                return list(found.spans)
            await asyncio.sleep(0.1)


def ancestors(span: Received, by_id: dict[bytes, Received]) -> list[Received]:
    chain = []
    while span.span.parent_span_id:
        span = by_id[span.span.parent_span_id]
        chain.append(span)
    return chain


async def test_a_job_with_an_approval_a_tool_and_a_child_is_one_span_tree(
    receiver: tuple[Receiver, int], traced: Cluster
) -> None:
    key = create_key(traced, "acme", "alice")
    done = await run_job(traced.address("gateway"), traced.address("policy"), key)
    spans = await check_tree(receiver[0], done, lambda service: service)
    # Capture is off by default: no prompt, answer or tool arguments on any span.
    for span in spans:
        for value in span.attributes.values():
            assert "6 * 7" not in str(value) and "helped with" not in str(value), span.span.name


@pytest.fixture
def dev(receiver: tuple[Receiver, int], tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`agentrt dev` exporting to the receiver with every capture switch on; yields its
    address and its API key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRT_")}
    env.update(otel(receiver[1]))
    env["AGENTRT_DATA_DIR"] = str(tmp_path / "data")
    env["AGENTRT_OTEL_CAPTURE_INPUT"] = "true"
    env["AGENTRT_OTEL_CAPTURE_OUTPUT"] = "true"
    env["AGENTRT_OTEL_CAPTURE_TOOL_ARGS"] = "true"
    port = free_port()
    log = (tmp_path / "dev.log").open("wb")
    process = subprocess.Popen(
        [AGENTRT, "dev", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_serving(f"127.0.0.1:{port}", "agentrt.gateway.v1.RuntimeService", 30, process)
        state = tmp_path / "data" / "dev.json"
        deadline = time.monotonic() + 10
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield f"127.0.0.1:{port}", json.loads(state.read_text())["api_key"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)


async def test_agentrt_dev_makes_the_same_tree_and_captures_when_told(
    receiver: tuple[Receiver, int], dev: tuple[str, str]
) -> None:
    address, key = dev
    done = await run_job(address, address, key)
    spans = await check_tree(receiver[0], done, lambda service: "agentrt-dev")
    runs = [s for s in spans if s.span.name == "agent.run"]
    inputs = [json.loads(r.attributes["gen_ai.input.messages"]) for r in runs]
    assert any(m[0] == {"role": "ROLE_USER", "content": PROMPT} for m in inputs), inputs
    assert any("helped with p" in str(r.attributes.get("gen_ai.output.messages")) for r in runs)
    [tool] = [s for s in spans if s.span.name == "agent.tool"]
    assert json.loads(tool.attributes["gen_ai.tool.call.arguments"]) == {"expression": "6 * 7"}


async def check_tree(
    found: Receiver, done: jobs_pb2.Job, service: Callable[[str], str]
) -> list[Received]:
    """Asserts the span tree of run_job's job and returns the spans received;
    `service` names the process that serves a service."""
    assert done.state == E.JOB_STATE_SUCCEEDED, done.failure
    spans = await spans_until(
        found,
        {"agent.job": 2, "agent.attempt": 4, "agent.run": 3, "agent.tool": 1, "agent.action": 1},
    )
    trace_id = bytes.fromhex(done.trace_id)
    in_trace = [s for s in spans if s.span.trace_id == trace_id]
    by_id = {s.id: s for s in in_trace}
    assert len(by_id) == len(in_trace), "every span exported once"

    # No orphans: every parent was exported, and the trace has one root, the Execute call.
    for span in in_trace:
        assert not span.span.parent_span_id or span.span.parent_span_id in by_id, span.span.name
    [root] = [s for s in in_trace if not s.span.parent_span_id]
    assert root.span.name == "/agentrt.gateway.v1.RuntimeService/Execute"
    assert root.service == service("gateway")

    jobs = {s.attributes["agentrt.job"]: s for s in in_trace if s.span.name == "agent.job"}
    assert len(jobs) == 2, "one agent.job per job, not per attempt"
    parent_job = jobs[done.name]
    [child_job] = [s for name, s in jobs.items() if name != done.name]
    assert parent_job.service == service("jobs")
    assert child_job.attributes["agentrt.parent_job"] == done.name
    assert parent_job in ancestors(child_job, by_id), "the child's job under its parent's"
    assert root in ancestors(parent_job, by_id)
    # Each agent.job spans its job's life, from creation to end, emitted when it ended.
    assert parent_job.span.start_time_unix_nano == done.create_time.ToNanoseconds()
    assert parent_job.span.end_time_unix_nano == done.end_time.ToNanoseconds()
    assert parent_job.attributes["agentrt.job.state"] == "succeeded"
    assert parent_job.attributes["agentrt.job.attempts"] == 3
    assert parent_job.span.start_time_unix_nano < child_job.span.start_time_unix_nano
    assert child_job.span.end_time_unix_nano < parent_job.span.end_time_unix_nano

    attempts = [s for s in in_trace if s.span.name == "agent.attempt"]
    parent_attempts = [s for s in attempts if s.attributes["agentrt.job"] == done.name]
    assert len(parent_attempts) == 3, "ask, then after the approval, then after the child"
    assert sorted(s.attributes["agentrt.attempt"] for s in parent_attempts) == [1, 2, 3]
    for attempt in attempts:
        job = jobs[str(attempt.attributes["agentrt.job"])]
        assert attempt.span.parent_span_id == job.id
        assert attempt.service == service("orchestrator")
        started = attempt.span.start_time_unix_nano
        assert job.span.start_time_unix_nano < started < job.span.end_time_unix_nano

    runs = [s for s in in_trace if s.span.name == "agent.run"]
    assert len(runs) == 3  # the parent's two turns and the child's one
    for run in runs:
        assert by_id[run.span.parent_span_id].span.name == "agent.attempt"
        attributes = run.attributes
        assert attributes["gen_ai.system"] == "local"
        assert attributes["gen_ai.request.model"] == "local"
        assert attributes["gen_ai.response.model"] == "local"
        assert isinstance(attributes["gen_ai.usage.input_tokens"], int)
        assert int(attributes["gen_ai.usage.input_tokens"]) > 0
        assert int(attributes["gen_ai.usage.output_tokens"]) > 0
        assert attributes["gen_ai.response.finish_reasons"] in (["stop"], ["tool_calls"])

    [tool] = [s for s in in_trace if s.span.name == "agent.tool"]
    assert tool.attributes["gen_ai.tool.name"] == "calculator"
    assert tool.attributes["agentrt.tool.outcome"] == "ok"
    assert by_id[tool.span.parent_span_id] in parent_attempts

    [action] = [s for s in in_trace if s.span.name == "agent.action"]
    assert action.span.parent_span_id == parent_job.id
    assert action.service == service("jobs"), "emitted where it was resolved"
    assert action.attributes["agentrt.action.kind"] == "approval"
    assert action.attributes["agentrt.action.state"] == "resolved"
    assert action.span.end_time_unix_nano > action.span.start_time_unix_nano
    # The resolver's trace (its ResolveAction call) and the action's span link each other.
    [resolve] = [s for s in spans if s.span.name == "agent.action.resolve"]
    assert resolve.span.trace_id != trace_id
    assert [(link.trace_id, link.span_id) for link in resolve.span.links] == [(trace_id, action.id)]
    assert [(link.trace_id, link.span_id) for link in action.span.links] == [
        (resolve.span.trace_id, resolve.id)
    ]

    # The picture in docs/observability.md (pytest -s shows it).
    both = [s for s in spans if s.span.trace_id in (trace_id, resolve.span.trace_id)]
    print(span_tree(both, leave_out=routine))
    return spans


def routine(span: Received) -> bool:
    """The calls the picture leaves out: health checks, heartbeats, policy and ledger."""
    return any(
        part in span.span.name
        for part in ("grpc.health", "HeartbeatLease", "PolicyService", "LedgerService")
    )
