"""`agentrt serve ledger` as real processes on one PostgreSQL database, for the tests that
need several ledgers or a ledger to SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.processes import AGENTRT, SERVICE_NAMES, free_port, wait_serving


@dataclass
class LedgerProcesses:
    """Ledger processes sharing `dsn`; each is known by the address it listens on."""

    dsn: str
    logs: Path
    sweep_seconds: float = 0.2
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, address: str | None = None) -> str:
        """Starts a ledger (on `address`, e.g. to restart a killed one) and waits until it
        serves; returns its address."""
        address = address or f"127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "AGENTRT_DATABASE_URL": self.dsn,
            "AGENTRT_LISTEN_ADDRESS": address,
            "AGENTRT_RESERVATION_SWEEP_SECONDS": str(self.sweep_seconds),
            "AGENTRT_DATA_DIR": str(self.logs / "data"),
        }
        log = (self.logs / f"ledger-{address.rsplit(':', 1)[1]}.log").open("ab")
        process = subprocess.Popen(
            [AGENTRT, "serve", "ledger"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        self.running[address] = process
        wait_serving(address, SERVICE_NAMES["ledger"], timeout=30, process=process)
        return address

    def kill(self, address: str) -> None:
        """SIGKILL: no drain, nothing finished."""
        process = self.running.pop(address)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop_all(self) -> None:
        for process in self.running.values():
            process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self.running.clear()


@contextmanager
def ledger_processes(dsn: str, logs: Path) -> Iterator[LedgerProcesses]:
    """Ledger processes on `dsn` (migrated already), all stopped at the end."""
    logs.mkdir(parents=True, exist_ok=True)
    processes = LedgerProcesses(dsn, logs)
    try:
        yield processes
    finally:
        processes.stop_all()
