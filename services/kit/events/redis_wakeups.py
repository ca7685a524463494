"""Wake-ups between replicas over Redis pub/sub, one subscriber connection per process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import redis.asyncio
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError, RedisError

from services.kit.events.base import retry_delay
from services.kit.events.memory import LocalWaiters

_log = logging.getLogger(__name__)


class RedisWakeups:
    """`Wakeups` across processes: Redis channel `{prefix}:wake:{topic}` per topic.

    One listener task per instance (make one instance per process) holds one pub/sub
    connection, subscribed to every topic the process has waited on, and wakes the local
    waiters. It pings Redis when idle and, when the connection drops or a ping goes
    unanswered, reconnects and subscribes again; notifications sent meanwhile are lost,
    which the waiters' timeouts absorb.

    A notification wakes this process's own waiters at once, without the round trip
    through Redis (a new job reaches a worker's long poll in the same jobs process
    sooner); it carries this instance's token, so that its echo from Redis does not wake
    them a second time.
    """

    def __init__(
        self,
        redis: redis.asyncio.Redis,
        prefix: str = "agentrt",
        *,
        idle_check_seconds: float = 5.0,
    ) -> None:
        self._redis = redis
        self._channel_prefix = f"{prefix}:wake:"
        self._idle_check_seconds = idle_check_seconds
        self._local = LocalWaiters()
        self._token = secrets.token_bytes(8)
        """What this instance's notifications carry, to know their echo."""
        self._confirmed: dict[str, asyncio.Event] = {}
        self._live: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    async def notify(self, topic: str) -> None:
        self._check_open()
        self._local.wake(topic)
        await self._redis.publish(self._channel_prefix + topic, self._token)

    async def listen(self, topic: str, timeout: float = 5.0) -> bool:
        """Subscribes to the topic ahead of the first wait; True once Redis confirmed it.

        From then on a notification that arrives while nobody waits is kept for the
        next wait, so a caller can check its store and then wait without a gap.
        """
        self._check_open()
        confirmed = await self._subscription(topic)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(confirmed.wait(), timeout)
        return confirmed.is_set()

    async def wait(self, topic: str, timeout: float) -> bool:
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        confirmed = await self._subscription(topic)
        if not confirmed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(confirmed.wait(), timeout)
        return await self._local.wait(topic, deadline - loop.time())

    async def close(self) -> None:
        self._closed = True
        listener, self._listener = self._listener, None
        if listener is not None:
            # A lost cancel (Python 3.11 wait_for) still ends it: it is not the listener now.
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        self._local.wake_all()

    async def _subscription(self, topic: str) -> asyncio.Event:
        confirmed = self._confirmed.get(topic)
        if confirmed is not None:
            return confirmed
        confirmed = self._confirmed[topic] = asyncio.Event()
        self._local.listened.add(topic)
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen_forever(), name="wakeup-listener")
        elif self._live is not None:
            try:
                await self._live.subscribe(self._channel_prefix + topic)
            except (RedisError, OSError) as error:
                _log.warning("subscribing to wake-ups of %r failed, reconnecting: %s", topic, error)
                self._listener.cancel()
                self._listener = asyncio.create_task(self._listen_forever(), name="wakeup-listener")
        return confirmed

    async def _listen_forever(self) -> None:
        failures = 0
        while self._listener is asyncio.current_task():
            pubsub = self._redis.pubsub()
            try:
                await self._subscribe_all(pubsub)
                failures = 0
                await self._dispatch(pubsub)
            except (RedisError, OSError) as error:
                failures += 1
                _log.warning("wake-up subscription lost, reconnecting: %s", error)
            finally:
                # A listener replaced after a failed subscribe must not undo its successor.
                if self._listener is asyncio.current_task():
                    self._live = None
                    for confirmed in self._confirmed.values():
                        confirmed.clear()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            if self._listener is asyncio.current_task():
                await asyncio.sleep(retry_delay(failures))

    async def _subscribe_all(self, pubsub: PubSub) -> None:
        sent: set[str] = set()
        while missing := set(self._confirmed) - sent:
            await pubsub.subscribe(*(self._channel_prefix + topic for topic in missing))
            sent |= missing
        # From here on, a new topic is subscribed by whoever asks for it.
        self._live = pubsub

    async def _dispatch(self, pubsub: PubSub) -> None:
        ping_unanswered = False
        while self._listener is asyncio.current_task():
            message = await pubsub.get_message(timeout=self._idle_check_seconds)
            if message is None:
                if ping_unanswered:
                    raise ConnectionError("Redis did not answer a PING on the pub/sub connection")
                await pubsub.ping()
                ping_unanswered = True
                continue
            kind = message["type"]
            if kind == "pong":
                ping_unanswered = False
                continue
            channel = message["channel"]
            topic = (channel.decode() if isinstance(channel, bytes) else channel).removeprefix(
                self._channel_prefix
            )
            if kind == "message" and message["data"] != self._token:
                self._local.wake(topic)
            elif kind == "subscribe" and topic in self._confirmed:
                self._confirmed[topic].set()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the wake-ups are closed")
