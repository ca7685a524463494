"""Recording files, format version 1 (see replay.proto): writing them and reading them back.

Reading checks every line and the trailer before anything is stored, and names the line
at fault, so that a truncated or altered copy is refused whole.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from agentrt.common.v1.common_pb2 import ErrorReason, RuntimeEvent
from agentrt.replay.v1.replay_pb2 import Recording
from google.protobuf import json_format

from services.kit.errors import InvalidArgument, MessageTooLarge

FORMAT = "agentrt.recording"
VERSION = 1
GZIP_MAGIC = b"\x1f\x8b"
MAX_FILE_BYTES = 256 * 1024 * 1024
"""The largest file ImportRecording reads, uncompressed."""


class RecordingFileInvalid(InvalidArgument):
    """The bytes are not a valid recording file; `line` is the line at fault (0: none)."""

    def __init__(self, why: str, line: int = 0) -> None:
        where = f"line {line}: " if line else ""
        metadata = {"field": "data", **({"line": str(line)} if line else {})}
        super().__init__(
            f"not a valid recording file: {where}{why}",
            ErrorReason.ERROR_REASON_RECORDING_FILE_INVALID,
            metadata,
        )
        self.line = line


@dataclass(frozen=True)
class RecordingFile:
    """What a valid file holds."""

    recording: Recording
    """The recording without its events, as the file's first line has it."""
    events: list[RuntimeEvent]


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def write_lines(recording: Recording, events: Iterable[RuntimeEvent]) -> Iterator[bytes]:
    """The file's lines, in order, the trailer last. `recording` is written without its
    events; `events` are in recording order."""
    header = Recording()
    header.CopyFrom(recording)
    header.ClearField("events")
    digest = hashlib.sha256()
    first = _line({"format": FORMAT, "version": VERSION, "recording": _json(header)})
    digest.update(first)
    yield first
    count = 0
    for event in events:
        line = _line({"event": _json(event)})
        digest.update(line)
        count += 1
        yield line
    yield _line({"end": {"eventCount": count, "sha256": digest.hexdigest()}})


def _json(message: Any) -> dict[str, Any]:
    value: dict[str, Any] = json_format.MessageToDict(message)
    return value


def chunked(lines: Iterable[bytes], size: int, compress: bool) -> Iterator[bytes]:
    """The file as pieces of at most `size` bytes, gzip-compressed as a whole if asked."""
    compressor = zlib.compressobj(wbits=31) if compress else None
    pending = bytearray()
    for line in lines:
        pending += compressor.compress(line) if compressor else line
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if compressor is not None:
        pending += compressor.flush()
    while pending:
        yield bytes(pending[:size])
        del pending[:size]


def decompressed(data: bytes) -> bytes:
    """The file's bytes: `data` itself, or uncompressed when it starts with gzip's magic."""
    if not data.startswith(GZIP_MAGIC):
        if len(data) > MAX_FILE_BYTES:
            raise MessageTooLarge("data", len(data), MAX_FILE_BYTES)
        return data
    inflater = zlib.decompressobj(wbits=31)
    try:
        plain = inflater.decompress(data, MAX_FILE_BYTES + 1)
    except zlib.error as error:
        raise RecordingFileInvalid(f"gzip data is corrupt ({error})") from None
    if len(plain) > MAX_FILE_BYTES:
        raise MessageTooLarge("data (uncompressed)", len(plain), MAX_FILE_BYTES)
    if not inflater.eof:
        raise RecordingFileInvalid("gzip data is truncated")
    return plain


def read_file(data: bytes) -> RecordingFile:
    """The recording in a file (gzip or not); RecordingFileInvalid naming the line at fault."""
    text = decompressed(data)
    if not text:
        raise RecordingFileInvalid("the file is empty")
    lines = text.split(b"\n")
    if lines[-1] != b"":
        raise RecordingFileInvalid("the last line does not end with a newline", len(lines))
    lines.pop()
    header = _parse(lines[0], 1)
    recording = _header(header)
    digest = hashlib.sha256(lines[0] + b"\n")
    events: list[RuntimeEvent] = []
    for number, raw in enumerate(lines[1:], start=2):
        value = _parse(raw, number)
        if "end" in value and "event" not in value:
            if number != len(lines):
                raise RecordingFileInvalid("the end line is not the last line", number)
            _check_end(value["end"], len(events), digest.hexdigest(), number)
            return RecordingFile(recording, events)
        if not isinstance(value.get("event"), dict):
            raise RecordingFileInvalid('expected {"event": ...} or {"end": ...}', number)
        events.append(_event(value["event"], number))
        digest.update(raw + b"\n")
    raise RecordingFileInvalid("no end line: the file is truncated", len(lines) + 1)


def _parse(raw: bytes, number: int) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise RecordingFileInvalid("not a JSON object", number) from None
    if not isinstance(value, dict):
        raise RecordingFileInvalid("not a JSON object", number)
    return value


def _header(value: dict[str, Any]) -> Recording:
    if value.get("format") != FORMAT:
        raise RecordingFileInvalid(f'"format" is not "{FORMAT}"', 1)
    version = value.get("version")
    if version != VERSION or isinstance(version, bool):
        raise RecordingFileInvalid(
            f"version {version!r} is not supported (this reader reads version {VERSION})", 1
        )
    if not isinstance(value.get("recording"), dict):
        raise RecordingFileInvalid('"recording" is not an object', 1)
    recording = Recording()
    try:
        json_format.ParseDict(value["recording"], recording, ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise RecordingFileInvalid(f"bad recording ({error})", 1) from None
    return recording


def _event(value: dict[str, Any], number: int) -> RuntimeEvent:
    event = RuntimeEvent()
    try:
        json_format.ParseDict(value, event, ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise RecordingFileInvalid(f"bad event ({error})", number) from None
    if not event.id or not event.job:
        raise RecordingFileInvalid("an event needs an id and a job", number)
    return event


def _check_end(end: Any, count: int, sha256: str, number: int) -> None:
    if not isinstance(end, dict):
        raise RecordingFileInvalid('"end" is not an object', number)
    if end.get("eventCount") != count:
        raise RecordingFileInvalid(
            f"the end line counts {end.get('eventCount')!r} events, the file has {count}", number
        )
    if end.get("sha256") != sha256:
        raise RecordingFileInvalid("sha256 does not match: the file was altered", number)
