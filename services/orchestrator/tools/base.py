"""What every tool source and the agent loop agree on.

A tool comes from a `ToolSource` (the built-in tools, one registered plugin). The
`ToolRunner` offers a job the tools its spec names, validates each call's arguments
against the tool's JSON Schema and runs it through the job's middleware chain. Client
tools (`TOOL_KIND_CLIENT`) are not run here: the agent loop hands them to the caller as
actions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2


@dataclass(frozen=True)
class ToolInvocation:
    """One call of one tool by one job."""

    job: jobs_pb2.Job
    call: common_pb2.ToolCall
    """As the model produced it: id, tool name, arguments as JSON text."""
    arguments: Mapping[str, Any]
    """The arguments, parsed and valid against the tool's schema."""
    attempt: int = 1
    """1 on the first try; a retry middleware counts up."""


@dataclass(frozen=True)
class ToolOutput:
    """What a tool call gave back; the model reads `text`."""

    text: str
    is_error: bool = False
    """The tool ran and failed (or was refused); the model is told, the job goes on."""


class ToolFailed(Exception):
    """A tool could not give an answer. The loop reports `message` to the model.

    `retryable` says the same call may succeed later (a plugin unreachable, a timeout);
    only tools that declare themselves idempotent are tried again.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class ToolSource(Protocol):
    """Where some tools come from and how they are called."""

    @property
    def name(self) -> str:
        """ "builtin", or the plugin's resource name "plugins/{plugin}"."""
        ...

    async def list_tools(self) -> Sequence[common_pb2.ToolSpec]:
        """The tools this source serves, each with its JSON Schema and `idempotent`."""
        ...

    async def call(self, invocation: ToolInvocation, timeout: float | None) -> ToolOutput:
        """Runs one call within `timeout` seconds (None: no limit of its own).
        Raises ToolFailed when it cannot answer."""
        ...
