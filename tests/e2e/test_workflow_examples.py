"""End to end: every workflow in examples/ run by the `agentrt` CLI against the services
as processes on PostgreSQL and Redis, each answering as it does in-process."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import create_key
from tests.e2e.processes import Cluster
from tests.workflows.test_cli_examples import EXAMPLES, EXPECTED

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(180)]


def test_every_example_runs_from_the_cli_on_processes(processes: Cluster) -> None:
    key = create_key(processes, "acme", "alice")
    endpoint = processes.address("gateway")
    for example, expected in sorted(EXPECTED.items()):
        run = processes.cli(
            "run",
            "--workflow",
            str(EXAMPLES / example),
            "--json",
            "--endpoint",
            endpoint,
            "--api-key",
            key,
            check=False,
        )
        assert run.returncode == 0, (example, run.stderr)
        job = json.loads(run.stdout)
        assert job["state"] == "JOB_STATE_SUCCEEDED", example
        assert expected in job["result"]["output"], example
        assert "  " in run.stderr and "SUCCEEDED" in run.stderr, "the tree, shown live"
