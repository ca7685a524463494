"""Model calls in flight by idempotency key, so that a repeat joins the running call.

The first caller of a key leads: it makes the call and publishes what it produces (text
deltas, then the whole answer, or its error). A caller that comes while the call runs
follows: it receives the same deltas from the start and the same end. A leader that goes
away without an end (cancelled, or its engine crashed) abandons the flight, and a follower
then claims the key and makes the call itself. In-process for one engine; through Redis
(a lock with a lease, and a stream of the flight's events) for every replica.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import redis.asyncio as redis

from services.engine.errors import (
    EngineError,
    IdempotencyConflict,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from services.engine.model import Completion
from services.engine.redis_outage import RedisGuard, RedisOutage
from services.engine.shared_record import completion_from_json, record_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlightEvent:
    """One thing a flight produced: a text delta, its whole answer, or its error."""

    kind: Literal["delta", "final", "error"]
    text: str = ""
    completion: Completion | None = None
    error: EngineError | None = None


class LeaderGone(Exception):
    """The flight's leader went away without an end: claim the key again."""


class Leader(ABC):
    """The caller that makes the call for a key."""

    @abstractmethod
    async def publish(self, text: str) -> None:
        """Pass a text delta on to the followers."""

    @abstractmethod
    async def finish(self, completion: Completion) -> None:
        """End the flight with its answer (recorded before, so that late callers find it)."""

    @abstractmethod
    async def fail(self, error: EngineError) -> None:
        """End the flight with its error."""

    @abstractmethod
    async def abandon(self) -> None:
        """Go away without an end: a follower claims the key."""


class Follower(ABC):
    """A caller that joined a flight: its events from the start, up to the end."""

    @abstractmethod
    def events(self) -> AsyncIterator[FlightEvent]:
        """Deltas, then one final or error event; LeaderGone when the leader went away."""


class Recorded:
    """What a claim finds when the key's call has completed: read its record."""


RECORDED = Recorded()


class Flights(Protocol):
    checks_records: bool
    """Whether a claim finds a shared record of the key (RECORDED), so that the caller
    need not read the shared record before claiming."""

    async def claim(self, key: str, fingerprint: str) -> Leader | Follower | Recorded:
        """Lead the key's call, or follow the one in flight; IdempotencyConflict when the
        flight in progress is of another request."""
        ...


@dataclass
class _Flight:
    fingerprint: str
    events: list[FlightEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    gone: bool = False


class InProcessFlights:
    """Flights of one engine process."""

    checks_records = False

    def __init__(self) -> None:
        self._flights: dict[str, _Flight] = {}

    async def claim(self, key: str, fingerprint: str) -> Leader | Follower | Recorded:
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight(fingerprint)
            return _LocalLeader(self._flights, key, flight)
        if flight.fingerprint != fingerprint:
            raise IdempotencyConflict(key)
        return _LocalFollower(flight)


class _LocalLeader(Leader):
    def __init__(self, flights: dict[str, _Flight], key: str, flight: _Flight) -> None:
        self._flights = flights
        self._key = key
        self._flight = flight

    def _add(self, event: FlightEvent | None) -> None:
        flight = self._flight
        if event is not None:
            flight.events.append(event)
        if event is None or event.kind != "delta":
            flight.gone = event is None
            self._flights.pop(self._key, None)
        # Wake the current waiters; later ones wait on a fresh event.
        changed, flight.changed = flight.changed, asyncio.Event()
        changed.set()

    async def publish(self, text: str) -> None:
        self._add(FlightEvent("delta", text=text))

    async def finish(self, completion: Completion) -> None:
        self._add(FlightEvent("final", completion=completion))

    async def fail(self, error: EngineError) -> None:
        self._add(FlightEvent("error", error=error))

    async def abandon(self) -> None:
        self._add(None)


class _LocalFollower(Follower):
    def __init__(self, flight: _Flight) -> None:
        self._flight = flight

    async def events(self) -> AsyncIterator[FlightEvent]:
        seen = 0
        while True:
            flight = self._flight
            changed = flight.changed
            while seen < len(flight.events):
                event = flight.events[seen]
                seen += 1
                yield event
                if event.kind != "delta":
                    return
            if flight.gone:
                raise LeaderGone()
            await changed.wait()


# One round trip a claim: the record, else the lock (events of an earlier flight of the
# key, abandoned or ended, are not the new leader's), else who holds it.
_CLAIM = """
if redis.call('EXISTS', KEYS[3]) == 1 then return {'recorded'} end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[2])
  return {'lead'}
end
return {'held', redis.call('GET', KEYS[1])}
"""
# Renews the lease only while this leader holds it, so a late renewal cannot steal a key.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# The flight's end event, if any, then the lock released: in this order, so that a
# follower that finds the lock gone finds the end too.
_END = """
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[2], '*', 'kind', ARGV[3], ARGV[4], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisFlights:
    checks_records = True

    """Flights shared by every engine replica.

    `{prefix}:engine:flight:{key}` holds the leader's lock (its fingerprint and id) with a
    lease it renews while the call runs; `{prefix}:engine:flight:{key}:events` is a stream
    of the flight's events, read from its start by each follower. A follower that sees the
    lock gone with no end in the stream knows the leader crashed. A claim also sees the
    record of a completed call (`shared_record.py`) under the same prefix.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        lease_seconds: float = 10.0,
        poll_seconds: float = 0.25,
        keep_seconds: float = 60.0,
        timeout_seconds: float = 0.5,
        guard: RedisGuard | None = None,
    ) -> None:
        self._redis = client
        self._prefix = f"{prefix}:engine:flight:"
        self._lease_ms = int(lease_seconds * 1000)
        self._poll_ms = max(1, int(poll_seconds * 1000))
        self._keep_ms = int(keep_seconds * 1000)
        self._guard = guard or RedisGuard(timeout_seconds)
        self._record_prefix = prefix
        self._claim_script = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._end = client.register_script(_END)
        self._local = InProcessFlights()

    async def claim(self, key: str, fingerprint: str) -> Leader | Follower | Recorded:
        # Redis is not the source of truth: without it, joins stay within this replica.
        try:
            return await self._guard.run(lambda: self._claim(key, fingerprint))
        except RedisOutage:
            pass  # the guard logged the outage
        except redis.RedisError as error:
            log.warning("calls in flight cannot be shared (%r); joining in-process only", error)
        return await self._local.claim(key, fingerprint)

    async def _claim(self, key: str, fingerprint: str) -> Leader | Follower | Recorded:
        lock, events = self._prefix + key, self._prefix + key + ":events"
        token = json.dumps({"fingerprint": fingerprint, "leader": uuid.uuid4().hex})
        keys = [lock, events, record_key(self._record_prefix, key)]
        answer = await self._claim_script(keys=keys, args=[token, self._lease_ms])
        if answer[0] == b"recorded":
            return RECORDED
        if answer[0] == b"lead":
            return _RedisLeader(self, lock, events, token)
        held = answer[1]
        if json.loads(held)["fingerprint"] != fingerprint:
            raise IdempotencyConflict(key)
        return _RedisFollower(self, lock, events, held)


