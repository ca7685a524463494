"""Client channels to other agentrt services, with telemetry, deadline and request-context
propagation, balanced over every address their target resolves to."""

from __future__ import annotations

import json
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from services.kit.config import ConfigError, env_float, env_str
from services.kit.interceptors import client_interceptors
from services.kit.server import connection_options

LB_POLICIES = ("round_robin", "pick_first")
"""The balancing policies AGENTRT_GRPC_LB_POLICY may name (gRPC's built-in ones)."""


def open_channel(
    address: str, default_timeout: float, health_checked: bool = True
) -> grpc.aio.Channel:
    """An insecure channel inside the deployment (TLS ends at the edge proxy).

    `address` is any gRPC target: `host:port` is looked up by DNS (gRPC's default
    resolver, so no `dns:///` is added), and every address the name has is connected
    to and given calls in turn, e.g. every pod behind a headless Kubernetes Service.
    With `health_checked` (agentrt's own services) an address whose health is not
    SERVING gets no calls; a caller that judges a server's health itself (the plugin
    registry) turns it off, to reach and ask a server that says NOT_SERVING.
    """
    interceptors: list[Any] = [
        *client_interceptors(default_timeout),
        *aio_client_interceptors(),  # type: ignore[no-untyped-call]
    ]
    options = channel_options(health_checked)
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


def channel_options(health_checked: bool = True) -> list[tuple[str, int | str]]:
    """The options of every channel `open_channel` opens."""
    balancing: dict[str, Any] = {"loadBalancingConfig": [{lb_policy(): {}}]}
    if health_checked:
        # round_robin watches each address's overall health (grpc.health.v1, which every
        # agentrt server serves) and sends nothing to one that says NOT_SERVING: a
        # draining replica gets no new calls, though it still answers those it has.
        balancing["healthCheckConfig"] = {"serviceName": ""}
    # gRPC looks a name up again when a connection ends (a server's GOAWAY at its
    # connection age, a pod gone), at most this often.
    dns_interval = env_float("AGENTRT_GRPC_DNS_MIN_INTERVAL_SECONDS", 30.0)
    return [
        *connection_options(),
        ("grpc.service_config", json.dumps(balancing)),
        ("grpc.dns_min_time_between_resolutions_ms", round(dns_interval * 1000)),
    ]


def lb_policy() -> str:
    """AGENTRT_GRPC_LB_POLICY: `round_robin` (the default) spreads calls over every
    address of a target; `pick_first` keeps them all on the first that answers."""
    policy = env_str("AGENTRT_GRPC_LB_POLICY", LB_POLICIES[0])
    if policy not in LB_POLICIES:
        raise ConfigError(
            f"AGENTRT_GRPC_LB_POLICY: expected one of {', '.join(LB_POLICIES)}, got {policy!r}"
        )
    return policy
