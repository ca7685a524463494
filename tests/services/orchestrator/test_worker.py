"""Worker pools against the real jobs and engine services: runs, tools, takeovers, cancels,
deadlines and model errors, as the jobs service records them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2, engine_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from agentrt.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from google.protobuf.duration_pb2 import Duration
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.dev import local_config
from services.kit.events import is_terminal, is_transient
from services.kit.infra import open_infrastructure
from services.kit.server import Server
from services.orchestrator import server as orchestrator_server
from services.orchestrator.agent import model_call_key
from services.orchestrator.config import OrchestratorConfig
from services.serve import migrate_all
from services.units import create_unit

from .conftest import TENANT, WAIT, System, seconds_until, seconds_until_span, words

E = common_pb2
SLOW_ANSWER_CHUNKS = 16
"""Chunks of a `local-slow` answer besides one per word of the prompt."""


def of_type(events: list[E.RuntimeEvent], kind: E.EventType.ValueType) -> list[E.RuntimeEvent]:
    return [event for event in events if event.type == kind]


def is_delta(event: E.RuntimeEvent) -> bool:
    return event.type == E.EVENT_TYPE_OUTPUT_DELTA


async def test_a_job_runs_to_success_with_live_deltas_and_one_checkpoint(
    system: System, spans: InMemorySpanExporter
) -> None:
    job = await system.create_job(prompt="hello there", model="local-slow")
    pool = system.pool("worker-a")
    await pool.start()

    assert (await system.end(job.name)).type == E.EVENT_TYPE_JOB_SUCCEEDED
    done = await system.get_job(job.name)
    assert done.state == E.JOB_STATE_SUCCEEDED
    assert 'You said: "hello there"' in done.result.output
    assert [m.role for m in done.result.messages] == [E.ROLE_USER, E.ROLE_ASSISTANT]
    assert done.result.messages[-1].content == done.result.output
    assert (done.turns, done.attempt, done.usage.model_calls) == (1, 1, 1)
    assert done.usage.input_tokens > 0 and done.usage.output_tokens > 0

    history = await system.history(job.name)
    assert len(of_type(history, E.EVENT_TYPE_TURN_COMPLETED)) == 1
    (started,) = of_type(history, E.EVENT_TYPE_JOB_STARTED)
    live = [event for event in await system.stream(job.name) if is_transient(event)]
    deltas = [event for event in live if is_delta(event)]
    assert "".join(d.output_delta.text for d in deltas) == done.result.output
    job_id = job.name.removeprefix("jobs/")
    assert [e.id for e in live] == [
        f"{job_id}.{started.sequence}.{n}" for n in range(1, len(live) + 1)
    ]
    assert len(deltas) == 2 + SLOW_ANSWER_CHUNKS
    # The engine's idempotency hooks as they fired: before the first delta, after the last.
    assert (live[0].type, live[-1].type) == (
        E.EVENT_TYPE_MODEL_CALL_STARTED,
        E.EVENT_TYPE_MODEL_CALL_COMPLETED,
    )
    assert live[1:-1] == deltas
    for call in (live[0], live[-1]):
        assert (call.model_call.turn, call.model_call.model) == (1, "local-slow")
        assert call.model_call.idempotency_key == model_call_key(job.name, 1)
    for delta in deltas:
        assert (delta.tenant, delta.job, delta.trace_id) == (TENANT, job.name, job.trace_id)
        assert (delta.sequence, delta.output_delta.turn) == (started.sequence, 1)
        assert delta.job_state == E.JOB_STATE_RUNNING

    await seconds_until(pool.wait_idle())
    # The jobs service emits agent.job once it has published the job's end.
    job_span = await seconds_until_span(spans, "agent.job")
    (attempt_span,) = [s for s in spans.get_finished_spans() if s.name == "agent.attempt"]
    (run_span,) = [s for s in spans.get_finished_spans() if s.name == "agent.run"]
    assert job_span.attributes == {
        "agentrt.job": job.name,
        "agentrt.tenant": TENANT,
        "agentrt.job.state": "succeeded",
        "agentrt.job.attempts": 1,
        "agentrt.job.turns": 1,
        "gen_ai.usage.input_tokens": done.usage.input_tokens,
        "gen_ai.usage.output_tokens": done.usage.output_tokens,
    }
    # One span over the job's whole life, around its attempt.
    assert (job_span.start_time, job_span.end_time) == (
        done.create_time.ToNanoseconds(),
        done.end_time.ToNanoseconds(),
    )
    assert job_span.start_time is not None and attempt_span.start_time is not None
    assert job_span.start_time <= attempt_span.start_time
    assert attempt_span.attributes == {
        "agentrt.job": job.name,
        "agentrt.tenant": TENANT,
        "agentrt.attempt": 1,
        "agentrt.run.end": "finished",
    }
    assert job_span.context.trace_id == int(job.trace_id, 16)
    assert job_span.parent is None, "created outside any trace: the job's span is the root"
    assert attempt_span.context.trace_id == job_span.context.trace_id
    assert attempt_span.parent is not None
    assert attempt_span.parent.span_id == job_span.context.span_id
    assert run_span.parent is not None
    assert run_span.parent.span_id == attempt_span.context.span_id
    attributes = run_span.attributes or {}
    assert attributes["gen_ai.request.model"] == "local-slow"
    assert attributes["gen_ai.system"] == "local"
    assert attributes["gen_ai.usage.input_tokens"] == done.usage.input_tokens
    assert attributes["gen_ai.usage.output_tokens"] == done.usage.output_tokens
    assert not any("hello" in str(value) for value in attributes.values()), "no prompt text"


async def test_the_lease_loop_outlives_an_unreachable_jobs_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_LOCAL_SLOW_CHUNK_DELAY", "0.01")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    infra = await open_infrastructure(local_config(tmp_path, port))
    system = System(infra, jobs_pb2_grpc.JobServiceStub(infra.channel("jobs")))
    # The warning names gRPC's reason; a failure other than UNAVAILABLE (or a deadline) is
    # an error without one.
    failures = LogSignal("leasing jobs failed (")
    logging.getLogger("services.orchestrator.worker").addHandler(failures)
    try:
        await system.pool("worker-a").start()
        async with asyncio.timeout(WAIT):
            await failures.seen.wait()  # UNAVAILABLE: nothing listens on the port yet

        server = Server(f"127.0.0.1:{port}", "late-jobs")
        await migrate_all(infra, ["jobs"])
        await server.start([await create_unit("jobs", infra), await create_unit("engine", infra)])
        job = await system.create_job(prompt="hello", model="local")
        assert (await system.end(job.name)).type == E.EVENT_TYPE_JOB_SUCCEEDED
        for pool in system.pools:
            await pool.stop()
        await server.stop(grace=1.0)
    finally:
        logging.getLogger("services.orchestrator.worker").removeHandler(failures)
        await infra.close()


class LogSignal(logging.Handler):
    """Sets `seen` when a record whose message starts with `prefix` is logged."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            self.seen.set()


