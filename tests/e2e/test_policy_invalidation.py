"""End to end: a policy change reaches the cached policy of two orchestrator processes.

Two orchestrators (worker ids "worker-a" and "worker-b", one job at a time each) run
jobs of the policy set "production" on PostgreSQL and Redis. Their caches trust a set for
an hour (AGENTRT_POLICY_REVALIDATE_SECONDS), so within the test only the change notice
the policy service sends over Redis can make them see an update. After UpdatePolicySet
denies the jobs' model, jobs run by each worker must fail POLICY_DENIED; which worker ran
a job is read from its job.started event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from agentrt.common.v1 import common_pb2
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2
from agentrt.policy.v1 import policy_pb2, policy_pb2_grpc
from agentrt.policy.v1.policy_pb2 import ModelRule, PolicySet, Rule, Verdict

from tests.e2e.conftest import create_key
from tests.e2e.processes import Cluster, cluster

if TYPE_CHECKING:
    from agentrt.gateway.v1.gateway_pb2_grpc import RuntimeServiceAsyncStub

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

WORKERS = ("worker-a", "worker-b")
ROUNDS = 20
"""Rounds of jobs tried before giving up on seeing both workers run one."""


@pytest.fixture
def two_orchestrators(
    pg_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> Iterator[Cluster]:
    """The system as processes, with a second orchestrator beside the first."""
    extra = {
        "AGENTRT_ORCHESTRATOR_WORKER_ID": WORKERS[0],
        "AGENTRT_ORCHESTRATOR_CONCURRENCY": "1",
        "AGENTRT_POLICY_REVALIDATE_SECONDS": "3600",
    }
    with cluster(pg_dsn, redis_url, redis_prefix, tmp_path, extra=extra) as running:
        running.start(
            "orchestrator",
            name="orchestrator-b",
            extra={"AGENTRT_ORCHESTRATOR_WORKER_ID": WORKERS[1]},
        )
        yield running


def rule(rule_id: str, verdict: Verdict.ValueType) -> Rule:
    return Rule(id=rule_id, model=ModelRule(patterns=["local*"], verdict=verdict))


@dataclass(frozen=True)
class Ran:
    """A finished job and the worker that ran it."""

    worker: str
    job: jobs_pb2.Job

    @property
    def denied(self) -> bool:
        failure = self.job.failure
        return (
            self.job.state == common_pb2.JOB_STATE_FAILED
            and failure.reason == common_pb2.ERROR_REASON_POLICY_DENIED
            and failure.metadata["rule"] == "no-local"
        )

    @property
    def succeeded(self) -> bool:
        return self.job.state == common_pb2.JOB_STATE_SUCCEEDED


async def run_job(stub: RuntimeServiceAsyncStub, auth: tuple[tuple[str, str]], n: int) -> Ran:
    """Runs one job of the "production" set to its end: the worker that ran its last
    attempt (the one whose policy decided how it ended) and the job as it ended."""
    spec = jobs_pb2.JobSpec(prompt=f"hello {n}", policy=common_pb2.PolicyRef(name="production"))
    job = await stub.Execute(gateway_pb2.ExecuteRequest(spec=spec), metadata=auth, timeout=10)
    watch = stub.WatchJob(gateway_pb2.WatchJobRequest(name=job.name), metadata=auth)
    events = [event async for event in watch]
    workers = [e.attempt.worker for e in events if e.type == common_pb2.EVENT_TYPE_JOB_STARTED]
    done = await stub.GetJob(gateway_pb2.GetJobRequest(name=job.name), metadata=auth)
    assert workers, f"{job.name} ended without a job.started event"
    return Ran(workers[-1], done)


async def rounds_until(
    stub: RuntimeServiceAsyncStub, auth: tuple[tuple[str, str]], start: int, want: str
) -> list[list[Ran]]:
    """Runs rounds of four concurrent jobs until every worker ran one that ended `want`
    ("succeeded" or "denied"); the rounds run."""
    rounds: list[list[Ran]] = []
    done: set[str] = set()
    for round_ in range(ROUNDS):
        numbers = range(start + 4 * round_, start + 4 * round_ + 4)
        batch = await asyncio.wait_for(
            asyncio.gather(*(run_job(stub, auth, n) for n in numbers)), 60
        )
        rounds.append(batch)
        done |= {r.worker for r in batch if (r.denied if want == "denied" else r.succeeded)}
        if done == set(WORKERS):
            return rounds
    pytest.fail(f"after {ROUNDS} rounds only {sorted(done)} ran a job that {want}")


async def test_an_update_changes_the_decisions_of_both_orchestrators(
    two_orchestrators: Cluster,
) -> None:
    running = two_orchestrators
    key = create_key(running, "acme", "alice")
    auth = (("authorization", f"Bearer {key}"),)
    async with (
        grpc.aio.insecure_channel(running.address("gateway")) as gateway_channel,
        grpc.aio.insecure_channel(running.address("policy")) as policy_channel,
    ):
        stub = gateway_pb2_grpc.RuntimeServiceStub(gateway_channel)
        policy = policy_pb2_grpc.PolicyServiceStub(policy_channel)
        created = await policy.CreatePolicySet(
            policy_pb2.CreatePolicySetRequest(
                policy_set_id="production",
                policy_set=PolicySet(rules=[rule("local-ok", Verdict.VERDICT_ALLOW)]),
            ),
            timeout=10,
        )

        # Both workers cache version 1, which allows the model.
        before = await rounds_until(stub, auth, 0, "succeeded")
        assert all(r.succeeded for batch in before for r in batch)

        await policy.UpdatePolicySet(
            policy_pb2.UpdatePolicySetRequest(
                policy_set=PolicySet(
                    name=created.name,
                    etag=created.etag,
                    rules=[rule("no-local", Verdict.VERDICT_DENY)],
                )
            ),
            timeout=10,
        )

        # The notice, not the hour-long revalidation, makes each worker deny from now on:
        # only a job decided before its worker handled the notice may still succeed.
        after = await rounds_until(stub, auth, 1000, "denied")
        denying: set[str] = set()
        for batch in after:
            assert all(r.denied or r.succeeded for r in batch)
            went_back = {r.worker for r in batch if r.succeeded} & denying
            assert not went_back, f"{went_back} allowed the model again after denying it"
            denying |= {r.worker for r in batch if r.denied}
        assert denying == set(WORKERS)
