"""The edge's typed configuration, read once from AGENTRT_EDGE_* variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.kit.config import ConfigError, RuntimeConfig, env_address, env_float, env_int, env_str

# Package data, beside this module, so that an installed package (the image) has them too.
HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "envoy.yaml"
"""The Envoy configuration, a template (string.Template placeholders)."""
DESCRIPTORS = HERE / "agentrt.binpb"
"""The descriptor set of the public API, made by `make protos`."""


@dataclass(frozen=True)
class EdgeConfig:
    """Where the edge listens, where it sends calls, and what it lets through."""

    listen_address: str
    """AGENTRT_EDGE_LISTEN_ADDRESS: HTTP/JSON, gRPC-Web and gRPC (default 127.0.0.1:8080)."""
    admin_address: str
    """AGENTRT_EDGE_ADMIN_ADDRESS: Envoy's admin interface (default 127.0.0.1:9901); keep it
    off public interfaces: it can stop Envoy."""
    gateway_address: str
    """AGENTRT_GATEWAY_ADDRESS: the gateway the edge forwards to (default 127.0.0.1:50051)."""
    max_request_bytes: int
    """AGENTRT_EDGE_MAX_REQUEST_BYTES: the largest request body let through (default 4 MiB,
    the gateway's own message limit)."""
    max_connections: int
    """AGENTRT_EDGE_MAX_CONNECTIONS: open client connections at most (default 10000)."""
    unary_timeout: float
    """AGENTRT_EDGE_UNARY_TIMEOUT_SECONDS: how long a unary call may take (default 60)."""
    stream_timeout: float
    """AGENTRT_EDGE_STREAM_TIMEOUT_SECONDS: how long an event stream may stay open, and
    how long it may go without an event (default 3600); a client then resumes it."""
    tls_cert_file: Path | None
    """AGENTRT_EDGE_TLS_CERT_FILE: a PEM certificate chain; with the key, the edge serves
    TLS only (HTTP/2 and HTTP/1.1 by ALPN)."""
    tls_key_file: Path | None
    """AGENTRT_EDGE_TLS_KEY_FILE: the PEM private key of the certificate."""
    cors_origins: tuple[str, ...]
    """AGENTRT_EDGE_CORS_ORIGINS: comma-separated origins whose browser pages may call the
    edge (`*`: any); empty: none."""
    descriptors: Path
    """AGENTRT_EDGE_DESCRIPTORS: the descriptor set to transcode with (default the one in
    services/edge, installed with the package)."""
    log_level: str
    """AGENTRT_EDGE_LOG_LEVEL: Envoy's log level (default `warning`)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EdgeConfig:
        cert = env_str("AGENTRT_EDGE_TLS_CERT_FILE", "", env)
        key = env_str("AGENTRT_EDGE_TLS_KEY_FILE", "", env)
        if bool(cert) != bool(key):
            raise ConfigError(
                "AGENTRT_EDGE_TLS_CERT_FILE and AGENTRT_EDGE_TLS_KEY_FILE: set both or neither"
            )
        origins = env_str("AGENTRT_EDGE_CORS_ORIGINS", "", env)
        return cls(
            listen_address=env_address("AGENTRT_EDGE_LISTEN_ADDRESS", "127.0.0.1:8080", env),
            admin_address=env_address("AGENTRT_EDGE_ADMIN_ADDRESS", "127.0.0.1:9901", env),
            gateway_address=RuntimeConfig.from_env(env).addresses["gateway"],
            max_request_bytes=env_int(
                "AGENTRT_EDGE_MAX_REQUEST_BYTES", 4 * 1024 * 1024, env, minimum=1024
            ),
            max_connections=env_int("AGENTRT_EDGE_MAX_CONNECTIONS", 10_000, env, minimum=1),
            unary_timeout=env_float("AGENTRT_EDGE_UNARY_TIMEOUT_SECONDS", 60.0, env, 0.001),
            stream_timeout=env_float("AGENTRT_EDGE_STREAM_TIMEOUT_SECONDS", 3600.0, env, 0.001),
            tls_cert_file=_absolute(cert),
            tls_key_file=_absolute(key),
            cors_origins=tuple(o.strip() for o in origins.split(",") if o.strip()),
            descriptors=_absolute(env_str("AGENTRT_EDGE_DESCRIPTORS", "", env)) or DESCRIPTORS,
            log_level=_log_level(env_str("AGENTRT_EDGE_LOG_LEVEL", "warning", env)),
        )

    def check_files(self) -> None:
        """ConfigError naming the variable of a file Envoy would fail to read here. Not
        part of reading the configuration: a configuration printed for another machine
        (a container) names files that exist only there."""
        files = {
            "AGENTRT_EDGE_TLS_CERT_FILE": self.tls_cert_file,
            "AGENTRT_EDGE_TLS_KEY_FILE": self.tls_key_file,
            "AGENTRT_EDGE_DESCRIPTORS": self.descriptors,
        }
        for name, path in files.items():
            if path is not None and not path.is_file():
                raise ConfigError(f"{name}: no such file: {str(path)!r}")


def _absolute(value: str) -> Path | None:
    """The file named by `value`, made absolute (Envoy may run elsewhere); None if empty."""
    return Path(value).absolute() if value else None


_LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")


def _log_level(value: str) -> str:
    if value.lower() not in _LOG_LEVELS:
        raise ConfigError(f"AGENTRT_EDGE_LOG_LEVEL: one of {', '.join(_LOG_LEVELS)}, got {value!r}")
    return value.lower()
