"""`agentrt replay ...` against the system in-process (as under `agentrt dev`)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agentrt import Client, InvalidArgumentError
from agentrt.cli import build_parser
from agentrt.cli.console import CommandError, Console
from agentrt.policy.v1 import policy_pb2

from services.dev import LocalSystem
from tests.services.replay.test_replay_system import complete_recording, run_with_approval


async def cli(client: Client, *argv: str) -> tuple[int, str, str]:
    """Runs one `agentrt replay` command with `client`: its exit code, stdout, stderr."""
    args = build_parser().parse_args(["replay", *argv])
    out, err = io.StringIO(), io.StringIO()
    code: int = await args.client_command(args, client, Console(out, err))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
async def client(system: LocalSystem) -> AsyncIterator[Client]:
    async with Client(system.endpoint, system.api_key) as opened:
        yield opened


async def test_list_show_play_export_import_and_rerun(client: Client, tmp_path: Path) -> None:
    job = await run_with_approval(client)
    recording = await complete_recording(client, job.name)
    recording_id = recording.name.removeprefix("recordings/")

    code, out, _ = await cli(client, "list")
    assert code == 0 and recording_id in out and "COMPLETE" in out and "recorded" in out
    code, out, _ = await cli(client, "list", "--state", "recording")
    assert recording_id not in out

    code, out, _ = await cli(client, "show", job.name)
    assert code == 0 and "events:" in out and "action.required" in out
    assert "tool.called (calculator ok): 42" in out
    code, out, _ = await cli(client, "show", recording_id, "--json")
    assert len(json.loads(out)["events"]) == recording.event_count

    code, out, _ = await cli(client, "play", recording_id, "--timed", "--speed", "1000")
    assert code == 0 and len(out.splitlines()) == recording.event_count
    assert out.splitlines()[0].lstrip().startswith("1  ")
    code, out, _ = await cli(client, "play", recording_id, "--after", "3", "--json")
    sequences = [json.loads(line)["sequence"] for line in out.splitlines()]
    assert sequences == [str(n) for n in range(4, recording.event_count + 1)]

    path = tmp_path / "run.agentrt-recording.jsonl.gz"
    code, out, err = await cli(client, "export", recording_id, "--gzip", "-o", str(path))
    assert code == 0 and out.strip() == str(path) and f"{recording.event_count} events" in err
    code, out, _ = await cli(client, "import", str(path), "--id", "copied")
    assert code == 0 and "recordings/copied" in out and "(imported)" in out
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(InvalidArgumentError, match="not a valid recording file"):
        await cli(client, "import", str(path), "--id", "broken")

    code, out, _ = await cli(client, "rerun", recording_id)
    assert code == 0 and "identical" in out
    current = await client.get_policy_set("approvals")
    current.rules[0].tool.verdict = policy_pb2.VERDICT_DENY
    await client.update_policy_set(current, ["rules"])
    code, out, _ = await cli(client, "rerun", recording_id)
    assert code == 1 and "1 divergence(s)" in out
    assert "- " in out and "+ " in out and "denied by policy" in out

    code, out, _ = await cli(client, "rerun", recording_id, "--live", "--model", "local-slow")
    assert "what-if job: jobs/" in out and "charged to no budget" in out


async def test_rerun_refuses_a_model_without_live(client: Client) -> None:
    with pytest.raises(CommandError, match="--live"):
        await cli(client, "rerun", "x", "--model", "gpt-4o")


async def test_step_reads_the_steps_from_stdin(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await client.run("hello", model="local")
    await complete_recording(client, job.name)
    monkeypatch.setattr("sys.stdin", io.StringIO("\nt\n9\n"))
    code, out, err = await asyncio.wait_for(cli(client, "step", job.name), 10)
    lines = out.splitlines()
    assert code == 0 and lines[0].lstrip().startswith("1  ") and "job.created" in lines[0]
    assert "job.turn.completed" in lines[2] and "job.succeeded" in lines[-1]
    assert "end of the recording" in err
