"""A worker whose ledger is down gives the job's lease back instead of failing it, and the
job ends for the outage only past its own deadline."""

from __future__ import annotations

import grpc
from agentrt.common.v1 import common_pb2
from agentrt.ledger.v1 import ledger_pb2_grpc
from google.protobuf.duration_pb2 import Duration

from services.orchestrator.spend import LedgerSpend, SpendConfig
from tests.e2e.processes import free_port

from .conftest import System

E = common_pb2


async def test_a_job_whose_ledger_stays_down_is_requeued_until_its_deadline(
    system: System,
) -> None:
    # Nothing listens there: every ledger call is refused, as while the ledger restarts.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as down:
        spend = LedgerSpend(ledger_pb2_grpc.LedgerServiceStub(down), SpendConfig(retry_seconds=0.2))
        await system.pool("w1", spend=spend).start()
        job = await system.create_job(prompt="hello", model="local", timeout=Duration(seconds=4))

        end = await system.end(job.name)

        history = await system.history(job.name)
        requeued = [e for e in history if e.type == E.EVENT_TYPE_JOB_REQUEUED]
        assert len(requeued) >= 2, "the lease was given back, again and again"
        assert all("unavailable: the ledger is unavailable" in e.attempt.reason for e in requeued)
        assert end.type == E.EVENT_TYPE_JOB_TIMED_OUT
        done = await system.get_job(job.name)
        assert done.state == E.JOB_STATE_TIMED_OUT
        assert done.usage.input_tokens == 0  # No model call was made unaccounted.
