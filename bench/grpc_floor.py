"""Benchmark of what one gRPC call costs in Python on this machine, before any of agentrt's
own work: a bare grpc.aio server (uvloop, no interceptors, bytes in and out, no protobuf)
in its own process, called from this one.

Prints, for a unary call and for a unary call answered by a stream of five messages, the
latency at 1 call in flight and the calls/s at 50 in flight, with the CPU that the client
and the server spend per call. The main path makes about six such calls per job
(docs/performance.md), so this is the floor under its CPU per job.
Usage: python bench/grpc_floor.py [--calls N].
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.main_path import process_cpu
from services.kit.loop import run_main
from tests.e2e.processes import free_port

UNARY = "/floor.Echo/Unary"
STREAM = "/floor.Echo/Stream"
PAYLOAD = b"x" * 200
"""About the size of a small job event or ledger reservation."""


async def unary(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def stream(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]):  # type: ignore[no-untyped-def]
    for _ in range(5):
        yield request


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("floor.Echo", handlers)])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def measure(address: str, server_pid: int, calls: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        await channel.channel_ready()
        call_unary = channel.unary_unary(UNARY, None, None)
        call_stream = channel.unary_stream(STREAM, None, None)

        async def one_unary() -> None:
            await call_unary(PAYLOAD)

        async def one_stream() -> None:
            async for _ in call_stream(PAYLOAD):
                pass

        for label, one in (("unary", one_unary), ("unary → 5 streamed", one_stream)):
            for in_flight in (1, 50):
                await run(label, one, in_flight, calls, server_pid)


async def run(label: str, one, in_flight: int, calls: int, server_pid: int) -> None:  # type: ignore[no-untyped-def]
    for _ in range(200):
        await one()
    latencies: list[float] = []
    queue = iter(range(calls))

    async def worker() -> None:
        for _ in queue:
            started = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - started)

    cpu_before = process_cpu(server_pid), time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    wall = time.perf_counter() - started
    server_cpu = (process_cpu(server_pid) - cpu_before[0]) * 1000 / calls
    client_cpu = (time.process_time() - cpu_before[1]) * 1000 / calls
    print(
        f"{label:<20} in_flight={in_flight:>3} calls/s={calls / wall:8.0f} "
        f"p50={statistics.median(latencies) * 1000:6.2f}ms "
        f"cpu ms/call client={client_cpu:.3f} server={server_cpu:.3f} "
        f"total={client_cpu + server_cpu:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_main(serve(args.serve))
        return
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        run_main(measure(f"127.0.0.1:{port}", server.pid, args.calls))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
