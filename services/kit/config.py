"""Typed configuration read once from AGENTRT_* environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORTS: Mapping[str, int] = {
    "gateway": 50051,
    "engine": 50052,
    "jobs": 50053,
    "policy": 50054,
    "ledger": 50055,
    "orchestrator": 50056,
    "replay": 50057,
}
"""The port each service listens on unless configured otherwise."""


class ConfigError(ValueError):
    """An environment variable is missing or has a value of the wrong form."""


def env_str(name: str, default: str = "", env: Mapping[str, str] | None = None) -> str:
    return (os.environ if env is None else env).get(name, default).strip() or default


def env_int(name: str, default: int, env: Mapping[str, str] | None = None, minimum: int = 0) -> int:
    raw = env_str(name, "", env)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


def env_float(
    name: str, default: float, env: Mapping[str, str] | None = None, minimum: float = 0.0
) -> float:
    raw = env_str(name, "", env)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


def env_address(name: str, default: str, env: Mapping[str, str] | None = None) -> str:
    value = env_str(name, default, env)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{name}: expected host:port, got {value!r}")
    return value


@dataclass(frozen=True)
class RuntimeConfig:
    """Where a service keeps its data and how it reaches the others."""

    data_dir: Path
    """AGENTRT_DATA_DIR: the SQLite files and the dev endpoint file (default `.agentrt`)."""
    database_url: str
    """AGENTRT_DATABASE_URL: a PostgreSQL DSN; empty means SQLite under data_dir."""
    redis_url: str
    """AGENTRT_REDIS_URL: Redis for events and wake-ups; empty means in-process only."""
    redis_prefix: str
    """AGENTRT_REDIS_PREFIX: the prefix of every Redis key (default `agentrt`)."""
    addresses: Mapping[str, str]
    """AGENTRT_<SERVICE>_ADDRESS: where each service is reached (default 127.0.0.1:port)."""
    call_timeout: float
    """AGENTRT_CALL_TIMEOUT: seconds a call to another service may take when the
    incoming call sets no shorter deadline (default 30)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RuntimeConfig:
        addresses = {
            service: env_address(f"AGENTRT_{service.upper()}_ADDRESS", f"127.0.0.1:{port}", env)
            for service, port in DEFAULT_PORTS.items()
        }
        return cls(
            data_dir=Path(env_str("AGENTRT_DATA_DIR", ".agentrt", env)),
            database_url=env_str("AGENTRT_DATABASE_URL", "", env),
            redis_url=env_str("AGENTRT_REDIS_URL", "", env),
            redis_prefix=env_str("AGENTRT_REDIS_PREFIX", "agentrt", env),
            addresses=addresses,
            call_timeout=env_float("AGENTRT_CALL_TIMEOUT", 30.0, env, minimum=0.001),
        )

    def listen_address(self, service: str, env: Mapping[str, str] | None = None) -> str:
        """AGENTRT_LISTEN_ADDRESS, or all interfaces on the service's default port."""
        return env_address("AGENTRT_LISTEN_ADDRESS", f"0.0.0.0:{DEFAULT_PORTS[service]}", env)