async def test_a_builtin_tool_call_runs_and_its_result_reaches_the_model(
    system: System,
) -> None:
    job = await system.create_job(
        prompt='call calculator {"expression": "6 * 7"}',
        model="local",
        tools=[E.ToolSpec(name="calculator")],
    )
    await system.pool("worker-a").start()

    assert (await system.end(job.name)).type == E.EVENT_TYPE_JOB_SUCCEEDED
    done = await system.get_job(job.name)
    user, calls, reply, answer = done.result.messages
    assert [m.role for m in (user, calls, reply, answer)] == [
        E.ROLE_USER,
        E.ROLE_ASSISTANT,
        E.ROLE_TOOL,
        E.ROLE_ASSISTANT,
    ]
    assert [c.name for c in calls.tool_calls] == ["calculator"]
    assert (reply.tool_call_id, reply.name, reply.content) == (
        calls.tool_calls[0].id,
        "calculator",
        "42",
    )
    assert "42" in done.result.output
    assert (done.turns, done.usage.model_calls, done.usage.tool_calls) == (2, 2, 1)
    history = await system.history(job.name)
    assert len(of_type(history, E.EVENT_TYPE_TURN_COMPLETED)) == 2
    [called] = of_type(history, E.EVENT_TYPE_TOOL_CALLED)
    assert called.tool_called.call == calls.tool_calls[0]
    assert (called.tool_called.ok, called.tool_called.output) == (True, "42")


