"""`agentrt dev` exporting its metrics by OTLP/gRPC to a real receiver started by the test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.otlp import Receiver
from tests.e2e.processes import AGENTRT, free_port, wait_serving

pytestmark = pytest.mark.e2e


def test_the_series_reach_an_otlp_receiver(receiver: tuple[Receiver, int], tmp_path: Path) -> None:
    received, receiver_port = receiver
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTRT_", "OTEL_"))}
    env |= {
        "AGENTRT_DATA_DIR": str(tmp_path / "data"),
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver_port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "agentrt-dev-under-test",
    }
    port = free_port()
    with (tmp_path / "dev.log").open("wb") as log:
        dev = subprocess.Popen(
            [AGENTRT, "dev", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_serving(f"127.0.0.1:{port}", "agentrt.gateway.v1.RuntimeService", 30, dev)
        while not (tmp_path / "data" / "dev.json").exists():
            time.sleep(0.05)
        ran = subprocess.run(
            [AGENTRT, "run", "hello", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ran.returncode == 0, ran.stderr
        tokens = json.loads(ran.stdout)["usage"]
        deadline = time.monotonic() + 10
        while received.sums("agentrt.ledger.tokens") < int(tokens["totalTokens"]):
            assert time.monotonic() < deadline, received.sums("agentrt.ledger.tokens")
            time.sleep(0.1)
    finally:
        dev.send_signal(signal.SIGTERM)
        assert dev.wait(20) == 0, (tmp_path / "dev.log").read_text()
    assert received.sums("agentrt.rpc.server.requests") > 0
    assert received.metric_services() == {"agentrt-dev-under-test"}
