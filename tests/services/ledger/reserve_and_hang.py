"""A stand-in for an orchestrator worker that dies between reserve and settle: it reserves
a model call's worst case through LedgerSpend, prints the reservation's name, and hangs
until it is SIGKILLed. Run as `python -m tests.services.ledger.reserve_and_hang ADDRESS
JOB TTL`."""

from __future__ import annotations

import asyncio
import sys

import grpc
from agentrt.common.v1 import common_pb2
from agentrt.ledger.v1 import ledger_pb2_grpc

from services.orchestrator.spend import LedgerSpend, SpendConfig
from tests.services.ledger.spend_calls import model_call, worker_job


async def main(address: str, job_name: str, ttl: float) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        spend = LedgerSpend(
            ledger_pb2_grpc.LedgerServiceStub(channel), SpendConfig(reservation_ttl=ttl)
        )
        hold = await spend.reserve_model_call(
            worker_job(job_name), common_pb2.Usage(), model_call()
        )
        print(hold.reservation, flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
