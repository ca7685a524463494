"""The job store on PostgreSQL (asyncpg), for production.

Each operation is one statement or one short transaction: the rows to change are read
with FOR UPDATE (SKIP LOCKED when leasing), changed in Python by services.jobs.records,
and written back with their events by a single `save_jobs` statement.

Relay lock: the relay publishes the outbox in row-id order, which keeps each job's events
in order only while a single relay publishes. `try_lock_relay` takes a session-level
advisory lock (one per schema) on a dedicated connection outside the pool, which the
store keeps open; `fetch_unpublished` returns nothing unless this store holds the lock,
so every replica may run a relay and only one publishes. If that connection breaks,
PostgreSQL releases the lock and another replica's relay takes over; events in flight at
that moment may be delivered twice (consumers deduplicate by id).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import asyncpg  # type: ignore[import-untyped, unused-ignore]
from agentrt.common.v1.common_pb2 import (
    ActionEvent,
    EventType,
    Failure,
    JobState,
    Message,
    RuntimeEvent,
    ToolCalled,
    Usage,
)
from agentrt.jobs.v1.jobs_pb2 import Action, Checkpoint, Job, JobResult

from services.jobs import actions, records
from services.jobs.actions import ActionRecord, action_from_row, page_of_actions, to_action
from services.jobs.listing import EARLIEST, decode_position, page_bounds, page_of
from services.jobs.records import Change, JobRecord, record_from_row, to_job
from services.jobs.states import State
from services.jobs.store import (
    SQL_DIRECTORY,
    ActionRef,
    ActionTarget,
    JobFilter,
    LeaseBatch,
    LiveJobs,
    NewAction,
    NewJob,
    Resolution,
    TokenRef,
)
from services.kit.errors import Aborted, JobNotFound, LeaseLost
from services.kit.ids import new_id
from services.kit.names import job_name
from services.kit.storage import create_pool, load_queries

PoolConnection = asyncpg.pool.PoolConnectionProxy

QUERIES = load_queries(SQL_DIRECTORY / "postgres" / "queries.sql")


class PostgresJobStore:
    """A JobStore over an asyncpg pool whose search_path is the jobs schema."""

    def __init__(
        self, pool: asyncpg.Pool, dsn: str, schema: str, *, owns_pool: bool = False
    ) -> None:
        """Use `pool` (on `schema` of `dsn`, where the relay connection goes too); `close`
        closes the pool when the store owns it."""
        self._pool = pool
        self._dsn = dsn
        self._schema = schema
        self._owns_pool = owns_pool
        self._relay: asyncpg.Connection | None = None
        self._relay_locked = False
        self._relay_guard = asyncio.Lock()

    @classmethod
    async def open(cls, dsn: str, schema: str) -> PostgresJobStore:
        """A store with a pool of its own on the migrated `schema`."""
        return cls(await create_pool(dsn, schema), dsn, schema, owns_pool=True)

    async def create_job(self, new: NewJob, now: datetime) -> tuple[Job, bool]:
        change = records.create(new, new_id(), now)
        job = change.record
        async with self._pool.acquire() as connection:
            inserted = await connection.fetchval(
                QUERIES["insert_job"],
                job.id,
                job.tenant,
                job.principal,
                job.session,
                job.parent,
                job.state,
                job.request_id,
                job.request_hash,
                job.spec,
                job.deadline,
                job.create_time,
                job.trace_id,
                job.event_seq,
                change.events[0].event,
            )
            if inserted is not None:
                return to_job(job), True
            row = await connection.fetchrow(
                QUERIES["job_by_request_id"], new.tenant, new.request_id
            )
        if row is None:
            raise Aborted("a job with this request_id was removed while it was being created")
        return records.deduplicate(record_from_row(row), new), False

    async def get_job(self, tenant: str | None, job_id: str) -> Job:
        row = await self._pool.fetchrow(QUERIES["get_job"], job_id, tenant)
        if row is None:
            raise JobNotFound(job_name(job_id))
        return to_job(record_from_row(row))

    async def list_jobs(
        self, tenant: str, job_filter: JobFilter, page_size: int, page_token: str
    ) -> tuple[list[Job], str]:
        bounds = page_bounds(job_filter, page_token)
        rows = await self._pool.fetch(
            QUERIES["list_jobs"],
            tenant,
            *bounds.before,
            bounds.created_after,
            list(job_filter.states),
            job_filter.session,
            page_size + 1,
        )
        return page_of([record_from_row(row) for row in rows], page_size)

    async def lease_jobs(
        self, worker: str, limit: int, lease_seconds: float, now: datetime
    ) -> LeaseBatch:
        async with self._pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(QUERIES["lease_candidates_for_update"], now, limit)
            candidates = [record_from_row(row) for row in rows]
            changes, batch = records.lease_or_time_out(candidates, worker, lease_seconds, now)
            await _save(connection, changes)
        return batch

    async def heartbeat(
        self, job_id: str, lease_id: str, lease_seconds: float, now: datetime
    ) -> datetime:
        expire = now + timedelta(seconds=lease_seconds)
        async with self._pool.acquire() as connection:
            extended: datetime | None = await connection.fetchval(
                QUERIES["heartbeat"], job_id, lease_id, expire
            )
            if extended is not None:
                return extended
            state = await connection.fetchval(QUERIES["job_state"], job_id)
        if state is None:
            raise JobNotFound(job_name(job_id))
        raise LeaseLost(JobState.Name(state))

    async def checkpoint(
        self,
        job_id: str,
        lease_id: str,
        checkpoint: Checkpoint,
        message: Message | None,
        turn_usage: Usage | None,
        now: datetime,
        tool_calls: Sequence[ToolCalled] = (),
        within_turn: bool = False,
    ) -> Job:
        return await self._change(
            job_id,
            lambda job: records.save_checkpoint(
                job, lease_id, checkpoint, message, turn_usage, now, tool_calls, within_turn
            ),
        )

    async def finish(
        self,
        job_id: str,
        lease_id: str,
        state: State,
        outcome: JobResult | Failure,
        usage: Usage | None,
        checkpoint: Checkpoint | None,
        now: datetime,
        message: Message | None = None,
        turn_usage: Usage | None = None,
    ) -> Job:
        records.check_outcome(state, outcome)
        return await self._change(
            job_id,
            lambda job: records.finish(
                job, lease_id, state, outcome, usage, checkpoint, now, message, turn_usage
            ),
        )

    async def release(self, job_id: str, lease_id: str, reason: str, now: datetime) -> Job:
        return await self._change(job_id, lambda job: records.release(job, lease_id, reason, now))

    async def cancel(self, tenant: str | None, job_id: str, reason: str, now: datetime) -> Job:
        async with self._pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(QUERIES["job_tree_for_update"], job_id, tenant)
            tree = [record_from_row(row) for row in rows]
            changes, job = records.cancel_tree(job_id, tree, reason, now)
            await _save(connection, changes)
            await _cancel_pending_actions(connection, changes, now)
        return job

    async def expire_deadlines(self, now: datetime, limit: int) -> list[Job]:
        async with self._pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(QUERIES["expired_for_update"], now, limit)
            changes = [records.time_out(record_from_row(row), now) for row in rows]
            await _save(connection, changes)
            await _cancel_pending_actions(connection, changes, now)
        return [to_job(change.record) for change in changes]

    async def list_events(
        self, tenant: str | None, job_id: str, after_sequence: int, limit: int
    ) -> tuple[list[RuntimeEvent], State]:
        rows = await self._pool.fetch(QUERIES["list_events"], job_id, tenant, after_sequence, limit)
        if not rows:
            raise JobNotFound(job_name(job_id))
        events = [RuntimeEvent.FromString(row["event"]) for row in rows if row["event"] is not None]
        return events, rows[0]["state"]

    async def require_action(
        self,
        job_id: str,
        lease_id: str,
        new: NewAction,
        checkpoint: Checkpoint | None,
        now: datetime,
    ) -> Action:
        async with self._pool.acquire() as connection, connection.transaction():
            job = await _locked_job(connection, job_id)
            change, action, token = actions.require(job, lease_id, new, checkpoint, now)
            await _save(connection, [change])
            await connection.execute(
                QUERIES["insert_action"],
                *(getattr(action, name) for name in actions.ACTION_COLUMNS),
            )
        return to_action(action, token)

    async def wait_for_action(
        self,
        job_id: str,
        lease_id: str,
        checkpoint: Checkpoint | None,
        action: ActionEvent,
        now: datetime,
    ) -> Job:
        return await self._change(
            job_id, lambda job: records.await_action(job, lease_id, checkpoint, action, now)
        )

    async def resume_from_action(
        self,
        job_id: str,
        wait_time: datetime,
        resumption: tuple[EventType.ValueType | None, ActionEvent, str],
        now: datetime,
    ) -> bool:
        async with self._pool.acquire() as connection, connection.transaction():
            job = await _locked_job(connection, job_id)
            change = actions.resume_waiting(job, wait_time, resumption, now)
            if change is not None:
                await _save(connection, [change])
        return change is not None

    async def get_action(self, tenant: str, job_id: str, action_id: str) -> Action:
        row = await self._pool.fetchrow(QUERIES["get_action"], action_id, job_id, tenant)
        if row is None:
            raise actions.unknown(ActionRef(tenant, job_id, action_id))
        return to_action(action_from_row(row))

    async def list_actions(
        self,
        tenant: str,
        job_id: str,
        states: Sequence[Action.State.ValueType],
        page_size: int,
        page_token: str,
    ) -> tuple[list[Action], str]:
        after = decode_position(page_token, "ListActions") if page_token else (EARLIEST, "")
        async with self._pool.acquire() as connection, connection.transaction(readonly=True):
            if await connection.fetchrow(QUERIES["get_job"], job_id, tenant) is None:
                raise JobNotFound(job_name(job_id))
            rows = await connection.fetch(
                QUERIES["list_actions"], job_id, *after, list(states), page_size + 1
            )
        return page_of_actions([action_from_row(row) for row in rows], page_size)

    async def resolve_action(
        self, target: ActionTarget, resolution: Resolution, now: datetime
    ) -> Action:
        return await self._settle(
            target, lambda job, action: actions.resolve(job, action, target, resolution, now)
        )

    async def cancel_action(self, ref: ActionRef, reason: str, now: datetime) -> Action:
        return await self._settle(ref, lambda job, action: actions.cancel(job, action, reason, now))

    async def expire_actions(self, now: datetime, limit: int) -> list[Action]:
        async with self._pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(
                QUERIES["jobs_with_expired_actions_for_update"], now, limit
            )
            jobs = {row["id"]: record_from_row(row) for row in rows}
            rows = await connection.fetch(QUERIES["expired_actions_for_update"], list(jobs), now)
            changes = []
            expired = []
            for row in rows:
                action = action_from_row(row)
                change, action = actions.expire(jobs[action.job_id], action, now)
                jobs[action.job_id] = change.record
                changes.append(change)
                expired.append(action)
            await _save(connection, changes)
            await _save_actions(connection, expired)
        return [to_action(action) for action in expired]

    async def _settle(self, target: ActionTarget, settle: _SettleFn) -> Action:
        async with self._pool.acquire() as connection, connection.transaction():
            query, params = _find_action(target)
            found = await connection.fetchrow(query, *params)
            if found is None:
                raise actions.unknown(target)
            # Jobs are locked before actions everywhere, so that a resolution and a
            # cancellation of the same job cannot deadlock.
            job = await _locked_job(connection, found["job_id"])
            row = await connection.fetchrow(QUERIES["action_for_update"], found["id"])
            if row is None:
                raise actions.unknown(target)
            change, settled = settle(job, action_from_row(row))
            if change is not None:
                await _save(connection, [change])
                await _save_actions(connection, [settled])
        return to_action(settled)

    async def live_jobs(self) -> LiveJobs:
        rows = await self._pool.fetch(QUERIES["live_jobs"])
        return LiveJobs.from_rows((row["state"], row["jobs"], row["oldest"]) for row in rows)

    async def pending_actions(self) -> int:
        count: int = await self._pool.fetchval(QUERIES["pending_action_count"])
        return count

    async def fetch_unpublished(self, limit: int) -> list[tuple[int, RuntimeEvent]]:
        async with self._relay_guard:
            relay = await self._lock_relay()
            if relay is None:
                return []
            try:
                rows = await relay.fetch(QUERIES["fetch_unpublished"], limit)
            except Exception:
                # The connection may be broken, and the lock with it: start again next time.
                self._drop_relay_connection()
                raise
        return [(row["row_id"], RuntimeEvent.FromString(row["event"])) for row in rows]

    async def mark_published(self, row_ids: Sequence[int]) -> None:
        await self._pool.execute(QUERIES["mark_published"], list(row_ids))

    async def try_lock_relay(self) -> bool:
        async with self._relay_guard:
            return await self._lock_relay() is not None

    async def close(self) -> None:
        async with self._relay_guard:
            # Ending the session releases the lock.
            self._drop_relay_connection()
        if self._owns_pool:
            await self._pool.close()

    async def _lock_relay(self) -> asyncpg.Connection | None:
        """The connection holding the relay lock, taking the lock if free; under the guard.

        The connection stays open while another replica holds the lock, so that a standby
        asks for it again without reconnecting."""
        if self._relay is None or self._relay.is_closed():
            self._drop_relay_connection()
            self._relay = await asyncpg.connect(
                self._dsn, server_settings={"search_path": self._schema}
            )
        if not self._relay_locked:
            try:
                self._relay_locked = await self._relay.fetchval(QUERIES["try_lock_relay"])
            except BaseException:
                self._drop_relay_connection()
                raise
        return self._relay if self._relay_locked else None

    def _drop_relay_connection(self) -> None:
        if self._relay is not None:
            connection, self._relay = self._relay, None
            connection.terminate()
        self._relay_locked = False

    async def _change(self, job_id: str, change: _ChangeFn) -> Job:
        async with self._pool.acquire() as connection, connection.transaction():
            changed = change(await _locked_job(connection, job_id))
            await _save(connection, [changed])
        return to_job(changed.record)


_ChangeFn = Callable[[JobRecord], Change]
_SettleFn = Callable[[JobRecord, ActionRecord], tuple[Change | None, ActionRecord]]


async def _locked_job(connection: PoolConnection, job_id: str) -> JobRecord:
    row = await connection.fetchrow(QUERIES["job_for_update"], job_id)
    if row is None:
        raise JobNotFound(job_name(job_id))
    return record_from_row(row)


def _find_action(target: ActionTarget) -> tuple[str, tuple[object, ...]]:
    if isinstance(target, TokenRef):
        return QUERIES["action_by_token"], (target.token_hash, target.tenant)
    return QUERIES["get_action"], (target.action_id, target.job_id, target.tenant)


async def _cancel_pending_actions(
    connection: PoolConnection, changes: list[Change], now: datetime
) -> None:
    job_ids = [change.record.id for change in changes]
    if job_ids:
        await connection.execute(QUERIES["cancel_pending_actions"], job_ids, now)


async def _save_actions(connection: PoolConnection, changed: list[ActionRecord]) -> None:
    if not changed:
        return
    await connection.execute(
        QUERIES["save_actions"],
        [action.id for action in changed],
        [action.state for action in changed],
        [action.outcome for action in changed],
        [action.resolve_time for action in changed],
        [action.resolved_by for action in changed],
        [action.request_id for action in changed],
    )


async def _save(connection: PoolConnection, changes: list[Change]) -> None:
    if not changes:
        return
    jobs = [change.record for change in changes]
    events = [event for change in changes for event in change.events]
    await connection.execute(
        QUERIES["save_jobs"],
        [job.id for job in jobs],
        [job.state for job in jobs],
        [job.result for job in jobs],
        [job.failure for job in jobs],
        [job.usage for job in jobs],
        [change.record.checkpoint if change.checkpoint_changed else None for change in changes],
        [job.attempt for job in jobs],
        [job.turns for job in jobs],
        [job.lease_id for job in jobs],
        [job.lease_owner for job in jobs],
        [job.lease_expire_time for job in jobs],
        [job.start_time for job in jobs],
        [job.end_time for job in jobs],
        [job.update_time for job in jobs],
        [job.event_seq for job in jobs],
        [event.job_id for event in events],
        [event.sequence for event in events],
        [event.event for event in events],
    )
