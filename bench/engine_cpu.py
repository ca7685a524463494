"""Benchmark of the engine's own CPU per model call: EngineService/Complete's handler called
in-process on the built-in `local` model, with no network, no gRPC and no other service, so
that what is measured is the engine's work on a call (conversion, routing, the local model,
the answer) and nothing else.

Prints the microseconds per call of the best and the median of five runs of `--calls`
calls each. Usage: python bench/engine_cpu.py [--calls N].
"""

from __future__ import annotations

import argparse
import statistics
import time

from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2

from services.engine.handlers import EngineServicer
from services.engine.server import EngineConfig, EngineUnit
from services.kit.loop import run_main

RUNS = 5


class _Context:
    """All the handler asks of its call's context: the time left."""

    def time_remaining(self) -> float:
        return 30.0


def _request(i: int) -> engine_pb2.CompleteRequest:
    return engine_pb2.CompleteRequest(
        model="local",
        tenant="bench",
        params=common_pb2.ModelParams(max_output_tokens=32),
        messages=[common_pb2.Message(role=common_pb2.ROLE_USER, content=f"benchmark call {i}")],
    )


async def measure(calls: int) -> None:
    unit = EngineUnit(EngineConfig.from_env({}))
    await unit.start()
    try:
        servicer, context = EngineServicer(unit.engine), _Context()
        for i in range(500):  # warm-up
            await servicer.Complete(_request(i), context)  # type: ignore[arg-type]
        per_call = []
        for run in range(RUNS):
            requests = [_request(run * calls + i) for i in range(calls)]
            started = time.perf_counter()
            for request in requests:
                await servicer.Complete(request, context)  # type: ignore[arg-type]
            per_call.append((time.perf_counter() - started) / calls * 1e6)
        print(
            f"engine CPU per call: best {min(per_call):.1f} us, "
            f"median {statistics.median(per_call):.1f} us ({RUNS} runs of {calls})"
        )
    finally:
        await unit.stop()
        await unit.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    run_main(measure(parser.parse_args().calls))


if __name__ == "__main__":
    main()
