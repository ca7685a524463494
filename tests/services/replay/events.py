"""Runtime events as the jobs service makes them, for the replay tests."""

from __future__ import annotations

from agentrt.common.v1.common_pb2 import EventType, JobState, RuntimeEvent

from services.kit.ids import new_id

T = EventType
S = JobState
BASE_SECONDS = 1_900_000_000


def event(
    job_id: str,
    sequence: int,
    event_type: EventType.ValueType,
    state: JobState.ValueType = S.JOB_STATE_RUNNING,
    *,
    tenant: str = "acme",
    root_id: str = "",
    seconds: float = 0.0,
    transient: int = 0,
) -> RuntimeEvent:
    made = RuntimeEvent(
        id=f"{job_id}.{sequence}" + (f".{transient}" if transient else ""),
        type=event_type,
        sequence=sequence,
        tenant=tenant,
        job=f"jobs/{job_id}",
        job_state=state,
        root_job=f"jobs/{root_id}" if root_id else "",
        parent_job=f"jobs/{root_id}" if root_id else "",
    )
    made.time.FromNanoseconds(int((BASE_SECONDS + sequence + seconds) * 1e9))
    return made


def run(job_id: str | None = None, tenant: str = "acme") -> list[RuntimeEvent]:
    """The history of a job that succeeds after one turn."""
    job_id = job_id or new_id()
    started = event(job_id, 2, T.EVENT_TYPE_JOB_STARTED, tenant=tenant)
    started.attempt.attempt = 1
    started.attempt.runtime_version = "0.1.0"
    turn = event(job_id, 3, T.EVENT_TYPE_TURN_COMPLETED, tenant=tenant)
    turn.turn_completed.turn = 1
    turn.turn_completed.message.content = "hello"
    turn.turn_completed.model = "gpt-4o-mini-2024-07-18"
    done = event(job_id, 4, T.EVENT_TYPE_JOB_SUCCEEDED, S.JOB_STATE_SUCCEEDED, tenant=tenant)
    done.job_succeeded.output = "hello"
    return [
        event(job_id, 1, T.EVENT_TYPE_JOB_CREATED, S.JOB_STATE_QUEUED, tenant=tenant),
        started,
        turn,
        done,
    ]
