"""`agentrt serve exporter` killed mid-stream: 1,000 jobs' events all reach Kafka, in order."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from agentrt.common.v1.common_pb2 import EventType, RuntimeEvent
from aiokafka import AIOKafkaConsumer

from services.export import ExportedEventReader
from services.kit.events import RedisEventChannel
from tests.e2e.processes import AGENTRT
from tests.services.kit.events.sample_events import history

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

JOBS = 1000
KINDS = (
    EventType.EVENT_TYPE_JOB_CREATED,
    EventType.EVENT_TYPE_JOB_STARTED,
    EventType.EVENT_TYPE_TOOL_CALLED,
    EventType.EVENT_TYPE_TURN_COMPLETED,
    EventType.EVENT_TYPE_JOB_SUCCEEDED,
)
TOTAL = JOBS * len(KINDS)
GROUP = "agentrt-export"


async def publish_jobs(channel: RedisEventChannel) -> None:
    """Each job's events in sequence, the jobs interleaved, as the relays publish them."""
    for sequence, kind in enumerate(KINDS, start=1):
        for start in range(0, JOBS, 100):
            await channel.publish(
                [history(f"j{n}", sequence, kind) for n in range(start, start + 100)]
            )
            await asyncio.sleep(0.05)


async def group_state(client: redis.asyncio.Redis, key: str) -> tuple[int, int, int | None]:
    """(entries read, pending, lag) of the exporter's group; zeros before it exists."""
    if not await client.exists(key):
        return 0, 0, None
    groups: list[dict[Any, Any]] = await client.xinfo_groups(key)
    for info in groups:
        if info["name"] in (GROUP, GROUP.encode()):
            return int(info["entries-read"] or 0), int(info["pending"]), info["lag"]
    return 0, 0, None


async def consume_topic(bootstrap: str, topic: str) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    records: list[Any] = []
    try:
        quiet = 0
        while quiet < 3:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            got = [record for part in batch.values() for record in part]
            records += got
            quiet = 0 if got or len(records) < TOTAL else quiet + 1
    finally:
        await consumer.stop()
    return records


def start_exporter(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [AGENTRT, "serve", "exporter"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


@pytest.mark.timeout(90)
async def test_every_jobs_events_arrive_in_order_across_a_killed_exporter(
    redis_url: str, redis_prefix: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = redis_prefix.rstrip(":")
    env = {
        **os.environ,
        "AGENTRT_REDIS_URL": redis_url,
        "AGENTRT_REDIS_PREFIX": prefix,
        "AGENTRT_EXPORT_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "AGENTRT_EXPORT_KAFKA_TOPIC_PREFIX": f"{prefix}.",
        "AGENTRT_EXPORT_KAFKA_PARTITIONS": "4",
        "AGENTRT_EXPORT_REDIS_URL": redis_url,
        "AGENTRT_EXPORT_REDIS_STREAM_PREFIX": f"{prefix}:out",
        "AGENTRT_EXPORT_BATCH_SIZE": "50",
        "AGENTRT_LOG_FORMAT": "json",
    }
    client = redis.asyncio.Redis.from_url(redis_url)
    channel = RedisEventChannel(client, prefix=prefix)
    key = f"{prefix}:events:all"
    log = tmp_path / "exporter.log"
    exporter = start_exporter(env, log)
    try:
        publisher = asyncio.create_task(publish_jobs(channel))
        deadline = time.monotonic() + 30
        while (await group_state(client, key))[0] < TOTAL // 4:
            assert exporter.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the exporter made no progress"
            await asyncio.sleep(0.02)
        exporter.send_signal(signal.SIGKILL)
        exporter.wait(10)
        killed_at = await group_state(client, key)
        assert not publisher.done(), "the exporter was to be killed while events still came"

        await asyncio.sleep(0.3)
        exporter = start_exporter(env, log)
        await publisher
        deadline = time.monotonic() + 40
        while (state := await group_state(client, key))[1:] != (0, 0):
            assert exporter.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"export did not finish: {state}"
            await asyncio.sleep(0.05)
    finally:
        exporter.send_signal(signal.SIGTERM)
        exporter.wait(15)
    assert exporter.returncode == 0, log.read_text()
    assert 0 < killed_at[0] < TOTAL

    records = await consume_topic(kafka_bootstrap, f"{prefix}.events")
    per_job: dict[str, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = RuntimeEvent.FromString(record.value)
        assert record.key == event.job.removeprefix("jobs/").encode()
        assert dict(record.headers)["event-id"] == event.id.encode()
        per_job[event.job].append(event.sequence)
    assert len(per_job) == JOBS
    expected = list(range(1, len(KINDS) + 1))
    for job, sequences in per_job.items():
        # At least once: a duplicate may follow, but never a gap or a step back to a new event.
        assert list(dict.fromkeys(sequences)) == expected, job
    assert len(records) >= TOTAL

    exported = await ExportedEventReader(client, f"{prefix}:out").read("0", count=2 * TOTAL)
    assert {event.id for _, event in exported} == {
        f"j{n}.{s}" for n in range(JOBS) for s in expected
    }
    started = [json.loads(line) for line in log.read_text().splitlines()]
    assert [entry["message"] for entry in started].count(
        f"exporting events to kafka topic {prefix}.events"
    ) == 2
    print(f"kafka records: {len(records)} for {TOTAL} events (killed at {killed_at})")
    await channel.close()
    await client.aclose()
