"""An ActionStore on Redis, for deployments that accept Redis persistence for actions.

Actions and their (hashed) resume tokens live in Redis; the jobs they park stay in the
JobStore, which this store drives through its ActionJobs methods. Each settlement is one
Lua script (so exactly one of any number of concurrent resolutions wins), and the job's
move is a second write, to the database. The gap between the two writes is closed so:

- require: the action is written to Redis first, then the job is made WAITING (bound to
  the action by its update_time, which is the action's create_time). If the job refuses
  (lost lease) the action is deleted again; if the process dies in between, the action
  belongs to no wait and is shown CANCELLED as soon as the job has moved on.
- resolve, cancel, expire: the script settles the action and records it in the
  `resuming` set; the job is then queued (retried a few times) and the entry removed. A
  process that dies in between leaves the entry, and the expiry sweep finishes it once it
  is older than `repair_seconds`. A job that no longer waits on the action (cancelled,
  timed out) refuses the move: the action becomes CANCELLED and the resolution fails.

See docs/actions-redis.md for what is lost when Redis loses data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio
from agentrt.jobs.v1.jobs_pb2 import Action, Checkpoint, Job
from redis.typing import EncodableT, FieldT

from services.jobs import actions, states
from services.jobs.actions import (
    CANCELLED,
    EXPIRED,
    PENDING,
    RESOLVED,
    ActionNotPending,
    ActionRecord,
    ResumeTokenInvalid,
    to_action,
)
from services.jobs.listing import EARLIEST, decode_position
from services.jobs.store import (
    ActionJobs,
    ActionRef,
    ActionTarget,
    NewAction,
    Resolution,
    TokenRef,
)
from services.kit.errors import AgentrtError, JobNotFound, RequestIdReused
from services.kit.events.base import retry_delay
from services.kit.names import action_name

_LOG = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# Settle one action atomically. ARGV: prefix, mode (token | name | id), tenant, token
# hash (hex) or action id, job id, now (µs), new state, outcome, principal, request id,
# resume (1: record it in `resuming`), cancel reason, retention (s).
# Returns {status, field, value, ...}: ok, repeat, not_pending, token_invalid, not_found.
_SETTLE = """
local p, mode, tenant = ARGV[1], ARGV[2], ARGV[3]
local id = ARGV[4]
local refused = 'not_found'
if mode == 'token' then
  refused = 'token_invalid'
  id = redis.call('GET', p .. 't:' .. ARGV[4])
  if not id then return {refused} end
end
local key = p .. 'a:' .. id
local h = redis.call('HGETALL', key)
if #h == 0 then return {refused} end
local a = {}
for i = 1, #h, 2 do a[h[i]] = h[i + 1] end
if mode ~= 'id' and (a.tenant ~= tenant or (mode == 'name' and a.job_id ~= ARGV[5])) then
  return {refused}
end
local now, state, rid = ARGV[6], ARGV[7], ARGV[10]
if rid ~= '' and a.request_id == rid and a.state == '2' then
  return {'repeat', unpack(h)}
end
-- Only the sweep settles an expired action, as EXPIRED; nothing settles it before.
local expired = tonumber(a.expire_us) <= tonumber(now)
if a.state ~= '1' or expired ~= (state == '3') then
  return {'not_pending', unpack(h)}
end
redis.call('HSET', key, 'state', state, 'resolve_us', now, 'resolved_by', ARGV[9],
  'request_id', rid, 'cancel_reason', ARGV[12])
if state == '2' then
  redis.call('HSET', key, 'outcome', ARGV[8])
elseif state == '3' then
  redis.call('HSET', key, 'outcome', a.timeout_outcome)
end
redis.call('ZREM', p .. 'pending', id)
if ARGV[11] == '1' then redis.call('ZADD', p .. 'resuming', now, id) end
redis.call('EXPIRE', key, ARGV[13])
return {'ok', unpack(redis.call('HGETALL', key))}
"""

# The job refused to resume from a settled action: cancel the action, unless another
# process (the repair) took its `resuming` entry first. ARGV: prefix, id, reason.
_REVERT = """
local p, id = ARGV[1], ARGV[2]
if redis.call('ZREM', p .. 'resuming', id) == 0 then return 0 end
local key = p .. 'a:' .. id
redis.call('HSET', key, 'state', '4', 'resolved_by', '', 'request_id', '',
  'cancel_reason', ARGV[3])
