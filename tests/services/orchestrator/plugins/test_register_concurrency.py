"""RegisterPlugin answers within its probe timeout, one call or several at once."""

from __future__ import annotations

import asyncio
import time

import grpc

from tests.e2e.processes import free_ports
from tests.services.kit.status import error_info
from tests.services.orchestrator.plugins.conftest import FAST_CHECKS, Stub
from tests.services.orchestrator.plugins.test_handlers import failure, register_request

CALLS = 5


async def test_concurrent_registrations_of_an_unreachable_plugin_all_answer_unavailable(
    orchestrator: Stub,
) -> None:
    # A port nobody listens on: connections are refused, as for a plugin that is down.
    endpoint = f"127.0.0.1:{free_ports(1)[0]}"
    started = time.monotonic()

    errors = await asyncio.gather(
        *(
            failure(
                orchestrator.RegisterPlugin(
                    register_request(endpoint, plugin_id=f"down-{index}", tools=(f"t{index}",)),
                    timeout=4 * FAST_CHECKS.check_timeout_seconds,
                )
            )
            for index in range(CALLS)
        )
    )

    elapsed = time.monotonic() - started
    assert [(e.code(), error_info(e).reason) for e in errors] == [
        (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    ] * CALLS, [e.details() for e in errors]
    # Each probe may take its timeout for ListTools and again for Health, no more.
    assert elapsed < 2 * FAST_CHECKS.check_timeout_seconds + 1.0