async def test_a_tool_that_no_source_serves_fails_the_job(system: System) -> None:
    job = await system.create_job(
        prompt="call search {}", model="local", tools=[E.ToolSpec(name="search")]
    )
    await system.pool("worker-a").start()

    assert (await system.end(job.name)).type == E.EVENT_TYPE_JOB_FAILED
    done = await system.get_job(job.name)
    assert done.failure.reason == E.ERROR_REASON_TOOL_ERROR
    assert done.failure.metadata["tool"] == "search"
    assert done.turns == 0


async def test_no_final_answer_within_max_turns_fails_the_job(system: System) -> None:
    job = await system.create_job(
        prompt='call calculator {"expression": "1"}',
        model="local",
        max_turns=1,
        tools=[E.ToolSpec(name="calculator")],
    )
    await system.pool("worker-a").start()

    assert (await system.end(job.name)).type == E.EVENT_TYPE_JOB_FAILED
    done = await system.get_job(job.name)
    assert done.failure.reason == E.ERROR_REASON_MAX_TURNS_EXCEEDED
    assert (done.turns, done.usage.model_calls) == (1, 1)


async def test_an_unknown_model_fails_the_job_with_the_engines_message(
    system: System, spans: InMemorySpanExporter
) -> None:
    job = await system.create_job(prompt="hello", model="no-such-model")
    pool = system.pool("worker-a")
    await pool.start()

    assert (await system.end(job.name)).type == E.EVENT_TYPE_JOB_FAILED
    done = await system.get_job(job.name)
    assert done.failure.reason == E.ERROR_REASON_MODEL_NOT_FOUND
    assert "no-such-model" in done.failure.message
    assert done.turns == 0
    await seconds_until(pool.wait_idle())
    (run_span,) = [s for s in spans.get_finished_spans() if s.name == "agent.run"]
    assert run_span.status.status_code == trace.StatusCode.ERROR
    [exception] = [e for e in run_span.events if e.name == "exception"]
    assert "no-such-model" in str((exception.attributes or {})["exception.message"])


async def test_a_crashed_workers_job_is_taken_over_and_succeeds_once(system: System) -> None:
    job = await system.create_job(prompt=words(20), model="local-slow")
    crashing = system.pool("worker-a", concurrency=1)
    await crashing.start()
    await system.first_event(job.name, is_delta)
    await crashing.stop(release=False)

    await system.pool("worker-b").start()
    assert (await system.end(job.name)).type == E.EVENT_TYPE_JOB_SUCCEEDED
    done = await system.get_job(job.name)
    assert (done.state, done.attempt, done.turns, done.usage.model_calls) == (
        E.JOB_STATE_SUCCEEDED,
        2,
        1,
        1,
    )
    history = await system.history(job.name)
    started = of_type(history, E.EVENT_TYPE_JOB_STARTED)
    assert [(e.attempt.attempt, e.attempt.worker) for e in started] == [
        (1, "worker-a"),
        (2, "worker-b"),
    ]
    assert len(of_type(history, E.EVENT_TYPE_TURN_COMPLETED)) == 1
    assert len(of_type(history, E.EVENT_TYPE_JOB_SUCCEEDED)) == 1


async def test_a_turn_the_engine_has_recorded_is_replayed_and_its_stream_says_so(
    system: System,
) -> None:
    job = await system.create_job(prompt="hello there", model="local")
    recorded = engine_pb2.CompleteRequest(
        model="local",
        messages=[E.Message(role=E.ROLE_USER, content="hello there")],
        idempotency_key=model_call_key(job.name, 1),
    )
    engine = engine_pb2_grpc.EngineServiceStub(system.infra.channel("engine"))
    first = await engine.Complete(recorded, timeout=WAIT)
    await system.pool("worker-a").start()

    assert (await system.end(job.name)).type == E.EVENT_TYPE_JOB_SUCCEEDED
    assert (await system.get_job(job.name)).result.output == first.message.content
    calls = [event for event in await system.stream(job.name) if event.HasField("model_call")]
    assert [event.type for event in calls] == [E.EVENT_TYPE_MODEL_CALL_REPLAYED]
    assert calls[0].model_call.idempotency_key == recorded.idempotency_key


