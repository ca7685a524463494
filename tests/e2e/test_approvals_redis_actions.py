"""The approval end to end of test_approvals, with the jobs service keeping actions in
Redis (AGENTRT_JOBS_ACTION_STORE=redis): the job waits, survives an orchestrator SIGKILL,
and after approval runs the tool exactly once."""

from __future__ import annotations

import pytest
import redis.asyncio

from tests.e2e import test_approvals
from tests.e2e.processes import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture(autouse=True)
def redis_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set before the processes start, which take the test's environment."""
    monkeypatch.setenv("AGENTRT_JOBS_ACTION_STORE", "redis")


async def test_an_approval_kept_in_redis_survives_an_orchestrator_sigkill(
    processes: Cluster, redis_url: str, redis_prefix: str
) -> None:
    await test_approvals.test_an_approval_survives_an_orchestrator_sigkill_and_the_tool_runs_once(
        processes
    )

    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        kept = [key async for key in client.scan_iter(match=f"{redis_prefix}*actions:a:*")]
    finally:
        await client.aclose()
    assert kept, "the action was not kept in Redis"
