"""Starts agentrt services as separate processes on PostgreSQL and Redis, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

AGENTRT = str(Path(sys.executable).parent / "agentrt")
SERVICES = ("jobs", "policy", "ledger", "engine", "gateway", "orchestrator")


SERVICE_NAMES = {
    "jobs": "agentrt.jobs.v1.JobService",
    "policy": "agentrt.policy.v1.PolicyService",
    "ledger": "agentrt.ledger.v1.LedgerService",
    "engine": "agentrt.engine.v1.EngineService",
    "gateway": "agentrt.gateway.v1.RuntimeService",
    "orchestrator": "agentrt.orchestrator.v1.OrchestratorService",
}
"""The gRPC service each process must report SERVING, so that a process that lost its
port to another one is never mistaken for it."""


def free_ports(count: int) -> list[int]:
    """Distinct free ports: all are held open until every one is chosen."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def wait_serving(
    address: str,
    service: str = "",
    timeout: float = 20.0,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Blocks until the server at `address` reports `service` SERVING on the standard
    health service; fails at once if `process`, which should be that server, has exited."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the server for {address} exited with {process.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} did not become SERVING within {timeout}s")
            time.sleep(0.05)


@dataclass
class Cluster:
    """The services as processes; `env` is what each of them was started with."""

    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def address(self, service: str) -> str:
        return self.env[f"AGENTRT_{service.upper()}_ADDRESS"]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [AGENTRT, *args], env=self.env, capture_output=True, text=True, check=check, timeout=60
        )

    def start(
        self,
        service: str,
        name: str | None = None,
        extra: Mapping[str, str] = {},
        host: str = "127.0.0.1",
    ) -> None:
        """Starts a process of the service (a second orchestrator gets another name; a
        second replica on the same port, another loopback `host`)."""
        name = name or service
        env = {**self.env, **extra}
        port = self.address(service).rsplit(":", 1)[1]
        if service == "orchestrator" and name != service:
            port = str(free_port())
        env["AGENTRT_LISTEN_ADDRESS"] = f"{host}:{port}"
        log = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [AGENTRT, "serve", service], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        wait_serving(f"{host}:{port}", SERVICE_NAMES[service], process=self.processes[name])

    def kill(self, name: str) -> None:
        """SIGKILL: no drain, no lease release."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self.processes.clear()


@contextmanager
def cluster(
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    logs: Path,
    extra: Mapping[str, str] = {},
    per_service: Mapping[str, Mapping[str, str]] = {},
) -> Iterator[Cluster]:
    """Migrates the database, then runs each service as its own process (with the
    variables `per_service` gives it, beside `extra`)."""
    env = {
        **os.environ,
        "AGENTRT_DATABASE_URL": database_url,
        "AGENTRT_REDIS_URL": redis_url,
        "AGENTRT_REDIS_PREFIX": redis_prefix,
        "AGENTRT_DATA_DIR": str(logs / "data"),
        **{
            f"AGENTRT_{service.upper()}_ADDRESS": f"127.0.0.1:{port}"
            for service, port in zip(SERVICES, free_ports(len(SERVICES)), strict=True)
        },
        **extra,
    }
    running = Cluster(env, logs)
    running.cli("migrate")
    try:
        for service in SERVICES:
            running.start(service, extra=per_service.get(service, {}))
        yield running
    finally:
        running.stop_all()
