"""The ledger service's unit: its store, servicer and the reservation sweeper."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc

from services.kit.config import env_float
from services.kit.infra import Infrastructure
from services.kit.periodic import cancel_all, run_every
from services.ledger.handlers import LedgerServicer
from services.ledger.store import LedgerStore, open_ledger_store

log = logging.getLogger(__name__)

SWEEP_BATCH = 100
"""Reservations expired per transaction; a full batch means more may be waiting."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class LedgerUnit:
    """Usage, prices, budgets and reservations; expires reservations nobody settled."""

    name = "ledger"
    service_names = (ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name,)

    def __init__(
        self,
        store: LedgerStore,
        sweep_seconds: float,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._store = store
        self._servicer = LedgerServicer(store, clock)
        self._sweep_seconds = sweep_seconds
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []

    def register(self, server: grpc.aio.Server) -> None:
        ledger_pb2_grpc.add_LedgerServiceServicer_to_server(self._servicer, server)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(
                run_every(self._sweep_seconds, self._expire_reservations),
                name="ledger-reservations",
            )
        ]

    async def stop(self) -> None:
        await cancel_all(self._tasks)

    async def close(self) -> None:
        await self._store.close()

    async def _expire_reservations(self) -> None:
        """Give back what reservations past their ttl hold: their holder died or forgot."""
        while True:
            expired = await self._store.expire_reservations(self._clock(), SWEEP_BATCH)
            if expired:
                log.info("expired %d reservation(s)", len(expired))
            if len(expired) < SWEEP_BATCH:
                return


async def create_unit(infra: Infrastructure) -> LedgerUnit:
    sweep = env_float("AGENTRT_RESERVATION_SWEEP_SECONDS", 1.0, minimum=0.05)
    return LedgerUnit(await open_ledger_store(infra.storage("ledger")), sweep)
