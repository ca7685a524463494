"""The record of completed model calls shared by every engine replica (Redis).

A worker that takes over a job after a crash asks the engine again for the turn that was
in flight; whichever engine replica it reaches answers from this record instead of
calling the model a second time. Redis is not the source of truth here: when it is
unreachable the call is made (and possibly paid for) again, never refused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any, Protocol

import redis.asyncio as redis

from services.engine.model import ChatMessage, Completion, TokenUsage, ToolCall
from services.engine.redis_outage import RedisGuard, RedisOutage

log = logging.getLogger(__name__)


class CompletionRecord(Protocol):
    """Completed calls by idempotency key, each with the fingerprint of its request."""

    async def get(self, key: str) -> tuple[str, Completion] | None:
        """The fingerprint and result recorded for the key, if any."""
        ...

    async def put(self, key: str, fingerprint: str, completion: Completion) -> None:
        """Records the result unless one is recorded already (the first one wins)."""
        ...


def record_key(prefix: str, key: str) -> str:
    """The Redis key of the record of idempotency key `key`."""
    return f"{prefix}:engine:calls:{key}"


class RedisCompletionRecord:
    """One Redis string per key, `{prefix}:engine:calls:{key}`, expiring after `ttl`.

    Each access waits at most `timeout_seconds`: a Redis that is down must not hold a
    model call up for the client's reconnect-and-retry cycle.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        ttl_seconds: float,
        timeout_seconds: float = 0.5,
        guard: RedisGuard | None = None,
    ) -> None:
        self._redis = client
        self._prefix = record_key(prefix, "")
        self._ttl_ms = int(ttl_seconds * 1000)
        self._guard = guard or RedisGuard(timeout_seconds)

    async def get(self, key: str) -> tuple[str, Completion] | None:
        try:
            raw = await self._guard.run(lambda: self._redis.get(self._prefix + key))
        except RedisOutage:
            return None  # called again; the guard logged the outage
        except redis.RedisError as error:
            log.warning("the shared call record is unreachable (%r); calling again", error)
            return None
        if raw is None:
            return None
        stored = json.loads(raw)
        return stored["fingerprint"], completion_from_json(stored["completion"])

    async def put(self, key: str, fingerprint: str, completion: Completion) -> None:
        value = json.dumps({"fingerprint": fingerprint, "completion": asdict(completion)})
        try:
            await self._guard.run(
                lambda: self._redis.set(self._prefix + key, value, px=self._ttl_ms, nx=True)
            )
        except RedisOutage:
            pass  # the guard logged the outage
        except redis.RedisError as error:
            log.warning("could not share the record of call %s (%r)", key, error)


def completion_from_json(data: dict[str, Any]) -> Completion:
    message = data["message"]
    return Completion(
        message=ChatMessage(
            role=message["role"],
            content=message["content"],
            tool_calls=tuple(ToolCall(**call) for call in message["tool_calls"]),
            tool_call_id=message["tool_call_id"],
            name=message["name"],
        ),
        finish_reason=data["finish_reason"],
        usage=TokenUsage(**data["usage"]),
        model=data["model"],
        provider=data["provider"],
    )
