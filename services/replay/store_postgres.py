"""The recording store on PostgreSQL, in the replay service's own schema.

A batch runs in one transaction that first locks the recorder's position row, so that
batches (of this replica or another) are stored one at a time, each with its position.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
from agentrt.common.v1.common_pb2 import RuntimeEvent
from agentrt.jobs.v1.jobs_pb2 import JobSpec
from agentrt.replay.v1.replay_pb2 import RunMetadata

from services.kit.errors import AlreadyExists, RequestIdReused
from services.kit.events import Cursor
from services.kit.storage import create_pool, load_queries
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

_QUERIES = load_queries(SQL_DIRECTORY / "postgres" / "queries.sql")


class PostgresRecordingStore:
    """Recordings in the `replay` schema (or the one configured)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, schema: str, max_connections: int = 8) -> PostgresRecordingStore:
        """Opens a pool on the migrated schema."""
        return cls(await create_pool(dsn, schema, min_size=1, max_size=max_connections))

    async def record(
        self, events: Sequence[RuntimeEvent], cursor: Cursor | None, now: datetime
    ) -> list[str]:
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.fetchval(_QUERIES["lock_position"], GLOBAL_STREAM)
            # One statement per kind of row, whatever the batch's size.
            jobs = sorted({event.job for event in events})
            found = await connection.fetch(_QUERIES["get_recorded_jobs"], jobs)
            last_sequences = {row["job"]: row["last_sequence"] for row in found}
            rows = await connection.fetch(
                _QUERIES["get_recordings_for_update"], sorted(recording_ids(events))
            )
            stored = {row["id"]: _row(row) for row in rows}
            plan = plan_batch(events, last_sequences, stored, now)
            if plan.opened:
                await connection.executemany(
                    _QUERIES["insert_recording"],
                    [_insert_args(opened, "", b"") for opened in plan.opened],
                )
            if plan.changed:
                await connection.executemany(
                    _QUERIES["update_recording"],
                    [_update_args(changed) for changed in plan.changed.values()],
                )
            if plan.events:
                await connection.executemany(
                    _QUERIES["insert_event"],
                    [
                        (recording_id, position, event.id, event.SerializeToString())
                        for recording_id, position, event in plan.events
                    ],
                )
            if plan.progress:
                await connection.executemany(
                    _QUERIES["upsert_recorded_job"],
                    [
                        (job, tenant, recording_id, sequence)
                        for job, (tenant, recording_id, sequence) in plan.progress.items()
                    ],
                )
            if cursor is not None:
                await connection.execute(_QUERIES["set_position"], GLOBAL_STREAM, cursor)
            return [opened.id for opened in plan.opened]

    async def position(self) -> Cursor:
        found = await self._pool.fetchval(_QUERIES["get_position"], GLOBAL_STREAM)
        return str(found) if found is not None else "0"

    async def last_sequences(self, jobs: Sequence[str]) -> dict[str, int]:
        rows = await self._pool.fetch(_QUERIES["get_recorded_jobs"], sorted(set(jobs)))
        return {row["job"]: row["last_sequence"] for row in rows}

    async def unfinished_jobs(self) -> list[RecordedJob]:
        rows = await self._pool.fetch(_QUERIES["unfinished_jobs"], State.STATE_RECORDING)
        return [RecordedJob(row["job"], row["tenant"], row["last_sequence"]) for row in rows]

    async def set_spec(self, recording_id: str, spec: JobSpec, principal: str) -> None:
        async with self._pool.acquire() as connection, connection.transaction():
            found = await connection.fetchrow(_QUERIES["get_recording_for_update"], recording_id)
            if found is None:
                raise not_found(recording_id)
            row = _row(found)
            row.metadata = metadata_with_spec(row.metadata, spec, principal)
            await connection.execute(_QUERIES["update_recording"], *_update_args(row))

    async def import_recording(self, new: NewImport) -> tuple[RecordingRow, bool]:
        async with self._pool.acquire() as connection, connection.transaction():
            inserted = await connection.fetchval(
                _QUERIES["insert_recording"],
                *_insert_args(new.row, new.request_id, new.request_hash),
            )
            if inserted is None:
                # The insert lost to an existing row: one with this request_id (a retry,
                # or a reuse) or, failing that, one with this id.
                if new.request_id:
                    earlier = await connection.fetchrow(
                        _QUERIES["recording_by_request_id"], new.request_id
                    )
                    if earlier is not None:
                        if bytes(earlier["request_hash"]) != new.request_hash:
                            raise RequestIdReused(new.request_id)
                        return _row(earlier), False
                name = recording_name(new.row.id)
                raise AlreadyExists(f"recording {name} already exists", metadata={"name": name})
            await connection.executemany(
                _QUERIES["insert_event"],
                [
                    (new.row.id, position, event.id, event.SerializeToString())
                    for position, event in enumerate(new.events, start=1)
                ],
            )
            return new.row, True

    async def get(self, recording_id: str) -> RecordingRow:
        row = await self._pool.fetchrow(_QUERIES["get_recording"], recording_id)
        if row is None:
            raise not_found(recording_id)
        return _row(row)

    async def events(
        self, recording_id: str, after_position: int, limit: int
    ) -> list[tuple[int, RuntimeEvent]]:
        rows = await self._pool.fetch(_QUERIES["list_events"], recording_id, after_position, limit)
        return [(row["position"], RuntimeEvent.FromString(bytes(row["event"]))) for row in rows]

    async def list(
        self, where: RecordingFilter, page_size: int, page_token: str
    ) -> tuple[list[RecordingRow], str]:
        start = decode_page_token(page_token)
        found = await self._pool.fetch(
            _QUERIES["list_recordings"],
            where.tenant,
            where.job,
            [int(state) for state in where.states],
            where.start_after,
            where.start_before,
            start is None,
            start.start_time if start else 0,
            start.id if start else "",
            page_size + 1,
        )
        rows = [_row(row) for row in found]
        more = len(rows) > page_size
        return rows[:page_size], encode_page_token(rows[page_size - 1]) if more else ""

    async def close(self) -> None:
        await self._pool.close()


def _insert_args(row: RecordingRow, request_id: str, request_hash: bytes) -> tuple[Any, ...]:
    return (
        row.id,
        row.job,
        row.tenant,
        row.state,
        row.origin,
        row.metadata.SerializeToString(deterministic=True),
        row.job_state,
        row.event_count,
        row.start_time,
        row.end_time,
        row.create_time,
        request_id,
        request_hash,
    )


def _update_args(row: RecordingRow) -> tuple[Any, ...]:
    return (
        row.id,
        row.state,
        row.metadata.SerializeToString(deterministic=True),
        row.job_state,
        row.event_count,
        row.start_time,
        row.end_time,
    )


def _row(row: asyncpg.Record) -> RecordingRow:
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
