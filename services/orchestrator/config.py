"""Typed configuration of the orchestrator's worker pool, read once from the environment."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from services.kit.config import ConfigError, env_float, env_int, env_str

MAX_LEASE_SECONDS = 600.0
"""The longest lease the jobs service grants (LeaseJobsRequest.lease_duration)."""
MAX_LEASE_WAIT_SECONDS = 60.0
"""The longest long-poll the jobs service accepts (LeaseJobsRequest.wait_timeout)."""


@dataclass(frozen=True)
class OrchestratorConfig:
    """How many jobs a process runs and how it holds their leases."""

    concurrency: int
    """AGENTRT_ORCHESTRATOR_CONCURRENCY: jobs run at once by this process (default 64)."""
    lease_seconds: float
    """AGENTRT_LEASE_SECONDS: how long a lease lasts without a heartbeat (default 15)."""
    heartbeat_seconds: float
    """AGENTRT_HEARTBEAT_SECONDS: how often a running job's lease is extended, which is
    also how soon a worker notices that its job was cancelled and cuts the model call
    (default a third of the lease, so two heartbeats may fail before it expires, and at
    most 1 s)."""
    lease_wait_seconds: float
    """AGENTRT_LEASE_WAIT_SECONDS: how long one LeaseJobs call waits for work (default 5)."""
    worker_id: str
    """AGENTRT_ORCHESTRATOR_WORKER_ID: the id leases are taken under, unique per process
    (default `<hostname>-<pid>-<random>`)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OrchestratorConfig:
        lease = env_float("AGENTRT_LEASE_SECONDS", 15.0, env, minimum=1.0)
        if lease > MAX_LEASE_SECONDS:
            raise ConfigError(
                f"AGENTRT_LEASE_SECONDS: at most {MAX_LEASE_SECONDS:g}, got {lease:g}"
            )
        heartbeat = env_float("AGENTRT_HEARTBEAT_SECONDS", min(lease / 3, 1.0), env, minimum=0.01)
        if heartbeat >= lease:
            raise ConfigError(
                f"AGENTRT_HEARTBEAT_SECONDS: must be shorter than the lease ({lease:g} s), "
                f"got {heartbeat:g}"
            )
        wait = env_float("AGENTRT_LEASE_WAIT_SECONDS", 5.0, env)
        if wait > MAX_LEASE_WAIT_SECONDS:
            raise ConfigError(
                f"AGENTRT_LEASE_WAIT_SECONDS: at most {MAX_LEASE_WAIT_SECONDS:g}, got {wait:g}"
            )
        return cls(
            concurrency=env_int("AGENTRT_ORCHESTRATOR_CONCURRENCY", 64, env, minimum=1),
            lease_seconds=lease,
            heartbeat_seconds=heartbeat,
            lease_wait_seconds=wait,
            worker_id=env_str("AGENTRT_ORCHESTRATOR_WORKER_ID", default_worker_id(), env),
        )


def default_worker_id() -> str:
    """`<hostname>-<pid>-<random>`: the random part keeps ids apart across pid reuse."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
