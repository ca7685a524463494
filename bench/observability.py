"""Benchmark of what metrics cost the main path: `agentrt dev` with them off, then on.

Runs the main-path load (bench/main_path.py) against `agentrt dev` three times: without
a metrics provider, with the Prometheus endpoint (AGENTRT_METRICS_ADDRESS) unread, and
with it scraped every 0.5 s during the load, and prints jobs/s and latency percentiles
of each. Usage: python bench/observability.py [--jobs N] [--concurrency C].
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from services.kit.loop import run_main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.main_path import dev_process, load, report
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


def run(label: str, jobs: int, concurrency: int, metrics: str, scrape: bool) -> None:
    previous = os.environ.pop("AGENTRT_METRICS_ADDRESS", None)
    if metrics:
        os.environ["AGENTRT_METRICS_ADDRESS"] = metrics
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            dev_process(Path(tmp) / "data") as (endpoint, key),
        ):
            if scrape:
                with scraping(metrics, 0.5) as sizes:
                    wall, latencies = run_main(load(endpoint, key, jobs, concurrency))
                if not sizes:
                    raise RuntimeError("the metrics endpoint was never scraped")
                label += f" ({len(sizes)} scrapes, {sizes[-1] // 1024} KiB)"
            else:
                wall, latencies = run_main(load(endpoint, key, jobs, concurrency))
            report(label, wall, latencies, concurrency)
    finally:
        os.environ.pop("AGENTRT_METRICS_ADDRESS", None)
        if previous is not None:
            os.environ["AGENTRT_METRICS_ADDRESS"] = previous


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    run("metrics off", args.jobs, args.concurrency, "", scrape=False)
    address = f"127.0.0.1:{free_port()}"
    run("metrics on, not scraped", args.jobs, args.concurrency, address, scrape=False)
    address = f"127.0.0.1:{free_port()}"
    run("metrics on, scraped every 0.5 s", args.jobs, args.concurrency, address, scrape=True)


if __name__ == "__main__":
    main()
