"""Benchmark of the main path: Execute → the job's final event, with the local model.

Runs `agentrt dev` (one process, SQLite, in-process events) and the services as separate
processes on PostgreSQL + Redis, drives each from this process through the generated
gateway client with a fixed number of jobs in flight, and prints jobs/s and latency
percentiles. Usage: python bench/main_path.py [--mode dev|processes|both] [--jobs N]
[--concurrency C].
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import grpc
from agentrt.common.v1 import common_pb2
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2

from services.kit.loop import run_main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.e2e.processes import AGENTRT, Cluster, cluster, free_port, wait_serving

if TYPE_CHECKING:
    from agentrt.gateway.v1.gateway_pb2_grpc import RuntimeServiceAsyncStub

PG_ADMIN = os.environ.get("AGENTRT_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AGENTRT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUIET = {"AGENTRT_LOG_LEVEL": "WARNING"}


SpecOf = Callable[[int], jobs_pb2.JobSpec]
"""The spec of the i-th job of a load (negative i: a warm-up job)."""


def plain_job(i: int) -> jobs_pb2.JobSpec:
    return jobs_pb2.JobSpec(prompt=f"benchmark job {i}")


async def one_job(
    stub: RuntimeServiceAsyncStub, auth: tuple[tuple[str, str]], spec: jobs_pb2.JobSpec
) -> float:
    """Seconds from the Execute call to the job's terminal event."""
    started = time.perf_counter()
    request = gateway_pb2.ExecuteRequest(spec=spec)
    last = None
    async for event in stub.ExecuteStream(request, metadata=auth, timeout=120):
        last = event
    elapsed = time.perf_counter() - started
    if last is None or last.type != common_pb2.EVENT_TYPE_JOB_SUCCEEDED:
        raise RuntimeError(f"a job did not succeed: {last}")
    return elapsed


async def load(
    endpoint: str,
    key: str,
    jobs: int,
    concurrency: int,
    spec_of: SpecOf = plain_job,
    warm_up: int = 50,
    meter: CpuMeter | None = None,
) -> tuple[float, list[float]]:
    """Runs `jobs` jobs, `concurrency` at a time, after `warm_up` others: the wall time and
    each job's latency; `meter`, if given, counts the CPU of the measured jobs only."""
    auth = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub: RuntimeServiceAsyncStub = gateway_pb2_grpc.RuntimeServiceStub(channel)
        await asyncio.gather(*(one_job(stub, auth, spec_of(-i)) for i in range(1, warm_up + 1)))
        queue = iter(range(jobs))
        latencies: list[float] = []

        async def worker() -> None:
            for i in queue:
                latencies.append(await one_job(stub, auth, spec_of(i)))

        if meter is not None:
            meter.start()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        if meter is not None:
            meter.stop()
        return wall, latencies


TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used; 0 for one that is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def pids_named(command: str) -> list[int]:
    """Every process whose command name is `command` (PostgreSQL's backends, Redis)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == command:
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


def own_pid() -> list[int]:
    return [os.getpid()]


class CpuMeter:
    """The CPU each part of the system spends over the measured jobs: each service
    process, this client, and the PostgreSQL and Redis servers."""

    def __init__(self, parts: dict[str, Callable[[], list[int]]]) -> None:
        self.parts: dict[str, Callable[[], list[int]]] = {**parts, "client": own_pid}
        self.used: dict[str, float] = {}

    def sample(self) -> dict[str, float]:
        return {name: sum(process_cpu(pid) for pid in pids()) for name, pids in self.parts.items()}

    def start(self) -> None:
        self.used = self.sample()

    def stop(self) -> None:
        ended = self.sample()
        self.used = {name: ended[name] - self.used[name] for name in ended}

    def report(self, jobs: int) -> None:
        per_job = {name: used * 1000 / jobs for name, used in self.used.items()}
        parts = " ".join(f"{name}={ms:.2f}" for name, ms in per_job.items())
        print(f"{'':<34} cpu ms/job total={sum(per_job.values()):.2f} {parts}")


def servers() -> dict[str, Callable[[], list[int]]]:
    return {"postgres": lambda: pids_named("postgres"), "redis": lambda: pids_named("redis-server")}


def report(label: str, wall: float, latencies: list[float], concurrency: int) -> None:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    print(
        f"{label:<34} jobs={len(ordered):>5} in_flight={concurrency:>3} "
        f"jobs/s={len(ordered) / wall:7.1f} p50={pct(50):6.1f}ms p90={pct(90):6.1f}ms "
        f"p99={pct(99):6.1f}ms max={ordered[-1] * 1000:6.1f}ms "
        f"mean={statistics.fmean(ordered) * 1000:6.1f}ms"
    )


@contextmanager
def dev_process(data_dir: Path) -> Iterator[tuple[str, str]]:
    """`agentrt dev` on `data_dir`: its endpoint and API key."""
    with dev_server(data_dir) as (endpoint, key, _):
        yield endpoint, key


@contextmanager
def dev_server(data_dir: Path) -> Iterator[tuple[str, str, int]]:
    """`agentrt dev` on `data_dir`: its endpoint, API key and process id."""
    port = free_port()
    env = {**os.environ, **QUIET, "AGENTRT_DATA_DIR": str(data_dir)}
    log = (data_dir.parent / "dev.log").open("ab")
    process = subprocess.Popen(
        [AGENTRT, "dev", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_serving(f"127.0.0.1:{port}", "agentrt.gateway.v1.RuntimeService", 60, process)
        state = data_dir / "dev.json"
        deadline = time.monotonic() + 10
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        info = json.loads(state.read_text())
        yield info["endpoint"], info["api_key"], process.pid
    finally:
        process.terminate()
        process.wait(30)


@contextmanager
def pg_database() -> Iterator[str]:
    name = f"agentrt_bench_{secrets.token_hex(4)}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(PG_ADMIN)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(admin(f"CREATE DATABASE {name}"))
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def bench_dev(jobs: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, dev_server(Path(tmp) / "data") as dev:
        endpoint, key, pid = dev
        meter = CpuMeter({"dev": lambda: [pid]})
        wall, latencies = run_main(load(endpoint, key, jobs, concurrency, meter=meter))
        report("agentrt dev (SQLite, in-process)", wall, latencies, concurrency)
        meter.report(len(latencies))


def service_pids(running: Cluster) -> dict[str, Callable[[], list[int]]]:
    """Each service's process id, read when sampled (a restarted service has a new one)."""

    def pid_of(name: str) -> Callable[[], list[int]]:
        return lambda: [running.processes[name].pid]

    return {name: pid_of(name) for name in running.processes}


def bench_processes(jobs: int, concurrency: int) -> None:
    prefix = f"agentrt-bench-{secrets.token_hex(4)}"
    with (
        tempfile.TemporaryDirectory() as tmp,
        pg_database() as dsn,
        cluster(dsn, REDIS_URL, prefix, Path(tmp), extra=QUIET) as running,
    ):
        created = running.cli("keys", "create", "--tenant", "bench", "--principal", "bench")
        key = next(w for w in created.stdout.split() if w.startswith("agk_"))
        meter = CpuMeter({**service_pids(running), **servers()})
        wall, latencies = run_main(
            load(running.address("gateway"), key, jobs, concurrency, meter=meter)
        )
        report("processes (PostgreSQL + Redis)", wall, latencies, concurrency)
        meter.report(len(latencies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["dev", "processes", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    if args.mode in ("dev", "both"):
        bench_dev(args.jobs, args.concurrency)
    if args.mode in ("processes", "both"):
        bench_processes(args.jobs, args.concurrency)


if __name__ == "__main__":
    main()
