"""ReplayService through a real gRPC server: bad names, modes and files get a clear
status and change nothing; playback and stepping go as asked."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import pytest
from agentrt.common.v1.common_pb2 import RuntimeEvent
from agentrt.replay.v1 import replay_pb2, replay_pb2_grpc
from agentrt.replay.v1.replay_pb2 import StepRecordingRequest as Step
from google.protobuf.duration_pb2 import Duration

from services.kit.config import RuntimeConfig
from services.kit.events import InMemoryEventChannel, InMemoryWakeups
from services.kit.infra import Infrastructure
from services.kit.server import Server
from services.kit.storage import migrate
from services.replay.server import create_unit
from services.replay.store import SQL_DIRECTORY
from tests.services.kit.status import error_info
from tests.services.replay.events import T, run
from tests.services.replay.test_files import GOLDEN

Stub: TypeAlias = "replay_pb2_grpc.ReplayServiceAsyncStub"
R = replay_pb2
Code = grpc.StatusCode


@dataclasses.dataclass
class Replay:
    stub: Stub
    events: InMemoryEventChannel


@pytest.fixture
async def replay(tmp_path: Path) -> AsyncIterator[Replay]:
    """The replay unit alone; "jobs" is its own server, which does not serve JobService,
    so that the recorder's look-ups fail at once (the recordings have no spec)."""
    server = Server("127.0.0.1:0", "replay")
    config = RuntimeConfig.from_env(
        {
            "AGENTRT_DATA_DIR": str(tmp_path),
            "AGENTRT_JOBS_ADDRESS": f"127.0.0.1:{server.port}",
            "AGENTRT_POLICY_ADDRESS": f"127.0.0.1:{server.port}",
            "AGENTRT_ENGINE_ADDRESS": f"127.0.0.1:{server.port}",
        }
    )
    events = InMemoryEventChannel()
    infra = Infrastructure(config, events, InMemoryWakeups())
    await migrate(infra.storage("replay"), SQL_DIRECTORY)
    await server.start([await create_unit(infra)])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Replay(replay_pb2_grpc.ReplayServiceStub(channel), events)
    finally:
        await server.stop(grace=1.0)
        await infra.close()


async def recorded(replay: Replay, events: Sequence[RuntimeEvent]) -> R.Recording:
    await replay.events.publish(events)
    name = f"recordings/{events[0].job.removeprefix('jobs/')}"
    async with asyncio.timeout(5):
        while True:
            try:
                found = await replay.stub.GetRecording(R.GetRecordingRequest(name=name))
                if found.event_count == len(events):
                    return found
            except grpc.aio.AioRpcError as error:
                assert error.code() == Code.NOT_FOUND
            await asyncio.sleep(0.02)


async def refused(call: Any, code: grpc.StatusCode, reason: str) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    info = error_info(caught.value)
    assert info.reason == reason
    return info


async def count(replay: Replay) -> int:
    listed = await replay.stub.ListRecordings(R.ListRecordingsRequest(page_size=500))
    return len(listed.recordings)


async def drained(call: Any) -> list[Any]:
    return [item async for item in call]


async def test_bad_names_and_requests_are_refused(replay: Replay) -> None:
    stub = replay.stub
    for name in ("", "recordings/", "recordings/UPPER", "jobs/x", "recordings/a/b"):
        await refused(
            stub.GetRecording(R.GetRecordingRequest(name=name)),
            Code.INVALID_ARGUMENT,
            "NAME_INVALID",
        )
    await refused(
        stub.GetRecording(R.GetRecordingRequest(name="recordings/none")),
        Code.NOT_FOUND,
        "NOT_FOUND",
    )
    await refused(
        stub.GetRecording(R.GetRecordingRequest(name="recordings/none", view=7)),  # type: ignore[arg-type]
        Code.INVALID_ARGUMENT,
        "FIELD_INVALID",
    )
    for bad in (
        R.ListRecordingsRequest(page_size=-1),
        R.ListRecordingsRequest(page_token="nope"),
        R.ListRecordingsRequest(states=[9]),  # type: ignore[list-item]
    ):
        await refused(stub.ListRecordings(bad), Code.INVALID_ARGUMENT, "FIELD_INVALID")
    await refused(
        stub.ListRecordings(R.ListRecordingsRequest(job="recordings/x")),
        Code.INVALID_ARGUMENT,
        "NAME_INVALID",
    )
    export = R.ExportRecordingRequest(name="bad name")
    await refused(drained(stub.ExportRecording(export)), Code.INVALID_ARGUMENT, "NAME_INVALID")
    export = R.ExportRecordingRequest(name="recordings/none")
    await refused(drained(stub.ExportRecording(export)), Code.NOT_FOUND, "NOT_FOUND")


