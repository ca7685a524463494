"""Fixtures that run agentrt as separate processes on the real PostgreSQL and Redis."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.otlp import Receiver, start_receiver
from tests.e2e.processes import Cluster, cluster


@pytest.fixture
def processes(pg_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Cluster]:
    """Each service in its own process; short leases so that takeovers are quick."""
    with cluster(
        pg_dsn,
        redis_url,
        redis_prefix,
        tmp_path,
        extra={"AGENTRT_LEASE_SECONDS": "2", "AGENTRT_LOCAL_SLOW_CHUNK_DELAY": "0.1"},
    ) as running:
        yield running


def create_key(running: Cluster, tenant: str, principal: str) -> str:
    """A new API key, made the way an operator makes one: `agentrt keys create`."""
    output = running.cli("keys", "create", "--tenant", tenant, "--principal", principal).stdout
    match = re.search(r"agk_[A-Za-z0-9_-]+", output)
    assert match, f"no key in the output of keys create: {output!r}"
    return match.group(0)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    """An OTLP/gRPC receiver (spans and metrics) and its port."""
    server, found, port = start_receiver()
    yield found, port
    server.stop(None)
