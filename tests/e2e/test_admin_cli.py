"""End to end: an operator and an application team drive agentrt through the CLI, each
service its own process on PostgreSQL and Redis, everything through the gateway.

The operator's admin key sets a policy and a budget; the team's tenant key is refused
those, runs a job whose tool call needs approval, approves it, and reads its own usage.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from tests.e2e.conftest import create_key
from tests.e2e.processes import AGENTRT, Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

WAIT = 30.0
CALCULATION = 'call calculator {"expression": "6*7"}'
T = TypeVar("T")


@dataclass(frozen=True)
class Caller:
    """The CLI run against the gateway with one key."""

    env: dict[str, str]

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [AGENTRT, *args], env=self.env, capture_output=True, text=True, timeout=60, check=False
        )


def as_key(running: Cluster, key: str) -> Caller:
    return Caller(
        {**running.env, "AGENTRT_ENDPOINT": running.address("gateway"), "AGENTRT_API_KEY": key}
    )


def admin_key(running: Cluster) -> str:
    output = running.cli(
        "keys", "create", "--tenant", "ops", "--principal", "root", "--admin"
    ).stdout
    match = re.search(r"agk_[A-Za-z0-9_-]+", output)
    assert match, output
    return match.group(0)


def poll(what: str, probe: Callable[[], T]) -> T:
    """Calls `probe` until it returns something truthy, for up to WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_operator_and_team_through_the_gateway(processes: Cluster, tmp_path: Path) -> None:
    operator = as_key(processes, admin_key(processes))
    team = as_key(processes, create_key(processes, "acme", "app"))
    budget = ["budgets", "set", "acme-monthly", "--tenant", "acme", "--tokens", "1000000"]

    refused = team(*budget)
    assert refused.returncode == 2 and "PERMISSION_DENIED" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert operator(*budget).returncode == 0

    policy = tmp_path / "approvals.json"
    rule = {
        "id": "calc",
        "tool": {"patterns": ["calculator"], "verdict": "VERDICT_REQUIRE_APPROVAL"},
    }
    policy.write_text(json.dumps({"name": "approvals", "rules": [rule]}))
    assert team("policies", "apply", str(policy)).returncode == 2
    applied = operator("policies", "apply", str(policy))
    assert applied.stdout == "policySets/approvals created (version 1)\n", applied.stderr

    run = subprocess.Popen(
        [AGENTRT, "run", "--tool", "calculator", "--policy", "approvals", CALCULATION],
        env=team.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def pending() -> list[dict[str, str]]:
            jobs = json.loads(team("jobs", "list", "--json").stdout or "[]")
            if not jobs:
                return []
            listed = team("actions", "list", jobs[0]["name"], "--pending", "--json")
            found: list[dict[str, str]] = json.loads(listed.stdout or "[]")
            return found

        [action] = poll("the approval", pending)
        assert action["kind"] == "ACTION_KIND_APPROVAL"
        approved = team("actions", "approve", action["name"], "--reason", "checked")
        assert approved.stdout == f"{action['name']} RESOLVED\n", approved.stderr
        out, err = run.communicate(timeout=WAIT)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
    assert run.returncode == 0, err
    assert "42" in out and "tool.called (calculator ok)" in err

    own = team("usage", "report", "--by", "tenant,model", "--json")
    assert own.returncode == 0, own.stderr
    assert {row["tenant"] for row in json.loads(own.stdout)} == {"acme"}
    assert team("usage", "report", "--tenant", "ops").returncode == 2
    shown = team("budgets", "show")
    assert shown.returncode == 0 and "acme-monthly" in shown.stdout