redis.call('HDEL', key, 'outcome')
return 1
"""

_NOT_WAITING = "its job no longer waits on it"


class RedisActionStore:
    """An ActionStore whose actions live in Redis under `{prefix}:actions:`.

    Keys: `a:{id}` a hash per action; `t:{sha256 hex}` the action id of a resume token;
    `j:{job id}` the job's action ids by create time; `pending` pending ids by expire
    time; `resuming` ids settled whose job has not been queued yet, by settle time.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        jobs: ActionJobs,
        prefix: str = "agentrt",
        *,
        retention_seconds: int = 7 * 24 * 3600,
        repair_seconds: float = 30.0,
        attempts: int = 3,
    ) -> None:
        """`jobs` is the JobStore whose jobs wait; settled actions are kept
        `retention_seconds`; a settlement whose job move has not completed after
        `repair_seconds` is finished by the expiry sweep."""
        self._redis = client
        self._jobs = jobs
        self._prefix = f"{prefix}:actions:"
        self._retention = retention_seconds
        self._repair = timedelta(seconds=repair_seconds)
        self._attempts = attempts
        self._settle_script = client.register_script(_SETTLE)
        self._revert_script = client.register_script(_REVERT)

    async def require_action(
        self,
        job_id: str,
        lease_id: str,
        new: NewAction,
        checkpoint: Checkpoint | None,
        now: datetime,
    ) -> Action:
        job = await self._jobs.get_job(None, job_id)
        record, token = actions.new_record(job_id, job.tenant, new, now)
        await self._insert(record)
        try:
            await self._jobs.wait_for_action(
                job_id, lease_id, checkpoint, actions.event_of(record), now
            )
        except AgentrtError:
            # Refused, so nothing was written. Any other failure may have committed: the
            # action stays, and is shown CANCELLED once the job has moved on without it.
            await self._delete(record)
            raise
        return to_action(record, token)

    async def get_action(self, tenant: str, job_id: str, action_id: str) -> Action:
        record = await self._load(action_id)
        if record is None or record.tenant != tenant or record.job_id != job_id:
            raise actions.unknown(ActionRef(tenant, job_id, action_id))
        if record.state == PENDING:
            record = await self._checked(record, await self._jobs.get_job(None, job_id))
        return to_action(record)

    async def list_actions(
        self,
        tenant: str,
        job_id: str,
        states_wanted: Sequence[Action.State.ValueType],
        page_size: int,
        page_token: str,
    ) -> tuple[list[Action], str]:
        after = decode_position(page_token, "ListActions") if page_token else (EARLIEST, "")
        job = await self._jobs.get_job(tenant, job_id)
        ids = await self._redis.zrange(self._key("j", job_id), 0, -1)
        found = await self._load_many([_text(i) for i in ids])
        found.sort(key=lambda r: (r.create_time, r.id))
        rows = []
        for record in found:
            if (record.create_time, record.id) <= after:
                continue
            if record.state == PENDING:
                record = await self._checked(record, job)
            if not states_wanted or record.state in states_wanted:
                rows.append(record)
            if len(rows) > page_size:
                break
        return actions.page_of_actions(rows, page_size)

    async def resolve_action(
        self, target: ActionTarget, resolution: Resolution, now: datetime
    ) -> Action:
        outcome = resolution.outcome.SerializeToString(deterministic=True)
        status, record = await self._settle(
            target, RESOLVED, now, outcome, resolution.principal, resolution.request_id
        )
        if status == "repeat":
            assert record is not None
            if (record.outcome, record.resolved_by) != (outcome, resolution.principal):
                raise RequestIdReused(resolution.request_id)
            if await self._redis.zscore(self._key("resuming"), record.id) is not None:
                # A retry after a failure between the two writes finishes the first.
                await self._resume(record, True)
            return to_action(record)
        return to_action(await self._resumed(self._settled(status, record, target, now), target))

    async def cancel_action(self, ref: ActionRef, reason: str, now: datetime) -> Action:
        status, record = await self._settle(ref, CANCELLED, now, cancel_reason=reason)
        settled = self._settled(status, record, ref, now)
        return to_action(await self._resumed(settled, ref))

    async def expire_actions(self, now: datetime, limit: int) -> list[Action]:
        """Expire the due actions, then finish the settlements left half-done (their job
        not queued) for longer than repair_seconds by a process that died."""
        due = await self._redis.zrangebyscore(
            self._key("pending"), "-inf", _micros(now), start=0, num=limit
        )
        expired = []
        for action_id in due:
            status, record = await self._settle_id(_text(action_id), EXPIRED, now, resume=True)
            # A job that no longer waits (cancelled, timed out) leaves its action CANCELLED.
            if status == "ok" and record is not None and await self._resume(record, False):
                expired.append(to_action(record))
        await self._repair_resumptions(now, limit)
        return expired

    async def close(self) -> None:
        """Nothing to release: the Redis client belongs to the process."""

    # Writes

    async def _insert(self, record: ActionRecord) -> None:
        fields = _fields(record)
        token_ttl = self._retention + int((record.expire_time - record.create_time).total_seconds())
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key("a", record.id), mapping=fields)
            pipe.set(self._key("t", record.token_hash.hex()), record.id, ex=token_ttl)
            pipe.zadd(self._key("j", record.job_id), {record.id: _micros(record.create_time)})
            pipe.expire(self._key("j", record.job_id), token_ttl)
            pipe.zadd(self._key("pending"), {record.id: _micros(record.expire_time)})
            await pipe.execute()

    async def _delete(self, record: ActionRecord) -> None:
        """Undo _insert for an action whose job refused to wait on it."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key("a", record.id), self._key("t", record.token_hash.hex()))
            pipe.zrem(self._key("j", record.job_id), record.id)
            pipe.zrem(self._key("pending"), record.id)
            await pipe.execute()

    async def _settle(
        self,
        target: ActionTarget,
        state: Action.State.ValueType,
        now: datetime,
        outcome: bytes = b"",
        principal: str = "",
        request_id: str = "",
        cancel_reason: str = "",
    ) -> tuple[str, ActionRecord | None]:
        if isinstance(target, TokenRef):
            mode, key, job_id = "token", target.token_hash.hex(), ""
        else:
            mode, key, job_id = "name", target.action_id, target.job_id
        return await self._run_settle(
            mode, target.tenant, key, job_id, now, state, outcome, principal, request_id,
            True, cancel_reason,
        )  # fmt: skip

    async def _settle_id(
        self,
        action_id: str,
        state: Action.State.ValueType,
        now: datetime,
        *,
        resume: bool,
        cancel_reason: str = "",
    ) -> tuple[str, ActionRecord | None]:
        """Settle an action named by id alone, for the sweep and the read checks."""
        return await self._run_settle(
            "id", "", action_id, "", now, state, b"", "", "", resume, cancel_reason
        )

    async def _run_settle(
        self,
        mode: str,
        tenant: str,
        key: str,
        job_id: str,
        now: datetime,
        state: Action.State.ValueType,
        outcome: bytes,
        principal: str,
        request_id: str,
        resume: bool,
        cancel_reason: str,
    ) -> tuple[str, ActionRecord | None]:
        reply = await self._settle_script(
            args=[
                self._prefix, mode, tenant, key, job_id, _micros(now), int(state), outcome,
                principal, request_id, 1 if resume else 0, cancel_reason, self._retention,
            ]
        )  # fmt: skip
        status = _text(reply[0])
        record = _record(_pairs(reply[1:])) if len(reply) > 1 else None
        return status, record

    def _settled(
        self, status: str, record: ActionRecord | None, target: ActionTarget, now: datetime
    ) -> ActionRecord:
        """The settled record, or the refusal of the script's status."""
        if status == "ok" and record is not None:
            return record
        if status != "not_pending" or record is None:
            raise actions.unknown(target)
        actions.check_pending(record, target, now)
        raise AssertionError("a pending action was refused")  # pragma: no cover

    async def _resumed(self, record: ActionRecord, target: ActionTarget) -> ActionRecord:
        """The settled action once its job is queued again; refused when the job no longer
        waits on it (the action is then CANCELLED)."""
        if await self._resume(record, False):
            return record
        if isinstance(target, TokenRef):
            raise ResumeTokenInvalid()
        raise ActionNotPending(action_name(record.job_id, record.id), "STATE_CANCELLED")

    async def _resume(self, record: ActionRecord, repair: bool) -> bool:
        """Queue the action's job again (retried); True when it was queued, or when the
        move is left to the repair because the JobStore stayed unreachable. False when
        the job does not wait on the action: the action is then cancelled, unless this is
        the repair (the first attempt may have queued the job before its process died)."""
        resumption = actions.resumption(record, _cancel_reason(record))
        for attempt in range(self._attempts):
            try:
                moved = await self._jobs.resume_from_action(
                    record.job_id, record.create_time, resumption, _resume_time(record)
                )
            except JobNotFound:
                moved = False
            except Exception:
                if attempt + 1 == self._attempts:
                    _LOG.warning("job of %s not queued; left to the repair", record.id)
                    return True
                await asyncio.sleep(retry_delay(attempt + 1))
                continue
            if moved or repair:
                await self._redis.zrem(self._key("resuming"), record.id)
                return moved
            return not await self._revert_script(args=[self._prefix, record.id, _NOT_WAITING])
        return False  # pragma: no cover

    async def _repair_resumptions(self, now: datetime, limit: int) -> None:
        stale = await self._redis.zrangebyscore(
            self._key("resuming"), "-inf", _micros(now - self._repair), start=0, num=limit
        )
        ids = [_text(i) for i in stale]
        found = await self._load_many(ids)
        gone = set(ids) - {record.id for record in found}
        if gone:
            # Past their retention: nothing is left to resume from.
            await self._redis.zrem(self._key("resuming"), *gone)
        for record in found:
            await self._resume(record, True)

    async def _checked(self, record: ActionRecord, job: Job) -> ActionRecord:
        """A PENDING action as it really is: CANCELLED once its job has moved on without
        it (cancelled, timed out, or the require that made it never committed)."""
        waited = job.update_time.ToDatetime(tzinfo=UTC)
        if job.state == states.WAITING and waited == record.create_time:
            return record
        if job.state == states.RUNNING and waited < record.create_time:
            return record  # Its require has not committed yet.
        # Cancelled as of the job's move, which is what ended the wait.
        at = max(waited, record.create_time)
        _, settled = await self._settle_id(
            record.id, CANCELLED, at, resume=False, cancel_reason=_NOT_WAITING
        )
        return settled or record

    # Reads

    async def _load(self, action_id: str) -> ActionRecord | None:
        found = await self._load_many([action_id])
        return found[0] if found else None

    async def _load_many(self, ids: Sequence[str]) -> list[ActionRecord]:
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for action_id in ids:
                pipe.hgetall(self._key("a", action_id))
            hashes = await pipe.execute()
        return [_record(fields) for fields in hashes if fields]

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self._prefix}{kind}:{name}" if name else f"{self._prefix}{kind}"


