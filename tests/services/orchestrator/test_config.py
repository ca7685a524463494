"""OrchestratorConfig: defaults, derived heartbeat, and errors naming the variable."""

from __future__ import annotations

import pytest

from services.kit.config import ConfigError
from services.orchestrator.config import OrchestratorConfig


def test_defaults() -> None:
    config = OrchestratorConfig.from_env({})
    assert config.concurrency == 64
    assert config.lease_seconds == 15.0
    assert config.heartbeat_seconds == 1.0
    assert config.lease_wait_seconds == 5.0
    host_pid_random = config.worker_id.rsplit("-", 2)
    assert len(host_pid_random) == 3 and host_pid_random[1].isdigit()


def test_heartbeat_follows_a_short_lease_and_is_at_most_a_second() -> None:
    assert OrchestratorConfig.from_env({"AGENTRT_LEASE_SECONDS": "1.5"}).heartbeat_seconds == 0.5
    assert OrchestratorConfig.from_env({"AGENTRT_LEASE_SECONDS": "60"}).heartbeat_seconds == 1.0


def test_worker_ids_differ_between_pools_of_one_process() -> None:
    assert OrchestratorConfig.from_env({}).worker_id != OrchestratorConfig.from_env({}).worker_id


def test_explicit_values() -> None:
    config = OrchestratorConfig.from_env(
        {
            "AGENTRT_ORCHESTRATOR_CONCURRENCY": "2",
            "AGENTRT_LEASE_SECONDS": "30",
            "AGENTRT_HEARTBEAT_SECONDS": "4",
            "AGENTRT_LEASE_WAIT_SECONDS": "0.5",
            "AGENTRT_ORCHESTRATOR_WORKER_ID": "worker-a",
        }
    )
    assert (config.concurrency, config.lease_seconds, config.heartbeat_seconds) == (2, 30.0, 4.0)
    assert (config.lease_wait_seconds, config.worker_id) == (0.5, "worker-a")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"AGENTRT_ORCHESTRATOR_CONCURRENCY": "0"}, "AGENTRT_ORCHESTRATOR_CONCURRENCY"),
        ({"AGENTRT_ORCHESTRATOR_CONCURRENCY": "many"}, "AGENTRT_ORCHESTRATOR_CONCURRENCY"),
        ({"AGENTRT_LEASE_SECONDS": "0.5"}, "AGENTRT_LEASE_SECONDS"),
        ({"AGENTRT_LEASE_SECONDS": "601"}, "AGENTRT_LEASE_SECONDS"),
        (
            {"AGENTRT_LEASE_SECONDS": "10", "AGENTRT_HEARTBEAT_SECONDS": "10"},
            "AGENTRT_HEARTBEAT_SECONDS",
        ),
        ({"AGENTRT_LEASE_WAIT_SECONDS": "61"}, "AGENTRT_LEASE_WAIT_SECONDS"),
        ({"AGENTRT_LEASE_WAIT_SECONDS": "-1"}, "AGENTRT_LEASE_WAIT_SECONDS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        OrchestratorConfig.from_env(env)
