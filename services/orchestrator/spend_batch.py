"""SpendBatcher: the reserve, settle and release calls of a worker's concurrent jobs, sent
to the ledger together as BatchSpend calls.

A worker runs many jobs at once, and each of their model calls needs a reservation before
it and a settlement after it. Sent one by one, each costs a round trip and a pass through
both ends' gRPC stacks. The batcher queues the operations asked for while the event loop
is busy and sends them as one BatchSpend when it gets to run (so a lone call waits no
longer than one turn of the loop), with at most `max_in_flight` batches outstanding: while
they are out, new operations gather for the next one. Each caller gets its own
operation's answer, or the error its own call would have raised (an AioRpcError with the
same code and ErrorInfo), so callers cannot tell a batched call from a single one. A
ledger that does not know BatchSpend (an older release during a rolling upgrade) is sent
single calls from then on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from google.rpc import status_pb2  # type: ignore[import-untyped, unused-ignore]

log = logging.getLogger(__name__)

_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass
class _Queued:
    operation: ledger_pb2.SpendOperation
    timeout: float | None
    answer: asyncio.Future[ledger_pb2.Reservation]


class SpendBatcher:
    """ReserveBudget, SettleReservation and ReleaseReservation with the stub's signature,
    sent as BatchSpend calls of up to `max_operations` operations."""

    def __init__(
        self,
        stub: ledger_pb2_grpc.LedgerServiceAsyncStub,
        max_operations: int = 100,
        max_in_flight: int = 2,
    ) -> None:
        self._stub = stub
        self._max_operations = max_operations
        self._max_in_flight = max_in_flight
        self._queued: list[_Queued] = []
        self._in_flight = 0
        self._flush_scheduled = False
        self._batching = True
        self._sending: set[asyncio.Task[None]] = set()

    async def ReserveBudget(
        self, request: ledger_pb2.ReserveBudgetRequest, timeout: float | None = None
    ) -> ledger_pb2.Reservation:
        return await self._submit(ledger_pb2.SpendOperation(reserve=request), timeout)

    async def SettleReservation(
        self, request: ledger_pb2.SettleReservationRequest, timeout: float | None = None
    ) -> ledger_pb2.Reservation:
        return await self._submit(ledger_pb2.SpendOperation(settle=request), timeout)

    async def ReleaseReservation(
        self, request: ledger_pb2.ReleaseReservationRequest, timeout: float | None = None
    ) -> ledger_pb2.Reservation:
        return await self._submit(ledger_pb2.SpendOperation(release=request), timeout)

    async def _submit(
        self, operation: ledger_pb2.SpendOperation, timeout: float | None
    ) -> ledger_pb2.Reservation:
        if not self._batching:
            return await self._single(operation, timeout)
        answer: asyncio.Future[ledger_pb2.Reservation] = asyncio.get_running_loop().create_future()
        self._queued.append(_Queued(operation, timeout, answer))
        self._schedule_flush()
        return await answer

    def _schedule_flush(self) -> None:
        if self._flush_scheduled or self._in_flight >= self._max_in_flight or not self._queued:
            return
        self._flush_scheduled = True
        # After the callbacks already due: the jobs woken in this turn of the loop add
        # their operations to this batch.
        asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch = self._queued[: self._max_operations]
        del self._queued[: self._max_operations]
        if not batch:
            return
        self._in_flight += 1
        send = self._send(batch) if self._batching else self._send_singly(batch)
        task = asyncio.get_running_loop().create_task(send)
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._in_flight -= 1
        self._schedule_flush()

    async def _send(self, batch: list[_Queued]) -> None:
        timeouts = [queued.timeout for queued in batch if queued.timeout is not None]
        request = ledger_pb2.BatchSpendRequest(operations=[queued.operation for queued in batch])
        try:
            response = await self._stub.BatchSpend(
                request, timeout=max(timeouts) if timeouts else None
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.warning("the ledger has no BatchSpend; sending single calls")
                self._batching = False
                await self._send_singly(batch)
                return
            _fail(batch, error)
            return
        except asyncio.CancelledError:
            for queued in batch:
                queued.answer.cancel()
            raise
        except Exception as error:
            _fail(batch, error)
            return
        if len(response.results) != len(batch):
            _fail(
                batch,
                RuntimeError(
                    f"BatchSpend answered {len(response.results)} results "
                    f"for {len(batch)} operations"
                ),
            )
            return
        for queued, result in zip(batch, response.results, strict=True):
            if queued.answer.done():
                continue
            if result.HasField("error"):
                queued.answer.set_exception(_rpc_error(result.error))
            else:
                queued.answer.set_result(result.reservation)

    async def _send_singly(self, batch: list[_Queued]) -> None:
        await asyncio.gather(*(self._answer_singly(queued) for queued in batch))

    async def _answer_singly(self, queued: _Queued) -> None:
        try:
            reservation = await self._single(queued.operation, queued.timeout)
        except Exception as error:
            _fail([queued], error)
        else:
            if not queued.answer.done():
                queued.answer.set_result(reservation)

    async def _single(
        self, operation: ledger_pb2.SpendOperation, timeout: float | None
    ) -> ledger_pb2.Reservation:
        kind = operation.WhichOneof("operation")
        if kind == "reserve":
            return await self._stub.ReserveBudget(operation.reserve, timeout=timeout)
        if kind == "settle":
            return await self._stub.SettleReservation(operation.settle, timeout=timeout)
        return await self._stub.ReleaseReservation(operation.release, timeout=timeout)


def _fail(batch: list[_Queued], error: Exception) -> None:
    for queued in batch:
        if not queued.answer.done():
            queued.answer.set_exception(error)


def _rpc_error(status: status_pb2.Status) -> grpc.aio.AioRpcError:
    """The error a single call would have raised for this operation's status."""
    return grpc.aio.AioRpcError(
        code=_CODES.get(status.code, grpc.StatusCode.UNKNOWN),
        initial_metadata=grpc.aio.Metadata(),
        trailing_metadata=grpc.aio.Metadata(
            ("grpc-status-details-bin", status.SerializeToString())
        ),
        details=status.message,
        debug_error_string="",
    )
