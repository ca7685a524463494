"""A job's cache policy reaches the engine: a repeated job is answered from the cache, free."""

from __future__ import annotations

from agentrt.client import Client, job_spec
from agentrt.common.v1 import common_pb2

from services.dev import LocalSystem


async def test_a_repeated_job_that_asks_for_the_cache_costs_no_tokens(
    system: LocalSystem,
) -> None:
    cache = common_pb2.CachePolicy(enabled=True)
    async with Client(system.endpoint, system.api_key) as client:
        jobs = []
        for _ in range(2):
            spec = job_spec("hello cache", model="local", cache=cache)
            spec.params.temperature = 0.0
            jobs.append(await client.result(await client.execute_spec(spec)))
        uncached = job_spec("hello cache", model="local")
        uncached.params.temperature = 0.0
        plain = await client.result(await client.execute_spec(uncached))

    first, second = jobs
    assert first.state == second.state == common_pb2.JOB_STATE_SUCCEEDED
    assert second.result.output == first.result.output
    assert first.usage.total_tokens > 0
    assert second.usage.total_tokens == 0
    assert plain.usage.total_tokens == first.usage.total_tokens
