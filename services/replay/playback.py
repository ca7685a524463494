"""Playing a recording back: all at once, spaced as it happened, or step by step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from agentrt.common.v1.common_pb2 import EventType, RuntimeEvent
from agentrt.replay.v1.replay_pb2 import PlaybackMode, PlayRecordingRequest

from services.kit.errors import FieldInvalid
from services.replay.recordings import event_micros
from services.replay.store import RecordingStore

PAGE = 500
"""Events read from the store at a time."""

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Playback:
    """A validated way to play a recording."""

    recording_id: str
    timed: bool
    speed: float
    """Times faster than real time, > 0."""
    max_gap: float
    """The longest wait in seconds between two events after scaling; 0: no cap."""
    after_position: int


def playback_of(recording_id: str, request: PlayRecordingRequest, step: bool) -> Playback:
    """The playback a request asks for; FieldInvalid for a mode the method does not play,
    a negative speed, gap or position."""
    allowed = (
        {PlaybackMode.PLAYBACK_MODE_UNSPECIFIED, PlaybackMode.PLAYBACK_MODE_STEP}
        if step
        else {
            PlaybackMode.PLAYBACK_MODE_UNSPECIFIED,
            PlaybackMode.PLAYBACK_MODE_FAST,
            PlaybackMode.PLAYBACK_MODE_TIMED,
        }
    )
    if request.mode not in allowed:
        names = ", ".join(sorted(PlaybackMode.Name(mode) for mode in allowed))
        method = "StepRecording" if step else "PlayRecording"
        raise FieldInvalid("mode", f"{method} plays {names}")
    if request.speed < 0:
        raise FieldInvalid("speed", "must not be negative")
    gap = request.max_gap.seconds + request.max_gap.nanos / 1e9
    if gap < 0:
        raise FieldInvalid("max_gap", "must not be negative")
    if request.after_position < 0:
        raise FieldInvalid("after_position", "must not be negative")
    return Playback(
        recording_id,
        timed=request.mode == PlaybackMode.PLAYBACK_MODE_TIMED,
        speed=request.speed or 1.0,
        max_gap=gap,
        after_position=request.after_position,
    )


async def events_from(
    store: RecordingStore, recording_id: str, after_position: int
) -> AsyncIterator[tuple[int, RuntimeEvent]]:
    """The recording's events after the position, with theirs, up to its last one so far."""
    position = after_position
    while True:
        page = await store.events(recording_id, position, PAGE)
        for entry in page:
            yield entry
        if len(page) < PAGE:
            return
        position = page[-1][0]


async def play(
    store: RecordingStore, playback: Playback, sleep: Sleep = asyncio.sleep
) -> AsyncIterator[RuntimeEvent]:
    """The events in recording order; timed playback waits the scaled time between them."""
    previous: int | None = None
    async for _, event in events_from(store, playback.recording_id, playback.after_position):
        at = event_micros(event)
        if playback.timed and previous is not None:
            wait = max(at - previous, 0) / 1e6 / playback.speed
            if playback.max_gap:
                wait = min(wait, playback.max_gap)
            if wait > 0:
                await sleep(wait)
        previous = at
        yield event


@dataclass(frozen=True)
class Step:
    """One step of a step-by-step session."""

    events: list[RuntimeEvent]
    position: int
    done: bool


class StepSession:
    """Where a step-by-step playback is, and how far each advance goes."""

    def __init__(self, store: RecordingStore, recording_id: str, position: int) -> None:
        self._store = store
        self._recording_id = recording_id
        self.position = position

    async def advance(self, count: int, until_type: EventType.ValueType | None) -> Step:
        """`count` events, or those up to and including the next one of `until_type`
        (to the end when there is none)."""
        taken: list[RuntimeEvent] = []
        while True:
            page = await self._store.events(self._recording_id, self.position, PAGE)
            for position, event in page:
                taken.append(event)
                self.position = position
                if until_type is None and len(taken) >= count:
                    return await self._step(taken)
                if until_type is not None and event.type == until_type:
                    return await self._step(taken)
            if len(page) < PAGE:
                return await self._step(taken)

    async def _step(self, taken: list[RuntimeEvent]) -> Step:
        more = await self._store.events(self._recording_id, self.position, 1)
        return Step(taken, self.position, done=not more)
