"""The Node.js client's contract tests (clients/node/test, Node's test runner) against the
services started as processes on PostgreSQL and Redis; on request of the tests, the gateway
is killed and started again while a stream is open."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import create_key
from tests.e2e.processes import Cluster
from tests.e2e.test_approvals import require_approval_of_calculations
from tools.protos import ROOT, copy_deps

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

NODE_CLIENT = ROOT / "clients" / "node"
RUN_SECONDS = 90.0


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
    node = shutil.which("node")
    assert node, "node is not on PATH"
    assert (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "clients/node has no node_modules: run `make install` (npm ci)"
    )
    await require_approval_of_calculations(processes)  # policy set "approvals"
    control = tmp_path / "control"
    control.mkdir()
    copy_deps(tmp_path / "protodeps")
    env = {
        **os.environ,
        "AGENTRT_ENDPOINT": processes.address("gateway"),
        "AGENTRT_API_KEY": create_key(processes, "acme", "node"),
        "AGENTRT_TEST_APPROVAL_POLICY": "approvals",
        "AGENTRT_TEST_CONTROL_DIR": str(control),
        "AGENTRT_PROTO_PATH": str(tmp_path / "protodeps"),
    }
    restarter = asyncio.create_task(restart_the_gateway_when_asked(processes, control))
    run = await asyncio.create_subprocess_exec(
        node, "--test", "--test-reporter=tap", "test/",
        cwd=NODE_CLIENT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(run.communicate(), RUN_SECONDS)
    finally:
        restarter.cancel()
        if run.returncode is None:
            run.kill()
            await run.wait()
    report = output.decode()
    assert run.returncode == 0, report
    # Every test ran (a skipped one would pass without checking anything).
    assert "# skipped 0" in report and "# fail 0" in report, report
    assert "# pass 7" in report, report