async def test_a_stopping_pool_gives_its_jobs_back_at_once(system: System) -> None:
    job = await system.create_job(prompt=words(20), model="local-slow")
    draining = system.pool("worker-a", lease_seconds=60.0, heartbeat_seconds=20.0)
    await draining.start()
    await system.first_event(job.name, is_delta)
    await draining.stop()
    released = time.monotonic()

    assert draining.status().draining
    assert of_type(await system.history(job.name), E.EVENT_TYPE_JOB_REQUEUED)
    await system.pool("worker-b").start()
    assert (await system.end(job.name)).type == E.EVENT_TYPE_JOB_SUCCEEDED
    assert time.monotonic() - released < 30, "resumed before the 60 s lease would expire"
    started = of_type(await system.history(job.name), E.EVENT_TYPE_JOB_STARTED)
    assert [(e.attempt.attempt, e.attempt.worker) for e in started] == [
        (1, "worker-a"),
        (2, "worker-b"),
    ]


async def test_cancel_cuts_the_stream_and_the_job_stays_cancelled(system: System) -> None:
    prompt_words = 100
    job = await system.create_job(prompt=words(prompt_words), model="local-slow")
    pool = system.pool("worker-a")
    await pool.start()
    await system.first_event(job.name, is_delta)

    await system.jobs.CancelJob(
        jobs_pb2.CancelJobRequest(tenant=TENANT, name=job.name, reason="changed my mind")
    )
    # The whole answer would stream for about 6 s; a heartbeat (0.25 s) notices the cancel.
    assert await seconds_until(pool.wait_idle()) < 2.0

    done = await system.get_job(job.name)
    assert done.state == E.JOB_STATE_CANCELLED
    assert done.turns == 0
    deltas = [event for event in await system.stream(job.name) if is_delta(event)]
    assert 0 < len(deltas) < prompt_words
    history = await system.history(job.name)
    assert not of_type(history, E.EVENT_TYPE_TURN_COMPLETED)
    ends = [e.type for e in history if is_terminal(e.type)]
    assert ends == [E.EVENT_TYPE_JOB_CANCELLED]


async def test_a_job_past_its_deadline_times_out(system: System) -> None:
    job = await system.create_job(
        prompt=words(100), model="local-slow", timeout=Duration(seconds=1)
    )
    pool = system.pool("worker-a")
    await pool.start()

    assert (await system.end(job.name)).type == E.EVENT_TYPE_JOB_TIMED_OUT
    done = await system.get_job(job.name)
    assert done.failure.reason == E.ERROR_REASON_DEADLINE_EXCEEDED
    assert await seconds_until(pool.wait_idle()) < 2.0


@contextlib.asynccontextmanager
async def orchestrator_unit(
    system: System, concurrency: int
) -> AsyncIterator[orchestrator_pb2_grpc.OrchestratorServiceAsyncStub]:
    """An orchestrator unit in a server of its own, and a stub to it; drained on exit."""
    config = OrchestratorConfig(
        concurrency=concurrency,
        lease_seconds=30.0,
        heartbeat_seconds=10.0,
        lease_wait_seconds=0.5,
        worker_id="worker-u",
    )
    server = Server("127.0.0.1:0", "orchestrator")
    await server.start([await orchestrator_server.create_unit(system.infra, config)])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
    finally:
        await server.stop(grace=1.0)
        await channel.close(None)


async def test_the_unit_serves_its_worker_and_drains_on_stop(system: System) -> None:
    async with orchestrator_unit(system, concurrency=3) as stub:
        job = await system.create_job(prompt=words(40), model="local-slow")
        await system.first_event(job.name, is_delta)

        (worker,) = (await stub.ListWorkers(orchestrator_pb2.ListWorkersRequest())).workers
        assert (worker.name, worker.state, worker.capacity) == (
            "workers/worker-u",
            orchestrator_pb2.Worker.STATE_ACTIVE,
            3,
        )
        assert list(worker.in_flight_jobs) == [job.name]
        assert worker.HasField("start_time") and worker.HasField("heartbeat_time")
        with pytest.raises(grpc.aio.AioRpcError) as bad_page:
            await stub.ListWorkers(orchestrator_pb2.ListWorkersRequest(page_size=501))
        assert bad_page.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await system.get_job(job.name)).state == E.JOB_STATE_QUEUED
