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
import functools
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

from services.jobs import actions, records, states, trees
from services.jobs.actions import ActionRecord, action_from_row, page_of_actions, to_action
from services.jobs.listing import EARLIEST, decode_position, list_query, page_bounds, page_of
from services.jobs.records import Change, JobRecord, record_from_row, to_job
from services.jobs.states import State
from services.jobs.store import (
    SQL_DIRECTORY,
    ActionRef,
    ActionTarget,
    EndedJob,
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
from services.kit.names import job_name, parse_job_name
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
        if new.spec.parent:
            return await self._create_child(new, change, now)
        async with self._pool.acquire() as connection:
            if await _insert(connection, change):
                return to_job(change.record), True
            row = await connection.fetchrow(
                QUERIES["job_by_request_id"], new.tenant, new.request_id
            )
        return _deduplicated(row, new)

    async def _create_child(self, new: NewJob, change: Change, now: datetime) -> tuple[Job, bool]:
        parent_id = parse_job_name(new.spec.parent, "spec.parent")
        async with self._pool.acquire() as connection, connection.transaction():
            if new.request_id:
                # Before the parent's limits: a retried create gets its child back.
                row = await connection.fetchrow(
                    QUERIES["job_by_request_id"], new.tenant, new.request_id
                )
                if row is not None:
                    return _deduplicated(row, new)
            row = await connection.fetchrow(QUERIES["job_for_update"], parent_id)
            parent = None if row is None else record_from_row(row)
            root = parent
            if parent is not None and parent.root != parent.id:
                found = await connection.fetchrow(QUERIES["get_job"], parent.root, None)
                root = None if found is None else record_from_row(found)
            child, noted = trees.create_child(new, change.record.id, parent, root, now)
            if await _insert(connection, child):
                await _save(connection, [noted])
                return to_job(child.record), True
            # Made meanwhile under another parent, which did not hold this one's lock.
            row = await connection.fetchrow(
                QUERIES["job_by_request_id"], new.tenant, new.request_id
            )
        return _deduplicated(row, new)

    async def get_job(self, tenant: str | None, job_id: str) -> Job:
        row = await self._pool.fetchrow(QUERIES["get_job"], job_id, tenant)
        if row is None:
            raise JobNotFound(job_name(job_id))
        return to_job(record_from_row(row))

    async def list_jobs(
        self, tenant: str, job_filter: JobFilter, page_size: int, page_token: str
    ) -> tuple[list[Job], str]:
        bounds = page_bounds(job_filter, page_token)
        tree = (job_filter.parent, job_filter.root) if job_filter.parent else (job_filter.root,)
        rows = await self._pool.fetch(
            QUERIES[list_query(job_filter)],
            tenant,
            *bounds.before,
            bounds.created_after,
            list(job_filter.states),
            job_filter.session,
            page_size + 1,
            *(tree if job_filter.parent or job_filter.root else ()),
        )
        return page_of([record_from_row(row) for row in rows], page_size)

    async def lease_jobs(
        self,
        worker: str,
        limit: int,
        lease_seconds: float,
        now: datetime,
        *,
        runtime_version: str = "",
    ) -> LeaseBatch:
        async with self._pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(QUERIES["lease_candidates_for_update"], now, limit)
            candidates = [record_from_row(row) for row in rows]
            changes, batch = records.lease_or_time_out(
                candidates, worker, lease_seconds, now, runtime_version
            )
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
        model: str = "",
    ) -> Job:
        return await self._change(
            job_id,
            lambda job: records.save_checkpoint(
                job, lease_id, checkpoint, message, turn_usage, now, tool_calls, within_turn, model
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
        model: str = "",
    ) -> Job:
        records.check_outcome(state, outcome)

        def end(job: JobRecord) -> Change:
            return records.finish(
                job, lease_id, state, outcome, usage, checkpoint, now, message, turn_usage, model
            )

        ended = await self._end_alone(job_id, end)
        if ended is None:
            because = functools.partial(trees.ended_because, state=state)
            [ended], _ = await self._end_in_trees(None, [job_id], end, because, now)
        assert ended is not None
        return to_job(ended)

    async def _end_alone(self, job_id: str, end: trees.End) -> JobRecord | None:
        """End a leased job that has no parent and no children (most jobs) in two
        statements and no transaction: its row is read, then written only if no change
        came in between (every change appends an event, so event_seq tells; a child's
        creation appends one to its parent). None, changing nothing, for a job of a tree
        or one changed meanwhile every time, which _end_in_trees ends under locks. A
        leased job has no pending action to cancel."""
        async with self._pool.acquire() as connection:
            for _ in range(_UNLOCKED_ATTEMPTS):
                job = await _job(connection, job_id)
                if records.in_tree(job):
                    return None
                change = end(job)
                if await _save(connection, [change], read_seq=job.event_seq):
                    return change.record
        return None

    async def await_children(
        self,
        job_id: str,
        lease_id: str,
        children: Sequence[str],
        checkpoint: Checkpoint | None,
        now: datetime,
    ) -> tuple[Job, bool]:
        async with self._pool.acquire() as connection, connection.transaction():
            parent = await _locked_job(connection, job_id)
            # Read after the parent's lock, which every child's end takes too: a child
            # seen unfinished here tells the parent of its end once this commits.
            rows = await connection.fetch(QUERIES["jobs_by_id"], list(children))
            found = {row["id"]: record_from_row(row) for row in rows}
            change, waiting = trees.await_children(
                parent, lease_id, checkpoint, [(child, found.get(child)) for child in children], now
            )
            await _save(connection, [change])
        return to_job(change.record), waiting

    async def release(self, job_id: str, lease_id: str, reason: str, now: datetime) -> Job:
        return await self._change(job_id, lambda job: records.release(job, lease_id, reason, now))

    async def cancel(self, tenant: str | None, job_id: str, reason: str, now: datetime) -> Job:
        def end(job: JobRecord) -> Change:
            return records.cancel(job, reason or "cancelled", now)

        [ended], _ = await self._end_in_trees(tenant, [job_id], end, trees.cancelled_because, now)
        assert ended is not None
        return to_job(ended)

    async def expire_deadlines(self, now: datetime, limit: int) -> list[Job]:
        ids = [row["id"] for row in await self._pool.fetch(QUERIES["expired"], now, limit)]

        def end(job: JobRecord) -> Change:
            return records.time_out(job, now)

        because = functools.partial(trees.ended_because, state=states.TIMED_OUT)
        _, ended = await self._end_in_trees(None, ids, end, because, now, only_overdue=True)
        return [to_job(record) for record in ended]

    async def _end_in_trees(
        self,
        tenant: str | None,
        job_ids: list[str],
        end: trees.End,
        because: Callable[[str], str],
        now: datetime,
        *,
        only_overdue: bool = False,
    ) -> tuple[list[JobRecord | None], list[JobRecord]]:
        """End each job (of `tenant`, or any when None) with its unfinished descendants,
        telling its parent (services.jobs.trees.end_job), in one transaction; with
        `only_overdue`, a job the deadline sweep would not time out now is left alone
        (None). Returns their new rows and every job ended. `because` says why a
        descendant of a job (its id) is cancelled. Every row involved is locked in id order
        first, so that concurrent ends of overlapping trees wait for each other; a deadlock
        PostgreSQL still finds (a tree that grew while it was being locked) is retried."""
        for attempt in range(_DEADLOCK_ATTEMPTS):
            try:
                async with self._pool.acquire() as connection, connection.transaction():
                    return await _end_locked(
                        connection, tenant, job_ids, end, because, now, only_overdue
                    )
            except asyncpg.exceptions.DeadlockDetectedError:
                if attempt + 1 == _DEADLOCK_ATTEMPTS:
                    raise Aborted("concurrent changes to the job's tree; try again") from None
        raise AssertionError("unreachable")

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

    async def ended_jobs(self, job_ids: Sequence[str]) -> list[EndedJob]:
        rows = await self._pool.fetch(QUERIES["jobs_by_id"], list(job_ids))
        return records.ended_jobs([record_from_row(row) for row in rows])

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
_DEADLOCK_ATTEMPTS = 5
_UNLOCKED_ATTEMPTS = 2
"""Reads and conditional writes of a job before its end takes the locked path."""
_LOCK_ROUNDS = 3
"""Rounds of asking for a tree and locking it while it keeps growing; children created
after the first round's lock of their parent cannot exist, so a second round is rare."""


async def _insert(connection: PoolConnection, change: Change) -> bool:
    """Insert a new job with its job.created event; False when the tenant has a job with
    its request_id already."""
    job = change.record
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
        job.root,
        job.depth,
        job.node,
        job.trace_parent,
    )
    return inserted is not None


