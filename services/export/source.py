"""The exporter's durable position: a Redis consumer group on the global event stream."""

from __future__ import annotations

from typing import Any

import redis.asyncio
from agentrt.common.v1.common_pb2 import RuntimeEvent
from redis.exceptions import ResponseError

from services.kit.events import event_type_name
from services.kit.events.redis import decode_entry, stream_entries


class GlobalStreamGroup:
    """Reads the global stream `{prefix}:events:all` through a consumer group.

    The group's last delivered id and its pending entries live in Redis, so the position
    survives a killed exporter: entries are acknowledged only after every sink stored them,
    and a restarted consumer of the same name first reads its pending entries again
    (at least once). A new group starts at the oldest entry the stream still holds.
    """

    def __init__(self, client: redis.asyncio.Redis, prefix: str, group: str, consumer: str) -> None:
        self._redis = client
        self._key = f"{prefix}:events:all"
        self._group = group
        self._consumer = consumer
        self._pending_first = True

    async def ensure_group(self) -> None:
        """Creates the group (and the stream) unless it exists; keeps an existing position."""
        try:
            await self._redis.xgroup_create(self._key, self._group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._pending_first = True

    def rewind(self) -> None:
        """The next `read` starts again with this consumer's unacknowledged entries."""
        self._pending_first = True

    async def read(self, count: int, block_ms: int) -> list[tuple[str, RuntimeEvent | None]]:
        """The next entries as (entry id, event): this consumer's unacknowledged ones first,
        then new ones (waiting up to `block_ms`). The event is None for an entry that was
        trimmed from the stream or holds no RuntimeEvent; acknowledge it all the same."""
        if self._pending_first:
            entries = await self._read_group("0", count, None)
            if entries:
                return entries
            self._pending_first = False
        return await self._read_group(">", count, block_ms)

    async def ack(self, entry_ids: list[str]) -> None:
        if entry_ids:
            await self._redis.xack(self._key, self._group, *entry_ids)

    async def lag(self) -> int | None:
        """Entries not yet delivered to the group (None when Redis cannot say)."""
        groups: list[dict[Any, Any]] = await self._redis.xinfo_groups(self._key)
        for info in groups:
            name = info.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == self._group:
                lag = info.get("lag")
                return None if lag is None else int(lag)
        return None

    async def _read_group(
        self, start: str, count: int, block_ms: int | None
    ) -> list[tuple[str, RuntimeEvent | None]]:
        response = await self._redis.xreadgroup(
            self._group, self._consumer, {self._key: start}, count=count, block=block_ms
        )
        # A pending entry trimmed from the stream comes back without fields.
        return [
            (entry_id, decode_entry(key, entry_id, payload))
            for key, entries in stream_entries(response)
            for entry_id, payload in entries
        ]


def type_label(event: RuntimeEvent) -> bytes | None:
    """The event's dotted type for a record header; None for a type newer than this
    exporter (the serialized event still carries it)."""
    try:
        return event_type_name(event.type).encode()
    except ValueError:
        return None
