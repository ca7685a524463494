"""End to end: `agentrt dev` as a process, driven by the CLI with no flags, as in the README."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.processes import AGENTRT, free_port, wait_serving

pytestmark = pytest.mark.e2e


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`agentrt dev` on a data directory of its own; yields the environment of a shell
    that has AGENTRT_DATA_DIR pointing at it and nothing else agentrt-specific."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRT_")}
    env["AGENTRT_DATA_DIR"] = str(tmp_path / "data")
    port = free_port()
    log = (tmp_path / "dev.log").open("wb")
    process = subprocess.Popen(
        [AGENTRT, "dev", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_serving(f"127.0.0.1:{port}", "agentrt.gateway.v1.RuntimeService", 30, process)
        state = tmp_path / "data" / "dev.json"
        deadline = time.monotonic() + 10
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert json.loads(state.read_text())["endpoint"] == f"127.0.0.1:{port}"
        yield env
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, (tmp_path / "dev.log").read_text()


def agentrt(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGENTRT, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_run_prints_the_result_with_no_flags(dev: dict[str, str]) -> None:
    ran = agentrt(dev, "run", "hello")
    assert ran.returncode == 0, ran.stderr
    assert 'You said: "hello"' in ran.stdout
    assert "job.succeeded" in ran.stderr

    listed = agentrt(dev, "jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    jobs = json.loads(listed.stdout)
    assert len(jobs) == 1 and jobs[0]["state"] == "JOB_STATE_SUCCEEDED"


def test_a_bad_job_name_is_a_clear_error(dev: dict[str, str]) -> None:
    got = agentrt(dev, "jobs", "get", "not/a/job")
    assert got.returncode == 2
    assert "INVALID_ARGUMENT" in got.stderr and "NAME_INVALID" in got.stderr
    assert "Traceback" not in got.stderr
