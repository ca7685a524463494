"""Policy set resource names: "policySets/{policy_set}"."""

from __future__ import annotations

import re

from services.kit.errors import FieldInvalid, NameInvalid

DEFAULT_POLICY_SET = "default"
"""The id of the set that governs jobs naming none."""

CHANGED_TOPIC = "policy.changed"
"""The wake-up topic the policy service notifies after a policy set was created, updated
or deleted, so that every orchestrator drops its cached sets (see docs/policy.md)."""

_POLICY_SET_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")
_FORM = "policySets/{policy_set}"


def policy_set_name(policy_set_id: str) -> str:
    """The resource name of a policy set."""
    return f"policySets/{policy_set_id}"


def check_policy_set_id(policy_set_id: str, field: str = "policy_set_id") -> str:
    """The id, if it is 1 to 63 lowercase letters, digits and '-' starting with a letter;
    FieldInvalid(field) otherwise."""
    if not _POLICY_SET_ID.fullmatch(policy_set_id):
        raise FieldInvalid(
            field, "must be 1 to 63 lowercase letters, digits and '-', starting with a letter"
        )
    return policy_set_id


def parse_policy_set_name(name: str, field: str = "name") -> str:
    """The id in a policy set's resource name; NameInvalid(field) for anything else."""
    match name.split("/"):
        case ["policySets", policy_set_id] if _POLICY_SET_ID.fullmatch(policy_set_id):
            return policy_set_id
    raise NameInvalid(field, name, _FORM)