def _deduplicated(row: asyncpg.Record | None, new: NewJob) -> tuple[Job, bool]:
    if row is None:
        raise Aborted("a job with this request_id was removed while it was being created")
    return records.deduplicate(record_from_row(row), new), False


async def _lock_trees(
    connection: PoolConnection, tenant: str | None, job_ids: list[str]
) -> tuple[dict[str, JobRecord], dict[str, list[str]]]:
    """Lock the jobs, their parents and their unfinished descendants; returns the locked
    rows and, for each job, the ids of its parent and unfinished descendants. When a
    locked job turns out to have more children than were seen (one was created before
    the lock was taken), the members are asked for again and the new ones locked too."""
    locked: dict[str, JobRecord] = {}
    for _ in range(_LOCK_ROUNDS):
        members: dict[str, list[str]] = {}
        seen: dict[str, set[str]] = {}
        subtree: set[str] = set()
        for row in await connection.fetch(QUERIES["tree_members"], job_ids, tenant):
            if row["kind"] != "finished":
                members.setdefault(row["target"], []).append(row["id"])
            if row["kind"] != "parent":
                subtree.add(row["id"])
            if row["kind"] in ("unfinished", "finished"):
                seen.setdefault(row["parent"], set()).add(row["id"])
        wanted = {member for ids in members.values() for member in ids} - locked.keys()
        for row in await connection.fetch(QUERIES["jobs_for_update"], sorted(wanted)):
            locked[row["id"]] = record_from_row(row)
        # A parent's other children are not this change's business; the others' are.
        if not any(
            job_id in locked and locked[job_id].children > len(seen.get(job_id, ()))
            for job_id in subtree
        ):
            break
    return locked, members


