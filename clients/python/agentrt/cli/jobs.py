"""The CLI's client commands: `agentrt run` and `agentrt jobs list|get|tree|cancel|watch`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid

from google.protobuf import json_format

from agentrt.cli import render, workflows
from agentrt.cli.console import CommandError, Console
from agentrt.client import TERMINAL_STATES, Client, job_spec
from agentrt.common.v1 import common_pb2
from agentrt.errors import FailedPreconditionError
from agentrt.jobs.v1 import jobs_pb2

EXIT_JOB_UNSUCCESSFUL = 1
"""The job ended FAILED, CANCELLED or TIMED_OUT."""
EXIT_INTERRUPTED = 130
"""Ctrl-C, as shells report a SIGINT."""


async def run_job(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt run`: starts a job, shows its events live, then its answer; Ctrl-C cancels it."""
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.workflow:
        args.prompt = prompt
        root, finished = await workflows.run_workflow(args, client, console)
        if not finished:
            return await _cancel_interrupted(client, root.name, console)
        return report(root, "", console, as_json=args.json)
    if not prompt:
        raise CommandError("a prompt is required (or a --workflow file)")
    spec = job_spec(
        prompt,
        model=args.model,
        system_prompt=args.system,
        max_turns=args.max_turns,
        session=args.session,
        timeout=args.timeout,
    )
    # Built-in or plugin tools, found by name; a policy set other than the default.
    spec.tools.extend(common_pb2.ToolSpec(name=name) for name in args.tool)
    if args.policy:
        spec.policy.name = args.policy.removeprefix("policySets/")
    if args.temperature is not None:
        spec.params.temperature = args.temperature
    if args.cache is not None:
        spec.cache.enabled = True
        spec.cache.ttl.FromMilliseconds(int(args.cache * 1000))
        spec.cache.allow_sampled = args.cache_sampled
    # The request id is fixed here, so that an execution the CLI retries is recognised
    # as the same one.
    job = await client.execute_spec(spec, request_id=uuid.uuid4().hex)
    console.progress(f"{job.name} {render.state_name(job.state).lower()}")
    try:
        final, streamed = await follow_job(client, job.name, console, live_text=not args.json)
    except asyncio.CancelledError:
        return await _cancel_interrupted(client, job.name, console)
    return report(final, streamed, console, as_json=args.json)


async def watch_job(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt jobs watch`: shows a job's events until it ends (as JSON lines with --json)."""
    if args.json:
        async for event in client.events(args.job):
            console.print(render.as_json_line(event))
        return exit_code(await client.get(args.job))
    final, streamed = await follow_job(client, args.job, console, live_text=True)
    return report(final, streamed, console, as_json=False)


async def list_jobs(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt jobs list`: the newest jobs, as a table or a JSON array."""
    jobs: list[jobs_pb2.Job] = []
    token = ""
    while len(jobs) < args.limit:
        page, token = await client.list(
            states=args.state,
            session=args.session,
            page_size=min(args.limit - len(jobs), 500),
            page_token=token,
            parent=args.parent or "",
            root=args.root or "",
        )
        jobs += page
        if not token:
            break
    if args.json:
        console.print(json.dumps([json_format.MessageToDict(job) for job in jobs], indent=2))
    elif jobs:
        console.print(render.job_table(jobs))
    else:
        console.problem("no jobs found")
    return 0


async def get_job(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt jobs get`: one job, in detail."""
    job = await client.get(args.job)
    console.print(render.as_json(job) if args.json else render.job_details(job))
    return 0


async def job_tree(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt jobs tree`: a job and its descendants, indented by depth, with each one's
    node, state and usage (a JSON array with --json)."""
    jobs = await client.tree(args.job)
    if args.json:
        console.print(json.dumps([json_format.MessageToDict(job) for job in jobs], indent=2))
    else:
        console.print(render.job_tree(jobs))
    return 0


async def cancel_job(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt jobs cancel`: cancels a job that has not finished."""
    job = await client.cancel(args.job, reason=args.reason)
    console.print(f"{job.name} {render.state_name(job.state)}")
    return 0


async def follow_job(
    client: Client, name: str, console: Console, *, live_text: bool
) -> tuple[jobs_pb2.Job, str]:
    """Shows a job's events until it ends and returns the finished job, with the text
    streamed for the last turn that streamed any (to tell whether the answer was shown)."""
    turn, streamed = 0, ""
    async for event in client.events(name):
        if event.type != common_pb2.EVENT_TYPE_OUTPUT_DELTA:
            console.progress(render.event_line(event))
        elif live_text:
            if event.output_delta.turn != turn:
                turn, streamed = event.output_delta.turn, ""
            streamed += event.output_delta.text
            console.stream(event.output_delta.text)
    return await client.get(name), streamed


def report(job: jobs_pb2.Job, streamed: str, console: Console, *, as_json: bool) -> int:
    """Shows how the job ended (the answer unless it was streamed whole) and returns the
    exit code."""
    if as_json:
        console.print(render.as_json(job))
    elif job.state == common_pb2.JOB_STATE_SUCCEEDED:
        if streamed.strip() != job.result.output.strip():
            console.print(job.result.output)
        console.end_line()
    elif job.state in TERMINAL_STATES:
        console.problem(f"{job.name} {render.state_name(job.state)}: {_why(job)}")
    return exit_code(job)


def exit_code(job: jobs_pb2.Job) -> int:
    """0 unless the job ended FAILED, CANCELLED or TIMED_OUT."""
    failed = job.state in TERMINAL_STATES and job.state != common_pb2.JOB_STATE_SUCCEEDED
    return EXIT_JOB_UNSUCCESSFUL if failed else 0


def _why(job: jobs_pb2.Job) -> str:
    return render.failure_text(job.failure) if job.HasField("failure") else "no reason given"


async def _cancel_interrupted(client: Client, name: str, console: Console) -> int:
    console.end_line()
    try:
        await client.cancel(name, reason="interrupted in the agentrt CLI")
    except FailedPreconditionError:
        console.problem(f"{name} had already finished")
    else:
        console.problem(f"{name} cancelled")
    return EXIT_INTERRUPTED
