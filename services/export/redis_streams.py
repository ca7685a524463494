"""The external Redis Streams export, and a reader for its consumers."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio
from agentrt.common.v1.common_pb2 import RuntimeEvent

from services.export.source import type_label
from services.kit.events import parse_cursor
from services.kit.events.redis import decode_entry, stream_entries

_FIELD = b"e"


def exported_stream_key(prefix: str) -> str:
    return f"{prefix}:events"


class RedisStreamSink:
    """Appends each event to the stream `{prefix}:events` of another Redis, trimmed to about
    `maxlen` entries. Fields: `e` the serialized RuntimeEvent, `id` its event id (for
    consumers to deduplicate: delivery is at least once), `job` and `type`."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str, maxlen: int) -> None:
        self._redis = client
        self._key = exported_stream_key(prefix)
        self._maxlen = maxlen

    @property
    def name(self) -> str:
        return f"redis stream {self._key}"

    async def start(self) -> None:
        await self._redis.ping()

    async def send(self, events: Sequence[RuntimeEvent]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for event in events:
                fields: dict[bytes, bytes] = {
                    _FIELD: event.SerializeToString(),
                    b"id": event.id.encode(),
                    b"job": event.job.encode(),
                }
                if (label := type_label(event)) is not None:
                    fields[b"type"] = label
                pipe.xadd(self._key, fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
            await pipe.execute()

    async def close(self) -> None:
        await self._redis.aclose()


class ExportedEventReader:
    """Reads the exported stream from a position the consumer keeps ("0" for the start).

    Events may come twice (at least once): skip an event id already seen.
    """

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self._redis = client
        self._key = exported_stream_key(prefix)

    async def read(
        self, after: str, count: int = 500, block_ms: int | None = None
    ) -> list[tuple[str, RuntimeEvent]]:
        """Up to `count` entries after the cursor `after`, as (cursor, event); with
        `block_ms`, waits that long for one when there is none yet."""
        parse_cursor(after)
        response = await self._redis.xread({self._key: after}, count=count, block=block_ms)
        return [
            (entry_id, event)
            for key, entries in stream_entries(response)
            for entry_id, payload in entries
            if (event := decode_entry(key, entry_id, payload)) is not None
        ]