async def test_bad_modes_are_refused(replay: Replay) -> None:
    recording = await recorded(replay, run())
    stub = replay.stub
    for bad in (
        R.PlayRecordingRequest(name=recording.name, mode=R.PLAYBACK_MODE_STEP),
        R.PlayRecordingRequest(name=recording.name, mode=9),  # type: ignore[arg-type]
        R.PlayRecordingRequest(name=recording.name, speed=-1),
        R.PlayRecordingRequest(name=recording.name, after_position=-1),
        R.PlayRecordingRequest(
            name=recording.name, mode=R.PLAYBACK_MODE_TIMED, max_gap=Duration(seconds=-1)
        ),
    ):
        await refused(drained(stub.PlayRecording(bad)), Code.INVALID_ARGUMENT, "FIELD_INVALID")
    play = R.PlayRecordingRequest(name="recordings/none")
    await refused(drained(stub.PlayRecording(play)), Code.NOT_FOUND, "NOT_FOUND")
    for bad_rerun in (
        R.ReexecuteRecordingRequest(name=recording.name, model_outputs=7),  # type: ignore[arg-type]
        R.ReexecuteRecordingRequest(name=recording.name, model="gpt-4o"),
        R.ReexecuteRecordingRequest(name=recording.name, max_divergences=-1),
        R.ReexecuteRecordingRequest(
            name=recording.name,
            model_outputs=R.OUTPUT_SOURCE_RECORDED,
            tool_outputs=R.OUTPUT_SOURCE_LIVE,
        ),
    ):
        await refused(stub.ReexecuteRecording(bad_rerun), Code.INVALID_ARGUMENT, "FIELD_INVALID")
    # The recorder could not read the job's spec (no jobs service here).
    await refused(
        stub.ReexecuteRecording(R.ReexecuteRecordingRequest(name=recording.name)),
        Code.FAILED_PRECONDITION,
        "FIELD_INVALID",
    )


async def upload(
    data: bytes, recording_id: str = "", request_id: str = ""
) -> AsyncIterator[R.ImportRecordingRequest]:
    yield R.ImportRecordingRequest(
        recording_id=recording_id, request_id=request_id, data=data[:100]
    )
    for start in range(100, len(data), 100):
        yield R.ImportRecordingRequest(data=data[start : start + 100])


async def test_bad_files_and_ids_are_refused_and_nothing_is_stored(replay: Replay) -> None:
    stub = replay.stub
    good = GOLDEN.read_bytes()
    truncated = good[: good.rindex(b'{"end"')]
    info = await refused(
        stub.ImportRecording(upload(truncated)), Code.INVALID_ARGUMENT, "RECORDING_FILE_INVALID"
    )
    assert info.metadata["line"] == "6"
    altered = good.replace(b"acme", b"evil", 1)
    info = await refused(
        stub.ImportRecording(upload(altered)), Code.INVALID_ARGUMENT, "RECORDING_FILE_INVALID"
    )
    assert info.metadata["line"] == "6"

    async def nothing() -> AsyncIterator[R.ImportRecordingRequest]:
        for _ in ():
            yield R.ImportRecordingRequest()

    await refused(stub.ImportRecording(nothing()), Code.INVALID_ARGUMENT, "FIELD_REQUIRED")
    for bad_id in ("Bad_Id", "x" * 64, "01hzy3x6m0h2tq1v5b1bq5r8s4"):
        await refused(
            stub.ImportRecording(upload(good, bad_id)), Code.INVALID_ARGUMENT, "FIELD_INVALID"
        )
    assert await count(replay) == 0

    first = await stub.ImportRecording(upload(good, "copy", "req-1"))
    again = await stub.ImportRecording(upload(good, "copy", "req-1"))
    assert first == again and first.origin == R.Recording.ORIGIN_IMPORTED
    await refused(stub.ImportRecording(upload(good, "copy")), Code.ALREADY_EXISTS, "ALREADY_EXISTS")
    await refused(
        stub.ImportRecording(upload(good, "other", "req-1")),
        Code.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )
    random = await stub.ImportRecording(upload(good))
    assert len(random.name.removeprefix("recordings/")) == 26
    assert await count(replay) == 2


