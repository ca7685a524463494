"""The recorder against a real jobs service: events the stream lost (trimmed past the
recorder's position, or published while it was down) are read from the jobs' histories."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agentrt.client import Client
from agentrt.replay.v1.replay_pb2 import Recording

from services.dev import LocalSystem
from services.kit.events import InMemoryEventChannel
from services.kit.storage import StorageConfig, migrate
from services.replay.history import JobsServiceHistory
from services.replay.recorder import Recorder
from services.replay.store import SQL_DIRECTORY, RecordingStore, open_recording_store


@pytest.fixture
async def own_store(tmp_path: Path) -> AsyncIterator[RecordingStore]:
    """A recording store of its own, beside the system's replay service."""
    config = StorageConfig("sqlite", tmp_path / "own-replay.db", None, "replay")
    await migrate(config, SQL_DIRECTORY)
    store = await open_recording_store(config)
    try:
        yield store
    finally:
        await store.close()


async def test_a_job_whose_first_events_were_trimmed_is_backfilled_from_its_history(
    system: LocalSystem, own_store: RecordingStore
) -> None:
    history = JobsServiceHistory(system.infra.channel("jobs"))
    recorder = Recorder(own_store, InMemoryEventChannel(), history, durable_position=True)
    async with Client(system.endpoint, system.api_key) as client:
        job = await client.run("hello", model="local")
    events = await history.events_after(job.name, 0)
    assert len(events) >= 4

    # The stream kept only the job's last event: the rest was trimmed away.
    await recorder.store_batch([("77-0", events[-1])])
    recording_id = job.name.removeprefix("jobs/")
    assert [e for _, e in await own_store.events(recording_id, 0, 100)] == events
    assert (await own_store.get(recording_id)).state == Recording.STATE_COMPLETE
    assert await own_store.position() == "77-0"
    # Delivered again, as at least once allows: nothing changes.
    await recorder.store_batch([("78-0", event) for event in events])
    assert (await own_store.get(recording_id)).event_count == len(events)


async def test_catching_up_completes_recordings_of_jobs_that_went_on_meanwhile(
    system: LocalSystem, own_store: RecordingStore
) -> None:
    history = JobsServiceHistory(system.infra.channel("jobs"))
    recorder = Recorder(own_store, InMemoryEventChannel(), history, durable_position=True)
    async with Client(system.endpoint, system.api_key) as client:
        job = await client.run("hello", model="local")
    events = await history.events_after(job.name, 0)
    await recorder.store_batch([("1-0", events[0]), ("2-0", events[1])])
    recording_id = job.name.removeprefix("jobs/")
    assert (await own_store.get(recording_id)).state == Recording.STATE_RECORDING

    await recorder.catch_up()
    assert [e for _, e in await own_store.events(recording_id, 0, 100)] == events
    assert (await own_store.get(recording_id)).state == Recording.STATE_COMPLETE
    assert await own_store.unfinished_jobs() == []


async def test_the_spec_of_each_recording_opened_is_kept_in_the_background(
    system: LocalSystem, own_store: RecordingStore
) -> None:
    history = JobsServiceHistory(system.infra.channel("jobs"))
    recorder = Recorder(own_store, InMemoryEventChannel(), history, durable_position=True)
    async with Client(system.endpoint, system.api_key) as client:
        job = await client.run("hello", model="local", system_prompt="be brief")
    events = await history.events_after(job.name, 0)
    recorder.start()
    try:
        await recorder.store_batch([("1-0", event) for event in events])
        recording_id = job.name.removeprefix("jobs/")
        async with asyncio.timeout(10):
            while True:
                if (await own_store.get(recording_id)).metadata.HasField("spec"):
                    break
                await asyncio.sleep(0.02)
    finally:
        await recorder.stop()
    metadata = (await own_store.get(recording_id)).metadata
    assert metadata.spec.system_prompt == "be brief" and metadata.principal == "dev"
