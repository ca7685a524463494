"""The exporter on the real Redis and a real Kafka-protocol broker: positions, redelivery."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from agentrt.common.v1.common_pb2 import EventType, RuntimeEvent
from aiokafka import AIOKafkaConsumer

from services.export import (
    ExportConfig,
    ExportedEventReader,
    Exporter,
    GlobalStreamGroup,
    KafkaSink,
    RedisStreamSink,
)
from services.kit.config import ConfigError
from services.kit.events import RedisEventChannel
from tests.services.kit.events.sample_events import delta, history

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix.rstrip(":")


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def group(client: redis.asyncio.Redis, prefix: str) -> GlobalStreamGroup:
    return GlobalStreamGroup(client, prefix, "export", "exporter")


async def export_all(exporter: Exporter) -> None:
    while await exporter.export_batch():
        pass


async def test_history_events_reach_the_exported_stream_in_order_and_transients_do_not(
    client: redis.asyncio.Redis, prefix: str, redis_url: str
) -> None:
    channel = RedisEventChannel(client, prefix=prefix)
    await channel.publish([history("a", 1), delta("a", 1, 1), history("b", 1), history("a", 2)])
    source = group(client, prefix)
    await source.ensure_group()
    sink = RedisStreamSink(redis.asyncio.Redis.from_url(redis_url), f"{prefix}:out", maxlen=100)
    await sink.start()
    try:
        await export_all(Exporter(source, [sink], batch_size=2, block_ms=10))
    finally:
        await sink.close()

    read = await ExportedEventReader(client, f"{prefix}:out").read("0")
    assert [event.id for _, event in read] == ["a.1", "b.1", "a.2"]
    raw: Any = await client.xrange(f"{prefix}:out:events")
    assert raw[0][1][b"id"] == b"a.1"
    assert raw[0][1][b"job"] == b"jobs/a"
    assert raw[0][1][b"type"] == b"job.turn.completed"
    after_first = await ExportedEventReader(client, f"{prefix}:out").read(read[0][0])
    assert [event.id for _, event in after_first] == ["b.1", "a.2"]
    await channel.close()


async def test_entries_read_but_not_acknowledged_are_read_again_by_a_restarted_consumer(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    channel = RedisEventChannel(client, prefix=prefix)
    await channel.publish([history("a", n) for n in range(1, 6)])
    first = group(client, prefix)
    await first.ensure_group()
    unconfirmed = await first.read(3, 10)
    assert [event.id for _, event in unconfirmed if event] == ["a.1", "a.2", "a.3"]

    restarted = group(client, prefix)
    await restarted.ensure_group()
    again = await restarted.read(10, 10)
    assert [event.id for _, event in again if event] == ["a.1", "a.2", "a.3"]
    await restarted.ack([entry_id for entry_id, _ in again])
    rest = await restarted.read(10, 10)
    assert [event.id for _, event in rest if event] == ["a.4", "a.5"]
    await restarted.ack([entry_id for entry_id, _ in rest])
    assert await restarted.read(10, 10) == []
    assert await restarted.lag() == 0
    await channel.close()


async def test_a_pending_entry_trimmed_from_the_stream_is_acknowledged_without_an_event(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    channel = RedisEventChannel(client, prefix=prefix)
    await channel.publish([history("a", 1), history("a", 2)])
    source = group(client, prefix)
    await source.ensure_group()
    read = await source.read(10, 10)
    await client.xtrim(f"{prefix}:events:all", maxlen=0)
    source.rewind()
    pending = await source.read(10, 10)
    assert [entry_id for entry_id, _ in pending] == [entry_id for entry_id, _ in read]
    assert [event for _, event in pending] == [None, None]
    await source.ack([entry_id for entry_id, _ in pending])
    assert await source.read(10, 10) == []
    await channel.close()


async def test_kafka_records_are_keyed_by_job_with_the_event_id_in_a_header(
    client: redis.asyncio.Redis, prefix: str, kafka_bootstrap: str
) -> None:
    channel = RedisEventChannel(client, prefix=prefix)
    events = [history("a", 1, EventType.EVENT_TYPE_JOB_CREATED), history("b", 1), history("a", 2)]
    await channel.publish(events)
    source = group(client, prefix)
    await source.ensure_group()
    sink = KafkaSink(kafka_bootstrap, f"{prefix}.events", partitions=2)
    await sink.start()
    try:
        await export_all(Exporter(source, [sink], block_ms=10))
    finally:
        await sink.close()

    consumer = AIOKafkaConsumer(
        f"{prefix}.events", bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        records = []
        for _ in range(20):
            batch = await consumer.getmany(timeout_ms=500)
            records += [record for part in batch.values() for record in part]
            if len(records) >= 3:
                break
    finally:
        await consumer.stop()
    by_id = {RuntimeEvent.FromString(record.value).id: record for record in records}
    assert sorted(by_id) == ["a.1", "a.2", "b.1"]
    assert by_id["a.1"].key == b"a"
    assert by_id["b.1"].key == b"b"
    assert dict(by_id["a.1"].headers) == {"event-id": b"a.1", "event-type": b"job.created"}
    assert by_id["a.1"].partition == by_id["a.2"].partition
    assert by_id["a.1"].offset < by_id["a.2"].offset
    await channel.close()


def test_export_is_off_by_default_and_bad_settings_name_their_variable() -> None:
    config = ExportConfig.from_env({})
    assert not config.enabled
    assert config.kafka_topic == "agentrt.events"
    assert ExportConfig.from_env({"AGENTRT_EXPORT_REDIS_URL": "redis://x"}).enabled
    with pytest.raises(ConfigError, match="AGENTRT_EXPORT_KAFKA_BOOTSTRAP"):
        ExportConfig.from_env({"AGENTRT_EXPORT_KAFKA_BOOTSTRAP": "no-port"})
    with pytest.raises(ConfigError, match="AGENTRT_EXPORT_REDIS_MAXLEN"):
        ExportConfig.from_env({"AGENTRT_EXPORT_REDIS_MAXLEN": "0"})
