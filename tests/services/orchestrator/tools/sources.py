"""Small ToolSources for the tool tests: real implementations of our own interface."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2

from services.orchestrator.tools.base import ToolFailed, ToolInvocation, ToolOutput

Answer = Callable[[ToolInvocation], Awaitable[ToolOutput]]


def tool(
    name: str, parameters: dict[str, Any] | None = None, *, idempotent: bool = False
) -> common_pb2.ToolSpec:
    """A spec as a source would serve it."""
    spec = common_pb2.ToolSpec(name=name, description=f"the {name} tool", idempotent=idempotent)
    spec.parameters.update(parameters or {"type": "object"})
    return spec


def job(*tools: common_pb2.ToolSpec, name: str = "jobs/testjob", **spec: Any) -> jobs_pb2.Job:
    """A leased job whose spec offers `tools`."""
    return jobs_pb2.Job(
        name=name, spec=jobs_pb2.JobSpec(prompt="hi", model="local", tools=tools, **spec)
    )


async def echo(invocation: ToolInvocation) -> ToolOutput:
    """Answers with the arguments it was given."""
    return ToolOutput(f"{invocation.call.name} {dict(invocation.arguments)}")


class ScriptedSource:
    """A ToolSource whose tools all answer with `answer`; it records every call."""

    def __init__(
        self, name: str, tools: Sequence[common_pb2.ToolSpec], answer: Answer = echo
    ) -> None:
        self._name = name
        self.tools = list(tools)
        self.answer = answer
        self.calls: list[tuple[ToolInvocation, float | None]] = []

    @property
    def name(self) -> str:
        return self._name

    async def list_tools(self) -> Sequence[common_pb2.ToolSpec]:
        return self.tools

    async def call(self, invocation: ToolInvocation, timeout: float | None) -> ToolOutput:
        self.calls.append((invocation, timeout))
        return await self.answer(invocation)


class BrokenListing(ScriptedSource):
    """A source that cannot list its tools, like a plugin that is down."""

    async def list_tools(self) -> Sequence[common_pb2.ToolSpec]:
        raise ConnectionError("plugin unreachable")


def failing(times: int, *, retryable: bool = True) -> Answer:
    """An answer that fails `times` times, then echoes."""
    left = [times]

    async def answer(invocation: ToolInvocation) -> ToolOutput:
        if left[0] > 0:
            left[0] -= 1
            raise ToolFailed("the backend is unreachable", retryable=retryable)
        return await echo(invocation)

    return answer


class Hanging:
    """An answer that waits forever on its first `times` attempts, then echoes; it
    records that the waiting attempts were cancelled."""

    def __init__(self, times: int = 1_000_000) -> None:
        self.left = times
        self.cancelled = 0

    async def __call__(self, invocation: ToolInvocation) -> ToolOutput:
        if self.left <= 0:
            return await echo(invocation)
        self.left -= 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("unreachable")
