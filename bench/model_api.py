"""Benchmark of the model API's overhead: a model call through the gateway against the same
call made to the engine directly, on the built-in `local` model (a zero-latency upstream).

Runs `agentrt dev` (one process, SQLite) and the services as separate processes on
PostgreSQL + Redis, each with the OpenAI-compatible endpoint on; prices the model and gives
the tenant a budget (so every call is checked against the policy, held in the ledger and
settled there), then from this process measures, for each path, the median latency with 1
call in flight and the calls per second with 64 in flight:

- engine: EngineService/Complete, the upstream and one gRPC hop, no policy, no ledger;
- ledger: ReserveBudget + SettleReservation by raw stubs, the two writes every call makes;
- ModelService: the gateway's gRPC model API;
- HTTP: POST /v1/chat/completions, non-streaming, and streaming (SSE).

The overhead is the model API's median minus the engine's. Usage: python bench/model_api.py
[--mode dev|processes|both] [--calls N] [--in-flight C].
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2, engine_pb2_grpc
from agentrt.gateway.v1 import models_pb2, models_pb2_grpc
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from agentrt.ledger.v1.ledger_pb2 import Amounts, Budget, Price
from google.protobuf.duration_pb2 import Duration

from services.kit.loop import run_main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.main_path import QUIET, REDIS_URL, dev_process, pg_database
from tests.e2e.processes import cluster, free_port

Call = Callable[[int], Awaitable[None]]
HTTP_VARIABLE = "AGENTRT_HTTP_LISTEN_ADDRESS"
MAX_OUTPUT = 32
"""Each call's max_output_tokens: its worst case held against the budget."""


async def prepare(ledger_address: str, tenant: str) -> None:
    """Prices `local` and gives the tenant a budget far larger than the run spends."""
    async with grpc.aio.insecure_channel(ledger_address) as channel:
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        await ledger.CreatePrice(
            ledger_pb2.CreatePriceRequest(
                price_id="local",
                price=Price(input_price_per_million="1", output_price_per_million="2"),
            )
        )
        budget = Budget(
            tenant=tenant, period=Budget.PERIOD_DAY, limits=Amounts(tokens=10**12, cost="100000")
        )
        await ledger.CreateBudget(ledger_pb2.CreateBudgetRequest(budget_id="bench", budget=budget))


def messages(i: int) -> list[common_pb2.Message]:
    return [common_pb2.Message(role=common_pb2.ROLE_USER, content=f"benchmark call {i}")]


async def timed(call: Call, calls: int, in_flight: int) -> tuple[float, list[float]]:
    """Wall seconds and each call's seconds, `calls` of them with `in_flight` at a time."""
    await asyncio.gather(*(call(-i) for i in range(1, 33)))  # warm-up
    queue = iter(range(calls))
    latencies: list[float] = []

    async def worker() -> None:
        for i in queue:
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - started, latencies


def median_ms(latencies: list[float]) -> float:
    return statistics.median(latencies) * 1000


