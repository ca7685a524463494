"""Client channels to other agentrt services, with telemetry, deadline and request-context
propagation."""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from services.kit.interceptors import client_interceptors
from services.kit.server import server_options


def open_channel(address: str, default_timeout: float) -> grpc.aio.Channel:
    """An insecure channel inside the deployment (TLS ends at the edge proxy)."""
    interceptors: list[Any] = [
        *client_interceptors(default_timeout),
        *aio_client_interceptors(),  # type: ignore[no-untyped-call]
    ]
    options = [opt for opt in server_options() if opt[0] != "grpc.so_reuseport"]
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
