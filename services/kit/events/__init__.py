"""Runtime events: the channel contract, its in-process and Redis implementations, the relay."""

from __future__ import annotations

from services.kit.events.base import (
    Cursor,
    EventChannel,
    Wakeups,
    event_type_name,
    is_terminal,
    is_transient,
    job_id_of,
    parse_cursor,
    retry_delay,
)
from services.kit.events.memory import InMemoryEventChannel, InMemoryWakeups, LocalWaiters
from services.kit.events.redis import RedisEventChannel
from services.kit.events.redis_wakeups import RedisWakeups
from services.kit.events.relay import OUTBOX_TOPIC, OutboxRelay, OutboxSource

__all__ = [
    "OUTBOX_TOPIC",
    "Cursor",
    "EventChannel",
    "InMemoryEventChannel",
    "InMemoryWakeups",
    "LocalWaiters",
    "OutboxRelay",
    "OutboxSource",
    "RedisEventChannel",
    "RedisWakeups",
    "Wakeups",
    "event_type_name",
    "is_terminal",
    "is_transient",
    "job_id_of",
    "parse_cursor",
    "retry_delay",
]
