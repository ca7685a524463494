"""A gateway alone in its server, as in production, forwarding the admin APIs to a system
whose services all share another server (where the gateway forwards nothing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.dev import LocalSystem
from services.kit.infra import open_infrastructure
from services.kit.server import Server
from services.units import create_unit


@asynccontextmanager
async def forwarding_gateway(system: LocalSystem) -> AsyncIterator[str]:
    """The endpoint of a second gateway on the system's key store, whose calls go to the
    system's endpoint."""
    infra = await open_infrastructure(system.infra.config)
    server = Server("127.0.0.1:0", "gateway-under-test")
    try:
        await server.start([await create_unit("gateway", infra)])
        try:
            yield f"127.0.0.1:{server.port}"
        finally:
            await server.stop(grace=1.0)
    finally:
        await infra.close()
