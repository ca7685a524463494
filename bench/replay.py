"""Benchmark of the replay recorder: its lag, event time → stored, under the main-path load.

Runs the services as separate processes on PostgreSQL + Redis (as bench/main_path.py does),
drives the main path through the gateway with a fixed number of jobs in flight, and runs
the replay service's recorder in this process on the same Redis stream and PostgreSQL
database (the `replay` schema, which `agentrt migrate` made), through a store that notes
when each batch is committed. The lag of an event is the commit's time minus the time the
jobs service gave the event: the outbox relay, Redis, and the recorder's read and write.
Usage: python bench/replay.py [--jobs N] [--concurrency C].
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import redis.asyncio
from agentrt.common.v1.common_pb2 import RuntimeEvent

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.main_path import QUIET, REDIS_URL, load, pg_database, report
from services.kit.channels import open_channel
from services.kit.events import Cursor, EventChannel, RedisEventChannel, is_transient
from services.kit.loop import run_main
from services.kit.storage import StorageConfig
from services.replay.history import JobsServiceHistory
from services.replay.recorder import Recorder
from services.replay.store import RecordingStore, open_recording_store
from tests.e2e.conftest import create_key
from tests.e2e.processes import cluster


class TimedStore:
    """The recording store, noting each stored event's lag when its batch commits."""

    def __init__(self, store: RecordingStore) -> None:
        self._store = store
        self.lags: list[float] = []
        self.batches = 0

    async def record(
        self, events: Sequence[RuntimeEvent], cursor: Cursor | None, now: datetime
    ) -> list[str]:
        opened = await self._store.record(events, cursor, now)
        committed = time.time()
        self.batches += 1
        self.lags += [
            committed - event.time.ToNanoseconds() / 1e9
            for event in events
            if not is_transient(event)
        ]
        return opened

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class TimedChannel:
    """The event channel, noting each history event's lag when the recorder reads it."""

    def __init__(self, channel: RedisEventChannel) -> None:
        self._channel = channel
        self.lags: list[float] = []

    async def follow_all(self, after: Cursor) -> AsyncIterator[tuple[Cursor, RuntimeEvent]]:
        async with contextlib.aclosing(
            cast(AsyncGenerator[tuple[Cursor, RuntimeEvent], None], self._channel.follow_all(after))
        ) as entries:
            async for cursor, event in entries:
                self.lags.append(time.time() - event.time.ToNanoseconds() / 1e9)
                yield cursor, event

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


def percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def measure(
    dsn: str, prefix: str, jobs_address: str, gateway: str, key: str, args: argparse.Namespace
) -> None:
    store = TimedStore(await open_recording_store(StorageConfig("postgres", None, dsn, "replay")))
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    events = TimedChannel(RedisEventChannel(client, prefix=prefix))
    channel = open_channel(jobs_address, 30.0)
    recorder = Recorder(
        cast(RecordingStore, store),
        cast(EventChannel, events),
        JobsServiceHistory(channel),
        durable_position=True,
    )
    recorder.start()
    try:
        wall, latencies = await load(gateway, key, args.jobs, args.concurrency)
        report("main path while recording", wall, latencies, args.concurrency)
        await asyncio.sleep(2.0)  # the last events of the last jobs
    finally:
        await recorder.stop()
        await events.close()
        await client.aclose()
        await channel.close(None)
        await store.close()
    read = sorted(events.lags)
    print(
        f"{'read lag (event → recorder)':<34} events={len(read):>6} "
        f"p50={percentile(read, 50):6.1f}ms p90={percentile(read, 90):6.1f}ms "
        f"p99={percentile(read, 99):6.1f}ms max={read[-1] * 1000:6.1f}ms"
    )
    ordered = sorted(store.lags)
    print(
        f"{'recorder lag (event → stored)':<34} events={len(ordered):>6} "
        f"batches={store.batches:>5} p50={percentile(ordered, 50):6.1f}ms "
        f"p90={percentile(ordered, 90):6.1f}ms p99={percentile(ordered, 99):6.1f}ms "
        f"max={ordered[-1] * 1000:6.1f}ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    prefix = f"agentrt-bench-{secrets.token_hex(4)}"
    with (
        tempfile.TemporaryDirectory() as tmp,
        pg_database() as dsn,
        cluster(dsn, REDIS_URL, prefix, Path(tmp), extra=QUIET) as running,
    ):
        key = create_key(running, "bench", "bench")
        run_main(
            measure(dsn, prefix, running.address("jobs"), running.address("gateway"), key, args)
        )


if __name__ == "__main__":
    main()
