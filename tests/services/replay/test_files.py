"""Recording files, format version 1: the golden file pins the format; a truncated, altered
or malformed file is refused with the line at fault."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
from agentrt.common.v1.common_pb2 import ErrorReason, JobState, RuntimeEvent
from agentrt.jobs.v1.jobs_pb2 import JobSpec
from agentrt.replay.v1.replay_pb2 import Recording, RunMetadata

from services.kit.errors import MessageTooLarge
from services.replay import files
from services.replay.files import RecordingFileInvalid, read_file, write_lines
from tests.services.replay.events import run

GOLDEN = Path(__file__).parent / "golden" / "version-1.agentrt-recording.jsonl"
JOB_ID = "01hzy3x6m0h2tq1v5b1bq5r8s4"


def golden_recording() -> tuple[Recording, list[RuntimeEvent]]:
    events = run(JOB_ID)
    recording = Recording(
        name=f"recordings/{JOB_ID}",
        job=f"jobs/{JOB_ID}",
        tenant="acme",
        state=Recording.STATE_COMPLETE,
        origin=Recording.ORIGIN_RECORDED,
        metadata=RunMetadata(
            runtime_version="0.1.0",
            model_versions={"gpt-4o-mini": "gpt-4o-mini-2024-07-18"},
            spec=JobSpec(prompt="hello", model="gpt-4o-mini"),
            principal="alice",
        ),
        job_state=JobState.JOB_STATE_SUCCEEDED,
        event_count=len(events),
    )
    recording.start_time.CopyFrom(events[0].time)
    recording.end_time.CopyFrom(events[-1].time)
    recording.create_time.FromSeconds(1_900_000_100)
    return recording, events


def golden_bytes() -> bytes:
    recording, events = golden_recording()
    return b"".join(write_lines(recording, events))


def test_the_writer_makes_the_golden_file_of_version_1() -> None:
    assert golden_bytes() == GOLDEN.read_bytes()


def test_the_golden_file_reads_back_whole() -> None:
    recording, events = golden_recording()
    parsed = read_file(GOLDEN.read_bytes())
    assert parsed.recording == recording
    assert parsed.events == events


def test_the_trailer_counts_the_events_and_hashes_every_byte_before_it() -> None:
    data = GOLDEN.read_bytes()
    body, _, last = data.rstrip(b"\n").rpartition(b"\n")
    end = json.loads(last)["end"]
    assert end == {"eventCount": 4, "sha256": hashlib.sha256(body + b"\n").hexdigest()}
    header = json.loads(data.split(b"\n", 1)[0])
    assert (header["format"], header["version"]) == ("agentrt.recording", 1)


def test_a_gzip_file_reads_as_the_plain_one_and_unknown_fields_are_ignored() -> None:
    assert read_file(gzip.compress(GOLDEN.read_bytes())).events == run(JOB_ID)
    lines = GOLDEN.read_bytes().split(b"\n")
    header = json.loads(lines[0])
    header["recording"]["aFieldFromTheFuture"] = 1
    header["extra"] = True
    lines[0] = json.dumps(header).encode()
    assert len(read_file(_resealed(lines)).events) == 4


def test_chunks_are_at_most_the_size_asked_and_make_the_file() -> None:
    recording, events = golden_recording()
    plain = list(files.chunked(write_lines(recording, events), 100, compress=False))
    assert max(len(piece) for piece in plain) <= 100
    assert b"".join(plain) == GOLDEN.read_bytes()
    packed = b"".join(files.chunked(write_lines(recording, events), 100, compress=True))
    assert gzip.decompress(packed) == GOLDEN.read_bytes()


def _resealed(lines: list[bytes]) -> bytes:
    """The lines (the old trailer and the final empty piece dropped) with a new trailer."""
    body = b"".join(line + b"\n" for line in lines[:-2])
    count = len(lines) - 3
    end = {"end": {"eventCount": count, "sha256": hashlib.sha256(body).hexdigest()}}
    return body + json.dumps(end).encode() + b"\n"


def _refused(data: bytes) -> RecordingFileInvalid:
    with pytest.raises(RecordingFileInvalid) as caught:
        read_file(data)
    assert caught.value.reason == ErrorReason.ERROR_REASON_RECORDING_FILE_INVALID
    assert caught.value.code == "INVALID_ARGUMENT"
    return caught.value


def test_a_truncated_file_is_refused_at_the_line_where_the_trailer_should_be() -> None:
    lines = GOLDEN.read_bytes().split(b"\n")
    without_trailer = b"".join(line + b"\n" for line in lines[:-2])
    error = _refused(without_trailer)
    assert error.line == 6 and "truncated" in error.message
    assert error.metadata["line"] == "6"
    cut_mid_line = GOLDEN.read_bytes()[:-10]
    assert _refused(cut_mid_line).line == 6


def test_an_altered_event_is_refused_at_the_trailer() -> None:
    altered = GOLDEN.read_bytes().replace(b'"hello"', b'"HELLO"', 1)
    error = _refused(altered)
    assert error.line == 6 and "sha256" in error.message


def test_a_malformed_line_is_refused_with_its_number() -> None:
    lines = GOLDEN.read_bytes().split(b"\n")
    lines[2] = b"{not json"
    assert _refused(_resealed(lines)).line == 3
    lines[2] = b'{"event": {"type": "NO_SUCH_TYPE"}}'
    assert _refused(_resealed(lines)).line == 3
    lines[2] = b'{"something": 1}'
    assert _refused(_resealed(lines)).line == 3


def test_another_format_or_version_is_refused_at_line_1() -> None:
    lines = GOLDEN.read_bytes().split(b"\n")
    for change in ({"version": 2}, {"format": "other"}, {"version": True}):
        header = json.loads(lines[0])
        header.update(change)
        error = _refused(_resealed([json.dumps(header).encode(), *lines[1:]]))
        assert error.line == 1


def test_an_end_line_that_is_not_last_or_miscounts_is_refused() -> None:
    lines = GOLDEN.read_bytes().split(b"\n")
    data = b"".join(line + b"\n" for line in lines[:-1]) + lines[1] + b"\n"
    assert _refused(data).line == 6
    end = json.loads(lines[-2])
    end["end"]["eventCount"] = 3
    assert (
        _refused(
            b"".join(line + b"\n" for line in lines[:-2]) + json.dumps(end).encode() + b"\n"
        ).line
        == 6
    )


def test_empty_or_corrupt_gzip_data_is_refused() -> None:
    assert _refused(b"").line == 0
    assert "gzip" in _refused(files.GZIP_MAGIC + b"garbage").message
    assert "truncated" in _refused(gzip.compress(GOLDEN.read_bytes())[:-12]).message


def test_a_file_past_the_limit_is_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "MAX_FILE_BYTES", 100)
    with pytest.raises(MessageTooLarge):
        read_file(GOLDEN.read_bytes())
    with pytest.raises(MessageTooLarge):
        read_file(gzip.compress(GOLDEN.read_bytes()))
