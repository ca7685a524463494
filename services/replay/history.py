"""The jobs service as the replay service reads it: job histories and specs, every tenant."""

from __future__ import annotations

import grpc
from agentrt.common.v1.common_pb2 import RuntimeEvent
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc

PAGE = 1000
"""Events per ListJobEvents call (its maximum)."""


class JobsServiceHistory:
    """`JobHistory` over the jobs service's gRPC API."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._jobs = jobs_pb2_grpc.JobServiceStub(channel)

    async def events_after(self, job: str, after_sequence: int) -> list[RuntimeEvent]:
        events: list[RuntimeEvent] = []
        while True:
            request = jobs_pb2.ListJobEventsRequest(
                name=job, after_sequence=after_sequence, page_size=PAGE
            )
            try:
                page = await self._jobs.ListJobEvents(request)
            except grpc.aio.AioRpcError as error:
                # A job the jobs service does not know has no history to add.
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return events
                raise
            events += page.events
            if len(page.events) < PAGE:
                return events
            after_sequence = page.events[-1].sequence

    async def job(self, tenant: str, job: str) -> jobs_pb2.Job:
        found: jobs_pb2.Job = await self._jobs.GetJob(
            jobs_pb2.GetJobRequest(tenant=tenant, name=job)
        )
        return found
