"""Policy set resource names: "policySets/{policy_set}"."""

from __future__ import annotations

from services.kit.names import ChosenIdCollection

DEFAULT_POLICY_SET = "default"
"""The id of the set that governs jobs naming none."""

CHANGED_TOPIC = "policy.changed"
"""The wake-up topic the policy service notifies after a policy set was created, updated
or deleted, so that every orchestrator drops its cached sets (see docs/policy.md)."""

POLICY_SETS = ChosenIdCollection("policySets", "policy_set_id", "policySets/{policy_set}")

policy_set_name = POLICY_SETS.name
check_policy_set_id = POLICY_SETS.check_id
parse_policy_set_name = POLICY_SETS.parse
