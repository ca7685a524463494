"""The Node.js plugin of clients/node as a subprocess, for the tests that register it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from tools.protos import ROOT, copy_deps

NODE_CLIENT = ROOT / "clients" / "node"
SERVER = NODE_CLIENT / "plugin" / "server.js"
NODE_TOOLS = ("slugify", "word_frequency")
START_SECONDS = 30.0


@contextlib.asynccontextmanager
async def node_plugin(work_dir: Path) -> AsyncIterator[str]:
    """Runs `node clients/node/plugin/server.js --port 0` and yields the endpoint it printed;
    SIGTERM and wait on exit. The google/api protos come from a fresh copy in `work_dir`."""
    node = shutil.which("node")
    assert node, "node is not on PATH"
    assert (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "clients/node has no node_modules: run `make install` (npm ci)"
    )
    copy_deps(work_dir / "protodeps")
    env = {**os.environ, "AGENTRT_PROTO_PATH": str(work_dir / "protodeps")}
    log_path = work_dir / "node-plugin.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            node, str(SERVER), "--port", "0", env=env, stdout=asyncio.subprocess.PIPE, stderr=log
        )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), START_SECONDS)
        match = re.fullmatch(rb"listening on (127\.0\.0\.1:\d+)\s*", line)
        assert match, f"the Node plugin printed {line!r}; its log: {log_path.read_text()}"
        yield match.group(1).decode()
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), START_SECONDS)
