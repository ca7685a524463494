"""Every file in examples/ runs from the CLI (`agentrt run --workflow`) on the in-process
system, showing its tree live."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from agentrt.cli import build_parser
from agentrt.cli.console import CommandError, Console
from agentrt.client import Client
from agentrt.common.v1 import common_pb2

from services.dev import LocalSystem

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXPECTED = {
    "chain.yaml": "EDITED DRAFT about a release note for the new cache",
    "parallel.yaml": "DECISION after hearing: yes, it saves money | no, answers go stale",
    "map_reduce.yaml": "REPORT: summary of (disk full on db-1)",
    "planner_executor.yaml": "done: tag the release",
    "debate.yaml": "AGREE: spaces, with an editor that indents for you",
    "router.yaml": "Billing will refund the double charge: My invoice was charged twice",
    "graph.yaml": 'Translate the greeting: ["bonjour(hello)", "bonjour(goodbye)"] (approved)',
}


async def cli(client: Client, *argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    code: int = await args.client_command(args, client, Console(out, err))
    return code, out.getvalue(), err.getvalue()


def test_there_is_an_example_per_operator_and_a_graph() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("example", sorted(EXPECTED))
async def test_an_example_runs_from_the_cli_and_shows_its_tree(
    system: LocalSystem, example: str
) -> None:
    async with Client(system.endpoint, system.api_key) as client:
        code, out, err = await cli(client, "run", "--workflow", str(EXAMPLES / example))
        assert code == 0, err
        assert EXPECTED[example] in out
        root = re.search(r"^root  (jobs/\w+)  SUCCEEDED$", err, re.M)
        assert root, err
        assert re.search(r"^  \S+  jobs/\w+  SUCCEEDED$", err, re.M), "children, indented"
        tree = await client.tree(root.group(1))
    assert [job.depth for job in tree][:2] == [0, 1]
    assert all(job.state == common_pb2.JOB_STATE_SUCCEEDED for job in tree)


async def test_a_prompt_on_the_command_line_replaces_the_files(system: LocalSystem) -> None:
    async with Client(system.endpoint, system.api_key) as client:
        code, out, _ = await cli(
            client, "run", "hi", "--workflow", str(EXAMPLES / "chain.yaml"), "--json"
        )
    assert code == 0
    assert json.loads(out)["result"]["output"] == "EDITED DRAFT about hi"


async def test_a_file_without_a_workflow_is_refused(system: LocalSystem, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"prompt": "x"}')
    async with Client(system.endpoint, system.api_key) as client:
        with pytest.raises(CommandError, match="must hold a job spec with a `workflow`"):
            await cli(client, "run", "--workflow", str(bad))
