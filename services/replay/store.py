"""The recording store contract, the values it deals in, and opening the configured one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from agentrt.common.v1.common_pb2 import RuntimeEvent
from agentrt.jobs.v1.jobs_pb2 import JobSpec
from agentrt.replay.v1.replay_pb2 import RunMetadata

from services.kit.errors import NotFound
from services.kit.events import Cursor
from services.kit.storage import StorageConfig, open_store
from services.replay.names import recording_name
from services.replay.recordings import RecordingFilter, RecordingRow

SQL_DIRECTORY = Path(__file__).resolve().parent / "sql"
"""The replay service's `sql/` folder: migrations and named queries per backend."""

GLOBAL_STREAM = "global"
"""The key of the recorder's position in the global event stream."""


@dataclass(frozen=True)
class NewImport:
    """A validated recording file to store as a new recording."""

    row: RecordingRow
    events: Sequence[RuntimeEvent]
    request_id: str
    """Idempotency key; empty for none."""
    request_hash: bytes
    """Hash of the id asked for and the file; a reused request_id must come with it."""


@dataclass(frozen=True)
class RecordedJob:
    """A job the recorder has seen, and how far."""

    job: str
    tenant: str
    last_sequence: int


class RecordingStore(Protocol):
    """Recordings and the recorder's position on one backend.

    Errors: NotFound for an unknown recording.
    """

    async def record(
        self, events: Sequence[RuntimeEvent], cursor: Cursor | None, now: datetime
    ) -> list[str]:
        """In one transaction: appends the history events to their recordings (opening
        a recording for a top-level job not seen before), skipping an event whose job
        has a recorded event of the same or a later sequence (a duplicate delivery), and
        stores `cursor`, unless None, as the recorder's position. Transient events are
        skipped. Returns the ids of the recordings it opened."""
        ...

    async def position(self) -> Cursor:
        """The recorder's position in the global stream ("0" before the first batch)."""
        ...

    async def last_sequences(self, jobs: Sequence[str]) -> dict[str, int]:
        """The sequence of the last recorded event of each job named that has one."""
        ...

    async def unfinished_jobs(self) -> list[RecordedJob]:
        """The jobs of every recording still recording."""
        ...

    async def set_spec(self, recording_id: str, spec: JobSpec, principal: str) -> None:
        """Keeps what the top-level job ran, and for whom, in the recording's metadata."""
        ...

    async def import_recording(self, new: NewImport) -> tuple[RecordingRow, bool]:
        """Stores the recording and its events, or returns the one imported earlier
        with the same request_id and hash (created=False; RequestIdReused when the hash
        differs); AlreadyExists when the id is taken."""
        ...

    async def get(self, recording_id: str) -> RecordingRow:
        """The recording without its events."""
        ...

    async def events(
        self, recording_id: str, after_position: int, limit: int
    ) -> list[tuple[int, RuntimeEvent]]:
        """Up to `limit` events after the position, with their positions, in order."""
        ...

    async def list(
        self, where: RecordingFilter, page_size: int, page_token: str
    ) -> tuple[list[RecordingRow], str]:
        """A page, newest first, and the next page's token ("" on the last page);
        FieldInvalid("page_token") for a token this store did not make."""
        ...

    async def close(self) -> None:
        """Release the database."""
        ...


def not_found(recording_id: str) -> NotFound:
    name = recording_name(recording_id)
    return NotFound(f"recording {name} not found", metadata={"name": name})


def metadata_with_spec(metadata: RunMetadata, spec: JobSpec, principal: str) -> RunMetadata:
    """The metadata with the spec; a model version noted before the spec was known
    (under the answering model's own id) moves under the model the spec asked for."""
    updated = RunMetadata()
    updated.CopyFrom(metadata)
    updated.spec.CopyFrom(spec)
    updated.principal = principal
    if spec.model and spec.model not in updated.model_versions:
        unknown = [asked for asked, version in updated.model_versions.items() if asked == version]
        if len(unknown) == 1:
            updated.model_versions[spec.model] = updated.model_versions.pop(unknown[0])
    return updated


async def open_recording_store(config: StorageConfig) -> RecordingStore:
    """The configured backend's store; UnmigratedDatabaseError unless `agentrt migrate` ran."""
    store: RecordingStore = await open_store(
        config,
        SQL_DIRECTORY,
        "services.replay.store_postgres:PostgresRecordingStore",
        "services.replay.store_sqlite:SqliteRecordingStore",
    )
    return store
