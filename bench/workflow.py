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
import secrets
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from agentrt import workflows as wf
from agentrt.jobs.v1 import jobs_pb2

from services.kit.loop import run_main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.main_path import QUIET, REDIS_URL, dev_process, load, pg_database
from tests.e2e.processes import cluster

if TYPE_CHECKING:
    pass

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
        wall, latencies = run_main(load(endpoint, key, trees, concurrency, tree_spec, warm_up=3))
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
        wall, latencies = run_main(
            load(running.address("gateway"), key, trees, concurrency, tree_spec, warm_up=3)
        )
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
