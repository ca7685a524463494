"""Where the CLI's client commands find the gateway and the API key to call it with."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agentrt.cli.console import CommandError

DEV_STATE_FILE = "dev.json"
"""The file `agentrt dev` writes in its data directory: {"endpoint": ..., "api_key": ...}."""

_HOW_TO_CONNECT = (
    "start `agentrt dev`, or set AGENTRT_ENDPOINT and AGENTRT_API_KEY "
    "(or pass --endpoint and --api-key)"
)


class TargetError(CommandError):
    """The endpoint or the API key cannot be determined; the message is one line."""


@dataclass(frozen=True)
class Target:
    """A gateway to call and the key to call it with."""

    endpoint: str
    """host:port of the gateway."""
    api_key: str
    """Sent as `authorization: Bearer <key>`."""
    dev_state: Path | None = None
    """The dev.json file that supplied the endpoint or the key, if one did."""


def data_dir(env: Mapping[str, str]) -> Path:
    """AGENTRT_DATA_DIR, or `.agentrt` in the current directory, as `agentrt dev` uses."""
    return Path(env.get("AGENTRT_DATA_DIR", "").strip() or ".agentrt")


def resolve_target(endpoint: str | None, api_key: str | None, env: Mapping[str, str]) -> Target:
    """The endpoint and key from the flags, else from AGENTRT_ENDPOINT and AGENTRT_API_KEY,
    else from the dev.json of a local `agentrt dev` (each of the two independently)."""
    endpoint = (endpoint or env.get("AGENTRT_ENDPOINT", "")).strip()
    api_key = (api_key or env.get("AGENTRT_API_KEY", "")).strip()
    if endpoint and api_key:
        return Target(endpoint, api_key)
    state_file = data_dir(env) / DEV_STATE_FILE
    dev = read_dev_state(state_file)
    if dev is None:
        missing = " and ".join(
            what for what, value in (("endpoint", endpoint), ("API key", api_key)) if not value
        )
        raise TargetError(f"no gateway {missing} known: {_HOW_TO_CONNECT}")
    return Target(endpoint or dev.endpoint, api_key or dev.api_key, state_file)


def read_dev_state(state_file: Path) -> Target | None:
    """The endpoint and key a local `agentrt dev` wrote, or None when it wrote none."""
    try:
        text = state_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise TargetError(f"cannot read {state_file}: {error.strerror}") from None
    try:
        state = json.loads(text)
        endpoint, api_key = state["endpoint"], state["api_key"]
    except (ValueError, TypeError, KeyError):
        raise TargetError(
            f"{state_file} is not a state file of `agentrt dev`; {_HOW_TO_CONNECT}"
        ) from None
    if not (isinstance(endpoint, str) and endpoint and isinstance(api_key, str) and api_key):
        raise TargetError(f"{state_file} lacks an endpoint or an API key; {_HOW_TO_CONNECT}")
    return Target(endpoint, api_key, state_file)
