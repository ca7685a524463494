"""The replay service through the gateway: recordings of runs, their files, playback and
re-execution (docs/replay.md). Reached as `Client.recordings`."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import duration_pb2

from agentrt.common.v1 import common_pb2
from agentrt.errors import error_from_rpc
from agentrt.replay.v1 import replay_pb2

if TYPE_CHECKING:
    from agentrt.replay.v1.replay_pb2_grpc import ReplayServiceAsyncStub

R = replay_pb2
Read = Callable[[Callable[..., Awaitable[Any]], Any], Awaitable[Any]]
"""Sends a unary read (a stub's method and its request) and returns its answer."""
UPLOAD_CHUNK = 1024 * 1024
"""Bytes per ImportRecording message (its maximum)."""


def recording_name(recording: str) -> str:
    """ "recordings/{id}" for a name, an id, or a job's name ("jobs/{id}": its recording)."""
    recording = recording.strip()
    if recording.startswith("recordings/"):
        return recording
    return f"recordings/{recording.removeprefix('jobs/')}"


class Recordings:
    """Calls of the ReplayService. Failed calls raise `agentrt.AgentrtError` subclasses."""

    def __init__(
        self,
        stub: ReplayServiceAsyncStub,
        metadata: Sequence[tuple[str, str]],
        call_timeout: float | None,
        read: Read,
    ) -> None:
        """`read` sends a unary read as the client does, retried while its outcome is
        unknown (a read is harmless to repeat)."""
        self._stub = stub
        self._metadata = tuple(metadata)
        self._timeout = call_timeout
        self._read = read

    async def get(self, recording: str, *, events: bool = False) -> R.Recording:
        """The recording (by name, id or job name); with `events`, its events too.
        Raises NotFoundError."""
        view = R.RECORDING_VIEW_FULL if events else R.RECORDING_VIEW_BASIC
        request = R.GetRecordingRequest(name=recording_name(recording), view=view)
        found: R.Recording = await self._read(self._stub.GetRecording, request)
        return found

    async def list(
        self,
        *,
        tenant: str = "",
        job: str = "",
        states: Sequence[R.Recording.State.ValueType] = (),
        limit: int = 50,
    ) -> builtins.list[R.Recording]:
        """Up to `limit` recordings, newest first."""
        found: builtins.list[R.Recording] = []
        request = R.ListRecordingsRequest(
            tenant=tenant, job=job, states=states, page_size=min(limit, 500)
        )
        while len(found) < limit:
            page = await self._read(self._stub.ListRecordings, request)
            found += page.recordings
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        return found[:limit]

    async def export(self, recording: str, *, gzip: bool = False) -> AsyncIterator[bytes]:
        """The recording file, piece by piece (docs/replay.md has the format)."""
        request = R.ExportRecordingRequest(name=recording_name(recording), gzip=gzip)
        with _translated():
            async for chunk in self._stub.ExportRecording(request, metadata=self._metadata):
                yield chunk.data

    async def import_file(
        self, data: bytes, *, recording_id: str = "", request_id: str = ""
    ) -> R.Recording:
        """Imports a recording file (gzip or not) as a new recording. Raises
        InvalidArgumentError (RECORDING_FILE_INVALID, the line at fault in its
        metadata) and AlreadyExistsError."""

        async def messages() -> AsyncIterator[R.ImportRecordingRequest]:
            for start in range(0, max(len(data), 1), UPLOAD_CHUNK):
                piece = data[start : start + UPLOAD_CHUNK]
                if start == 0:
                    yield R.ImportRecordingRequest(
                        recording_id=recording_id, request_id=request_id, data=piece
                    )
                else:
                    yield R.ImportRecordingRequest(data=piece)

        with _translated():
            return await self._stub.ImportRecording(messages(), **self._options())

    async def play(
        self,
        recording: str,
        *,
        timed: bool = False,
        speed: float = 0.0,
        max_gap: float = 0.0,
        after_position: int = 0,
    ) -> AsyncIterator[common_pb2.RuntimeEvent]:
        """The recording's events, at once or (`timed`) spaced as they happened, `speed`
        times faster, waiting at most `max_gap` seconds between two (0: no cap)."""
        request = R.PlayRecordingRequest(
            name=recording_name(recording),
            mode=R.PLAYBACK_MODE_TIMED if timed else R.PLAYBACK_MODE_FAST,
            speed=speed,
            after_position=after_position,
        )
        if max_gap:
            request.max_gap.CopyFrom(_duration(max_gap))
        with _translated():
            async for event in self._stub.PlayRecording(request, metadata=self._metadata):
                yield event

    async def step(
        self, recording: str, steps: AsyncIterator[R.StepRecordingRequest.Advance]
    ) -> AsyncIterator[R.StepRecordingResponse]:
        """Plays the recording one step per advance taken from `steps`; the first answer
        (before any step) is empty. Ends after the step that reaches the end."""

        async def requests() -> AsyncIterator[R.StepRecordingRequest]:
            yield R.StepRecordingRequest(
                start=R.PlayRecordingRequest(
                    name=recording_name(recording), mode=R.PLAYBACK_MODE_STEP
                )
            )
            async for advance in steps:
                yield R.StepRecordingRequest(advance=advance)

        with _translated():
            async for response in self._stub.StepRecording(requests(), metadata=self._metadata):
                yield response

    async def reexecute(
        self,
        recording: str,
        *,
        live: bool = False,
        model: str = "",
        system_prompt: str = "",
        policy: str | None = None,
        max_divergences: int = 0,
        timeout: float | None = None,
    ) -> R.ReexecutionDiff:
        """Runs the recording again, against its recorded outputs or (`live`) as a
        what-if job with the overrides given, and returns where it departed."""
        source = R.OUTPUT_SOURCE_LIVE if live else R.OUTPUT_SOURCE_RECORDED
        request = R.ReexecuteRecordingRequest(
            name=recording_name(recording),
            model_outputs=source,
            tool_outputs=source,
            model=model,
            system_prompt=system_prompt,
            max_divergences=max_divergences,
        )
        if policy is not None:
            request.policy.name = policy
        with _translated():
            return await self._stub.ReexecuteRecording(
                request, timeout=timeout or self._timeout, metadata=self._metadata
            )

    def _options(self) -> dict[str, Any]:
        return {"timeout": self._timeout, "metadata": self._metadata}


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error) from error


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration
