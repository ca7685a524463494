"""What an event does to its recording: counts, times, state and run metadata.

The stores call `apply_event` inside their transaction, so both backends keep a
recording the same way; everything here is pure and knows nothing of storage or gRPC.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from agentrt.common.v1.common_pb2 import EventType, JobState, RuntimeEvent
from agentrt.replay.v1.replay_pb2 import Recording, RunMetadata

from services.kit.errors import FieldInvalid
from services.kit.events import is_terminal, is_transient, job_id_of
from services.replay.names import recording_name

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_LAST_MICROS = 2**62
"""Later than any event time: the open end of a time filter."""

State = Recording.State
Origin = Recording.Origin


def micros(time: datetime) -> int:
    """Microseconds since the epoch."""
    return (time - _EPOCH) // _MICROSECOND


def event_micros(event: RuntimeEvent) -> int:
    """The event's time in microseconds since the epoch."""
    return event.time.seconds * 1_000_000 + event.time.nanos // 1000


@dataclass
class RecordingRow:
    """A recording as stored, without its events."""

    id: str
    job: str
    tenant: str
    state: State.ValueType
    origin: Origin.ValueType
    metadata: RunMetadata
    job_state: JobState.ValueType
    event_count: int
    start_time: int
    """Microseconds since the epoch of the first event; 0 before any."""
    end_time: int
    create_time: int


def root_of(event: RuntimeEvent) -> str:
    """The top-level job whose recording the event belongs to. Events without a root
    (from a jobs service that does not fill it) belong to their own job's recording."""
    return event.root_job or event.job


def recording_id_of(event: RuntimeEvent) -> str:
    """A recorded run's recording id: its top-level job's id."""
    return job_id_of(root_of(event))


def new_recorded(event: RuntimeEvent, now: datetime) -> RecordingRow:
    """The recording a top-level job's first recorded event opens."""
    root = root_of(event)
    return RecordingRow(
        id=job_id_of(root),
        job=root,
        tenant=event.tenant,
        state=State.STATE_RECORDING,
        origin=Origin.ORIGIN_RECORDED,
        metadata=RunMetadata(),
        job_state=JobState.JOB_STATE_UNSPECIFIED,
        event_count=0,
        start_time=0,
        end_time=0,
        create_time=micros(now),
    )


def apply_event(row: RecordingRow, event: RuntimeEvent) -> int:
    """Adds the event at the recording's next position, which it returns."""
    row.event_count += 1
    at = event_micros(event)
    if row.event_count == 1 or at < row.start_time:
        row.start_time = at
    row.end_time = max(row.end_time, at)
    if event.job == row.job:
        row.job_state = event.job_state
        if is_terminal(event.type) and row.state == State.STATE_RECORDING:
            row.state = State.STATE_COMPLETE
    note_metadata(row.metadata, event)
    return row.event_count


def note_metadata(metadata: RunMetadata, event: RuntimeEvent) -> None:
    """What the event says about what the run ran on."""
    if event.type == EventType.EVENT_TYPE_JOB_STARTED and event.attempt.runtime_version:
        metadata.runtime_version = event.attempt.runtime_version
    if event.type == EventType.EVENT_TYPE_TURN_COMPLETED and event.turn_completed.model:
        asked = metadata.spec.model or event.turn_completed.model
        metadata.model_versions[asked] = event.turn_completed.model


def to_recording(row: RecordingRow, events: Sequence[RuntimeEvent] = ()) -> Recording:
    """The API form of a stored recording."""
    recording = Recording(
        name=recording_name(row.id),
        job=row.job,
        tenant=row.tenant,
        state=row.state,
        origin=row.origin,
        metadata=row.metadata,
        job_state=row.job_state,
        events=events,
        event_count=row.event_count,
    )
    if row.event_count:
        recording.start_time.FromMicroseconds(row.start_time)
        recording.end_time.FromMicroseconds(row.end_time)
    recording.create_time.FromMicroseconds(row.create_time)
    return recording


def copy_row(row: RecordingRow) -> RecordingRow:
    """A copy whose metadata can change without changing the original."""
    metadata = RunMetadata()
    metadata.CopyFrom(row.metadata)
    return dataclasses.replace(row, metadata=metadata)


@dataclass(frozen=True)
class RecordingFilter:
    """Which recordings ListRecordings returns."""

    tenant: str = ""
    job: str = ""
    states: Sequence[State.ValueType] = field(default_factory=tuple)
    start_after: int = 0
    """Microseconds; recordings whose first event is at or after it."""
    start_before: int = _LAST_MICROS
    """Microseconds; recordings whose first event is before it."""


@dataclass(frozen=True)
class PageStart:
    """Where a page of recordings starts: after this (start time, id)."""

    start_time: int
    id: str


def encode_page_token(row: RecordingRow) -> str:
    """The token of the page after `row`."""
    raw = f"r:{row.start_time}:{row.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> PageStart | None:
    """Where the page starts; None for the first page; FieldInvalid for a foreign token."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    prefix, _, rest = raw.partition(":")
    start, _, recording_id = rest.partition(":")
    if prefix != "r" or not start.isdigit() or not recording_id:
        raise FieldInvalid("page_token", "not a token returned by this method")
    return PageStart(int(start), recording_id)


@dataclass
class BatchPlan:
    """What a batch of events changes, worked out from what is stored (see `plan_batch`)."""

    opened: list[RecordingRow] = field(default_factory=list)
    """Recordings to insert (then to update like the others)."""
    changed: dict[str, RecordingRow] = field(default_factory=dict)
    """Every recording the batch touches, by id, as it must be stored."""
    events: list[tuple[str, int, RuntimeEvent]] = field(default_factory=list)
    """(recording id, position, event) to insert."""
    progress: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    """By job: (tenant, recording id, last sequence) to store."""


def plan_batch(
    events: Sequence[RuntimeEvent],
    last_sequences: dict[str, int],
    stored: dict[str, RecordingRow],
    now: datetime,
) -> BatchPlan:
    """What storing the history events does, given each job's last recorded sequence
    and the stored recordings they belong to (absent when new). Duplicates (a sequence
    at or before the job's last recorded one) and transient events change nothing."""
    plan = BatchPlan()
    progress = dict(last_sequences)
    for event in events:
        if is_transient(event) or event.sequence <= progress.get(event.job, 0):
            continue
        recording_id = recording_id_of(event)
        row = plan.changed.get(recording_id)
        if row is None:
            found = stored.get(recording_id)
            if found is None:
                row = new_recorded(event, now)
                plan.opened.append(row)
            else:
                row = copy_row(found)
            plan.changed[recording_id] = row
        position = apply_event(row, event)
        plan.events.append((recording_id, position, event))
        progress[event.job] = event.sequence
        plan.progress[event.job] = (event.tenant, recording_id, event.sequence)
    return plan


def recording_ids(events: Sequence[RuntimeEvent]) -> set[str]:
    """The recordings the history events among `events` belong to."""
    return {recording_id_of(event) for event in events if not is_transient(event)}
