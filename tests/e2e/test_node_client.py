"""The Node.js client's contract tests (clients/node/test, Node's test runner) against the
services started as processes on PostgreSQL and Redis; on request of the tests, the gateway
is killed and started again while a stream is open."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.e2e.conftest import create_key
from tests.e2e.node import run_node_tests
from tests.e2e.processes import Cluster
from tests.e2e.test_approvals import require_approval_of_calculations

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def restart_the_gateway_when_asked(processes: Cluster, control: Path) -> None:
    # The Node test asks by creating a file, the one channel it has to this process.
    while not (control / "restart-gateway").exists():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await asyncio.to_thread(processes.kill, "gateway")
    await asyncio.to_thread(processes.start, "gateway")
    (control / "gateway-restarted").touch()


async def test_the_node_client_passes_its_contract_tests(
    processes: Cluster, tmp_path: Path
) -> None:
    await require_approval_of_calculations(processes.address("policy"))  # policy set "approvals"
    control = tmp_path / "control"
    control.mkdir()
    env = {
        "AGENTRT_ENDPOINT": processes.address("gateway"),
        "AGENTRT_API_KEY": create_key(processes, "acme", "node"),
        "AGENTRT_TEST_APPROVAL_POLICY": "approvals",
        "AGENTRT_TEST_CONTROL_DIR": str(control),
    }
    restarter = asyncio.create_task(restart_the_gateway_when_asked(processes, control))
    try:
        report = await run_node_tests("test", env, tmp_path)
    finally:
        restarter.cancel()
    assert "# pass 11" in report, report
