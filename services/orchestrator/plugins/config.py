"""Typed configuration of the plugin registry's health checks, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.kit.config import env_float


@dataclass(frozen=True)
class PluginConfig:
    """How often plugins are checked and how fresh the tools offered to jobs are."""

    check_seconds: float = 10.0
    """AGENTRT_PLUGIN_CHECK_SECONDS: how often each orchestrator replica checks every
    registered plugin (default 10)."""
    check_timeout_seconds: float = 5.0
    """AGENTRT_PLUGIN_CHECK_TIMEOUT_SECONDS: how long a probe (ListTools, then Health) may
    take before the plugin counts as unhealthy (default 5)."""
    call_timeout_seconds: float = 60.0
    """AGENTRT_PLUGIN_CALL_TIMEOUT_SECONDS: the longest a tool call may take when the job's
    tool options set no timeout of their own (default 60)."""
    refresh_seconds: float = 2.0
    """AGENTRT_PLUGIN_REFRESH_SECONDS: how old the list of healthy plugins a worker offers
    to jobs may be; registrations on other replicas reach it within this time (default 2)."""

    @property
    def stale_seconds(self) -> float:
        """After this long without a check, a plugin shows as UNKNOWN and is not offered:
        three missed rounds mean no replica is checking it."""
        return 3 * self.check_seconds + self.check_timeout_seconds

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PluginConfig:
        return cls(
            check_seconds=env_float("AGENTRT_PLUGIN_CHECK_SECONDS", 10.0, env, minimum=0.01),
            check_timeout_seconds=env_float(
                "AGENTRT_PLUGIN_CHECK_TIMEOUT_SECONDS", 5.0, env, minimum=0.01
            ),
            call_timeout_seconds=env_float(
                "AGENTRT_PLUGIN_CALL_TIMEOUT_SECONDS", 60.0, env, minimum=0.01
            ),
            refresh_seconds=env_float("AGENTRT_PLUGIN_REFRESH_SECONDS", 2.0, env),
        )
