"""The RecordingStore conformance suite, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from agentrt.common.v1.common_pb2 import RuntimeEvent
from agentrt.jobs.v1.jobs_pb2 import JobSpec
from agentrt.replay.v1.replay_pb2 import Recording, RunMetadata

from services.kit.errors import AlreadyExists, FieldInvalid, NotFound, RequestIdReused
from services.kit.ids import new_id
from services.replay.recordings import RecordingFilter, RecordingRow
from services.replay.store import NewImport, RecordingStore
from tests.services.replay.events import BASE_SECONDS, S, T, event, run

NOW = datetime(2030, 1, 1, tzinfo=UTC)
State = Recording.State


async def stored(store: RecordingStore, recording_id: str) -> list[RuntimeEvent]:
    return [e for _, e in await store.events(recording_id, 0, 1000)]


# Recording


async def test_a_run_is_recorded_in_order_and_completes_with_its_top_level_job(
    store: RecordingStore,
) -> None:
    events = run()
    job_id = events[0].job.removeprefix("jobs/")
    opened = await store.record(events[:2], "5-0", NOW)
    assert opened == [job_id]
    row = await store.get(job_id)
    assert (row.state, row.event_count, row.job, row.tenant) == (
        State.STATE_RECORDING,
        2,
        f"jobs/{job_id}",
        "acme",
    )
    assert row.metadata.runtime_version == "0.1.0"
    assert await store.record(events[2:], "9-0", NOW) == []
    row = await store.get(job_id)
    assert row.state == State.STATE_COMPLETE
    assert row.job_state == S.JOB_STATE_SUCCEEDED
    assert row.start_time == (BASE_SECONDS + 1) * 1_000_000
    assert row.end_time == (BASE_SECONDS + 4) * 1_000_000
    assert row.metadata.model_versions == {"gpt-4o-mini-2024-07-18": "gpt-4o-mini-2024-07-18"}
    assert await stored(store, job_id) == events
    assert [p for p, _ in await store.events(job_id, 2, 1000)] == [3, 4]
    assert await store.position() == "9-0"


async def test_a_duplicate_delivery_changes_nothing_but_the_position(
    store: RecordingStore,
) -> None:
    events = run()
    job_id = events[0].job.removeprefix("jobs/")
    await store.record(events, "4-0", NOW)
    assert await store.record([events[1], events[3]], "6-0", NOW) == []
    assert (await store.get(job_id)).event_count == 4
    assert await stored(store, job_id) == events
    assert await store.position() == "6-0"


async def test_transient_events_are_not_recorded_and_no_cursor_keeps_the_position(
    store: RecordingStore,
) -> None:
    events = run()
    job_id = events[0].job.removeprefix("jobs/")
    delta = event(job_id, 2, T.EVENT_TYPE_OUTPUT_DELTA, transient=1)
    await store.record([events[0], delta], "2-0", NOW)
    await store.record([events[1]], None, NOW)
    assert await stored(store, job_id) == events[:2]
    assert await store.position() == "2-0"


async def test_child_jobs_are_recorded_in_their_root_jobs_recording(
    store: RecordingStore,
) -> None:
    root = run()
    root_id = root[0].job.removeprefix("jobs/")
    child_id = new_id()
    child = [
        event(child_id, 1, T.EVENT_TYPE_JOB_CREATED, root_id=root_id),
        event(child_id, 2, T.EVENT_TYPE_JOB_SUCCEEDED, S.JOB_STATE_SUCCEEDED, root_id=root_id),
    ]
    # The child ends before its parent: the recording completes with the parent only.
    await store.record([*root[:3], *child], None, NOW)
    row = await store.get(root_id)
    assert (row.event_count, row.state, row.job_state) == (
        5,
        State.STATE_RECORDING,
        S.JOB_STATE_RUNNING,
    )
    await store.record(root[3:], None, NOW)
    assert (await store.get(root_id)).state == State.STATE_COMPLETE
    assert await stored(store, root_id) == [*root[:3], *child, root[3]]
    with pytest.raises(NotFound):
        await store.get(child_id)
    assert await store.last_sequences([f"jobs/{child_id}", root[0].job, "jobs/other"]) == {
        f"jobs/{child_id}": 2,
        root[0].job: 4,
    }


async def test_unfinished_jobs_are_those_of_recordings_still_recording(
    store: RecordingStore,
) -> None:
    done, running = run(), run()
    await store.record([*done, *running[:2]], None, NOW)
    [unfinished] = await store.unfinished_jobs()
    assert (unfinished.job, unfinished.tenant, unfinished.last_sequence) == (
        running[0].job,
        "acme",
        2,
    )


async def test_the_spec_is_kept_and_the_model_version_moves_under_the_model_asked_for(
    store: RecordingStore,
) -> None:
    events = run()
    job_id = events[0].job.removeprefix("jobs/")
    await store.record(events, None, NOW)
    await store.set_spec(job_id, JobSpec(prompt="hi", model="gpt-4o-mini"), "alice")
    metadata = (await store.get(job_id)).metadata
    assert metadata.spec.prompt == "hi" and metadata.principal == "alice"
    assert metadata.model_versions == {"gpt-4o-mini": "gpt-4o-mini-2024-07-18"}
    with pytest.raises(NotFound):
        await store.set_spec("unknown", JobSpec(), "")


# Import


def imported(recording_id: str, events: list[RuntimeEvent], request_id: str = "") -> NewImport:
    row = RecordingRow(
        id=recording_id,
        job=events[0].job,
        tenant="elsewhere",
        state=State.STATE_COMPLETE,
        origin=Recording.Origin.ORIGIN_IMPORTED,
        metadata=RunMetadata(runtime_version="0.0.9"),
        job_state=S.JOB_STATE_SUCCEEDED,
        event_count=len(events),
        start_time=1,
        end_time=2,
        create_time=3,
    )
    return NewImport(row, events, request_id, b"hash-" + recording_id.encode())


async def test_an_import_is_stored_once_per_request_id(store: RecordingStore) -> None:
    events = run()
    row, created = await store.import_recording(imported("copy", events, "req-1"))
    assert created and row.id == "copy"
    assert await stored(store, "copy") == events
    again, created = await store.import_recording(imported("copy", events, "req-1"))
    assert not created and again.id == "copy"
    with pytest.raises(RequestIdReused):
        await store.import_recording(imported("other", events, "req-1"))
    with pytest.raises(AlreadyExists):
        await store.import_recording(imported("copy", events))
    with pytest.raises(NotFound):
        await store.get("other")
    assert (await store.get("copy")).metadata.runtime_version == "0.0.9"


# Listing


async def test_listing_is_newest_first_filtered_and_paged(store: RecordingStore) -> None:
    runs = [run(tenant="acme"), run(tenant="acme"), run(tenant="globex")]
    for index, events in enumerate(runs):
        for e in events:
            e.time.FromSeconds(BASE_SECONDS + 100 * index + e.sequence)
        await store.record(events, None, NOW)
    ids = [events[0].job.removeprefix("jobs/") for events in runs]
    page, token = await store.list(RecordingFilter(), 2, "")
    assert [row.id for row in page] == [ids[2], ids[1]] and token
    page, token = await store.list(RecordingFilter(), 2, token)
    assert [row.id for row in page] == [ids[0]] and token == ""
    acme, _ = await store.list(RecordingFilter(tenant="acme"), 10, "")
    assert [row.id for row in acme] == [ids[1], ids[0]]
    one, _ = await store.list(RecordingFilter(job=runs[0][0].job), 10, "")
    assert [row.id for row in one] == [ids[0]]
    window = RecordingFilter(
        start_after=(BASE_SECONDS + 100) * 1_000_000,
        start_before=(BASE_SECONDS + 200) * 1_000_000,
    )
    assert [row.id for row in (await store.list(window, 10, ""))[0]] == [ids[1]]
    await store.record(run(), None, NOW)
    recording = RecordingFilter(states=(State.STATE_COMPLETE,))
    assert len((await store.list(recording, 10, ""))[0]) == 4
    still = RecordingFilter(states=(State.STATE_RECORDING,))
    assert (await store.list(still, 10, ""))[0] == []
    with pytest.raises(FieldInvalid):
        await store.list(RecordingFilter(), 10, "not-a-token")


async def test_an_unknown_recording_is_not_found(store: RecordingStore) -> None:
    with pytest.raises(NotFound):
        await store.get("nothing-here")
    assert await store.events("nothing-here", 0, 10) == []
    assert await store.position() == "0"
