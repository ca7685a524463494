"""The CLI's model API commands: `agentrt models list` and `agentrt models call`."""

from __future__ import annotations

import argparse
import json
import sys

from google.protobuf import json_format

from agentrt.cli.console import Console
from agentrt.cli.render import table
from agentrt.client import Client


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    connection: argparse.ArgumentParser,
) -> None:
    models = commands.add_parser(
        "models", help="list models and call one directly (no job)"
    ).add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = models.add_parser("list", parents=[connection], help="the models you may call")
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    listing.set_defaults(client_command=list_models)
    call = models.add_parser(
        "call", parents=[connection], help="one model call, under your policy and budgets"
    )
    call.add_argument("prompt", help="what to ask; - reads it from standard input")
    call.add_argument("--model", default="local", help="model id (default: local)")
    call.add_argument("--max-tokens", type=int, default=0, help="output tokens at most")
    call.add_argument("--request-id", default="", help="an idempotency key of your choice")
    call.add_argument("--policy", default="", help="the policy set (default: `default`)")
    call.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    call.set_defaults(client_command=call_model)


async def list_models(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt models list`."""
    models = await client.list_models()
    if args.json:
        console.print(json.dumps([json_format.MessageToDict(m) for m in models], indent=2))
        return 0
    rows = [("MODEL", "CONTEXT", "TOOLS", "STREAMING")] + [
        (
            model.name.removeprefix("models/"),
            str(model.context_window or "-"),
            "yes" if model.supports_tools else "no",
            "yes" if model.supports_streaming else "no",
        )
        for model in models
    ]
    console.print(table(rows, right={1}))
    return 0


async def call_model(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt models call PROMPT`: streams the answer, then its usage and cost."""
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.json:
        answer = await client.complete(
            prompt,
            model=args.model,
            max_output_tokens=args.max_tokens,
            request_id=args.request_id,
            policy=args.policy,
        )
        console.print(json.dumps(json_format.MessageToDict(answer), indent=2))
        return 0
    async for chunk in client.stream_complete(
        prompt,
        model=args.model,
        max_output_tokens=args.max_tokens,
        request_id=args.request_id,
        policy=args.policy,
    ):
        console.stream(chunk.text_delta)
        for call in chunk.tool_calls:
            console.stream(f"\n[tool call] {call.name} {call.arguments}")
        if chunk.HasField("usage"):
            console.end_line()
            usage = chunk.usage
            cost = f", ${usage.cost}" if usage.cost else ""
            console.progress(
                f"{chunk.model}: {usage.input_tokens} in + {usage.output_tokens} out tokens{cost}"
            )
    return 0
