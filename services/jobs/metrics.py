"""The jobs service's metrics: unfinished jobs by state, the age of the queue, and lease
takeovers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from agentrt.common.v1.common_pb2 import JobState
from opentelemetry.metrics import CallbackOptions, Observation

from services.jobs.store import JobStore, LiveJobs
from services.kit.metrics import meter

LEASE_TAKEOVERS = meter().create_counter(
    "agentrt.jobs.lease.takeovers",
    unit="{lease}",
    description="Jobs leased again after their lease expired (a crashed or cut-off worker)",
)


class JobGauges:
    """Observable gauges over the last reading of the store, refreshed by `refresh`.

    The metrics readers call gauges from their own threads, which cannot await the
    store, so a periodic task of the service reads it and the gauges report that.
    """

    def __init__(
        self,
        store: JobStore,
        count_actions: bool,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`count_actions`: the store keeps the actions (not another action store), so
        its count of pending ones is every one."""
        self._store = store
        self._clock = clock
        self._count_actions = count_actions
        self._live: LiveJobs | None = None
        self._pending_actions: int | None = None
        meter().create_observable_gauge(
            "agentrt.jobs.live",
            callbacks=[self._observe_jobs],
            unit="{job}",
            description="Jobs QUEUED, RUNNING and WAITING, by state",
        )
        meter().create_observable_gauge(
            "agentrt.jobs.queue.age",
            callbacks=[self._observe_queue_age],
            unit="s",
            description="How long the oldest QUEUED job has waited (0: none queued)",
        )
        if count_actions:
            meter().create_observable_gauge(
                "agentrt.jobs.actions.pending",
                callbacks=[self._observe_pending_actions],
                unit="{action}",
                description="Actions PENDING: approvals and client tool calls jobs wait on",
            )

    async def refresh(self) -> None:
        self._live = await self._store.live_jobs()
        if self._count_actions:
            self._pending_actions = await self._store.pending_actions()

    def _observe_jobs(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._live is None:
            return []
        return [
            Observation(jobs, {"state": JobState.Name(state).removeprefix("JOB_STATE_").lower()})
            for state, jobs in self._live.counts.items()
        ]

    def _observe_queue_age(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._live is None:
            return []
        oldest = self._live.oldest_queued
        age = 0.0 if oldest is None else (self._clock() - oldest).total_seconds()
        return [Observation(max(age, 0.0))]

    def _observe_pending_actions(self, options: CallbackOptions) -> Iterable[Observation]:
        return [] if self._pending_actions is None else [Observation(self._pending_actions)]
