"""One bootstrap for every service: a grpc.aio server with health, reflection,
interceptors and telemetry, started and drained the same way everywhere."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Sequence
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from services.kit.config import env_float, env_int
from services.kit.interceptors import ServerInterceptor
from services.kit.local_channel import LocalChannel, LocalServer
from services.kit.loop import freeze_startup_objects
from services.kit.metrics import configure_metrics
from services.kit.telemetry import configure_tracing

log = logging.getLogger(__name__)


class ServiceUnit(Protocol):
    """One service as the bootstrap sees it."""

    name: str
    """The short name, e.g. "jobs"."""

    @property
    def service_names(self) -> Sequence[str]:
        """The full gRPC service names it serves, for health and reflection."""
        ...

    def register(self, server: grpc.aio.Server) -> None:
        """Adds its servicers to the server."""
        ...

    async def start(self) -> None:
        """Starts background work; called once the server listens."""
        ...

    async def stop(self) -> None:
        """Stops background work; the server still answers (workers release their jobs)."""
        ...

    async def close(self) -> None:
        """Closes its resources (stores); the server has stopped answering."""
        ...


def connection_options() -> list[tuple[str, int]]:
    """Options of both ends of every agentrt connection: message sizes and keepalive."""
    max_bytes = env_int("AGENTRT_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, minimum=1024)
    return [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def connection_age_options() -> list[tuple[str, int]]:
    """How long a client may keep one connection to this server (docs/kubernetes.md).

    At the age the server sends GOAWAY: the client opens a new connection for its next
    calls, looking the name up again on the way, so it finds pods added since, while the
    calls already on the old connection (event streams, long polls) have the grace to end.
    """
    age = env_float("AGENTRT_GRPC_MAX_CONNECTION_AGE_SECONDS", 300.0)
    grace = env_float("AGENTRT_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS", 3600.0)
    if not age:
        return []
    return [
        ("grpc.max_connection_age_ms", _milliseconds(age)),
        ("grpc.max_connection_age_grace_ms", _milliseconds(grace)),
    ]


def server_options() -> list[tuple[str, int]]:
    """Options every agentrt server uses. A taken port fails loudly (no SO_REUSEPORT)."""
    return [("grpc.so_reuseport", 0), *connection_options(), *connection_age_options()]


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


UNIT_STOP_SECONDS = 15.0
"""How long one unit may take to stop or to close before the drain moves on without it."""


async def _bounded(step: Awaitable[None], what: str, seconds: float) -> None:
    """Runs one step of a drain; a step that fails or hangs is logged, never blocks the rest."""
    try:
        await asyncio.wait_for(step, seconds)
    except TimeoutError:
        log.error("%s took longer than %.0f s; going on without it", what, seconds)
    except Exception:
        log.exception("%s failed", what)


class Server:
    """A grpc.aio server hosting one or more service units (all of them in `agentrt dev`).

    The port is bound at construction, so its number is known (and a taken port has
    failed) before the units are built; `start` then registers the units and serves.
    """

    def __init__(self, address: str, name: str) -> None:
        configure_tracing(name)
        configure_metrics(name)
        self._units: list[ServiceUnit] = []
        interceptor = ServerInterceptor()
        self._server = LocalServer(
            grpc.aio.server(
                interceptors=[aio_server_interceptor(), interceptor],  # type: ignore[no-untyped-call]
                options=server_options(),
            ),
            interceptors=[interceptor],
        )
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError as error:
            raise OSError(f"cannot listen on {address}: the address is taken or invalid") from error

    def local_channel(self, default_timeout: float) -> LocalChannel:
        """A channel to this server's services for callers in this process: it skips the
        network, and outgoing calls get `default_timeout` as over `open_channel`."""
        return LocalChannel(self._server, default_timeout)

    @property
    def service_names(self) -> list[str]:
        return [name for unit in self._units for name in unit.service_names]

    async def start(self, units: Sequence[ServiceUnit]) -> None:
        """Registers the units, serves, starts each unit, then reports SERVING."""
        self._units = list(units)
        for unit in self._units:
            unit.register(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        await self._server.start()
        started: list[ServiceUnit] = []
        try:
            for unit in self._units:
                await unit.start()
                started.append(unit)
        except BaseException:
            for unit in reversed(started):
                await unit.stop()
            await self._server.stop(None)
            for unit in reversed(self._units):
                await unit.close()
            raise
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s on port %d", ", ".join(self.service_names), self.port)

    async def stop(self, grace: float = 10.0) -> None:
        """Drains: NOT_SERVING first, then units stop their background work, then
        in-flight RPCs get `grace` to finish, and last the units close their stores.

        Units stop in start order, so that in one process the jobs service stops granting
        leases (and answers its long polls) before the workers that poll it wait for them.
        """
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        for unit in self._units:
            await _bounded(unit.stop(), f"stopping {unit.name}", UNIT_STOP_SECONDS)
        await self._server.stop(grace)
        for unit in reversed(self._units):
            await _bounded(unit.close(), f"closing {unit.name}", UNIT_STOP_SECONDS)

    async def _set_health(self, status: int) -> None:
        for name in ["", *self.service_names]:
            await self._health.set(name, status)

    async def serve_until_signalled(
        self, units: Sequence[ServiceUnit], grace: float = 10.0
    ) -> None:
        """Serves the units until SIGTERM or SIGINT, then drains."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await self.start(units)
        freeze_startup_objects()
        try:
            await stopping.wait()
        finally:
            log.info("draining")
            await self.stop(grace)
