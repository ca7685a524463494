"""Benchmark of what metrics and tracing cost the main path: `agentrt dev` with each off,
then on.

Runs the main-path load (bench/main_path.py) against `agentrt dev` once per setting and
prints jobs/s and latency percentiles of each. Metrics: without a metrics provider, with
the Prometheus endpoint (AGENTRT_METRICS_ADDRESS) unread, and with it scraped every 0.5 s
during the load. Tracing: no exporter (the default without a collector: the metrics-off
run, where no span is recorded), and every span exported by OTLP/gRPC to a receiver the
benchmark runs on this machine.
Usage: python bench/observability.py [--jobs N] [--concurrency C] [--only metrics|tracing].
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from services.kit.loop import run_main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.main_path import dev_process, load, report
from tests.e2e.otlp import start_receiver
from tests.e2e.processes import free_port


@contextmanager
def scraping(address: str, every: float) -> Iterator[list[int]]:
    """Scrapes the endpoint every `every` seconds in a thread; yields the sizes read."""
    sizes: list[int] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(every):
            sizes.append(len(httpx.get(f"http://{address}/metrics", timeout=5).content))

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    try:
        yield sizes
    finally:
        stop.set()
        thread.join(10)


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """This process's environment (which `agentrt dev` inherits) with `env` added."""
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in previous.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def run(label: str, jobs: int, concurrency: int, env: dict[str, str], scrape: str = "") -> None:
    """One load against a fresh `agentrt dev` run with `env` added to this environment;
    `scrape`: a metrics address to scrape during the load."""
    with (
        environment(env),
        tempfile.TemporaryDirectory() as tmp,
        dev_process(Path(tmp) / "data") as (endpoint, key),
    ):
        if scrape:
            with scraping(scrape, 0.5) as sizes:
                wall, latencies = run_main(load(endpoint, key, jobs, concurrency))
            if not sizes:
                raise RuntimeError("the metrics endpoint was never scraped")
            label += f" ({len(sizes)} scrapes, {sizes[-1] // 1024} KiB)"
        else:
            wall, latencies = run_main(load(endpoint, key, jobs, concurrency))
        report(label, wall, latencies, concurrency)


def run_exported(label: str, jobs: int, concurrency: int) -> None:
    """One load with every span exported by OTLP to a receiver in this process."""
    port = free_port()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "none",
    }
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            dev_process(Path(tmp) / "data") as (endpoint, key),
        ):
            wall, latencies, spans = run_main(
                receiving(port, load(endpoint, key, jobs, concurrency))
            )
            report(f"{label} ({spans:,} spans received)", wall, latencies, concurrency)
    finally:
        for name, value in previous.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


async def receiving(
    port: int, measured: Coroutine[Any, Any, tuple[float, list[float]]]
) -> tuple[float, list[float], int]:
    """Runs the load with an OTLP receiver on `port`; adds how many spans it received,
    waiting for the last batches (exported every OTEL_BSP_SCHEDULE_DELAY, 5 s)."""
    server, found, _ = start_receiver(port)
    try:
        wall, latencies = await measured
        await asyncio.sleep(6)
        return wall, latencies, len(found.spans)
    finally:
        server.stop(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--only", choices=("metrics", "tracing"))
    args = parser.parse_args()
    jobs, concurrency = args.jobs, args.concurrency
    run("metrics off; no trace exporter, no span recorded", jobs, concurrency, {})
    if args.only != "tracing":
        address = f"127.0.0.1:{free_port()}"
        metrics = {"AGENTRT_METRICS_ADDRESS": address}
        run("metrics on, not scraped", jobs, concurrency, metrics)
        address = f"127.0.0.1:{free_port()}"
        metrics = {"AGENTRT_METRICS_ADDRESS": address}
        run("metrics on, scraped every 0.5 s", jobs, concurrency, metrics, scrape=address)
    if args.only != "metrics":
        run_exported("tracing on, OTLP export to a local receiver", jobs, concurrency)


if __name__ == "__main__":
    main()
