"""Benchmark of a resumed action: ResolveAction → the job RUNNING again.

Runs the services as separate processes on PostgreSQL + Redis (the production shape),
creates a policy set that requires approval of the built-in `calculator` tool, and
starts jobs that call it, so each waits on an approval holding no worker. Then, one job
at a time, it opens a watch on the job (given 50 ms to set up, so that it does not compete
with the resolution), resolves the approval through the gateway and measures:

- ResolveAction answered: the resolution's own round trip (gateway → jobs → database);
- resolve → RUNNING: from just before the ResolveAction call to the time the jobs service
  stamped on the job's `job.started` event (the lease that resumes it was committed);
- resolve → seen: until this client received that `job.started` on the job's watch
  stream (adds the outbox relay and Redis Streams).

Both clocks are this machine's. Usage: python bench/actions.py [--jobs N].
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from agentrt.common.v1 import common_pb2
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2
from agentrt.policy.v1 import policy_pb2, policy_pb2_grpc
from google.protobuf.struct_pb2 import Struct

from services.kit.loop import run_main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.main_path import QUIET, REDIS_URL, pg_database
from tests.e2e.processes import Cluster, cluster

if TYPE_CHECKING:
    from agentrt.gateway.v1.gateway_pb2_grpc import RuntimeServiceAsyncStub

E = common_pb2
Auth = tuple[tuple[str, str]]


async def create_policy(running: Cluster) -> None:
    async with grpc.aio.insecure_channel(running.address("policy")) as channel:
        rule = policy_pb2.Rule(
            id="calc",
            tool=policy_pb2.ToolRule(
                patterns=["calculator"], verdict=policy_pb2.VERDICT_REQUIRE_APPROVAL
            ),
        )
        await policy_pb2_grpc.PolicyServiceStub(channel).CreatePolicySet(
            policy_pb2.CreatePolicySetRequest(
                policy_set_id="bench", policy_set=policy_pb2.PolicySet(rules=[rule])
            )
        )


async def waiting_job(stub: RuntimeServiceAsyncStub, auth: Auth, i: int) -> tuple[str, str]:
    """A job waiting on its approval: its name and the id of its job.waiting event."""
    spec = jobs_pb2.JobSpec(
        prompt=f'call calculator {{"expression": "{i} + 1"}}',
        tools=[E.ToolSpec(name="calculator")],
        policy=E.PolicyRef(name="bench"),
    )
    async for event in stub.ExecuteStream(
        gateway_pb2.ExecuteRequest(spec=spec), metadata=auth, timeout=60
    ):
        if event.type == E.EVENT_TYPE_JOB_WAITING:
            return event.job, event.id
    raise RuntimeError(f"job {i} ended without waiting")


async def resume(
    stub: RuntimeServiceAsyncStub, auth: Auth, job: str, after: str
) -> tuple[float, float, float]:
    """Seconds from the resolution to its answer, to the job RUNNING (by the jobs
    service's clock) and to this client seeing job.started."""
    listed = await stub.ListActions(gateway_pb2.ListActionsRequest(parent=job), metadata=auth)
    [action] = listed.actions
    outcome = Struct()
    outcome.update({"approved": True})
    watch = stub.WatchJob(
        gateway_pb2.WatchJobRequest(name=job, after_event_id=after), metadata=auth
    )
    await asyncio.sleep(0.05)  # the watch is set up (its replay read) before the timing
    started_at = time.time()
    started = time.perf_counter()
    await stub.ResolveAction(
        gateway_pb2.ResolveActionRequest(name=action.name, outcome=outcome), metadata=auth
    )
    answered = time.perf_counter() - started
    async for event in watch:
        if event.type == E.EVENT_TYPE_JOB_STARTED:
            seen = time.perf_counter() - started
            running = event.time.ToNanoseconds() / 1e9 - started_at
            watch.cancel()
            return answered, running, seen
    raise RuntimeError(f"{job} ended without starting again")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def measure(endpoint: str, key: str, jobs: int) -> list[list[float]]:
    auth: Auth = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub: RuntimeServiceAsyncStub = gateway_pb2_grpc.RuntimeServiceStub(channel)
        waiting = await asyncio.gather(*(waiting_job(stub, auth, i) for i in range(jobs + 20)))
        figures: list[list[float]] = [[], [], []]
        for n, (job, after) in enumerate(waiting):
            measured = await resume(stub, auth, job, after)
            if n >= 20:  # the first resumptions warm up connections and caches
                for values, value in zip(figures, measured, strict=True):
                    values.append(value)
        return figures


def bench(jobs: int) -> None:
    prefix = f"agentrt-bench-{secrets.token_hex(4)}"
    with (
        tempfile.TemporaryDirectory() as tmp,
        pg_database() as dsn,
        cluster(dsn, REDIS_URL, prefix, Path(tmp), extra=QUIET) as running,
    ):
        run_main(create_policy(running))
        created = running.cli("keys", "create", "--tenant", "bench", "--principal", "bench")
        key = next(w for w in created.stdout.split() if w.startswith("agk_"))
        figures = run_main(measure(running.address("gateway"), key, jobs))
    labels = ("ResolveAction answered", "resolve -> RUNNING", "resolve -> seen")
    for label, values in zip(labels, figures, strict=True):
        print(
            f"{label:<24} actions={len(values):>4} p50={pct(values, 50):6.1f}ms "
            f"p90={pct(values, 90):6.1f}ms p99={pct(values, 99):6.1f}ms "
            f"max={max(values) * 1000:6.1f}ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    bench(parser.parse_args().jobs)


if __name__ == "__main__":
    main()
