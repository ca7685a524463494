"""Background work of a service: periodic sweeps, and stopping the tasks that run them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

from services.kit.events.base import retry_delay

log = logging.getLogger(__name__)


async def run_every(seconds: float, work: Callable[[], Awaitable[None]]) -> None:
    """Runs `work` now and then every `seconds`, until cancelled; a failure is logged and
    retried with backoff instead of ending the loop."""
    failures = 0
    while True:
        try:
            await work()
            failures = 0
            await asyncio.sleep(seconds)
        except Exception:
            failures += 1
            log.warning("periodic %s failed", work.__name__, exc_info=failures == 1)
            await asyncio.sleep(retry_delay(failures))


async def cancel_all(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancels the tasks and waits until each has ended."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
