"""`agentrt events follow` and Client.follow_events against the whole system in-process."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from agentrt import Client
from agentrt.cli import build_parser, events
from agentrt.cli.console import Console
from agentrt.common.v1.common_pb2 import EventType

from services.dev import LocalSystem


def test_follow_parses_types_labels_and_the_cursor() -> None:
    args = build_parser().parse_args(
        [
            *("events", "follow", "--type", "job.succeeded", "--type", "tool.called"),
            *("--label", "team=a", "--session", "s", "--all-tenants", "--after", "5-0"),
        ]
    )
    assert args.client_command is events.follow_events
    assert args.type == [EventType.EVENT_TYPE_JOB_SUCCEEDED, EventType.EVENT_TYPE_TOOL_CALLED]
    assert (args.label, args.session, args.all_tenants, args.after) == (
        [("team", "a")],
        "s",
        True,
        "5-0",
    )


@pytest.mark.parametrize("argv", [["--type", "job.done"], ["--label", "team"]])
def test_follow_refuses_an_unknown_type_or_a_label_without_value(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["events", "follow", *argv])
    assert exited.value.code == 2
    assert "events follow" in capsys.readouterr().err


async def test_follow_prints_the_tenants_events_with_their_cursors(system: LocalSystem) -> None:
    out = io.StringIO()
    async with Client(system.endpoint, system.api_key) as client:
        first = await client.run("one", labels={"team": "a"})
        second = await client.run("two", labels={"team": "b"})
        args = build_parser().parse_args(
            [
                *("events", "follow", "--json", "--after", "0", "--label", "team=a"),
                *("--type", "job.created", "--type", "job.succeeded"),
            ]
        )
        follow = asyncio.create_task(
            events.follow_events(args, client, Console(out, io.StringIO()))
        )
        async with asyncio.timeout(10):
            while out.getvalue().count("\n") < 2:  # noqa: ASYNC110 (a StringIO signals nothing)
                await asyncio.sleep(0.02)
        follow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follow
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["event"]["job"], line["event"]["type"]) for line in lines] == [
        (first.name, "EVENT_TYPE_JOB_CREATED"),
        (first.name, "EVENT_TYPE_JOB_SUCCEEDED"),
    ]
    assert all(line["cursor"] for line in lines)
    assert second.name not in out.getvalue()


async def test_follow_events_starts_after_the_cursor_given(system: LocalSystem) -> None:
    async with Client(system.endpoint, system.api_key) as client:
        job = await client.run("hello")
        seen = []
        async for response in client.follow_events(after_cursor="0"):
            seen.append(response)
            if response.event.type == EventType.EVENT_TYPE_JOB_SUCCEEDED:
                break
        resumed = []
        async for response in client.follow_events(after_cursor=seen[0].cursor):
            resumed.append(response.event.id)
            if len(resumed) == len(seen) - 1:
                break
    assert {response.event.job for response in seen} == {job.name}
    assert resumed == [response.event.id for response in seen[1:]]


async def test_follow_shows_the_usage_each_turn_recorded(system: LocalSystem) -> None:
    out = io.StringIO()
    async with Client(system.endpoint, system.api_key) as client:
        job = await client.run("hello")
        args = build_parser().parse_args(
            ["events", "follow", "--after", "0", "--type", "usage.recorded"]
        )
        follow = asyncio.create_task(
            events.follow_events(args, client, Console(out, io.StringIO()))
        )
        async with asyncio.timeout(10):
            while "usage.recorded" not in out.getvalue():  # noqa: ASYNC110 (a StringIO signals nothing)
                await asyncio.sleep(0.02)
        follow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follow
    [line] = out.getvalue().splitlines()
    assert job.name.removeprefix("jobs/") in line
    assert f"usage.recorded (turn 1, local, {job.usage.total_tokens:,} tokens" in line
