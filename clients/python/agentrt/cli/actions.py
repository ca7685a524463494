"""The CLI's `agentrt actions list|approve|reject|resolve`: the human in the loop."""

from __future__ import annotations

import argparse
import json
from typing import Any

from google.protobuf import json_format

from agentrt.cli import render
from agentrt.cli.console import CommandError, Console
from agentrt.client import Client
from agentrt.jobs.v1 import jobs_pb2


async def list_actions(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt actions list <job>`: the job's actions, oldest first (pending ones only
    with --pending)."""
    states = [jobs_pb2.Action.State.STATE_PENDING] if args.pending else []
    actions: list[jobs_pb2.Action] = []
    token = ""
    while True:
        page, token = await client.list_actions(
            args.job, states=states, page_size=500, page_token=token
        )
        actions += page
        if not token:
            break
    if args.json:
        console.print(json.dumps([json_format.MessageToDict(a) for a in actions], indent=2))
    elif actions:
        console.print(render.action_table(actions))
    else:
        console.problem(f"{args.job} has no {'pending ' if args.pending else ''}actions")
    return 0


async def approve(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt actions approve <action or token> [--reason]`."""
    action = await client.approve(args.action, reason=args.reason)
    return _resolved(action, console)


async def reject(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt actions reject <action or token> [--reason]`: the model is told why."""
    action = await client.reject(args.action, reason=args.reason)
    return _resolved(action, console)


async def resolve(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt actions resolve <action or token> --output TEXT | --json OUTCOME`: answers
    a client tool call (or an input) with its output, or with any outcome object."""
    action = await client.resolve(args.action, outcome_of(args.output, args.json))
    return _resolved(action, console)


def outcome_of(output: str | None, outcome_json: str | None) -> dict[str, Any]:
    """{"output": output}, or the JSON object given as the whole outcome."""
    if outcome_json is None:
        return {"output": output}
    try:
        outcome = json.loads(outcome_json)
    except ValueError as error:
        raise CommandError(f"--json is not JSON: {error}") from None
    if not isinstance(outcome, dict):
        raise CommandError('--json must be a JSON object, e.g. {"error": "not allowed"}')
    return outcome


def _resolved(action: jobs_pb2.Action, console: Console) -> int:
    state = jobs_pb2.Action.State.Name(action.state).removeprefix("STATE_")
    console.print(f"{action.name} {state}")
    return 0
