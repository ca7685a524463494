"""ReexecuteRecording's logic: recorded re-execution in this process, or a live what-if job.

A what-if job is a new job of the recording's tenant, created through the jobs service
with the overrides asked for and the label WHAT_IF_LABEL (services/kit/labels.py), which
tells the orchestrator to charge it to no budget. Its actions are resolved as the recorded
ones were; its events are compared with the recording once it ends, and its usage is
reported.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Sequence
from typing import TypeVar

import grpc
from agentrt.common.v1.common_pb2 import ErrorReason, EventType, JobState, RuntimeEvent, Usage
from agentrt.engine.v1 import engine_pb2, engine_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from agentrt.replay.v1.replay_pb2 import (
    OutputSource,
    Recording,
    ReexecuteRecordingRequest,
    ReexecutionDiff,
)

from services.kit.errors import FailedPrecondition, FieldInvalid, NotFound, Unavailable
from services.kit.labels import WHAT_IF_LABEL
from services.orchestrator.guards import PolicyGuard
from services.replay.diff import divergence, is_compared
from services.replay.names import recording_name
from services.replay.playback import events_from
from services.replay.recordings import RecordingRow
from services.replay.reexecution import reexecute_job
from services.replay.store import RecordingStore

T = TypeVar("T")

DEFAULT_DIVERGENCES = 10
MAX_DIVERGENCES = 100
POLL_SECONDS = 0.2
_SOURCES = (
    OutputSource.OUTPUT_SOURCE_UNSPECIFIED,
    OutputSource.OUTPUT_SOURCE_RECORDED,
    OutputSource.OUTPUT_SOURCE_LIVE,
)
RECORDED = OutputSource.OUTPUT_SOURCE_RECORDED
LIVE = OutputSource.OUTPUT_SOURCE_LIVE


class Reexecutor:
    """Re-executes recordings: `policy` decides recorded runs anew; `channels` reach the
    jobs service and the engine for live ones."""

    def __init__(
        self,
        store: RecordingStore,
        policy: PolicyGuard,
        jobs: grpc.aio.Channel | None = None,
        engine: grpc.aio.Channel | None = None,
    ) -> None:
        self._store = store
        self._policy = policy
        self._jobs = jobs_pb2_grpc.JobServiceStub(jobs) if jobs is not None else None
        self._engine = engine_pb2_grpc.EngineServiceStub(engine) if engine is not None else None

    async def reexecute(
        self, recording_id: str, request: ReexecuteRecordingRequest
    ) -> ReexecutionDiff:
        models, tools = _sources(request)
        limit = _divergence_limit(request.max_divergences)
        if models == RECORDED and (request.model or request.system_prompt):
            which = "model" if request.model else "system_prompt"
            raise FieldInvalid(which, "only with live model outputs (OUTPUT_SOURCE_LIVE)")
        row = await self._store.get(recording_id)
        if not row.metadata.HasField("spec"):
            row = await self._with_spec(row)
        spec = jobs_pb2.JobSpec()
        spec.CopyFrom(row.metadata.spec)
        if request.HasField("policy"):
            spec.policy.CopyFrom(request.policy)
        events = [entry async for entry in events_from(self._store, recording_id, 0)]
        tree = _jobs_of(row, events)
        diff = ReexecutionDiff(
            recording=recording_name(recording_id), model_outputs=models, tool_outputs=tools
        )
        if len(tree) > 1:
            if models == LIVE:
                raise _not_reexecutable(
                    row,
                    len(tree),
                    "a live what-if run of a tree is not supported: it would compare the "
                    "top-level job alone",
                )
            await self._recorded_tree(row, tree, request, events, diff)
        elif models == LIVE:
            await self._live(row, spec, request, events, diff)
        else:
            job = jobs_pb2.Job(
                name=row.job,
                tenant=row.tenant,
                principal=row.metadata.principal,
                spec=spec,
                state=JobState.JOB_STATE_RUNNING,
            )
            result = await reexecute_job(job, events, self._policy)
            diff.divergences.extend(result.divergences)
            diff.events_compared = result.compared
            diff.job_state = result.state
            diff.output = result.output
        diff.identical = not diff.divergences
        if len(diff.divergences) > limit:
            del diff.divergences[limit:]
            diff.truncated = True
        return diff

    async def _recorded_tree(
        self,
        row: RecordingRow,
        tree: Sequence[str],
        request: ReexecuteRecordingRequest,
        events: Sequence[tuple[int, RuntimeEvent]],
        diff: ReexecutionDiff,
    ) -> None:
        """Re-executes each agent job of the tree against its own recorded outputs, in
        the order the recording first names them. A workflow job (the root, or a nested
        one) is not re-run: its graph executor's decisions follow from its children's
        answers, which are compared in the children. The recording keeps only the
        top-level job's spec, so the children's are asked of the jobs service."""
        jobs = await self._tree_jobs(row, tree)
        for job in jobs:
            if job.spec.HasField("workflow"):
                continue
            if request.HasField("policy"):
                job.spec.policy.CopyFrom(request.policy)
            job.state = JobState.JOB_STATE_RUNNING
            result = await reexecute_job(job, events, self._policy)
            diff.divergences.extend(result.divergences)
            diff.events_compared += result.compared
        # The workflow itself is not re-run, so there is no new state or answer of it.
        diff.job_state = JobState.JOB_STATE_UNSPECIFIED

    async def _tree_jobs(self, row: RecordingRow, tree: Sequence[str]) -> list[jobs_pb2.Job]:
        """The tree's jobs with their specs and principals: the top-level job's from the
        recording, the children's from the jobs service (so a recording made elsewhere,
        imported, cannot be re-executed as a tree)."""
        root = jobs_pb2.Job(
            name=row.job,
            tenant=row.tenant,
            principal=row.metadata.principal,
            spec=row.metadata.spec,
        )
        if row.origin != Recording.Origin.ORIGIN_RECORDED or self._jobs is None:
            raise _not_reexecutable(
                row,
                len(tree),
                "the recording keeps only its top-level job's spec, and its child jobs "
                "are not in this deployment's jobs service",
            )
        jobs = []
        for name in tree:
            if name == row.job:
                jobs.append(root)
                continue
            try:
                jobs.append(
                    await self._call(
                        self._jobs.GetJob(jobs_pb2.GetJobRequest(tenant=row.tenant, name=name))
                    )
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                raise _not_reexecutable(
                    row, len(tree), f"its child job {name} is no longer in the jobs service"
                ) from None
        return jobs

    async def _with_spec(self, row: RecordingRow) -> RecordingRow:
        """The recording with its job's spec, asked of the jobs service now when the
        recorder could not keep it; FailedPrecondition when there is none to be had."""
        name = recording_name(row.id)
        missing = FailedPrecondition(
            f"{name} does not hold the spec of its job, so it cannot be re-executed",
            ErrorReason.ERROR_REASON_FIELD_INVALID,
            {"name": name},
        )
        if row.origin != Recording.Origin.ORIGIN_RECORDED or self._jobs is None:
            raise missing
        try:
            job = await self._call(
                self._jobs.GetJob(jobs_pb2.GetJobRequest(tenant=row.tenant, name=row.job))
            )
        except grpc.aio.AioRpcError:
            raise missing from None
        await self._store.set_spec(row.id, job.spec, job.principal)
        return await self._store.get(row.id)

    async def _live(
        self,
        row: RecordingRow,
        spec: jobs_pb2.JobSpec,
        request: ReexecuteRecordingRequest,
        events: Sequence[tuple[int, RuntimeEvent]],
        diff: ReexecutionDiff,
    ) -> None:
        if self._jobs is None or self._engine is None:
            raise Unavailable("live re-execution needs the jobs service and the engine")
        if request.model:
            await self._check_model(request.model)
            spec.model = request.model
        if request.system_prompt:
            spec.system_prompt = request.system_prompt
        spec.labels[WHAT_IF_LABEL] = row.id
        created = await self._call(
            self._jobs.CreateJob(
                jobs_pb2.CreateJobRequest(
                    tenant=row.tenant,
                    principal=row.metadata.principal or "replay",
                    spec=spec,
                    request_id=f"what-if-{secrets.token_hex(12)}",
                )
            )
        )
        diff.job = created.name
        recorded = [(p, e) for p, e in events if e.job == row.job]
        finished = await self._run_to_end(row, created, recorded)
        history = await self._history(finished)
        diff.job_state = finished.state
        diff.output = finished.result.output
        diff.usage.CopyFrom(finished.usage if finished.HasField("usage") else Usage())
        compared = [(p, e) for p, e in recorded if is_compared(e)]
        new = [e for e in history if is_compared(e)]
        diff.events_compared = len(compared)
        last = compared[-1][0] if compared else 0
        for index in range(max(len(compared), len(new))):
            position, old = compared[index] if index < len(compared) else (last, None)
            found = divergence(position, old, new[index] if index < len(new) else None)
            if found is not None:
                diff.divergences.append(found)
                if len(diff.divergences) > MAX_DIVERGENCES:
                    break

    async def _run_to_end(
        self,
        row: RecordingRow,
        job: jobs_pb2.Job,
        recorded: Sequence[tuple[int, RuntimeEvent]],
    ) -> jobs_pb2.Job:
        """Waits for the what-if job to end, resolving its actions as the recorded ones
        were resolved, in order; cancels it when it waits on one the recording lacks."""
        assert self._jobs is not None
        resolutions = [
            e.action.outcome
            for _, e in recorded
            if e.type in (EventType.EVENT_TYPE_ACTION_RESOLVED, EventType.EVENT_TYPE_ACTION_EXPIRED)
        ]
        resolved = 0
        while True:
            current = await self._call(
                self._jobs.GetJob(jobs_pb2.GetJobRequest(tenant=row.tenant, name=job.name))
            )
            if current.state in _ENDED:
                return current
            if current.state == JobState.JOB_STATE_WAITING:
                pending = await self._call(
                    self._jobs.ListActions(
                        jobs_pb2.ListActionsRequest(
                            tenant=row.tenant,
                            parent=job.name,
                            states=[jobs_pb2.Action.State.STATE_PENDING],
                        )
                    )
                )
                for action in pending.actions:
                    if resolved >= len(resolutions):
                        await self._call(
                            self._jobs.CancelJob(
                                jobs_pb2.CancelJobRequest(
                                    tenant=row.tenant,
                                    name=job.name,
                                    reason="the recording has no resolution for this action",
                                )
                            )
                        )
                        break
                    await self._call(
                        self._jobs.ResolveAction(
                            jobs_pb2.ResolveActionRequest(
                                tenant=row.tenant,
                                principal="replay",
                                name=action.name,
                                outcome=resolutions[resolved],
                            )
                        )
                    )
                    resolved += 1
            await asyncio.sleep(POLL_SECONDS)

    async def _history(self, job: jobs_pb2.Job) -> list[RuntimeEvent]:
        assert self._jobs is not None
        events: list[RuntimeEvent] = []
        after = 0
        while True:
            page = await self._call(
                self._jobs.ListJobEvents(
                    jobs_pb2.ListJobEventsRequest(
                        tenant=job.tenant, name=job.name, after_sequence=after, page_size=1000
                    )
                )
            )
            events += page.events
            if len(page.events) < 1000:
                return events
            after = page.events[-1].sequence

    async def _check_model(self, model: str) -> None:
        assert self._engine is not None
        token = ""
        while True:
            page = await self._call(
                self._engine.ListModels(
                    engine_pb2.ListModelsRequest(page_size=1000, page_token=token)
                )
            )
            if any(served.name == f"models/{model}" for served in page.models):
                return
            token = page.next_page_token
            if not token:
                raise NotFound(
                    f"the engine serves no model {model!r}",
                    ErrorReason.ERROR_REASON_MODEL_NOT_FOUND,
                    {"model": model},
                )

    @staticmethod
    async def _call(call: Awaitable[T]) -> T:
        """The answer of a call to the jobs service or the engine; their errors reach the
        caller as they are, except that a service down is DEPENDENCY_UNAVAILABLE."""
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                raise Unavailable(
                    f"a service live re-execution needs is down: {error.details()}"
                ) from error
            raise


def _sources(
    request: ReexecuteRecordingRequest,
) -> tuple[OutputSource.ValueType, OutputSource.ValueType]:
    for field, value in (
        ("model_outputs", request.model_outputs),
        ("tool_outputs", request.tool_outputs),
    ):
        if value not in _SOURCES:
            raise FieldInvalid(field, "must be OUTPUT_SOURCE_RECORDED or OUTPUT_SOURCE_LIVE")
    models = request.model_outputs or RECORDED
    tools = request.tool_outputs or (LIVE if models == LIVE else RECORDED)
    if models != tools:
        raise FieldInvalid(
            "tool_outputs",
            "must match model_outputs: a recorded run answers tools from the recording, "
            "a live what-if job runs them",
        )
    return models, tools


def _jobs_of(row: RecordingRow, events: Sequence[tuple[int, RuntimeEvent]]) -> list[str]:
    """The recording's jobs, the top-level one first, then in the order it names them."""
    jobs = {row.job: None}
    for _, event in events:
        jobs.setdefault(event.job, None)
    return list(jobs)


def _not_reexecutable(row: RecordingRow, jobs: int, why: str) -> FailedPrecondition:
    """The refusal of a tree that cannot be re-executed as asked, and why: rather than
    re-running the top-level job alone and calling the tree identical unseen."""
    name = recording_name(row.id)
    return FailedPrecondition(
        f"{name} holds a tree of {jobs} jobs ({row.job} and its child jobs) and cannot "
        f"be re-executed: {why}",
        ErrorReason.ERROR_REASON_RECORDING_NOT_REEXECUTABLE,
        {"name": name, "jobs": str(jobs)},
    )


def _divergence_limit(requested: int) -> int:
    if requested < 0:
        raise FieldInvalid("max_divergences", "must not be negative")
    return min(requested or DEFAULT_DIVERGENCES, MAX_DIVERGENCES)


_ENDED = frozenset(
    {
        JobState.JOB_STATE_SUCCEEDED,
        JobState.JOB_STATE_FAILED,
        JobState.JOB_STATE_CANCELLED,
        JobState.JOB_STATE_TIMED_OUT,
    }
)
