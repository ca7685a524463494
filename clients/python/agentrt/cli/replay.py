"""`agentrt replay`: list, show, export, import, play, step through and re-run recordings."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from agentrt.cli import render
from agentrt.cli.console import CommandError, Console
from agentrt.client import Client
from agentrt.common.v1 import common_pb2
from agentrt.replay.v1 import replay_pb2

R = replay_pb2
Step = replay_pb2.StepRecordingRequest
STATES: dict[str, R.Recording.State.ValueType] = {
    "recording": R.Recording.STATE_RECORDING,
    "complete": R.Recording.STATE_COMPLETE,
    "incomplete": R.Recording.STATE_INCOMPLETE,
}
STEP_HELP = "Enter: next event; t: next turn; a NUMBER: that many events; q: quit"


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    connection: argparse.ArgumentParser,
) -> None:
    """Adds `agentrt replay ...` to the command line."""
    group = commands.add_parser("replay", help="recordings of runs: inspect, move, play, re-run")
    verbs = group.add_subparsers(dest="replay_command", required=True, metavar="ACTION")
    name_help = "recordings/<id>, <id>, or the job jobs/<id> it recorded"

    listing = verbs.add_parser("list", parents=[connection], help="the newest recordings")
    listing.add_argument("--tenant", default="", help="only this tenant's (admin key)")
    listing.add_argument("--job", default="", help="only the recording of this job")
    listing.add_argument(
        "--state", choices=sorted(STATES), action="append", default=[], help="(repeatable)"
    )
    listing.add_argument("--limit", type=int, default=20, help="recordings at most (20)")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(client_command=list_recordings)

    show = verbs.add_parser("show", parents=[connection], help="one recording and its events")
    show.add_argument("recording", metavar="RECORDING", help=name_help)
    show.add_argument("--json", action="store_true", help="print it as JSON, events included")
    show.set_defaults(client_command=show_recording)

    export = verbs.add_parser("export", parents=[connection], help="write a recording file")
    export.add_argument("recording", metavar="RECORDING", help=name_help)
    export.add_argument(
        "-o", "--output", type=Path, help="the file (default: <id>.agentrt-recording.jsonl[.gz])"
    )
    export.add_argument("--gzip", action="store_true", help="compress it")
    export.set_defaults(client_command=export_recording)

    load = verbs.add_parser("import", parents=[connection], help="read a recording file (admin)")
    load.add_argument("file", type=Path, metavar="FILE", help="a recording file, gzip or not")
    load.add_argument("--id", default="", help="the new recording's id (default: random)")
    load.add_argument("--request-id", default="", help="idempotency key")
    load.set_defaults(client_command=import_recording)

    play = verbs.add_parser("play", parents=[connection], help="print a recording's events")
    play.add_argument("recording", metavar="RECORDING", help=name_help)
    play.add_argument("--timed", action="store_true", help="spaced as they happened")
    play.add_argument("--speed", type=float, default=1.0, help="with --timed: times faster (1)")
    play.add_argument(
        "--max-gap", type=float, default=0.0, help="with --timed: longest wait in seconds"
    )
    play.add_argument("--after", type=int, default=0, help="start after this position")
    play.add_argument("--json", action="store_true", help="print each event as a JSON line")
    play.set_defaults(client_command=play_recording)

    step = verbs.add_parser("step", parents=[connection], help="play a recording step by step")
    step.add_argument("recording", metavar="RECORDING", help=name_help)
    step.set_defaults(client_command=step_recording)

    rerun = verbs.add_parser(
        "rerun", parents=[connection], help="re-execute a recording and show the diff (admin)"
    )
    rerun.add_argument("recording", metavar="RECORDING", help=name_help)
    rerun.add_argument(
        "--live", action="store_true", help="call models and tools for real, as a what-if job"
    )
    rerun.add_argument("--model", default="", help="with --live: the model to use instead")
    rerun.add_argument("--system", default="", help="with --live: the system prompt instead")
    rerun.add_argument("--policy", default=None, help="the policy set to evaluate instead")
    rerun.add_argument("--max-divergences", type=int, default=0, help="at most this many (10)")
    rerun.add_argument("--timeout", type=float, default=300.0, help="seconds (300)")
    rerun.add_argument("--json", action="store_true", help="print the diff as JSON")
    rerun.set_defaults(client_command=rerun_recording)


async def list_recordings(args: argparse.Namespace, client: Client, console: Console) -> int:
    found = await client.recordings.list(
        tenant=args.tenant,
        job=_job_name(args.job) if args.job else "",
        states=[STATES[state] for state in args.state],
        limit=args.limit,
    )
    if args.json:
        console.print("[" + ",\n".join(render.as_json(found_one) for found_one in found) + "]")
    elif found:
        console.print(recording_table(found))
    else:
        console.progress("no recordings")
    return 0


async def show_recording(args: argparse.Namespace, client: Client, console: Console) -> int:
    recording = await client.recordings.get(args.recording, events=args.json)
    if args.json:
        console.print(render.as_json(recording))
        return 0
    console.print(recording_details(recording))
    console.print("")
    async for line in _event_lines(client.recordings.play(recording.name)):
        console.print(line)
    return 0


async def export_recording(args: argparse.Namespace, client: Client, console: Console) -> int:
    recording = await client.recordings.get(args.recording)
    suffix = ".agentrt-recording.jsonl" + (".gz" if args.gzip else "")
    path: Path = args.output or Path(recording.name.removeprefix("recordings/") + suffix)
    size = 0
    with path.open("wb") as file:
        async for piece in client.recordings.export(recording.name, gzip=args.gzip):
            file.write(piece)
            size += len(piece)
    console.progress(f"{recording.name}: {recording.event_count} events, {size:,} bytes")
    console.print(str(path))
    return 0


async def import_recording(args: argparse.Namespace, client: Client, console: Console) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as error:
        raise CommandError(f"cannot read {args.file}: {error.strerror}") from None
    recording = await client.recordings.import_file(
        data, recording_id=args.id, request_id=args.request_id
    )
    console.print(recording_details(recording))
    return 0


async def play_recording(args: argparse.Namespace, client: Client, console: Console) -> int:
    if args.speed <= 0:
        raise CommandError("--speed must be greater than 0")
    events = client.recordings.play(
        args.recording,
        timed=args.timed,
        speed=args.speed,
        max_gap=args.max_gap,
        after_position=args.after,
    )
    if args.json:
        async for event in events:
            console.print(render.as_json_line(event))
        return 0
    async for line in _event_lines(events, args.after):
        console.print(line)
    return 0


async def step_recording(args: argparse.Namespace, client: Client, console: Console) -> int:
    console.progress(STEP_HELP)

    async def advances() -> AsyncIterator[Step.Advance]:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            answer = line.strip().lower()
            if not line or answer in ("q", "quit"):
                return
            if answer == "t":
                yield Step.Advance(event_type=common_pb2.EVENT_TYPE_TURN_COMPLETED)
            elif answer.isdigit() and int(answer) > 0:
                yield Step.Advance(events=int(answer))
            elif not answer:
                yield Step.Advance(events=1)
            else:
                console.problem(STEP_HELP)

    async for step in client.recordings.step(args.recording, advances()):
        first = step.position - len(step.events) + 1
        for offset, event in enumerate(step.events):
            console.print(f"{first + offset:>5}  {_event_text(event)}")
        if step.done:
            console.progress("end of the recording")
        elif not step.events:
            console.progress(f"at position {step.position}")
    return 0


async def rerun_recording(args: argparse.Namespace, client: Client, console: Console) -> int:
    if (args.model or args.system) and not args.live:
        raise CommandError("--model and --system need --live: recorded outputs answer otherwise")
    diff = await client.recordings.reexecute(
        args.recording,
        live=args.live,
        model=args.model,
        system_prompt=args.system,
        policy=args.policy,
        max_divergences=args.max_divergences,
        timeout=args.timeout,
    )
    if args.json:
        console.print(render.as_json(diff))
    else:
        console.print(diff_view(diff))
    return 0 if diff.identical else 1


def recording_table(recordings: Iterable[R.Recording]) -> str:
    """The recordings as an aligned table, one line each."""
    header = ("RECORDING", "TENANT", "STATE", "ORIGIN", "JOB STATE", "EVENTS", "STARTED")
    rows = [header] + [
        (
            recording.name.removeprefix("recordings/"),
            recording.tenant,
            _state(recording.state),
            _origin(recording.origin),
            render.state_name(recording.job_state),
            str(recording.event_count),
            render.local_time(recording.start_time),
        )
        for recording in recordings
    ]
    return render.table(rows, right={5})


def recording_details(recording: R.Recording) -> str:
    """The recording as "field: value" lines, with what the run ran on."""
    metadata = recording.metadata
    fields = [
        ("recording", recording.name),
        ("job", recording.job),
        ("tenant", recording.tenant),
        ("state", f"{_state(recording.state)} ({_origin(recording.origin)})"),
        ("job state", render.state_name(recording.job_state)),
        ("events", str(recording.event_count)),
        ("started", render.local_time(recording.start_time)),
        ("ended", render.local_time(recording.end_time)),
        ("model", metadata.spec.model or "-"),
        ("runtime", metadata.runtime_version or "-"),
    ]
    fields += [(f"model {asked}", version) for asked, version in metadata.model_versions.items()]
    fields += [(f"plugin {name}", version) for name, version in metadata.plugin_versions.items()]
    width = max(len(label) for label, _ in fields) + 1
    return "\n".join(f"{label + ':':<{width}} {value}" for label, value in fields)


def diff_view(diff: R.ReexecutionDiff) -> str:
    """The diff as a reader wants it: the verdict, then each divergence as a - / + pair."""
    source = "live" if diff.model_outputs == R.OUTPUT_SOURCE_LIVE else "recorded outputs"
    lines = [
        f"{diff.recording} re-executed against {source}: "
        + ("identical" if diff.identical else f"{len(diff.divergences)} divergence(s)")
        + f" in {diff.events_compared} recorded event(s) compared",
        f"job state: {render.state_name(diff.job_state)}"
        + (f"   what-if job: {diff.job}" if diff.job else ""),
    ]
    if diff.HasField("usage") and diff.usage.model_calls:
        lines.append(
            f"usage: {render.usage_text(diff.usage)}, {diff.usage.model_calls} model call(s)"
            " (charged to no budget)"
        )
    for found in diff.divergences:
        kind = R.Divergence.Kind.Name(found.kind).removeprefix("KIND_").lower()
        job = found.recorded.job or found.reexecuted.job
        lines += ["", f"@ position {found.position} ({job}): {kind}: {found.description}"]
        if found.field:
            lines.append(f"  field: {found.field}")
        if found.HasField("recorded"):
            lines.append(f"- {_event_text(found.recorded)}")
        if found.HasField("reexecuted"):
            lines.append(f"+ {_event_text(found.reexecuted)}")
    if diff.truncated:
        lines += ["", "(more divergences were found; raise --max-divergences to see them)"]
    if diff.output:
        lines += ["", diff.output]
    return "\n".join(lines)


async def _event_lines(
    events: AsyncIterator[common_pb2.RuntimeEvent], after: int = 0
) -> AsyncIterator[str]:
    position = after
    async for event in events:
        position += 1
        yield f"{position:>5}  {_event_text(event)}"


def _event_text(event: common_pb2.RuntimeEvent) -> str:
    """A line for an event: when, which job, what happened, and the text that matters."""
    job = event.job.removeprefix("jobs/")
    line = f"{render.local_time(event.time)}  {job[-8:] or '-':>8}  {render.event_line(event)}"
    if event.type == common_pb2.EVENT_TYPE_TOOL_CALLED:
        line += f": {_short(event.tool_called.output)}"
    elif event.type == common_pb2.EVENT_TYPE_TURN_COMPLETED:
        message = event.turn_completed.message
        calls = ", ".join(call.name for call in message.tool_calls)
        line += f": {_short(message.content)}" if message.content else ""
        line += f" calls {calls}" if calls else ""
    return line


def _short(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _state(state: R.Recording.State.ValueType) -> str:
    return R.Recording.State.Name(state).removeprefix("STATE_")


def _origin(origin: R.Recording.Origin.ValueType) -> str:
    return R.Recording.Origin.Name(origin).removeprefix("ORIGIN_").lower()


def _job_name(job: str) -> str:
    return job if job.startswith("jobs/") else f"jobs/{job}"
