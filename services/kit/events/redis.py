"""Redis Streams event channel and Redis pub/sub wake-ups, shared by every replica."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

import redis.asyncio
import redis.asyncio.connection
from agentrt.common.v1.common_pb2 import RuntimeEvent
from google.protobuf.message import DecodeError
from redis.exceptions import RedisError

from services.kit.events.base import (
    Cursor,
    is_terminal,
    is_transient,
    job_id_of,
    parse_cursor,
    retry_delay,
)

_log = logging.getLogger(__name__)

_FIELD = b"e"
_SAFETY_EXPIRY_MS = 2 * 24 * 3600 * 1000
"""Longer than any job may run (24 h) plus its retention: the bound on a stream's life."""
_READ_COUNT = 200
"""Entries per stream that one XREAD of the shared reader returns."""
_PAGE = 500
"""Entries per XRANGE of a follower that reads for itself."""
_FOLLOWER_BUFFER = 256
"""Batches a follower may fall behind the shared reader before it reads for itself."""
_CONTROL_TTL_MS = 60_000

Entry = tuple[str, bytes | None]
PipelineStep = Callable[[redis.asyncio.client.Pipeline], object]
"""Queues commands on a pipeline."""


def _checked_client(client: redis.asyncio.Redis) -> redis.asyncio.Redis:
    if client.connection_pool.connection_kwargs.get("decode_responses"):
        raise ValueError("the Redis client must not decode responses: events are binary")
    return client


def _block_seconds(client: redis.asyncio.Redis, wanted: float) -> float:
    """How long one XREAD may block: `wanted`, kept well below the client's read timeout.

    Redis ends a block up to 100 ms late (its timer runs at hz 10), so the margin is
    at least that, plus a round trip.
    """
    if wanted < 0.01:
        raise ValueError(f"block_seconds must be at least 0.01, got {wanted}")
    kwargs = client.connection_pool.connection_kwargs
    # redis-py reads with its own default (5 s) when the client was given none.
    default = getattr(redis.asyncio.connection, "DEFAULT_SOCKET_TIMEOUT", None)
    timeout = cast(float | None, kwargs.get("socket_timeout", default))
    if timeout is None:
        return wanted
    if timeout < 0.5:
        raise ValueError(
            f"the Redis client's socket_timeout ({timeout} s) is too short for blocking "
            "stream reads: use at least 0.5 s, or none"
        )
    return min(wanted, timeout / 2, timeout - 0.25)


class _Subscriber:
    """One follower of a stream, fed by the shared reader unless it lags behind."""

    def __init__(self, lagging: bool) -> None:
        self.batches: asyncio.Queue[list[Entry] | None] = asyncio.Queue(_FOLLOWER_BUFFER)
        self.lagging = lagging
        """True while the follower reads entries up to the watch's position itself."""


class _Watch:
    """A followed stream: how far the shared reader has read it, and who follows it."""

    def __init__(self, position: str) -> None:
        self.position = position
        self.subscribers: set[_Subscriber] = set()


