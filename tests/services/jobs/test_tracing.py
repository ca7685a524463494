"""The jobs service's `agent.job` spans: one per job, over its whole life, from every
terminal path, also when the job ended after a restart of the service."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis.asyncio
from agentrt.jobs.v1.jobs_pb2 import Job
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.jobs.manager import JobManager
from services.jobs.store import SQL_DIRECTORY, ActionStore, JobStore
from services.jobs.store_redis import RedisActionStore
from services.jobs.store_sqlite import SqliteJobStore
from services.jobs.tracing import record_ended_jobs
from services.jobs.validation import JobLimits
from services.kit.events import InMemoryEventChannel, InMemoryWakeups, OutboxRelay
from services.kit.names import parse_action_name, parse_job_name
from services.kit.storage import StorageConfig, migrate
from services.kit.telemetry import configure_tracing, job_span_id
from tests.services.jobs.conftest import make_spec
from tests.services.jobs.test_actions_manager import approval, outcome
from tests.services.jobs.test_manager import Clock

tracer = trace.get_tracer("tests.jobs")


@pytest.fixture
async def database(sqlite_path: Path) -> Path:
    """A migrated SQLite file for the jobs service, which each test opens and reopens."""
    await migrate(StorageConfig("sqlite", sqlite_path, None, "jobs"), SQL_DIRECTORY)
    return sqlite_path


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The spans ended during the test, from the provider every service installs."""
    exporter = InMemorySpanExporter()
    configure_tracing("jobs-tests").add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


class Service:
    """The jobs service's manager and outbox relay on one store, as JobsUnit wires them."""

    def __init__(self, store: JobStore, clock: Clock, actions: ActionStore | None = None) -> None:
        self.store = store
        self.clock = clock
        self.manager = JobManager(
            store, InMemoryWakeups(), None, JobLimits(), clock=clock, actions=actions
        )
        self.relay = OutboxRelay(
            store,
            InMemoryEventChannel(),
            None,
            on_published=functools.partial(record_ended_jobs, store, actions or store),
        )

    async def create(self, spec_parent: str = "", timeout: float = 60) -> tuple[Job, int]:
        """A job created inside a span of its trace, as by a CreateJob call: the job
        and the creating span's id."""
        spec = make_spec()
        spec.parent = spec_parent
        spec.timeout.FromTimedelta(timedelta(seconds=timeout))
        with tracer.start_as_current_span("CreateJob") as creator:
            trace_id = format(creator.get_span_context().trace_id, "032x")
            job, _ = await self.manager.create_job("acme", "alice", spec, "", trace_id)
        return job, creator.get_span_context().span_id

    async def cancel_then_sweep_late_ones(self, job: Job) -> None:
        """Cancels `job`, passes the deadline of the jobs made with `timeout=10`, sweeps
        them, and relays the events of it all."""
        await self.manager.cancel(None, parse_job_name(job.name), "not needed")
        self.clock.now += timedelta(seconds=11)
        await self.manager.expire_deadlines()
        await self.relay.drain()


