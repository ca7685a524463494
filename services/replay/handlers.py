"""ReplayService: validates requests, delegates to the store, files, playback and re-execution."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from agentrt.common.v1.common_pb2 import ErrorReason, EventType, RuntimeEvent
from agentrt.replay.v1 import replay_pb2, replay_pb2_grpc

from services.kit import validate
from services.kit.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FieldInvalid,
    FieldRequired,
    MessageTooLarge,
)
from services.kit.interceptors import remaining_time
from services.kit.names import parse_job_name
from services.kit.paging import page_size
from services.replay import files
from services.replay.imports import check_request_id, chosen_recording_id, new_import
from services.replay.names import parse_recording_name
from services.replay.playback import StepSession, events_from, play, playback_of
from services.replay.recordings import RecordingFilter, State, to_recording
from services.replay.reexecutor import Reexecutor
from services.replay.store import RecordingStore

Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
CHUNK_BYTES = 1024 * 1024
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
"""The largest Recording GetRecording returns with its events."""
_VIEWS = (
    replay_pb2.RECORDING_VIEW_UNSPECIFIED,
    replay_pb2.RECORDING_VIEW_BASIC,
    replay_pb2.RECORDING_VIEW_FULL,
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ReplayServicer(replay_pb2_grpc.ReplayServiceServicer):
    """Recordings for operators, through the gateway's admin forwarding."""

    def __init__(
        self,
        store: RecordingStore,
        reexecutor: Reexecutor,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._store = store
        self._reexecutor = reexecutor
        self._clock = clock

    async def GetRecording(
        self, request: replay_pb2.GetRecordingRequest, context: Context
    ) -> replay_pb2.Recording:
        recording_id = parse_recording_name(request.name)
        if request.view not in _VIEWS:
            raise FieldInvalid("view", "must be RECORDING_VIEW_BASIC or RECORDING_VIEW_FULL")
        row = await self._store.get(recording_id)
        if request.view != replay_pb2.RECORDING_VIEW_FULL:
            return to_recording(row)
        events = []
        size = 0
        async for _, event in events_from(self._store, recording_id, 0):
            # A repeated field's element costs its size and a few bytes of framing.
            size += event.ByteSize() + 8
            if size > MAX_RESPONSE_BYTES:
                raise FailedPrecondition(
                    f"the events of {request.name} do not fit in one response; "
                    "use ExportRecording or PlayRecording",
                    ErrorReason.ERROR_REASON_MESSAGE_TOO_LARGE,
                    {"name": request.name, "limit": str(MAX_RESPONSE_BYTES)},
                )
            events.append(event)
        return to_recording(row, events)

    async def ListRecordings(
        self, request: replay_pb2.ListRecordingsRequest, context: Context
    ) -> replay_pb2.ListRecordingsResponse:
        if request.job:
            parse_job_name(request.job, "job")
        for state in request.states:
            if state not in State.values() or state == State.STATE_UNSPECIFIED:
                raise FieldInvalid("states", f"unknown state {state}")
        where = RecordingFilter(
            tenant=request.tenant,
            job=request.job,
            states=tuple(request.states),
            **_time_range(request),
        )
        size = page_size(request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        rows, token = await self._store.list(where, size, request.page_token)
        return replay_pb2.ListRecordingsResponse(
            recordings=[to_recording(row) for row in rows], next_page_token=token
        )

    async def ExportRecording(
        self, request: replay_pb2.ExportRecordingRequest, context: Context
    ) -> AsyncIterator[replay_pb2.RecordingChunk]:
        recording_id = parse_recording_name(request.name)
        recording = to_recording(await self._store.get(recording_id))
        events = [event async for _, event in events_from(self._store, recording_id, 0)]
        # The header's count is the file's: events recorded since the read above are not in it.
        recording.event_count = len(events)
        lines = files.write_lines(recording, events)
        for data in files.chunked(lines, CHUNK_BYTES, request.gzip):
            yield replay_pb2.RecordingChunk(data=data)

    async def ImportRecording(
        self, request_iterator: AsyncIterator[replay_pb2.ImportRecordingRequest], context: Context
    ) -> replay_pb2.Recording:
        data = bytearray()
        first: replay_pb2.ImportRecordingRequest | None = None
        async for message in request_iterator:
            if first is None:
                first = message
            data += message.data
            if len(data) > files.MAX_FILE_BYTES:
                raise MessageTooLarge("data", len(data), files.MAX_FILE_BYTES)
        if first is None or not data:
            raise FieldRequired("data")
        recording_id = chosen_recording_id(first.recording_id)
        request_id = check_request_id(first.request_id)
        plain = files.decompressed(bytes(data))
        parsed = files.read_file(plain)
        new = new_import(parsed, recording_id, first.recording_id, request_id, plain, self._clock())
        row, _ = await self._store.import_recording(new)
        return to_recording(row)

    async def PlayRecording(
        self, request: replay_pb2.PlayRecordingRequest, context: Context
    ) -> AsyncIterator[RuntimeEvent]:
        playback = playback_of(parse_recording_name(request.name), request, step=False)
        await self._store.get(playback.recording_id)
        async for event in play(self._store, playback):
            yield event

    async def StepRecording(
        self, request_iterator: AsyncIterator[replay_pb2.StepRecordingRequest], context: Context
    ) -> AsyncIterator[replay_pb2.StepRecordingResponse]:
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        if first is None or first.WhichOneof("request") != "start":
            raise FieldRequired("start")
        playback = playback_of(
            parse_recording_name(first.start.name, "start.name"), first.start, step=True
        )
        await self._store.get(playback.recording_id)
        session = StepSession(self._store, playback.recording_id, playback.after_position)
        yield replay_pb2.StepRecordingResponse(position=session.position)
        async for message in messages:
            if message.WhichOneof("request") != "advance":
                raise FieldInvalid("start", "only the first message may be `start`")
            count, until_type = _advance(message.advance)
            step = await session.advance(count, until_type)
            yield replay_pb2.StepRecordingResponse(
                events=step.events, position=step.position, done=step.done
            )
            if step.done:
                return

    async def ReexecuteRecording(
        self, request: replay_pb2.ReexecuteRecordingRequest, context: Context
    ) -> replay_pb2.ReexecutionDiff:
        recording_id = parse_recording_name(request.name)
        try:
            async with asyncio.timeout(remaining_time()):
                return await self._reexecutor.reexecute(recording_id, request)
        except TimeoutError:
            raise DeadlineExceeded(
                f"re-executing {request.name} ran past the call's deadline"
            ) from None


def _advance(
    advance: replay_pb2.StepRecordingRequest.Advance,
) -> tuple[int, EventType.ValueType | None]:
    which = advance.WhichOneof("until")
    if which == "events":
        if advance.events < 1:
            raise FieldInvalid("advance.events", "must be at least 1")
        return advance.events, None
    if which == "event_type":
        if advance.event_type not in EventType.values() or not advance.event_type:
            raise FieldInvalid("advance.event_type", "must be a known event type")
        return 0, advance.event_type
    return 1, None


def _time_range(request: replay_pb2.ListRecordingsRequest) -> dict[str, int]:
    bounds: dict[str, int] = {}
    for name, bound in (("start_time_after", "start_after"), ("start_time_before", "start_before")):
        if validate.optional_timestamp(request, name) is not None:
            bounds[bound] = getattr(request, name).ToMicroseconds()
    return bounds