async def _end_locked(
    connection: PoolConnection,
    tenant: str | None,
    job_ids: list[str],
    end: trees.End,
    because: Callable[[str], str],
    now: datetime,
    only_overdue: bool,
) -> tuple[list[JobRecord | None], list[JobRecord]]:
    locked, members = await _lock_trees(connection, tenant, job_ids)
    batch = trees.TreeBatch(locked.values())
    ended: list[JobRecord | None] = []
    for job_id in job_ids:
        target = batch.row(job_id)
        if target is None and not only_overdue:
            raise JobNotFound(job_name(job_id))
        if target is None or (only_overdue and not records.overdue(target, now)):
            ended.append(None)
            continue
        descendants = [
            member for member in members.get(job_id, []) if member not in (job_id, target.parent)
        ]
        root = locked.get(target.root, target)
        if descendants and target.root not in locked:
            found = await connection.fetchrow(QUERIES["get_job"], target.root, None)
            root = target if found is None else record_from_row(found)
        ended.append(
            trees.end_job(
                batch,
                job_id,
                end,
                descendants,
                functools.partial(trees.limits_of, root),
                because(job_id),
                now,
            )
        )
    changes = batch.changes()
    await _save(connection, changes)
    await _cancel_pending_actions(
        connection, [change for change in changes if change.record.state in states.TERMINAL], now
    )
    return ended, batch.ended()


async def _locked_job(connection: PoolConnection, job_id: str) -> JobRecord:
    row = await connection.fetchrow(QUERIES["job_for_update"], job_id)
    if row is None:
        raise JobNotFound(job_name(job_id))
    return record_from_row(row)


async def _job(connection: PoolConnection, job_id: str) -> JobRecord:
    row = await connection.fetchrow(QUERIES["get_job"], job_id, None)
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


async def _save(
    connection: PoolConnection, changes: list[Change], *, read_seq: int | None = None
) -> int:
    """Write the changes; with `read_seq` (one change), only if the job's event_seq is
    still that. Returns how many jobs were written."""
    if not changes:
        return 0
    jobs = [change.record for change in changes]
    events = [event for change in changes for event in change.events]
    written: int = await connection.fetchval(
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
        [job.children for job in jobs],
        [job.awaiting for job in jobs],
        [read_seq for _ in jobs],
    )
    return written
