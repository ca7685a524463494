"""The exporter process: moves the global event stream to the configured sinks, at least once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import redis.asyncio
from agentrt.common.v1.common_pb2 import RuntimeEvent

from services.export.config import ExportConfig
from services.export.kafka import KafkaSink
from services.export.redis_streams import RedisStreamSink
from services.export.source import GlobalStreamGroup
from services.kit.config import ConfigError, RuntimeConfig
from services.kit.events import retry_delay

_log = logging.getLogger(__name__)


class EventSink(Protocol):
    """A target of the export."""

    @property
    def name(self) -> str: ...

    async def start(self) -> None: ...

    async def send(self, events: Sequence[RuntimeEvent]) -> None:
        """Returns once the target stored every event, in order."""
        ...

    async def close(self) -> None: ...


class Exporter:
    """Reads a batch from the group, sends it to every sink, then acknowledges it.

    A batch that a sink refused is sent again (to every sink) until it is stored, so a
    sink may see an event twice but never misses one the stream still holds.
    """

    def __init__(
        self,
        source: GlobalStreamGroup,
        sinks: Sequence[EventSink],
        batch_size: int = 500,
        block_ms: int = 1000,
    ) -> None:
        if not sinks:
            raise ValueError("the exporter needs at least one sink")
        self._source = source
        self._sinks = list(sinks)
        self._batch_size = batch_size
        self._block_ms = block_ms
        self.exported = 0
        """Events sent to every sink and acknowledged since start."""

    async def run(self) -> None:
        """Exports until cancelled; failures are logged and retried with backoff."""
        failures = 0
        while True:
            try:
                await self.export_batch()
            except Exception as error:
                failures += 1
                delay = retry_delay(failures)
                _log.warning(
                    "exporting events failed (attempt %d), retrying in %.2f s: %s",
                    failures,
                    delay,
                    error,
                    exc_info=failures == 1,
                )
                await asyncio.sleep(delay)
                # The batch was not acknowledged: read this consumer's pending entries again.
                self._source.rewind()
                continue
            failures = 0

    async def export_batch(self) -> int:
        """Exports the next batch (waiting up to the block time for one); returns its size."""
        entries = await self._source.read(self._batch_size, self._block_ms)
        events = [event for _, event in entries if event is not None]
        if events:
            for sink in self._sinks:
                await sink.send(events)
        await self._source.ack([entry_id for entry_id, _ in entries])
        self.exported += len(events)
        return len(entries)


def build_sinks(config: ExportConfig) -> list[EventSink]:
    sinks: list[EventSink] = []
    if config.kafka_bootstrap:
        sinks.append(KafkaSink(config.kafka_bootstrap, config.kafka_topic, config.kafka_partitions))
    if config.redis_url:
        sinks.append(
            RedisStreamSink(
                redis.asyncio.Redis.from_url(config.redis_url),
                config.redis_stream_prefix,
                config.redis_maxlen,
            )
        )
    return sinks


async def run_exporter() -> None:
    """`agentrt serve exporter`: exports until SIGTERM or SIGINT."""
    runtime = RuntimeConfig.from_env()
    config = ExportConfig.from_env()
    if not runtime.redis_url:
        raise ConfigError("AGENTRT_REDIS_URL: the exporter reads the global event stream in Redis")
    if not config.enabled:
        raise ConfigError(
            "no export target: set AGENTRT_EXPORT_KAFKA_BOOTSTRAP or AGENTRT_EXPORT_REDIS_URL"
        )
    client = redis.asyncio.Redis.from_url(runtime.redis_url)
    source = GlobalStreamGroup(client, runtime.redis_prefix, config.group, config.consumer)
    sinks = build_sinks(config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        task = asyncio.create_task(_start_and_export(source, sinks, config.batch_size))
        await stopping.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        for sink in sinks:
            with contextlib.suppress(Exception):
                await sink.close()
        await client.aclose()


async def _start_and_export(
    source: GlobalStreamGroup, sinks: Sequence[EventSink], batch_size: int
) -> None:
    """Starts the group and every sink, retrying while a server is unreachable (a broker
    that starts after the exporter is not a reason to exit), then exports."""
    await _until_done(source.ensure_group, "the consumer group on the global stream")
    for sink in sinks:
        await _until_done(sink.start, sink.name)
        _log.info("exporting events to %s", sink.name)
    await Exporter(source, sinks, batch_size).run()


async def _until_done(step: Callable[[], Awaitable[None]], what: str) -> None:
    failures = 0
    while True:
        try:
            await step()
            return
        except Exception as error:
            failures += 1
            delay = retry_delay(failures)
            _log.warning("cannot reach %s, retrying in %.2f s: %s", what, delay, error)
            await asyncio.sleep(delay)