class RedisEventChannel:
    """An `EventChannel` over Redis Streams.

    Job streams are `{prefix}:events:job:{job id}`, the global stream `{prefix}:events:all`;
    each entry holds the serialized event in field `e`. All followers of this instance
    share one reader task that follows every followed stream with a single XREAD BLOCK,
    so hundreds of followers use one pooled connection rather than one each. A private
    control stream lets a new follower interrupt that XREAD at once. A follower that
    starts behind the reader, or falls `_FOLLOWER_BUFFER` batches behind, catches up with
    its own XRANGE calls and then rejoins the shared feed.

    The caller owns the client: `close` ends the followers but leaves the client open.
    The block time is kept below the client's socket timeout, if it has one.
    """

    def __init__(
        self,
        redis: redis.asyncio.Redis,
        prefix: str = "agentrt",
        global_maxlen: int = 100_000,
        job_retention_seconds: float = 3600,
        *,
        block_seconds: float = 5.0,
    ) -> None:
        if global_maxlen < 1:
            raise ValueError(f"global_maxlen must be at least 1, got {global_maxlen}")
        if job_retention_seconds <= 0:
            raise ValueError(f"job_retention_seconds must be > 0, got {job_retention_seconds}")
        self._redis = _checked_client(redis)
        self._prefix = prefix
        self._global_key = f"{prefix}:events:all"
        self._control_key = f"{prefix}:events:reader:{secrets.token_hex(8)}"
        self._control_position = "0"
        self._control_renew_time = 0.0
        """When the control key's expiry is next renewed (time.monotonic)."""
        self._global_maxlen = global_maxlen
        self._retention_ms = max(1, round(job_retention_seconds * 1000))
        self._block_ms = round(_block_seconds(redis, block_seconds) * 1000)
        self._watches: dict[str, _Watch] = {}
        self._reader: asyncio.Task[None] | None = None
        self._wake_requested = False
        self._closed = False

    @property
    def redis(self) -> redis.asyncio.Redis:
        """The client the channel publishes with."""
        return self._redis

    async def publish(
        self, events: Sequence[RuntimeEvent], *, first: PipelineStep | None = None
    ) -> None:
        """Appends the events to their streams; `first`, if given, queues commands that
        Redis runs before theirs, on the same connection and in the same round trip."""
        self._check_open()
        routed = [(self._job_key(event.job), is_transient(event), event) for event in events]
        if not routed:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            if first is not None:
                first(pipe)
            for key, transient, event in routed:
                payload = event.SerializeToString()
                pipe.xadd(key, {_FIELD: payload})
                if not transient:
                    pipe.xadd(
                        self._global_key,
                        {_FIELD: payload},
                        maxlen=self._global_maxlen,
                        approximate=True,
                    )
                if is_terminal(event.type):
                    pipe.pexpire(key, self._retention_ms)
                else:
                    # A stream always expires: even one (re)created by an event that
                    # arrives after its job's terminal event and stream are gone.
                    pipe.pexpire(key, _SAFETY_EXPIRY_MS, nx=True)
            await pipe.execute()

    async def job_position(self, job: str) -> Cursor:
        newest = _entries(await self._redis.xrevrange(self._job_key(job), count=1))
        return newest[0][0] if newest else "0"

    async def global_position(self) -> Cursor:
        newest = _entries(await self._redis.xrevrange(self._global_key, count=1))
        return newest[0][0] if newest else "0"

    def follow_job(self, job: str, after: Cursor) -> AsyncIterator[tuple[Cursor, RuntimeEvent]]:
        self._check_open()
        return self._follow(self._job_key(job), parse_cursor(after))

    def follow_all(self, after: Cursor) -> AsyncIterator[tuple[Cursor, RuntimeEvent]]:
        self._check_open()
        return self._follow(self._global_key, parse_cursor(after))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for watch in self._watches.values():
            for subscriber in watch.subscribers:
                with contextlib.suppress(asyncio.QueueFull):
                    subscriber.batches.put_nowait(None)
        if self._reader is not None:
            # On Python 3.11 a cancel that lands while redis-py sends a command can be lost
            # (asyncio.wait_for); the control entry ends the XREAD in that case too.
            await self._signal_reader()
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(self._control_key)

    def _job_key(self, job: str) -> str:
        return f"{self._prefix}:events:job:{job_id_of(job)}"

    async def _follow(
        self, key: str, last: tuple[int, int]
    ) -> AsyncIterator[tuple[Cursor, RuntimeEvent]]:
        watch = self._watches.get(key)
        new_watch = watch is None
        if watch is None:
            watch = self._watches[key] = _Watch(f"{last[0]}-{last[1]}")
        subscriber = _Subscriber(lagging=parse_cursor(watch.position) > last)
        watch.subscribers.add(subscriber)
        try:
            if new_watch:
                await self._wake_reader()
            while not self._closed:
                if subscriber.lagging:
                    batch = await self._catch_up(key, watch, subscriber, last)
                else:
                    next_batch = await subscriber.batches.get()
                    if next_batch is None:
                        return
                    batch = next_batch
                for entry_id, payload in batch:
                    position = parse_cursor(entry_id)
                    if position <= last:
                        continue
                    last = position
                    event = decode_entry(key, entry_id, payload)
                    if event is not None:
                        yield entry_id, event
        finally:
            watch.subscribers.discard(subscriber)
            if not watch.subscribers and self._watches.get(key) is watch:
                del self._watches[key]

    async def _catch_up(
        self, key: str, watch: _Watch, subscriber: _Subscriber, last: tuple[int, int]
    ) -> list[Entry]:
        target = watch.position
        page = await self._redis.xrange(key, f"({last[0]}-{last[1]}", target, count=_PAGE)
        entries = _entries(page)
        # Nothing was skipped for this follower only if the reader has not moved meanwhile.
        if len(entries) < _PAGE and watch.position == target:
            subscriber.lagging = False
        return entries

    async def _wake_reader(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_forever(), name="event-stream-reader")
            return
        if not self._wake_requested:
            self._wake_requested = True
            await self._signal_reader()

    async def _signal_reader(self) -> None:
        # A gateway signals once a job it starts to watch: the key's expiry is renewed
        # only every half TTL, so that a signal is one command.
        now = time.monotonic()
        try:
            await self._redis.xadd(self._control_key, {b"w": b""}, maxlen=1)
            if now >= self._control_renew_time:
                await self._redis.pexpire(self._control_key, _CONTROL_TTL_MS)
                self._control_renew_time = now + _CONTROL_TTL_MS / 2000
        except (RedisError, OSError) as error:
            # The reader is failing too; it includes the new stream when it retries.
            _log.warning("could not wake the event stream reader: %s", error)

    async def _read_forever(self) -> None:
        failures = 0
        while not self._closed:
            self._wake_requested = False
            watches = dict(self._watches)
            streams: dict[Any, Any] = {key: watch.position for key, watch in watches.items()}
            streams[self._control_key] = self._control_position
            try:
                response = await self._redis.xread(streams, count=_READ_COUNT, block=self._block_ms)
                read = stream_entries(response)
            except Exception as error:
                if self._closed:
                    return
                failures += 1
                # The reader must outlive any failure, or every follower would stall.
                unexpected = not isinstance(error, RedisError | OSError)
                _log.warning(
                    "reading event streams failed, retrying: %s", error, exc_info=unexpected
                )
                await asyncio.sleep(retry_delay(failures))
                continue
            failures = 0
            for key, entries in read:
                if key == self._control_key:
                    self._control_position = entries[-1][0]
                elif (watch := watches.get(key)) is not None and self._watches.get(key) is watch:
                    _deliver(watch, entries)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the event channel is closed")


