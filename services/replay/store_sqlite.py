"""The recording store on SQLite, the embedded default of `agentrt dev`.

Each batch runs in one BEGIN IMMEDIATE transaction on the database's single thread: the
events, each job's progress and the recorder's position are stored together or not at all.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from agentrt.common.v1.common_pb2 import RuntimeEvent
from agentrt.jobs.v1.jobs_pb2 import JobSpec
from agentrt.replay.v1.replay_pb2 import RunMetadata

from services.kit.errors import AlreadyExists, RequestIdReused
from services.kit.events import Cursor
from services.kit.storage import SqliteDatabase, load_queries
from services.replay.names import recording_name
from services.replay.recordings import (
    RecordingFilter,
    RecordingRow,
    State,
    decode_page_token,
    encode_page_token,
    plan_batch,
    recording_ids,
)
from services.replay.store import (
    GLOBAL_STREAM,
    SQL_DIRECTORY,
    NewImport,
    RecordedJob,
    metadata_with_spec,
    not_found,
)

_QUERIES = load_queries(SQL_DIRECTORY / "sqlite" / "queries.sql")


class SqliteRecordingStore:
    """Recordings in the replay service's SQLite file."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database

    @classmethod
    async def open(cls, path: Path) -> SqliteRecordingStore:
        """Opens the migrated database file."""
        return cls(await SqliteDatabase.open(path))

    async def record(
        self, events: Sequence[RuntimeEvent], cursor: Cursor | None, now: datetime
    ) -> list[str]:
        def record(connection: sqlite3.Connection) -> list[str]:
            last_sequences: dict[str, int] = {}
            stored: dict[str, RecordingRow] = {}
            for event in events:
                if event.job not in last_sequences:
                    found = connection.execute(
                        _QUERIES["get_recorded_job"], {"job": event.job}
                    ).fetchone()
                    last_sequences[event.job] = found["last_sequence"] if found else 0
            for recording_id in recording_ids(events):
                row = connection.execute(_QUERIES["get_recording"], {"id": recording_id}).fetchone()
                if row is not None:
                    stored[recording_id] = _row(row)
            plan = plan_batch(events, last_sequences, stored, now)
            for opened in plan.opened:
                connection.execute(_QUERIES["insert_recording"], _insert_params(opened, "", b""))
            for changed in plan.changed.values():
                connection.execute(_QUERIES["update_recording"], _update_params(changed))
            for recording_id, position, event in plan.events:
                connection.execute(
                    _QUERIES["insert_event"],
                    {
                        "recording_id": recording_id,
                        "position": position,
                        "event_id": event.id,
                        "event": event.SerializeToString(),
                    },
                )
            for job, (tenant, recording_id, sequence) in plan.progress.items():
                connection.execute(
                    _QUERIES["upsert_recorded_job"],
                    {
                        "job": job,
                        "tenant": tenant,
                        "recording_id": recording_id,
                        "last_sequence": sequence,
                    },
                )
            if cursor is not None:
                connection.execute(
                    _QUERIES["set_position"], {"stream": GLOBAL_STREAM, "cursor": cursor}
                )
            return [opened.id for opened in plan.opened]

        return await self._db.transaction(record)

    async def position(self) -> Cursor:
        row = await self._db.fetchone(_QUERIES["get_position"], {"stream": GLOBAL_STREAM})
        return str(row["last_cursor"]) if row is not None else "0"

    async def last_sequences(self, jobs: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for job in set(jobs):
            row = await self._db.fetchone(_QUERIES["get_recorded_job"], {"job": job})
            if row is not None:
                found[job] = row["last_sequence"]
        return found

    async def unfinished_jobs(self) -> list[RecordedJob]:
        rows = await self._db.fetchall(
            _QUERIES["unfinished_jobs"], {"recording_state": State.STATE_RECORDING}
        )
        return [RecordedJob(row["job"], row["tenant"], row["last_sequence"]) for row in rows]

    async def set_spec(self, recording_id: str, spec: JobSpec, principal: str) -> None:
        def set_spec(connection: sqlite3.Connection) -> None:
            found = connection.execute(_QUERIES["get_recording"], {"id": recording_id}).fetchone()
            if found is None:
                raise not_found(recording_id)
            row = _row(found)
            row.metadata = metadata_with_spec(row.metadata, spec, principal)
            connection.execute(_QUERIES["update_recording"], _update_params(row))

        await self._db.transaction(set_spec)

    async def import_recording(self, new: NewImport) -> tuple[RecordingRow, bool]:
        def import_recording(connection: sqlite3.Connection) -> tuple[RecordingRow, bool]:
            if new.request_id:
                earlier = connection.execute(
                    _QUERIES["recording_by_request_id"], {"request_id": new.request_id}
                ).fetchone()
                if earlier is not None:
                    if bytes(earlier["request_hash"]) != new.request_hash:
                        raise RequestIdReused(new.request_id)
                    return _row(earlier), False
            params = _insert_params(new.row, new.request_id, new.request_hash)
            if connection.execute(_QUERIES["insert_recording"], params).rowcount == 0:
                name = recording_name(new.row.id)
                raise AlreadyExists(f"recording {name} already exists", metadata={"name": name})
            for position, event in enumerate(new.events, start=1):
                connection.execute(
                    _QUERIES["insert_event"],
                    {
                        "recording_id": new.row.id,
                        "position": position,
                        "event_id": event.id,
                        "event": event.SerializeToString(),
                    },
                )
            return new.row, True

        return await self._db.transaction(import_recording)

    async def get(self, recording_id: str) -> RecordingRow:
        row = await self._db.fetchone(_QUERIES["get_recording"], {"id": recording_id})
        if row is None:
            raise not_found(recording_id)
        return _row(row)

    async def events(
        self, recording_id: str, after_position: int, limit: int
    ) -> list[tuple[int, RuntimeEvent]]:
        params = {"recording_id": recording_id, "after": after_position, "limit": limit}
        rows = await self._db.fetchall(_QUERIES["list_events"], params)
        return [(row["position"], RuntimeEvent.FromString(bytes(row["event"]))) for row in rows]

    async def list(
        self, where: RecordingFilter, page_size: int, page_token: str
    ) -> tuple[list[RecordingRow], str]:
        start = decode_page_token(page_token)
        params: dict[str, Any] = {
            "tenant": where.tenant,
            "job": where.job,
            "any_state": not where.states,
            "states": json.dumps([int(state) for state in where.states]),
            "start_after": where.start_after,
            "start_before": where.start_before,
            "first_page": start is None,
            "after_start": start.start_time if start else 0,
            "after_id": start.id if start else "",
            "limit": page_size + 1,
        }
        rows = [_row(row) for row in await self._db.fetchall(_QUERIES["list_recordings"], params)]
        more = len(rows) > page_size
        return rows[:page_size], encode_page_token(rows[page_size - 1]) if more else ""

    async def close(self) -> None:
        await self._db.close()


def _insert_params(row: RecordingRow, request_id: str, request_hash: bytes) -> dict[str, Any]:
    return {
        "id": row.id,
        "job": row.job,
        "tenant": row.tenant,
        "state": row.state,
        "origin": row.origin,
        "metadata": row.metadata.SerializeToString(deterministic=True),
        "job_state": row.job_state,
        "event_count": row.event_count,
        "start_time": row.start_time,
        "end_time": row.end_time,
        "create_time": row.create_time,
        "request_id": request_id,
        "request_hash": request_hash,
    }


def _update_params(row: RecordingRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "state": row.state,
        "metadata": row.metadata.SerializeToString(deterministic=True),
        "job_state": row.job_state,
        "event_count": row.event_count,
        "start_time": row.start_time,
        "end_time": row.end_time,
    }


def _row(row: sqlite3.Row) -> RecordingRow:
    return RecordingRow(
        id=row["id"],
        job=row["job"],
        tenant=row["tenant"],
        state=row["state"],
        origin=row["origin"],
        metadata=RunMetadata.FromString(bytes(row["metadata"])),
        job_state=row["job_state"],
        event_count=row["event_count"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        create_time=row["create_time"],
    )
