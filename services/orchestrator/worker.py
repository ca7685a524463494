"""The worker pool: leases queued jobs from the jobs service and runs each in its own task."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from agentrt.jobs.v1 import jobs_pb2
from agentrt.retries import backoff_delay
from opentelemetry import trace

from services.kit.infra import Infrastructure
from services.kit.labels import WHAT_IF_LABEL
from services.kit.request_context import job_request_context, set_request_context
from services.kit.telemetry import job_span_context
from services.orchestrator.agent import (
    DEFAULT_RETRY,
    AgentRun,
    LeasedRun,
    RetryPolicy,
    run_leased_job,
)
from services.orchestrator.config import OrchestratorConfig
from services.orchestrator.guards import AllowAll, NoBudgets, PolicyGuard, SpendGuard
from services.orchestrator.ports import (
    GrpcJobsPort,
    GrpcModelPort,
    LeaseLost,
    ToolsPort,
)
from services.orchestrator.workflow.executor import WorkflowRun, is_workflow

log = logging.getLogger(__name__)
tracer = trace.get_tracer("agentrt.orchestrator")

MAX_LEASES_PER_CALL = 100
"""The most jobs one LeaseJobs call may ask for."""
LEASE_RETRY_BASE = 0.5
"""Seconds before the lease loop tries again after a first failure; doubled up to
about LEASE_RETRY_BASE * 2**5 (16 s) while failures go on."""


@dataclass(frozen=True)
class PoolStatus:
    """What a pool tells about itself (OrchestratorService.ListWorkers)."""

    worker_id: str
    host: str
    capacity: int
    in_flight_jobs: tuple[str, ...]
    """The jobs it runs now, "jobs/{job}", sorted."""
    draining: bool
    """True once stop() began: it leases no more."""
    start_time: datetime
    heartbeat_time: datetime | None
    """When the jobs service last granted or extended one of its leases."""


@dataclass(frozen=True)
class _Running:
    lease: jobs_pb2.JobLease
    task: asyncio.Task[None]


class WorkerPool:
    """Runs up to `config.concurrency` jobs at once, leasing more as slots free up."""

    def __init__(
        self,
        infra: Infrastructure,
        config: OrchestratorConfig,
        retry: RetryPolicy = DEFAULT_RETRY,
        *,
        tools: ToolsPort,
        policy: PolicyGuard | None = None,
        spend: SpendGuard | None = None,
    ) -> None:
        """`tools` offers and runs the jobs' tools; `policy` and `spend` are asked before
        every model and tool call (default: allow everything, no budgets)."""
        self._config = config
        self._retry = retry
        self._tools = tools
        self._policy: PolicyGuard = policy or AllowAll()
        self._spend: SpendGuard = spend or NoBudgets()
        self._events = infra.events
        self._jobs = GrpcJobsPort(infra.channel("jobs"), config.worker_id, config.lease_seconds)
        self._model = GrpcModelPort(infra.channel("engine"))
        self._running: dict[str, _Running] = {}
        """Keyed by lease id: a job whose lease this worker lost and then leased again
        runs twice for a moment, and the older run only learns it on its next write."""
        self._slot_freed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._lease_loop: asyncio.Task[None] | None = None
        self._draining = False
        self._release_on_stop = True
        self._stopping = asyncio.Event()
        """Set by stop(): ends the lease loop's waits."""
        self._start_time = datetime.now(UTC)
        self._host = socket.gethostname()

    @property
    def worker_id(self) -> str:
        return self._config.worker_id

    def status(self) -> PoolStatus:
        return PoolStatus(
            worker_id=self._config.worker_id,
            host=self._host,
            capacity=self._config.concurrency,
            in_flight_jobs=tuple(sorted(r.lease.job.name for r in self._running.values())),
            draining=self._draining,
            start_time=self._start_time,
            heartbeat_time=self._jobs.last_contact,
        )

    async def wait_idle(self) -> None:
        """Returns once no job runs in the pool (at once when none does)."""
        await self._idle.wait()

    async def start(self) -> None:
        """Starts leasing jobs."""
        if self._lease_loop is not None:
            raise RuntimeError("the worker pool is already started")
        self._start_time = datetime.now(UTC)
        self._lease_loop = asyncio.create_task(self._lease_forever(), name="lease loop")

    async def stop(self, release: bool = True) -> None:
        """Stops leasing, cuts the runs in flight and waits for them to end.

        With `release` each cut job is given back to the queue at once, so another worker
        resumes it from its checkpoint now rather than when its lease expires. Without it
        the leases are abandoned, as a crashed process would leave them.

        The LeaseJobs call in flight is let run out (at most the lease wait; a draining
        jobs server answers it at once) rather than cancelled: a lease granted just as the
        call was cancelled would reach nobody and sit until it expired, whereas leases that
        reach a stopping pool are released like the cut ones.
        """
        self._draining = True
        self._release_on_stop = release
        self._stopping.set()
        self._slot_freed.set()
        running = list(self._running.values())
        for entry in running:
            entry.task.cancel()
        await asyncio.gather(*(entry.task for entry in running), return_exceptions=True)
        if self._lease_loop is not None:
            await asyncio.gather(self._lease_loop, return_exceptions=True)
        if release:
            cut = [entry.lease for entry in running if entry.task.cancelled()]
            await asyncio.gather(*(self._release(lease) for lease in cut))

    async def _lease_forever(self) -> None:
        failures = 0
        while not self._draining:
            free = self._config.concurrency - len(self._running)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                leases = await self._jobs.lease_jobs(
                    min(free, MAX_LEASES_PER_CALL), self._config.lease_wait_seconds
                )
            except Exception as error:
                failures += 1
                delay = backoff_delay(min(failures, 6), base=LEASE_RETRY_BASE)
                _log_lease_failure(error, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                continue
            failures = 0
            if not self._draining:
                self._launch(leases)
            elif self._release_on_stop:
                await asyncio.gather(*(self._release(lease) for lease in leases))

    def _launch(self, leases: Sequence[jobs_pb2.JobLease]) -> None:
        for lease in leases:
            task = asyncio.create_task(self._run_job(lease), name=f"job {lease.job.name}")
            self._running[lease.lease_id] = _Running(lease, task)
            self._idle.clear()
            task.add_done_callback(functools.partial(self._ended, lease.lease_id))

    def _ended(self, lease_id: str, _: asyncio.Task[None]) -> None:
        self._running.pop(lease_id, None)
        self._slot_freed.set()
        if not self._running:
            self._idle.set()

    async def _run_job(self, lease: jobs_pb2.JobLease) -> None:
        job = lease.job
        set_request_context(job_request_context(job))  # this task's, for all the job's calls
        # One attempt of the job, a child of its `agent.job` span (services/jobs/tracing.py).
        with tracer.start_as_current_span(
            "agent.attempt",
            context=job_span_context(job.name, job.trace_id),
            attributes={
                "agentrt.job": job.name,
                "agentrt.tenant": job.tenant,
                "agentrt.attempt": job.attempt,
            },
        ) as span:
            run: LeasedRun
            # A what-if job of the replay service is charged to no budget.
            spend = NoBudgets() if WHAT_IF_LABEL in job.spec.labels else self._spend
            if is_workflow(job):
                run = WorkflowRun(lease, self._jobs, self._events, spend)
            else:
                run = AgentRun(
                    lease,
                    self._jobs,
                    self._model,
                    self._events,
                    self._retry,
                    tools=self._tools,
                    policy=self._policy,
                    spend=spend,
                    tree=self._jobs,
                )
            try:
                end = await run_leased_job(run, self._jobs, self._config.heartbeat_seconds)
            except Exception as error:
                # Its lease expires and another worker tries again from the checkpoint.
                log.exception("job %s: the run failed", job.name)
                span.record_exception(error)
                span.set_status(trace.StatusCode.ERROR, type(error).__name__)
                return
            span.set_attribute("agentrt.run.end", end.value)

    async def _release(self, lease: jobs_pb2.JobLease) -> None:
        try:
            await self._jobs.release(lease.job.name, lease.lease_id, "worker draining")
        except LeaseLost:
            pass  # it finished, was cancelled or taken over meanwhile: nothing to give back
        except Exception as error:
            log.warning(
                "job %s: release failed (%s); it resumes when its lease expires",
                lease.job.name,
                error,
            )


def _log_lease_failure(error: Exception, delay: float) -> None:
    if isinstance(error, grpc.aio.AioRpcError) and error.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ):
        log.warning("leasing jobs failed (%s); retrying in %.1f s", error.details(), delay)
    else:
        log.error("leasing jobs failed; retrying in %.1f s", delay, exc_info=error)
