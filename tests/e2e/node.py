"""Runs a folder of the Node.js client's tests (Node's test runner) against running services."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from tools.protos import ROOT, copy_deps

NODE_CLIENT = ROOT / "clients" / "node"
RUN_SECONDS = 90.0


async def run_node_tests(
    folder: str, env: Mapping[str, str], workdir: Path, module: str = "@grpc/grpc-js"
) -> str:
    """The TAP report of `node --test <folder>` in clients/node, which must pass; `module`
    is a package of node_modules the tests need (installed by `make install`)."""
    node = shutil.which("node")
    assert node, "node is not on PATH"
    assert (NODE_CLIENT / "node_modules" / module).is_dir(), (
        f"clients/node has no {module}: run `make install` (npm ci)"
    )
    copy_deps(workdir / "protodeps")
    environ = {**os.environ, **env, "AGENTRT_PROTO_PATH": str(workdir / "protodeps")}
    run = await asyncio.create_subprocess_exec(
        node, "--test", "--test-reporter=tap", f"{folder}/",
        cwd=NODE_CLIENT, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(run.communicate(), RUN_SECONDS)
    finally:
        if run.returncode is None:
            run.kill()
            await run.wait()
    report = output.decode()
    assert run.returncode == 0, report
    # Every test ran (a skipped one would pass without checking anything).
    assert "# skipped 0" in report and "# fail 0" in report, report
    return report
