"""The agentrt version this process runs, as installed (e.g. "0.1.0")."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    RUNTIME_VERSION = version("agentrt")
except PackageNotFoundError:  # run from a source tree that was never installed
    RUNTIME_VERSION = "unknown"
