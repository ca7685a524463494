"""When and how the client tries a call again whose outcome is unknown (docs/contracts.md,
"Retrying calls"): a mutation that carries a request_id is applied once however often it
is sent, and a read changes nothing, so both are sent again when the service restarts, is
unreachable or cancels calls as it shuts down."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

T = TypeVar("T")
log = logging.getLogger(__name__)

UNKNOWN_OUTCOME: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
)
"""The codes after which a call may or may not have been applied. A CANCELLED that
reaches the caller as a status is one it did not ask for (its own cancellation raises
asyncio.CancelledError): a server shutting down cancels the calls it had not started."""

BROKEN_OFF: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
)
"""The codes of a call cut off by the server's going away: those on which an event
stream, which has no deadline, is reopened."""
_MOST_DOUBLINGS = 64
"""Beyond this many doublings a pause is past any cap, and 2.0**n would overflow."""


def backoff_delay(
    failures: int, *, base: float, cap: float = math.inf, jitter: bool = True
) -> float:
    """The pause after failed try number `failures` (from 1): `base` seconds, doubled at
    each further failure, at most `cap`. With `jitter` it is drawn from the upper half of
    that (between half and all of it), so that callers cut off together do not come back
    together."""
    ceiling = min(cap, base * 2.0 ** min(failures - 1, _MOST_DOUBLINGS))
    if not jitter:
        return ceiling
    return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and after what pauses, a call whose outcome is unknown is tried again.

    A unary call is retried on UNAVAILABLE, on a CANCELLED the client did not ask for, and
    on DEADLINE_EXCEEDED while the call's overall timeout leaves time; a mutation only
    when it carries a request_id (or a repeat is harmless: see the client's README). An
    event stream that breaks with UNAVAILABLE is reopened where it stopped.
    """

    attempts: int = 8
    """Tries of a call, the first included, before its error is raised; for an event
    stream, openings in a row with no event received in between. 1 turns retries off."""
    initial_backoff: float = 0.2
    """Seconds before the first retry; doubled at each further one."""
    max_backoff: float = 5.0
    """The longest wait between two tries, in seconds."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("a backoff cannot be negative")

    def backoff(self, failures: int) -> float:
        """The wait after failed try number `failures` (from 1), with jitter so that many
        clients cut off together do not come back together."""
        return backoff_delay(failures, base=self.initial_backoff, cap=self.max_backoff)

    def may_retry(self, failures: int) -> bool:
        """Whether a call that has failed `failures` times in a row may be tried again."""
        return failures < self.attempts


NO_RETRY = RetryPolicy(attempts=1)
"""For a call that must not be sent twice."""

Send = Callable[[float | None], Awaitable[T]]
"""Sends one try of a call with the seconds it may take (None: no deadline)."""
Repeated = Callable[[grpc.aio.AioRpcError], Awaitable[T]]
"""Reads the answer of a retry that a repeat of an applied call would get (a second
cancel's FAILED_PRECONDITION, a second delete's NOT_FOUND): returns the call's result, or
raises the error when the first try cannot have caused it."""


async def retried(
    send: Send[T],
    policy: RetryPolicy,
    timeout: float | None,
    *,
    still_wanted: Callable[[], bool] = lambda: True,
    repeated: Repeated[T] | None = None,
    codes: frozenset[grpc.StatusCode] = UNKNOWN_OUTCOME,
) -> T:
    """The answer of `send`, tried again as `policy` says while its outcome is unknown
    and `still_wanted()` (false once the client is closed). `timeout` bounds all the
    tries together: each is sent with what is left of it, and none starts after it.
    `codes` are those tried again (a caller without deadlines leaves out DEADLINE_EXCEEDED)."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    failures = 0
    while True:
        left = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            return await send(left)
        except grpc.aio.AioRpcError as error:
            failures += 1
            if error.code() not in codes:
                if failures > 1 and repeated is not None:
                    return await repeated(error)
                raise
            pause = policy.backoff(failures)
            in_time = deadline is None or loop.time() + pause < deadline
            if not (policy.may_retry(failures) and in_time and still_wanted()):
                raise
            log.info(
                "try %d failed with %s (%s); trying again in %.2fs",
                failures,
                error.code().name,
                error.details(),
                pause,
            )
        await asyncio.sleep(pause)
