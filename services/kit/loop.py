"""Runs a service's main coroutine on the fastest event loop the platform has."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_main(main: Coroutine[Any, Any, T]) -> T:
    """uvloop where it is installed (measured: about 30% more jobs/s for `agentrt dev`
    on the main-path benchmark, see docs/performance.md), asyncio's own loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def freeze_startup_objects() -> None:
    """Called once a process is serving: every object alive then (modules, message
    descriptors, pools, the server) lives as long as the process, so it is moved out of
    the garbage collector's sight. Otherwise each full collection walks all of them again
    (1-4% of a service's CPU on the main-path benchmark, about half that frozen)."""
    gc.collect()
    gc.freeze()
