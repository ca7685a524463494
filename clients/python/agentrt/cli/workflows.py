"""The CLI's `agentrt run --workflow FILE`: a workflow run, its tree shown live.

A workflow file is a JobSpec in YAML or JSON (protobuf JSON names), e.g.

    prompt: Compare tabs and spaces
    model: local
    agents:
      pro: {system_prompt: "Argue for tabs."}
      con: {system_prompt: "Argue for spaces."}
    workflow:
      parallel: {agents: [pro, con]}
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path

from google.protobuf import json_format

from agentrt.cli import render
from agentrt.cli.console import CommandError, Console
from agentrt.cli.manage import load_document
from agentrt.client import TERMINAL_STATES, Client
from agentrt.jobs.v1 import jobs_pb2

TREE_POLL_SECONDS = 0.25
"""How often `run --workflow` looks at the tree while it runs."""


def load_workflow_spec(path: Path) -> jobs_pb2.JobSpec:
    """The JobSpec in a workflow file; CommandError for one that cannot be read."""
    try:
        text = path.read_text()
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror}") from None
    data = load_document(path, text)
    if not isinstance(data, dict) or "workflow" not in data:
        raise CommandError(f"{path} must hold a job spec with a `workflow`")
    spec = jobs_pb2.JobSpec()
    try:
        json_format.ParseDict(data, spec)
    except json_format.ParseError as error:
        raise CommandError(f"{path} is not a job spec: {error}") from None
    return spec


async def run_workflow(
    args: argparse.Namespace, client: Client, console: Console
) -> tuple[jobs_pb2.Job, bool]:
    """Starts the workflow of `--workflow` and shows its tree live, indented by depth, until
    the root ends; returns the finished root, and False when interrupted (Ctrl-C)."""
    spec = load_workflow_spec(Path(args.workflow))
    if args.prompt:
        spec.prompt = args.prompt
    if args.model:
        spec.model = args.model
    if not spec.prompt:
        raise CommandError("the workflow needs a prompt: give it as an argument or in the file")
    root = await client.execute_spec(spec, request_id=uuid.uuid4().hex)
    shown: dict[str, int] = {}
    try:
        while True:
            tree = await client.tree(root.name)
            root = tree[0]
            for job in tree:
                if shown.get(job.name) != job.state:
                    shown[job.name] = job.state
                    console.progress(tree_line(job))
            if root.state in TERMINAL_STATES:
                return root, True
            await asyncio.sleep(TREE_POLL_SECONDS)
    except asyncio.CancelledError:
        return root, False


def tree_line(job: jobs_pb2.Job) -> str:
    """`  map[2]  jobs/…  RUNNING`, indented by the job's depth."""
    node = job.spec.node or "root"
    return f"{'  ' * job.depth}{node}  {job.name}  {render.state_name(job.state)}"