@dataclass(frozen=True)
class _Stored(ActionRecord):
    """An action as kept in Redis: the record and why it was cancelled, if it was."""

    cancel_reason: str = ""


def _fields(record: ActionRecord) -> dict[FieldT, EncodableT]:
    fields: dict[FieldT, EncodableT] = {
        "id": record.id,
        "job_id": record.job_id,
        "tenant": record.tenant,
        "kind": int(record.kind),
        "state": int(record.state),
        "payload": record.payload,
        "timeout_outcome": record.timeout_outcome,
        "token_hash": record.token_hash,
        "expire_us": _micros(record.expire_time),
        "create_us": _micros(record.create_time),
        "resolved_by": record.resolved_by,
        "request_id": record.request_id,
        "cancel_reason": "",
    }
    if record.outcome is not None:
        fields["outcome"] = record.outcome
    return fields


def _record(fields: Mapping[Any, Any]) -> _Stored:
    f = {_text(key): value for key, value in fields.items()}
    resolve = f.get("resolve_us")
    return _Stored(
        id=_text(f["id"]),
        job_id=_text(f["job_id"]),
        tenant=_text(f["tenant"]),
        kind=int(f["kind"]),  # type: ignore[arg-type]
        state=int(f["state"]),  # type: ignore[arg-type]
        payload=bytes(f["payload"]),
        timeout_outcome=bytes(f["timeout_outcome"]),
        outcome=bytes(f["outcome"]) if "outcome" in f else None,
        token_hash=bytes(f["token_hash"]),
        expire_time=_time(int(f["expire_us"])),
        create_time=_time(int(f["create_us"])),
        resolve_time=_time(int(resolve)) if resolve is not None else None,
        resolved_by=_text(f.get("resolved_by", b"")),
        request_id=_text(f.get("request_id", b"")),
        cancel_reason=_text(f.get("cancel_reason", b"")),
    )


def _cancel_reason(record: ActionRecord) -> str:
    return record.cancel_reason if isinstance(record, _Stored) else ""


def _resume_time(record: ActionRecord) -> datetime:
    return record.resolve_time or record.create_time


def _pairs(flat: Sequence[Any]) -> dict[Any, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _micros(time: datetime) -> int:
    return (time - _EPOCH) // _MICROSECOND


def _time(micros: int) -> datetime:
    return _EPOCH + micros * _MICROSECOND