async def measure(
    endpoints: tuple[str, str, str, str], tenant: str, key: str, calls: int, in_flight: int
) -> None:
    """Every path in turn; `endpoints` are the gateway's, the engine's, the ledger's and
    the HTTP URL."""
    gateway, engine_address, ledger_address, http_url = endpoints
    auth = (("authorization", f"Bearer {key}"),)
    params = common_pb2.ModelParams(max_output_tokens=MAX_OUTPUT)
    async with (
        grpc.aio.insecure_channel(gateway) as channel,
        grpc.aio.insecure_channel(engine_address) as engine_channel,
        grpc.aio.insecure_channel(ledger_address) as ledger_channel,
        aiohttp.ClientSession(
            base_url=http_url,
            headers={"authorization": f"Bearer {key}"},
            connector=aiohttp.TCPConnector(limit=in_flight),
        ) as http,
    ):
        engine = engine_pb2_grpc.EngineServiceStub(engine_channel)
        models = models_pb2_grpc.ModelServiceStub(channel)
        ledger = ledger_pb2_grpc.LedgerServiceStub(ledger_channel)
        run = secrets.token_hex(4)

        async def ledger_pair(i: int) -> None:
            held = await ledger.ReserveBudget(
                ledger_pb2.ReserveBudgetRequest(
                    tenant=tenant,
                    principal=tenant,
                    amounts=Amounts(tokens=40, cost="0.0001"),
                    ttl=Duration(seconds=300),
                    request_id=f"{run}.{i}",
                ),
                timeout=30,
            )
            record = ledger_pb2.UsageRecord(
                usage=common_pb2.Usage(input_tokens=8, output_tokens=8),
                tenant=tenant,
                principal=tenant,
                kind=ledger_pb2.USAGE_KIND_MODEL_CALL,
                model="local",
            )
            await ledger.SettleReservation(
                ledger_pb2.SettleReservationRequest(
                    name=held.name,
                    usage_records=[
                        ledger_pb2.RecordUsageRequest(
                            usage_record_id=f"bench-{run}-{i}", usage_record=record
                        )
                    ],
                ),
                timeout=30,
            )

        async def direct(i: int) -> None:
            request = engine_pb2.CompleteRequest(model="local", messages=messages(i), params=params)
            await engine.Complete(request, timeout=30)

        async def model_service(i: int) -> None:
            request = models_pb2.CompleteRequest(model="local", messages=messages(i), params=params)
            answer = await models.Complete(request, metadata=auth, timeout=30)
            assert answer.usage.cost

        def chat(stream: bool) -> Call:
            async def one(i: int) -> None:
                body = {
                    "model": "local",
                    "messages": [{"role": "user", "content": f"benchmark call {i}"}],
                    "max_tokens": MAX_OUTPUT,
                    "stream": stream,
                }
                async with http.post("/v1/chat/completions", json=body) as answer:
                    text = await answer.read()
                    assert answer.status == 200, text
                    assert not stream or text.endswith(b"data: [DONE]\n\n")

            return one

        paths: list[tuple[str, Call]] = [
            ("engine (direct, no ledger)", direct),
            ("ledger reserve + settle (raw)", ledger_pair),
            ("ModelService (gRPC)", model_service),
            ("/v1/chat/completions", chat(False)),
            ("/v1/chat/completions stream", chat(True)),
        ]
        baseline = 0.0
        for label, call in paths:
            _, alone = await timed(call, calls // 4, 1)
            wall, loaded = await timed(call, calls, in_flight)
            p50 = median_ms(alone)
            baseline = baseline or p50
            overhead = f"+{p50 - baseline:5.2f}ms" if call is not direct else "   base"
            if call is ledger_pair:
                overhead = "   alone"
            ordered = sorted(loaded)
            print(
                f"{label:<30} p50@1={p50:6.2f}ms ({overhead}) "
                f"calls/s@{in_flight}={len(loaded) / wall:7.1f} "
                f"p50@{in_flight}={median_ms(loaded):6.1f}ms "
                f"p99@{in_flight}={ordered[int(0.99 * (len(ordered) - 1))] * 1000:6.1f}ms"
            )


def bench_dev(calls: int, in_flight: int) -> None:
    http_address = f"127.0.0.1:{free_port()}"
    os.environ[HTTP_VARIABLE] = http_address  # for the dev process
    with tempfile.TemporaryDirectory() as tmp, dev_process(Path(tmp) / "data") as (endpoint, key):
        print("agentrt dev (SQLite, in-process):")
        run_main(prepare(endpoint, "dev"))
        endpoints = (endpoint, endpoint, endpoint, f"http://{http_address}")
        run_main(measure(endpoints, "dev", key, calls, in_flight))


def bench_processes(calls: int, in_flight: int) -> None:
    prefix = f"agentrt-bench-{secrets.token_hex(4)}"
    http_address = f"127.0.0.1:{free_port()}"
    with (
        tempfile.TemporaryDirectory() as tmp,
        pg_database() as dsn,
        cluster(
            dsn,
            REDIS_URL,
            prefix,
            Path(tmp),
            {**QUIET, "AGENTRT_HTTP_LISTEN_ADDRESS": http_address},
        ) as running,
    ):
        print("processes (PostgreSQL + Redis):")
        created = running.cli("keys", "create", "--tenant", "bench", "--principal", "bench")
        key = next(w for w in created.stdout.split() if w.startswith("agk_"))
        run_main(prepare(running.address("ledger"), "bench"))
        endpoints = (
            running.address("gateway"),
            running.address("engine"),
            running.address("ledger"),
            f"http://{http_address}",
        )
        run_main(measure(endpoints, "bench", key, calls, in_flight))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["dev", "processes", "both"], default="both")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=64)
    args = parser.parse_args()
    if args.mode in ("dev", "both"):
        bench_dev(args.calls, args.in_flight)
    if args.mode in ("processes", "both"):
        bench_processes(args.calls, args.in_flight)


if __name__ == "__main__":
    main()
