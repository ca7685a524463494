"""Checks of what an operator registers: the plugin's manifest, and the tools it serves."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import jsonschema
from agentrt.common.v1.common_pb2 import ErrorReason, ToolKind, ToolSpec
from agentrt.orchestrator.v1.orchestrator_pb2 import PluginManifest
from google.protobuf import json_format

from services.kit.errors import FailedPrecondition, FieldInvalid, FieldRequired

MAX_REQUEST_ID = 128
MAX_VERSION = 64
MAX_TOOLS = 64
MAX_PERMISSIONS = 32
MAX_PERMISSION = 128
MAX_DESCRIPTION = 2000

TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""ToolSpec.name: letters, digits, '_' and '-', at most 64 characters."""
_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_PERMISSION = re.compile(r"[a-z][a-z0-9_.:/*-]*")


def check_manifest(manifest: PluginManifest, field: str = "plugin.manifest") -> None:
    """FieldRequired or FieldInvalid, naming the field, unless the manifest is well formed."""
    if not manifest.version:
        raise FieldRequired(f"{field}.version")
    if len(manifest.version) > MAX_VERSION or not _is_token(manifest.version):
        raise FieldInvalid(
            f"{field}.version", f"must be at most {MAX_VERSION} printable characters, no spaces"
        )
    check_endpoint(manifest.endpoint, f"{field}.endpoint")
    _check_tool_names(manifest.tools, f"{field}.tools")
    if len(manifest.permissions) > MAX_PERMISSIONS:
        raise FieldInvalid(f"{field}.permissions", f"at most {MAX_PERMISSIONS} permissions")
    for index, permission in enumerate(manifest.permissions):
        if len(permission) > MAX_PERMISSION or not _PERMISSION.fullmatch(permission):
            raise FieldInvalid(
                f"{field}.permissions[{index}]",
                f"{permission!r} must be lowercase letters, digits and _ . : / * -, "
                f"starting with a letter, e.g. 'network' or 'filesystem:write'",
            )
    if len(manifest.description) > MAX_DESCRIPTION:
        raise FieldInvalid(f"{field}.description", f"at most {MAX_DESCRIPTION} characters")


def check_endpoint(endpoint: str, field: str) -> None:
    """`host:port`: a DNS name, an IPv4 address or a bracketed IPv6 one, and a port 1-65535."""
    if not endpoint:
        raise FieldRequired(field)
    host, _, port = endpoint.rpartition(":")
    if not (host and _HOST.fullmatch(host) and port.isdigit() and 0 < int(port) < 65536):
        raise FieldInvalid(
            field, f"{endpoint!r} is not host:port, e.g. 'tools.internal:50061' or '[::1]:50061'"
        )


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise FieldInvalid("request_id", f"must be at most {MAX_REQUEST_ID} printable characters")


def request_hash(plugin_id: str, manifest: PluginManifest) -> bytes:
    """What a request_id is bound to: the plugin id and its manifest."""
    digest = hashlib.sha256(plugin_id.encode())
    digest.update(b"\0")
    digest.update(manifest.SerializeToString(deterministic=True))
    return digest.digest()


def check_served_tools(manifest: PluginManifest, served: Sequence[ToolSpec]) -> list[ToolSpec]:
    """The tools a plugin listed, as TOOL_KIND_PLUGIN; FailedPrecondition (TOOL_ERROR) unless
    they are exactly the manifest's, each with an object JSON Schema."""
    names = [tool.name for tool in served]
    declared = set(manifest.tools)
    missing = sorted(declared - set(names))
    extra = sorted(set(names) - declared)
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if missing or extra or duplicated:
        problems = [
            f"{label}: {', '.join(tools)}"
            for label, tools in (
                ("declared but not served", missing),
                ("served but not declared", extra),
                ("served twice", duplicated),
            )
            if tools
        ]
        raise tool_error(
            (missing or extra or duplicated)[0],
            f"the plugin's tools differ from its manifest ({'; '.join(problems)})",
        )
    tools = []
    for spec in served:
        check_schema(spec)
        tool = ToolSpec()
        tool.CopyFrom(spec)
        tool.kind = ToolKind.TOOL_KIND_PLUGIN
        tools.append(tool)
    return tools


def check_schema(spec: ToolSpec) -> None:
    """FailedPrecondition (TOOL_ERROR) unless `parameters` is empty or a valid JSON Schema
    of an object, which is what a model's tool-call arguments are."""
    if not spec.HasField("parameters") or not spec.parameters.fields:
        return
    try:
        schema = json_format.MessageToDict(spec.parameters)
    except ValueError as error:
        # A Struct may hold NaN or an infinity, which JSON (and so JSON Schema) cannot.
        raise tool_error(
            spec.name, f"the schema of tool {spec.name!r} is not JSON: {error}"
        ) from error
    if schema.get("type") != "object":
        raise tool_error(spec.name, f"the schema of tool {spec.name!r} must have type 'object'")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        raise tool_error(
            spec.name, f"the schema of tool {spec.name!r} is not a JSON Schema: {error.message}"
        ) from error


def tool_error(tool: str, message: str) -> FailedPrecondition:
    return FailedPrecondition(message, ErrorReason.ERROR_REASON_TOOL_ERROR, {"tool": tool})


def _check_tool_names(tools: Sequence[str], field: str) -> None:
    if not tools:
        raise FieldRequired(field)
    if len(tools) > MAX_TOOLS:
        raise FieldInvalid(field, f"at most {MAX_TOOLS} tools")
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        if not TOOL_NAME.fullmatch(tool):
            raise FieldInvalid(
                f"{field}[{index}]",
                f"{tool!r} must be 1 to 64 letters, digits, '_' and '-'",
            )
        if tool in seen:
            raise FieldInvalid(f"{field}[{index}]", f"{tool!r} is listed twice")
        seen.add(tool)


def _is_token(text: str) -> bool:
    return text.isprintable() and not any(char.isspace() for char in text)
