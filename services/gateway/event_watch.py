"""Every job's events for one follower: the global event log, filtered by tenant, type and job."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

from agentrt.common.v1.common_pb2 import EventType, RuntimeEvent
from agentrt.gateway.v1 import gateway_pb2
from agentrt.jobs.v1.jobs_pb2 import Job

from services.kit.errors import FieldInvalid, PermissionDenied
from services.kit.events import Cursor, EventChannel, parse_cursor

LookupJob = Callable[[str, str], Awaitable[Job | None]]
"""The job an event names, read as its tenant (tenant, job name); None when it is gone."""

_JOBS_REMEMBERED = 10_000
"""Jobs whose match a follower keeps, so that a job's events cost one lookup, not one each."""


@dataclass(frozen=True)
class EventFilter:
    """Which events of the global log one follower is sent."""

    tenant: str | None
    """Only this tenant's events; None for every tenant's (an admin's)."""
    types: frozenset[EventType.ValueType] = frozenset()
    """Only these types; empty for every type."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Only events of jobs whose labels include all of these."""
    session: str = ""
    """Only events of jobs of this session."""

    @property
    def reads_jobs(self) -> bool:
        """Whether passing an event needs its job (labels and session are not on events)."""
        return bool(self.labels or self.session)

    def passes_event(self, event: RuntimeEvent) -> bool:
        if self.tenant is not None and event.tenant != self.tenant:
            return False
        return not self.types or event.type in self.types

    def passes_job(self, job: Job) -> bool:
        if self.session and job.spec.session != self.session:
            return False
        return all(job.spec.labels.get(key) == value for key, value in self.labels.items())


def event_filter(request: gateway_pb2.WatchEventsRequest, tenant: str, admin: bool) -> EventFilter:
    """The request's filter for a caller of `tenant`; FieldInvalid for an unknown or
    unspecified type, PermissionDenied for all_tenants without an admin key."""
    if request.after_cursor:
        try:
            parse_cursor(request.after_cursor)
        except ValueError:
            raise FieldInvalid(
                "after_cursor", f"{request.after_cursor[:60]!r} is not a cursor of WatchEvents"
            ) from None
    for index, kind in enumerate(request.types):
        if kind == EventType.EVENT_TYPE_UNSPECIFIED or kind not in EventType.values():
            raise FieldInvalid(f"types[{index}]", f"{kind} is not an event type")
    for key in request.labels:
        if not key:
            raise FieldInvalid("labels", "a label key is empty")
    if request.all_tenants and not admin:
        raise PermissionDenied("all_tenants needs an admin key")
    return EventFilter(
        tenant=None if request.all_tenants else tenant,
        types=frozenset(request.types),
        labels=dict(request.labels),
        session=request.session,
    )


async def watch_events(
    events: EventChannel, after: Cursor, wanted: EventFilter, lookup_job: LookupJob
) -> AsyncGenerator[tuple[Cursor, RuntimeEvent], None]:
    """The events of the global log after `after` ("" for: from now on) that pass
    `wanted`, each with its cursor, until closed (`contextlib.aclosing`)."""
    cursor = after or await events.global_position()
    matches: OrderedDict[str, bool] = OrderedDict()
    # Every channel's follow_all is an async generator; the protocol only promises less.
    follower = cast(AsyncGenerator[tuple[Cursor, RuntimeEvent], None], events.follow_all(cursor))
    async with contextlib.aclosing(follower) as live:
        async for position, event in live:
            if not wanted.passes_event(event):
                continue
            if wanted.reads_jobs and not await _job_passes(event, wanted, lookup_job, matches):
                continue
            yield position, event


async def _job_passes(
    event: RuntimeEvent, wanted: EventFilter, lookup_job: LookupJob, matches: OrderedDict[str, bool]
) -> bool:
    known = matches.get(event.job)
    if known is not None:
        matches.move_to_end(event.job)
        return known
    job = await lookup_job(event.tenant, event.job)
    passes = job is not None and wanted.passes_job(job)
    matches[event.job] = passes
    if len(matches) > _JOBS_REMEMBERED:
        matches.popitem(last=False)
    return passes
