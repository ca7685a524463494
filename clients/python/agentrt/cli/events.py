"""The CLI's `agentrt events follow`: every job's events of the tenant, as they happen."""

from __future__ import annotations

import argparse

from agentrt.cli import render
from agentrt.cli.console import Console
from agentrt.client import Client
from agentrt.common.v1 import common_pb2

_TYPES_BY_NAME = {name: kind for kind, name in render.EVENT_TYPES.items()}


def add_event_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    connection: argparse.ArgumentParser,
) -> None:
    group = commands.add_parser("events", help="follow the events of every job")
    verbs = group.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    follow = verbs.add_parser(
        "follow", parents=[connection], help="the tenant's jobs' events, until Ctrl-C"
    )
    follow.add_argument(
        "--type",
        type=_event_type,
        action="append",
        default=[],
        help="only this type, e.g. job.succeeded (repeatable)",
    )
    follow.add_argument(
        "--label", type=_label, action="append", default=[], help="only jobs with KEY=VALUE"
    )
    follow.add_argument("--session", default="", help="only jobs of this session")
    follow.add_argument(
        "--all-tenants", action="store_true", help="every tenant's events (admin key)"
    )
    follow.add_argument("--after", default="", help="resume after this cursor (printed first)")
    follow.add_argument("--json", action="store_true", help="print each event as a JSON line")
    follow.set_defaults(client_command=follow_events)


async def follow_events(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt events follow`: one line per event, its cursor first, so that `--after`
    can resume where a previous run stopped."""
    async for response in client.follow_events(
        types=args.type,
        labels=dict(args.label),
        session=args.session,
        all_tenants=args.all_tenants,
        after_cursor=args.after,
    ):
        if args.json:
            console.print(render.as_json_line(response))
        else:
            event = response.event
            job = render.job_id(event.job)
            console.print(f"{response.cursor}  {job}  {render.event_line(event)}")
    return 0


def _event_type(text: str) -> common_pb2.EventType.ValueType:
    kind = _TYPES_BY_NAME.get(text.strip().lower())
    if kind is None:
        raise argparse.ArgumentTypeError(
            f"unknown event type {text!r}; one of {', '.join(sorted(_TYPES_BY_NAME))}"
        )
    return kind


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value
