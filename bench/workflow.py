"""Benchmark of workflows: a 10-child map-reduce from Execute to the root's final event.

Each root maps 10 items (10 mapper children, then one reducer child: 11 child jobs and
the root, 12 jobs a tree) with the local model. Runs `agentrt dev` (one process, SQLite,
in-process events) and the services as processes on PostgreSQL + Redis, with a fixed
number of trees in flight, and prints trees/s, jobs/s and the latency percentiles to the
root's end. Usage: python bench/workflow.py [--mode dev|processes|both] [--trees N]
[--concurrency C].
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
from agentrt import workflows as wf
from agentrt.common.v1 import common_pb2
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2

from services.kit.loop import run_main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.main_path import QUIET, REDIS_URL, dev_process, pg_database
from tests.e2e.processes import cluster

if TYPE_CHECKING:
    from agentrt.gateway.v1.gateway_pb2_grpc import RuntimeServiceAsyncStub

CHILDREN = 10
JOBS_PER_TREE = CHILDREN + 2
"""The mappers, the reducer and the root."""


def tree_spec(i: int) -> jobs_pb2.JobSpec:
    return wf.workflow_spec(
        f"benchmark tree {i}",
        wf.map_reduce("m", "r", items=[f"item {n}" for n in range(CHILDREN)]),
        agents={"m": wf.agent("reply: mapped {input}"), "r": wf.agent("reply: reduced")},
        model="local",
        orchestration=jobs_pb2.OrchestrationConfig(max_parallel=CHILDREN, max_child_jobs=20),
    )


async def one_tree(stub: RuntimeServiceAsyncStub, auth: tuple[tuple[str, str]], i: int) -> float:
    """Seconds from the Execute call to the root's terminal event."""
    started = time.perf_counter()
    request = gateway_pb2.ExecuteRequest(spec=tree_spec(i))
    last = None
    async for event in stub.ExecuteStream(request, metadata=auth, timeout=120):
        last = event
    elapsed = time.perf_counter() - started
    if last is None or last.type != common_pb2.EVENT_TYPE_JOB_SUCCEEDED:
        raise RuntimeError(f"tree {i} did not succeed: {last}")
    return elapsed


async def load(endpoint: str, key: str, trees: int, concurrency: int) -> tuple[float, list[float]]:
    auth = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub: RuntimeServiceAsyncStub = gateway_pb2_grpc.RuntimeServiceStub(channel)
        await asyncio.gather(*(one_tree(stub, auth, -i) for i in range(1, 4)))  # warm-up
        queue = iter(range(trees))
        latencies: list[float] = []

        async def worker() -> None:
            for i in queue:
                latencies.append(await one_tree(stub, auth, i))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


def report(label: str, wall: float, latencies: list[float], concurrency: int) -> None:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    print(
        f"{label:<34} trees={len(ordered):>4} in_flight={concurrency:>2} "
        f"trees/s={len(ordered) / wall:6.2f} jobs/s={len(ordered) * JOBS_PER_TREE / wall:6.1f} "
        f"p50={pct(50):7.1f}ms p99={pct(99):7.1f}ms max={ordered[-1] * 1000:7.1f}ms"
    )


def bench_dev(trees: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, dev_process(Path(tmp) / "data") as (endpoint, key):
        wall, latencies = run_main(load(endpoint, key, trees, concurrency))
        report("agentrt dev (SQLite, in-process)", wall, latencies, concurrency)


def bench_processes(trees: int, concurrency: int) -> None:
    prefix = f"agentrt-bench-{secrets.token_hex(4)}"
    with (
        tempfile.TemporaryDirectory() as tmp,
        pg_database() as dsn,
        cluster(dsn, REDIS_URL, prefix, Path(tmp), extra=QUIET) as running,
    ):
        created = running.cli("keys", "create", "--tenant", "bench", "--principal", "bench")
        key = next(w for w in created.stdout.split() if w.startswith("agk_"))
        wall, latencies = run_main(load(running.address("gateway"), key, trees, concurrency))
        report("processes (PostgreSQL + Redis)", wall, latencies, concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["dev", "processes", "both"], default="both")
    parser.add_argument("--trees", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    if args.mode in ("dev", "both"):
        bench_dev(args.trees, args.concurrency)
    if args.mode in ("processes", "both"):
        bench_processes(args.trees, args.concurrency)


if __name__ == "__main__":
    main()