def _deliver(watch: _Watch, entries: list[Entry]) -> None:
    watch.position = entries[-1][0]
    for subscriber in watch.subscribers:
        if subscriber.lagging:
            continue
        try:
            subscriber.batches.put_nowait(entries)
        except asyncio.QueueFull:
            subscriber.lagging = True


def _entries(raw: Any) -> list[Entry]:
    # XREADGROUP answers a pending entry trimmed from its stream without fields.
    return [(entry_id.decode(), (fields or {}).get(_FIELD)) for entry_id, fields in raw]


def stream_entries(response: Any) -> list[tuple[str, list[Entry]]]:
    """An XREAD or XREADGROUP answer as (stream key, [(entry id, field `e`)])."""
    # RESP2 answers [[key, entries], ...]; RESP3 answers {key: [entries]}.
    if isinstance(response, dict):
        pairs = [(key, value[0]) for key, value in response.items()]
    else:
        pairs = [(key, value) for key, value in response or []]
    return [(key.decode(), _entries(value)) for key, value in pairs]


def decode_entry(key: str, entry_id: str, payload: bytes | None) -> RuntimeEvent | None:
    """The entry's event; None, with a warning, when it holds none."""
    # Another writer's malformed entry must not end every follower of the stream.
    try:
        if payload is not None:
            return RuntimeEvent.FromString(payload)
    except DecodeError:
        pass
    _log.warning("skipping entry %s of %s: no serialized RuntimeEvent in field 'e'", entry_id, key)
    return None
