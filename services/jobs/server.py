"""The jobs service's unit: its store, the outbox relay, and the deadline and action
expiry sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc

from services.jobs.handlers import JobServicer
from services.jobs.manager import JobManager
from services.jobs.store import JobStore, open_job_store
from services.jobs.validation import JobLimits
from services.kit.config import env_float
from services.kit.events import OutboxRelay
from services.kit.infra import Infrastructure
from services.kit.periodic import cancel_all, run_every

log = logging.getLogger(__name__)


class JobsUnit:
    """Job records and leases; relays its outbox to the event channel."""

    name = "jobs"
    service_names = (jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,)

    def __init__(self, store: JobStore, infra: Infrastructure, sweep_seconds: float) -> None:
        self._store = store
        self._relay = OutboxRelay(store, infra.events, infra.wakeups)
        self._manager = JobManager(store, infra.wakeups, self._relay.notify, JobLimits())
        self._sweep_seconds = sweep_seconds
        self._tasks: list[asyncio.Task[None]] = []

    def register(self, server: grpc.aio.Server) -> None:
        jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(self._manager), server)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._relay.run(), name="jobs-outbox-relay"),
            asyncio.create_task(
                run_every(self._sweep_seconds, self._sweep_expired), name="jobs-expiry"
            ),
        ]

    async def stop(self) -> None:
        await self._manager.stop_leasing()
        await cancel_all(self._tasks)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._relay.drain()
        await self._store.close()

    async def _sweep_expired(self) -> None:
        """Times out the jobs past their deadline, then expires the actions past theirs;
        a full batch is followed at once by another."""
        limits = JobLimits()
        while len(await self._manager.expire_deadlines()) >= limits.deadline_batch:
            pass
        while len(await self._manager.expire_actions()) >= limits.action_batch:
            pass


async def create_unit(infra: Infrastructure) -> JobsUnit:
    sweep = env_float("AGENTRT_DEADLINE_SWEEP_SECONDS", 1.0, minimum=0.05)
    return JobsUnit(await open_job_store(infra.storage("jobs")), infra, sweep)