class _RedisLeader(Leader):
    def __init__(self, flights: RedisFlights, lock: str, events: str, token: str) -> None:
        self._flights = flights
        self._lock = lock
        self._events = events
        self._token = token
        self._renewer = asyncio.create_task(self._renew_lease())

    async def _renew_lease(self) -> None:
        flights = self._flights
        while True:
            await asyncio.sleep(flights._lease_ms / 3000)
            try:
                await flights._renew(keys=[self._lock], args=[self._token, flights._lease_ms])
            except redis.RedisError as error:
                log.warning("could not renew the lease of flight %s (%r)", self._lock, error)

    async def _add(self, fields: dict[str, str]) -> None:
        client = self._flights._redis
        async with client.pipeline(transaction=True) as pipe:
            pipe.xadd(self._events, fields)  # type: ignore[arg-type]
            pipe.pexpire(self._events, self._flights._keep_ms)
            await pipe.execute()

    async def _finish(self, kind: str = "", name: str = "", value: str = "") -> None:
        self._renewer.cancel()
        flights = self._flights
        try:
            await flights._end(
                keys=[self._lock, self._events],
                args=[self._token, flights._keep_ms, kind, name, value],
            )
        except redis.RedisError as error:
            # Followers find the lease expired and take over: a second call, never a hang.
            log.warning("could not end flight %s in Redis (%r)", self._lock, error)

    async def publish(self, text: str) -> None:
        try:
            await self._add({"kind": "delta", "text": text})
        except redis.RedisError as error:
            log.warning("could not share a delta of flight %s (%r)", self._lock, error)

    async def finish(self, completion: Completion) -> None:
        await self._finish("final", "completion", json.dumps(asdict(completion)))

    async def fail(self, error: EngineError) -> None:
        await self._finish("error", "error", json.dumps(error_to_json(error)))

    async def abandon(self) -> None:
        await self._finish()


class _RedisFollower(Follower):
    def __init__(self, flights: RedisFlights, lock: str, events: str, leader: bytes | str) -> None:
        self._flights = flights
        self._lock = lock
        self._events = events
        self._leader = leader
        """The lock's value when this follower joined: another value is another flight."""

    async def events(self) -> AsyncIterator[FlightEvent]:
        client = self._flights._redis
        last = "0-0"
        while True:
            # Read whether the lock is held before reading the stream: a leader writes its
            # end before releasing, so a released lock with no end means it is gone. A lock
            # held by another leader (ours expired) is another flight, with its own events.
            held = await client.get(self._lock) == self._leader
            read: Any = await client.xread(
                {self._events: last}, count=100, block=self._flights._poll_ms if held else None
            )
            entries = read[0][1] if read else []
            for entry_id, raw in entries:
                last = entry_id
                event = _event(raw)
                yield event
                if event.kind != "delta":
                    return
            if not held and not entries:
                raise LeaderGone()


def _event(raw: dict[bytes, bytes]) -> FlightEvent:
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    if fields["kind"] == "delta":
        return FlightEvent("delta", text=fields["text"])
    if fields["kind"] == "final":
        return FlightEvent(
            "final", completion=completion_from_json(json.loads(fields["completion"]))
        )
    return FlightEvent("error", error=error_from_json(json.loads(fields["error"])))


def error_to_json(error: EngineError) -> dict[str, Any]:
    """An error a follower on another replica can raise as the leader's."""
    data: dict[str, Any] = {"kind": type(error).__name__, "text": str(error)}
    for name in ("provider", "message", "status", "retry_after"):
        if hasattr(error, name):
            data[name] = getattr(error, name)
    return data


def error_from_json(data: dict[str, Any]) -> EngineError:
    kind, provider, message = data["kind"], data.get("provider", ""), data.get("message", "")
    if kind == "RateLimited":
        return RateLimited(provider, message, data.get("retry_after"))
    if kind == "ProviderRejected":
        return ProviderRejected(provider, int(data.get("status", 400)), message)
    if kind == "ProviderTimeout":
        return ProviderTimeout(provider, message)
    return ProviderUnavailable(provider or "engine", message or data["text"])
