"""Plugin resource names: "plugins/{plugin}"."""

from __future__ import annotations

import re

from services.kit.errors import FieldInvalid, NameInvalid

_PLUGIN_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")
_FORM = "plugins/{plugin}"


def plugin_name(plugin_id: str) -> str:
    """The resource name of a plugin."""
    return f"plugins/{plugin_id}"


def check_plugin_id(plugin_id: str, field: str = "plugin_id") -> str:
    """The id, if it is 1 to 63 lowercase letters, digits and '-' starting with a letter;
    FieldInvalid(field) otherwise."""
    if not _PLUGIN_ID.fullmatch(plugin_id):
        raise FieldInvalid(
            field, "must be 1 to 63 lowercase letters, digits and '-', starting with a letter"
        )
    return plugin_id


def parse_plugin_name(name: str, field: str = "name") -> str:
    """The id in a plugin's resource name; NameInvalid(field) for anything else."""
    match name.split("/"):
        case ["plugins", plugin_id] if _PLUGIN_ID.fullmatch(plugin_id):
            return plugin_id
    raise NameInvalid(field, name, _FORM)
