"""Resource names (AIP-122): "jobs/{job}" and "jobs/{job}/actions/{action}"."""

from __future__ import annotations

from services.kit.errors import NameInvalid
from services.kit.ids import is_valid_id


def job_name(job_id: str) -> str:
    """The resource name of a job."""
    return f"jobs/{job_id}"


def parse_job_name(name: str, field: str = "name") -> str:
    """The id in a job's resource name; NameInvalid(field) for anything else."""
    match name.split("/"):
        case ["jobs", job_id] if is_valid_id(job_id):
            return job_id
    raise NameInvalid(field, name, "jobs/{job}")


def action_name(job_id: str, action_id: str) -> str:
    """The resource name of an action of a job."""
    return f"jobs/{job_id}/actions/{action_id}"


def parse_action_name(name: str, field: str = "name") -> tuple[str, str]:
    """The (job id, action id) in an action's resource name; NameInvalid(field) otherwise."""
    match name.split("/"):
        case ["jobs", job_id, "actions", action_id] if is_valid_id(job_id) and is_valid_id(
            action_id
        ):
            return job_id, action_id
    raise NameInvalid(field, name, "jobs/{job}/actions/{action}")
