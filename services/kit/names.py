"""Resource names (AIP-122): "jobs/{job}" and "jobs/{job}/actions/{action}"."""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.kit.errors import FieldInvalid, NameInvalid
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


_CHOSEN_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")


@dataclass(frozen=True)
class ChosenIdCollection:
    """A top-level collection whose ids the caller chooses (AIP-122: 1 to 63 lowercase
    letters, digits and '-', starting with a letter), e.g. "plugins/{plugin}"."""

    collection: str
    """The collection id, e.g. "plugins"."""
    id_field: str
    """The request field that carries a new resource's id, e.g. "plugin_id"."""
    form: str
    """The name's pattern for error messages, e.g. "plugins/{plugin}"."""

    def name(self, resource_id: str) -> str:
        """The resource name of the resource with this id."""
        return f"{self.collection}/{resource_id}"

    def check_id(self, resource_id: str, field: str | None = None) -> str:
        """The id, if it is well formed; FieldInvalid(field, by default `id_field`)."""
        if not _CHOSEN_ID.fullmatch(resource_id):
            raise FieldInvalid(
                field or self.id_field,
                "must be 1 to 63 lowercase letters, digits and '-', starting with a letter",
            )
        return resource_id

    def parse(self, name: str, field: str = "name") -> str:
        """The id in a resource name of this collection; NameInvalid(field) otherwise."""
        match name.split("/"):
            case [self.collection, resource_id] if _CHOSEN_ID.fullmatch(resource_id):
                return resource_id
        raise NameInvalid(field, name, self.form)