async def test_an_export_imports_as_the_same_recording(replay: Replay) -> None:
    recording = await recorded(replay, run())
    stub = replay.stub
    for gzip in (False, True):
        chunks = await drained(
            stub.ExportRecording(R.ExportRecordingRequest(name=recording.name, gzip=gzip))
        )
        data = b"".join(chunk.data for chunk in chunks)
        copy = await stub.ImportRecording(upload(data, f"copy-{int(gzip)}"))
        assert copy.event_count == recording.event_count and copy.job == recording.job
        full = await stub.GetRecording(
            R.GetRecordingRequest(name=copy.name, view=R.RECORDING_VIEW_FULL)
        )
        original = await stub.GetRecording(
            R.GetRecordingRequest(name=recording.name, view=R.RECORDING_VIEW_FULL)
        )
        assert list(full.events) == list(original.events)


async def test_timed_playback_keeps_the_spacing_scaled_and_capped(replay: Replay) -> None:
    events = run()
    for index, event in enumerate(events):
        event.time.FromMilliseconds(1_900_000_000_000 + 1000 * index)
    events[-1].time.FromMilliseconds(1_900_000_000_000 + 60_000)
    recording = await recorded(replay, events)
    timed = R.PlayRecordingRequest(
        name=recording.name,
        mode=R.PLAYBACK_MODE_TIMED,
        speed=10,
        max_gap=Duration(nanos=200_000_000),
    )
    started = time.monotonic()
    played = await drained(replay.stub.PlayRecording(timed))
    took = time.monotonic() - started
    assert played == events
    # 0.1 s twice, then the 57 s gap scaled to 5.7 s and capped at 0.2 s.
    assert 0.35 < took < 2.0
    after = await drained(
        replay.stub.PlayRecording(R.PlayRecordingRequest(name=recording.name, after_position=2))
    )
    assert after == events[2:]


async def test_stepping_goes_by_events_or_by_type_and_ends_at_the_end(replay: Replay) -> None:
    events = run()
    recording = await recorded(replay, events)

    async def session(*advances: Step.Advance) -> list[R.StepRecordingResponse]:
        async def requests() -> AsyncIterator[Step]:
            yield Step(start=R.PlayRecordingRequest(name=recording.name))
            for advance in advances:
                yield Step(advance=advance)

        return await drained(replay.stub.StepRecording(requests()))

    start, one, turn, rest = await session(
        Step.Advance(), Step.Advance(event_type=T.EVENT_TYPE_TURN_COMPLETED), Step.Advance(events=5)
    )
    assert (list(start.events), start.position, start.done) == ([], 0, False)
    assert (list(one.events), one.position, one.done) == (events[:1], 1, False)
    assert (list(turn.events), turn.position) == (events[1:3], 3)
    assert (list(rest.events), rest.position, rest.done) == (events[3:], 4, True)

    async def advance_first() -> AsyncIterator[Step]:
        yield Step(advance=Step.Advance())

    call = replay.stub.StepRecording(advance_first())
    await refused(drained(call), Code.INVALID_ARGUMENT, "FIELD_REQUIRED")

    async def two_starts() -> AsyncIterator[Step]:
        yield Step(start=R.PlayRecordingRequest(name=recording.name))
        yield Step(start=R.PlayRecordingRequest(name=recording.name))

    await refused(
        drained(replay.stub.StepRecording(two_starts())), Code.INVALID_ARGUMENT, "FIELD_INVALID"
    )

    async def zero_events() -> AsyncIterator[Step]:
        yield Step(start=R.PlayRecordingRequest(name=recording.name))
        yield Step(advance=Step.Advance(events=0))

    await refused(
        drained(replay.stub.StepRecording(zero_events())), Code.INVALID_ARGUMENT, "FIELD_INVALID"
    )

    async def timed_start() -> AsyncIterator[Step]:
        yield Step(start=R.PlayRecordingRequest(name=recording.name, mode=R.PLAYBACK_MODE_TIMED))

    await refused(
        drained(replay.stub.StepRecording(timed_start())), Code.INVALID_ARGUMENT, "FIELD_INVALID"
    )