def job_spans(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    found = [s for s in exporter.get_finished_spans() if s.name == "agent.job"]
    by_job = {str((s.attributes or {})["agentrt.job"]): s for s in found}
    assert len(by_job) == len(found), "one agent.job per job"
    return by_job


async def test_a_job_ended_after_a_restart_spans_its_life_under_its_creator(
    database: Path, spans: InMemorySpanExporter
) -> None:
    clock = Clock()
    before = Service(await SqliteJobStore.open(database), clock)
    job, creator = await before.create()
    await before.relay.drain()
    await before.store.close()
    assert job_spans(spans) == {}, "nothing before the job ends"

    clock.now += timedelta(seconds=5)
    after = Service(await SqliteJobStore.open(database), clock)
    try:
        ended = await after.manager.cancel(None, parse_job_name(job.name), "not needed")
        await after.relay.drain()
        await after.relay.drain()
    finally:
        await after.store.close()

    span = job_spans(spans)[job.name]
    assert span.context is not None and span.parent is not None
    assert format(span.context.trace_id, "032x") == job.trace_id
    assert span.context.span_id == job_span_id(job.name), "the id its attempts hang under"
    assert span.parent.span_id == creator
    assert (span.start_time, span.end_time) == (
        job.create_time.ToNanoseconds(),
        ended.end_time.ToNanoseconds(),
    )
    assert ended.end_time.ToNanoseconds() - job.create_time.ToNanoseconds() == 5 * 10**9
    assert (span.attributes or {})["agentrt.job.state"] == "cancelled"
    assert span.status.status_code == trace.StatusCode.UNSET


async def test_a_cascade_and_a_deadline_emit_the_span_of_every_job_they_end(
    database: Path, spans: InMemorySpanExporter
) -> None:
    clock = Clock()
    service = Service(await SqliteJobStore.open(database), clock)
    try:
        parent, _ = await service.create()
        await service.manager.lease_jobs("w1", 1, 30, 0)
        child, child_creator = await service.create(spec_parent=parent.name)
        late, _ = await service.create(timeout=10)
        await service.cancel_then_sweep_late_ones(parent)
    finally:
        await service.store.close()

    by_job = job_spans(spans)
    assert set(by_job) == {parent.name, child.name, late.name}
    cascaded = by_job[child.name]
    assert cascaded.parent is not None and cascaded.parent.span_id == child_creator
    assert (cascaded.attributes or {})["agentrt.job.state"] == "cancelled"
    assert (cascaded.attributes or {})["agentrt.parent_job"] == parent.name
    timed_out = by_job[late.name]
    assert (timed_out.attributes or {})["agentrt.job.state"] == "timed_out"
    assert (timed_out.attributes or {})["agentrt.job.failure_reason"] == "deadline_exceeded"
    assert timed_out.status.status_code == trace.StatusCode.ERROR


async def test_an_actions_span_and_its_resolvers_link_each_other(
    database: Path, spans: InMemorySpanExporter
) -> None:
    service = Service(await SqliteJobStore.open(database), Clock())
    try:
        job, _ = await service.create()
        [lease] = await service.manager.lease_jobs("w1", 1, 30, 0)
        first = await service.manager.require_action(
            parse_job_name(job.name), lease.lease_id, approval(), None, None
        )
        with tracer.start_as_current_span("ResolveAction"):
            await service.manager.resolve_action("acme", "carol", first.resume_token, outcome(), "")
        [lease] = await service.manager.lease_jobs("w1", 1, 30, 0)
        second = await service.manager.require_action(
            parse_job_name(job.name), lease.lease_id, approval(), None, None
        )
        await service.manager.cancel_action("acme", *parse_action_name(second.name), "not needed")
    finally:
        await service.store.close()

    actions = {
        str((s.attributes or {})["agentrt.action"]): s
        for s in spans.get_finished_spans()
        if s.name == "agent.action"
    }
    [resolve] = [s for s in spans.get_finished_spans() if s.name == "agent.action.resolve"]
    resolved, cancelled = actions[first.name], actions[second.name]
    assert resolved.context is not None and resolve.context is not None
    assert resolved.parent is not None and resolved.parent.span_id == job_span_id(job.name)
    assert resolved.context.trace_id == int(job.trace_id, 16) != resolve.context.trace_id
    assert [link.context.span_id for link in resolve.links] == [resolved.context.span_id]
    assert [link.context.span_id for link in resolved.links] == [resolve.context.span_id]
    assert (resolved.attributes or {})["agentrt.action.state"] == "resolved"
    assert (cancelled.attributes or {})["agentrt.action.state"] == "cancelled"
    assert cancelled.status.status_code == trace.StatusCode.ERROR and not cancelled.links


@pytest.mark.parametrize(
    "action_store", ["sqlite", pytest.param("redis", marks=pytest.mark.integration)]
)
async def test_the_actions_a_jobs_end_cancels_have_their_spans(
    database: Path, spans: InMemorySpanExporter, action_store: str, request: pytest.FixtureRequest
) -> None:
    clock = Clock()
    store = await SqliteJobStore.open(database)
    client = None
    actions: ActionStore | None = None
    if action_store == "redis":
        client = redis.asyncio.Redis.from_url(request.getfixturevalue("redis_url"))
        prefix = f"agentrt-test:{secrets.token_hex(6)}"
        actions = RedisActionStore(client, store, prefix)
    service = Service(store, clock, actions)
    try:
        waiting, _ = await service.create()
        late, _ = await service.create(timeout=10)
        for _ in (waiting, late):  # each leased in turn, and made to wait on an approval
            [lease] = await service.manager.lease_jobs("w1", 1, 30, 0)
            await service.manager.require_action(
                parse_job_name(lease.job.name), lease.lease_id, approval(), None, None
            )
        await service.cancel_then_sweep_late_ones(waiting)
    finally:
        await service.store.close()
        if client is not None:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()

    ended = {
        str((s.attributes or {})["agentrt.job"]): s
        for s in spans.get_finished_spans()
        if s.name == "agent.action"
    }
    assert set(ended) == {waiting.name, late.name}, "one agent.action per job, each once"
    for job in (waiting, late):
        span = ended[job.name]
        assert span.parent is not None and span.parent.span_id == job_span_id(job.name)
        assert (span.attributes or {})["agentrt.action.state"] == "cancelled"
        assert span.status.status_code == trace.StatusCode.ERROR
        assert span.end_time == job_spans(spans)[job.name].end_time
