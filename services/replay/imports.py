"""Turning a valid recording file into a new imported recording."""

from __future__ import annotations

import hashlib
from datetime import datetime

from agentrt.replay.v1.replay_pb2 import RunMetadata

from services.kit.errors import FieldInvalid
from services.kit.ids import is_valid_id
from services.replay.files import RecordingFile
from services.replay.names import check_recording_id, random_recording_id
from services.replay.recordings import Origin, RecordingRow, State, event_micros, micros
from services.replay.store import NewImport

MAX_REQUEST_ID = 128


def chosen_recording_id(requested: str) -> str:
    """The id of the new recording: the one asked for, or a random one. Ids of the form
    of a job id are refused: recorded runs are named after their job."""
    if not requested:
        while is_valid_id(recording_id := random_recording_id()):
            pass
        return recording_id
    check_recording_id(requested)
    if is_valid_id(requested):
        raise FieldInvalid("recording_id", "has the form of a job id, kept for recorded runs")
    return requested


def check_request_id(request_id: str) -> str:
    if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise FieldInvalid("request_id", f"must be up to {MAX_REQUEST_ID} printable characters")
    return request_id


def new_import(
    parsed: RecordingFile,
    recording_id: str,
    requested_id: str,
    request_id: str,
    file_bytes: bytes,
    now: datetime,
) -> NewImport:
    """What to store for an import. A recording exported while still recording is
    INCOMPLETE here: nothing will add to it."""
    header = parsed.recording
    state = State.STATE_COMPLETE if header.state == State.STATE_COMPLETE else State.STATE_INCOMPLETE
    times = [event_micros(event) for event in parsed.events]
    metadata = RunMetadata()
    metadata.CopyFrom(header.metadata)
    row = RecordingRow(
        id=recording_id,
        job=header.job,
        tenant=header.tenant,
        state=state,
        origin=Origin.ORIGIN_IMPORTED,
        metadata=metadata,
        job_state=header.job_state,
        event_count=len(parsed.events),
        start_time=min(times, default=0),
        end_time=max(times, default=0),
        create_time=micros(now),
    )
    digest = hashlib.sha256(requested_id.encode() + b"\0" + file_bytes).digest()
    return NewImport(row, parsed.events, request_id, digest)
