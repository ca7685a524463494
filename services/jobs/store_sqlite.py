"""The job store on SQLite, the embedded default: one file, one writer thread.

Each operation is one hop to the database thread; writes run inside one BEGIN IMMEDIATE
transaction, which holds SQLite's write lock from the start, so reading the rows to change,
changing them in Python (services.jobs.records) and writing them back with their events is
atomic and free of races with other writers, even in other processes.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
from services.jobs.actions import ACTION_COLUMNS, ACTION_TIME_COLUMNS, ActionRecord, to_action
from services.jobs.listing import EARLIEST, decode_position, list_query, page_bounds, page_of
from services.jobs.records import (
    COLUMNS,
    TIME_COLUMNS,
    Change,
    JobRecord,
    StoredEvent,
    to_job,
)
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
from services.kit.errors import JobNotFound, LeaseLost
from services.kit.ids import new_id
from services.kit.names import job_name, parse_job_name
from services.kit.storage import SqliteDatabase, load_queries

QUERIES = load_queries(SQL_DIRECTORY / "sqlite" / "queries.sql")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class SqliteJobStore:
    """A JobStore in a migrated SQLite database."""

    def __init__(self, database: SqliteDatabase, *, owns_database: bool = False) -> None:
        """Use `database`; `close` closes it too when the store owns it."""
        self._db = database
        self._owns_database = owns_database

    @classmethod
    async def open(cls, path: str | Path) -> SqliteJobStore:
        """A store on the migrated SQLite file at `path`, which it opens and owns."""
        return cls(await SqliteDatabase.open(path), owns_database=True)

    async def create_job(self, new: NewJob, now: datetime) -> tuple[Job, bool]:
        change = records.create(new, new_id(), now)
        return await self._db.transaction(functools.partial(_create, new, change))

    async def get_job(self, tenant: str | None, job_id: str) -> Job:
        row = await self._db.fetchone(QUERIES["get_job"], {"id": job_id, "tenant": tenant})
        if row is None:
            raise JobNotFound(job_name(job_id))
        return to_job(_record(row))

    async def list_jobs(
        self, tenant: str, job_filter: JobFilter, page_size: int, page_token: str
    ) -> tuple[list[Job], str]:
        bounds = page_bounds(job_filter, page_token)
        rows = await self._db.fetchall(
            QUERIES[list_query(job_filter)],
            {
                "tenant": tenant,
                "before_time": _micros(bounds.before[0]),
                "before_id": bounds.before[1],
                "after": _micros(bounds.created_after),
                "states": json.dumps(list(job_filter.states)),
                "session": job_filter.session,
                "parent": job_filter.parent,
                "root": job_filter.root,
                "limit": page_size + 1,
            },
        )
        return page_of([_record(row) for row in rows], page_size)

    async def lease_jobs(
        self,
        worker: str,
        limit: int,
        lease_seconds: float,
        now: datetime,
        *,
        runtime_version: str = "",
    ) -> LeaseBatch:
        def lease(connection: sqlite3.Connection) -> LeaseBatch:
            at = {"now": _micros(now), "limit": limit}
            rows = connection.execute(QUERIES["takeover_candidates"], at).fetchall()
            at["limit"] = limit - len(rows)
            rows += connection.execute(QUERIES["queued_candidates"], at).fetchall()
            candidates = [_record(row) for row in rows]
            changes, batch = records.lease_or_time_out(
                candidates, worker, lease_seconds, now, runtime_version
            )
            _save(connection, changes)
            return batch

        return await self._db.transaction(lease)

    async def heartbeat(
        self, job_id: str, lease_id: str, lease_seconds: float, now: datetime
    ) -> datetime:
        expire = now + timedelta(seconds=lease_seconds)

        def extend(connection: sqlite3.Connection) -> datetime:
            params = {"id": job_id, "lease_id": lease_id, "expire": _micros(expire)}
            if connection.execute(QUERIES["heartbeat"], params).rowcount == 1:
                return expire
            row = connection.execute(QUERIES["job_state"], params).fetchone()
            if row is None:
                raise JobNotFound(job_name(job_id))
            raise LeaseLost(JobState.Name(row["state"]))

        return await self._db.transaction(extend)

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

        def finish(connection: sqlite3.Connection) -> Job:
            job = _locked_job(connection, job_id)
            if not records.in_tree(job):
                # No parent and no children (most jobs): nothing else to change; a
                # leased job has no pending action to cancel.
                change = end(job)
                _save(connection, [change])
                return to_job(change.record)
            because = trees.ended_because(job_id, state)
            return to_job(_end_in_tree(connection, None, job_id, end, because, now)[0])

        return await self._db.transaction(finish)

    async def await_children(
        self,
        job_id: str,
        lease_id: str,
        children: Sequence[str],
        checkpoint: Checkpoint | None,
        now: datetime,
    ) -> tuple[Job, bool]:
        def park(connection: sqlite3.Connection) -> tuple[Job, bool]:
            parent = _locked_job(connection, job_id)
            params = {"ids": json.dumps(list(children))}
            rows = {
                row["id"]: _record(row) for row in connection.execute(QUERIES["jobs_by_id"], params)
            }
            change, waiting = trees.await_children(
                parent, lease_id, checkpoint, [(child, rows.get(child)) for child in children], now
            )
            _save(connection, [change])
            return to_job(change.record), waiting

        return await self._db.transaction(park)

    async def release(self, job_id: str, lease_id: str, reason: str, now: datetime) -> Job:
        return await self._change(job_id, lambda job: records.release(job, lease_id, reason, now))

    async def cancel(self, tenant: str | None, job_id: str, reason: str, now: datetime) -> Job:
        def end(job: JobRecord) -> Change:
            return records.cancel(job, reason or "cancelled", now)

        def cancel(connection: sqlite3.Connection) -> Job:
            because = trees.cancelled_because(job_id)
            return to_job(_end_in_tree(connection, tenant, job_id, end, because, now)[0])

        return await self._db.transaction(cancel)

    async def expire_deadlines(self, now: datetime, limit: int) -> list[Job]:
        def end(job: JobRecord) -> Change:
            return records.time_out(job, now)

        def expire(connection: sqlite3.Connection) -> list[Job]:
            params = {"now": _micros(now), "limit": limit}
            expired = []
            for row in connection.execute(QUERIES["expired"], params).fetchall():
                # An earlier job's end may have ended this one already, with its tree.
                if not records.overdue(_locked_job(connection, row["id"]), now):
                    continue
                because = trees.ended_because(row["id"], states.TIMED_OUT)
                expired += _end_in_tree(connection, None, row["id"], end, because, now)[1]
            return [to_job(record) for record in expired]

        return await self._db.transaction(expire)

    async def list_events(
        self, tenant: str | None, job_id: str, after_sequence: int, limit: int
    ) -> tuple[list[RuntimeEvent], State]:
        rows = await self._db.fetchall(
            QUERIES["list_events"],
            {"id": job_id, "tenant": tenant, "after": after_sequence, "limit": limit},
        )
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
        def require(connection: sqlite3.Connection) -> Action:
            change, action, token = actions.require(
                _locked_job(connection, job_id), lease_id, new, checkpoint, now
            )
            _save(connection, [change])
            connection.execute(QUERIES["insert_action"], _action_params(action))
            return to_action(action, token)

        return await self._db.transaction(require)

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
        def resume(connection: sqlite3.Connection) -> bool:
            job = _locked_job(connection, job_id)
            change = actions.resume_waiting(job, wait_time, resumption, now)
            if change is not None:
                _save(connection, [change])
            return change is not None

        return await self._db.transaction(resume)

    async def get_action(self, tenant: str, job_id: str, action_id: str) -> Action:
        params = {"id": action_id, "job_id": job_id, "tenant": tenant}
        row = await self._db.fetchone(QUERIES["get_action"], params)
        if row is None:
            raise actions.unknown(ActionRef(tenant, job_id, action_id))
        return to_action(_action(row))

    async def list_actions(
        self,
        tenant: str,
        job_id: str,
        states: Sequence[Action.State.ValueType],
        page_size: int,
        page_token: str,
    ) -> tuple[list[Action], str]:
        after = decode_position(page_token, "ListActions") if page_token else (EARLIEST, "")

        def list_page(connection: sqlite3.Connection) -> list[sqlite3.Row]:
            job = {"id": job_id, "tenant": tenant}
            if connection.execute(QUERIES["get_job"], job).fetchone() is None:
                raise JobNotFound(job_name(job_id))
            params = {
                "job_id": job_id,
                "after_time": _micros(after[0]),
                "after_id": after[1],
                "states": json.dumps(list(states)),
                "limit": page_size + 1,
            }
            return connection.execute(QUERIES["list_actions"], params).fetchall()

        rows = [_action(row) for row in await self._db.run(list_page)]
        return actions.page_of_actions(rows, page_size)

    async def resolve_action(
        self, target: ActionTarget, resolution: Resolution, now: datetime
    ) -> Action:
        return await self._settle(
            target, lambda job, action: actions.resolve(job, action, target, resolution, now)
        )

    async def cancel_action(self, ref: ActionRef, reason: str, now: datetime) -> Action:
        return await self._settle(ref, lambda job, action: actions.cancel(job, action, reason, now))

    async def expire_actions(self, now: datetime, limit: int) -> list[Action]:
        def expire(connection: sqlite3.Connection) -> list[Action]:
            params = {"now": _micros(now), "limit": limit}
            expired = []
            for row in connection.execute(QUERIES["expired_actions"], params).fetchall():
                action = _action(row)
                change, action = actions.expire(_locked_job(connection, action.job_id), action, now)
                _save(connection, [change])
                connection.execute(QUERIES["save_action"], _action_params(action))
                expired.append(to_action(action))
            return expired

        return await self._db.transaction(expire)

    async def _settle(self, target: ActionTarget, settle: _SettleFn) -> Action:
        def apply(connection: sqlite3.Connection) -> Action:
            row = connection.execute(*_find_action(target)).fetchone()
            if row is None:
                raise actions.unknown(target)
            action = _action(row)
            change, settled = settle(_locked_job(connection, action.job_id), action)
            if change is not None:
                _save(connection, [change])
                connection.execute(QUERIES["save_action"], _action_params(settled))
            return to_action(settled)

        return await self._db.transaction(apply)

    async def ended_jobs(self, job_ids: Sequence[str]) -> list[EndedJob]:
        rows = await self._db.fetchall(QUERIES["jobs_by_id"], {"ids": json.dumps(list(job_ids))})
        return records.ended_jobs([_record(row) for row in rows])

    async def live_jobs(self) -> LiveJobs:
        rows = await self._db.fetchall(QUERIES["live_jobs"], {})
        return LiveJobs.from_rows((row["state"], row["jobs"], _time(row["oldest"])) for row in rows)

    async def pending_actions(self) -> int:
        rows = await self._db.fetchall(QUERIES["pending_action_count"], {})
        return int(rows[0]["actions"])

    async def fetch_unpublished(self, limit: int) -> list[tuple[int, RuntimeEvent]]:
        rows = await self._db.fetchall(QUERIES["fetch_unpublished"], {"limit": limit})
        return [(row["row_id"], RuntimeEvent.FromString(row["event"])) for row in rows]

    async def mark_published(self, row_ids: Sequence[int]) -> None:
        await self._db.execute(QUERIES["mark_published"], {"row_ids": json.dumps(list(row_ids))})

    async def try_lock_relay(self) -> bool:
        # The embedded store serves one process, whose single relay publishes everything.
        return True

    async def close(self) -> None:
        if self._owns_database:
            await self._db.close()

    async def _change(self, job_id: str, change: Callable[[JobRecord], Change]) -> Job:
        def apply(connection: sqlite3.Connection) -> Job:
            changed = change(_locked_job(connection, job_id))
            _save(connection, [changed])
            return to_job(changed.record)

        return await self._db.transaction(apply)


_SettleFn = Callable[[JobRecord, ActionRecord], tuple[Change | None, ActionRecord]]


def _locked_job(connection: sqlite3.Connection, job_id: str) -> JobRecord:
    """The job, read inside the write transaction (which locks the whole database)."""
    job = _job_or_none(connection, job_id)
    if job is None:
        raise JobNotFound(job_name(job_id))
    return job


def _find_action(target: ActionTarget) -> tuple[str, dict[str, Any]]:
    if isinstance(target, TokenRef):
        return QUERIES["action_by_token"], {
            "token_hash": target.token_hash,
            "tenant": target.tenant,
        }
    params = {"id": target.action_id, "job_id": target.job_id, "tenant": target.tenant}
    return QUERIES["get_action"], params


def _cancel_pending_actions(
    connection: sqlite3.Connection, changes: list[Change], now: datetime
) -> None:
    job_ids = json.dumps([change.record.id for change in changes])
    connection.execute(QUERIES["cancel_pending_actions"], {"job_ids": job_ids, "now": _micros(now)})


def _action_params(action: ActionRecord) -> dict[str, Any]:
    params = {name: getattr(action, name) for name in ACTION_COLUMNS}
    for name in ACTION_TIME_COLUMNS:
        params[name] = _micros(params[name])
    return params


def _action(row: sqlite3.Row) -> ActionRecord:
    return actions.action_from_row(row, _time)


def _create(new: NewJob, change: Change, connection: sqlite3.Connection) -> tuple[Job, bool]:
    if new.request_id:
        params = {"tenant": new.tenant, "request_id": new.request_id}
        row = connection.execute(QUERIES["job_by_request_id"], params).fetchone()
        if row is not None:
            return records.deduplicate(_record(row), new), False
    noted: list[Change] = []
    if new.spec.parent:
        parent = _job_or_none(connection, parse_job_name(new.spec.parent, "spec.parent"))
        root = parent
        if parent is not None and parent.root != parent.id:
            root = _job_or_none(connection, parent.root)
        now = change.record.create_time
        change, parent_change = trees.create_child(new, change.record.id, parent, root, now)
        noted.append(parent_change)
    connection.execute(QUERIES["insert_job"], _params(change.record))
    _insert_events(connection, change.events)
    # The child's job.created goes out before its parent's job.child.created.
    _save(connection, noted)
    return to_job(change.record), True


def _end_in_tree(
    connection: sqlite3.Connection,
    tenant: str | None,
    job_id: str,
    end: trees.End,
    because: str,
    now: datetime,
) -> tuple[JobRecord, list[JobRecord]]:
    """End the job (of `tenant`, or any when None) with its unfinished descendants, and
    tell its parent (services.jobs.trees.end_job); returns its new row and every job
    ended."""
    params = {"id": job_id, "tenant": tenant}
    tree = [_record(row) for row in connection.execute(QUERIES["job_tree"], params)]
    target = next((row for row in tree if row.id == job_id), None)
    if target is None:
        raise JobNotFound(job_name(job_id))
    parent = _job_or_none(connection, target.parent) if target.parent else None
    batch = trees.TreeBatch(tree + ([parent] if parent is not None else []))

    def limits() -> trees.TreeLimits:
        root = batch.row(target.root) or _job_or_none(connection, target.root)
        return trees.limits_of(root or target)

    ended = trees.end_job(batch, job_id, end, [row.id for row in tree], limits, because, now)
    changes = batch.changes()
    _save(connection, changes)
    _cancel_pending_actions(
        connection, [change for change in changes if change.record.state in states.TERMINAL], now
    )
    return ended, batch.ended()


def _job_or_none(connection: sqlite3.Connection, job_id: str) -> JobRecord | None:
    row = connection.execute(QUERIES["get_job"], {"id": job_id, "tenant": None}).fetchone()
    return None if row is None else _record(row)


def _save(connection: sqlite3.Connection, changes: list[Change]) -> None:
    for change in changes:
        params = _params(change.record)
        if not change.checkpoint_changed:
            params["checkpoint"] = None
        connection.execute(QUERIES["save_job"], params)
    _insert_events(connection, [event for change in changes for event in change.events])


def _insert_events(connection: sqlite3.Connection, events: Sequence[StoredEvent]) -> None:
    connection.executemany(
        QUERIES["insert_event"],
        [{"job_id": e.job_id, "sequence": e.sequence, "event": e.event} for e in events],
    )


def _params(record: JobRecord) -> dict[str, Any]:
    params = {name: getattr(record, name) for name in COLUMNS}
    for name in TIME_COLUMNS:
        params[name] = _micros(params[name])
    return params


def _record(row: sqlite3.Row) -> JobRecord:
    return records.record_from_row(row, _time)


def _micros(time: datetime | None) -> int | None:
    return None if time is None else (time - _EPOCH) // _MICROSECOND


def _time(micros: int | None) -> datetime | None:
    return None if micros is None else _EPOCH + micros * _MICROSECOND
